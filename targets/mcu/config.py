"""McuConfig: the microcontroller's memory limits and what the MCU target may generate."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class McuConfig:
    """Memory limits a compile must meet, and whether float kernels are allowed.

    Parameters
    ----------
    ram_bytes : RAM available to the model: arena + kernel workspace must fit (default 256 KiB;
        None: no limit)
    flash_bytes : flash available to the model's constant tables (default 1 MiB; None: no limit)
    allow_float : let ops that stayed float (see the report's float ops) run as float C kernels;
        by default a model with any is refused, naming them
    """

    ram_bytes: int | None = 256 * 1024
    flash_bytes: int | None = 1024 * 1024
    allow_float: bool = False

    def __post_init__(self):
        for name in ("ram_bytes", "flash_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value <= 0):
                raise ValueError(f"McuConfig.{name}={value!r}: use a positive number of bytes "
                                 "or None for no limit.")
        if not isinstance(self.allow_float, bool):
            raise ValueError(f"McuConfig.allow_float={self.allow_float!r}: use True or False.")

    def to_dict(self) -> dict:
        return asdict(self)
