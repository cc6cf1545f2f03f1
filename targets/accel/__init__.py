"""The emulated accelerator target (issue 3): its description and C emulator; lowering to come."""

from .config import PRESETS, AccelConfig, preset

__all__ = ["PRESETS", "AccelConfig", "preset"]
