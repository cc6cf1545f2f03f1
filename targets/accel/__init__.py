"""The emulated accelerator target (issue 3): `AccelConfig` and its presets (config.py); the C
emulator of the PE array, requant units, LBFP MAC mode and gradient quantizer (C sources in
emulator/; built and loaded by library.py; called through int8_unit.py, lbfp_unit.py, gradq.py,
counters.py); the lowering of every int8 / LBFP conv2d and matmul to TIR tile loops that call the
emulator (lower.py, run by ``tvmq.compile(..., target="accel")`` through target.py, bit-exact with
the NumPy oracle); and the requant / multiplier area model (area.py)."""

from .config import PRESETS, AccelConfig, preset

__all__ = ["PRESETS", "AccelConfig", "preset"]
