"""tvmq's targets, each registered under its `target=` name (the interface: target.py).

Importing a target's module registers it; a new target adds one line here. Registration order
is the order users see (host, the default, first).
"""

from . import target

# isort: off
from .host import target as _host  # noqa: F401
from .accel import target as _accel  # noqa: F401
from .mcu import target as _mcu  # noqa: F401
# isort: on

__all__ = ["target"]
