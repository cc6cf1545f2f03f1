"""The test session never reads or writes the user's tvmq cache (tests/conftest.py)."""

import tempfile
from pathlib import Path

from tvmq.targets.accel import emulator
from tvmq.targets.host.tune import TuningCache

from tvmq.mixed.cost import CostCache


def test_the_session_cache_is_a_new_temporary_folder():
    root = emulator.cache_root()
    assert root.parent == Path(tempfile.gettempdir()) and root.name.startswith("tvmq-test-cache-")
    assert TuningCache().path.parent == root and CostCache().root.parent == root
