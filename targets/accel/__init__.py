"""The emulated accelerator target (issue 3): its description; emulator and lowering to come."""

from .config import PRESETS, AccelConfig, preset

__all__ = ["PRESETS", "AccelConfig", "preset"]
