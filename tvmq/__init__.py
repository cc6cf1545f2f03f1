"""tvmq: a hardware-aware quantization compiler on Apache TVM.

>>> import tvmq
>>> cfg = tvmq.QuantConfig(requant="fp32")
>>> cm = tvmq.compile("model.onnx", target="host", config=cfg, calib=x)  # doctest: +SKIP
"""

from importlib.metadata import version as _version

from .compiler import CompiledModel, compile
from .config import QuantConfig
from .errors import CalibrationWarning, CompileError
from .report import Report
from .targets.mcu import McuConfig

__all__ = ["CalibrationWarning", "CompileError", "CompiledModel", "McuConfig", "QuantConfig",
           "Report", "compile"]
__version__ = _version("tvmq")  # one source: pyproject.toml (the tuning cache keys on it too)
