"""AccelConfig: the parametric INT8 accelerator that the accel target emulates.

A PE array of `t_oc` output-channel lanes x `t_ic` input lanes (8-bit, or 4-bit operands at
2-4x the MACs) with int32 accumulators, on-chip
buffers for weights, activations and accumulators, a DMA moving `dma_bytes_per_cycle`, and one
requantization unit per output lane (`mult_shift` with a rounding mode, or `fp32`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

REQUANTS = ("mult_shift", "fp32")
ROUNDINGS = ("double", "single", "tonearest")
OPERAND_BITS = (4, 8)


def _positive(field: str, value, minimum: int = 1, why: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        hint = f" ({why})" if why else ""
        raise ValueError(f"AccelConfig.{field}={value!r}: use an integer >= {minimum}{hint}.")


@dataclass(frozen=True)
class AccelConfig:
    """An accelerator description; invalid settings raise ValueError naming the field.

    Parameters
    ----------
    t_oc, t_ic : output-channel lanes and input-channel lanes of the PE array (MACs/cycle =
        t_oc * t_ic)
    operand_bits : supported operand widths of weights and activations (default (4, 8)): an 8x8
        multiplier splits into two 8x4 or four 4x4 ones, so 4-bit operands take 2 or 4 input
        channels per PE step (see the cycle model in emulator/accel.c)
    weight_buffer_bytes, act_buffer_bytes, acc_buffer_bytes : on-chip buffer sizes; the smallest
        that work hold one t_oc x t_ic weight tile, one t_ic input vector, t_oc int32 accumulators
    dma_bytes_per_cycle : off-chip transfer rate
    requant, rounding : the requant unit: "mult_shift" (rounding: double/single/tonearest) or
        "fp32" (rounding must be None)
    clock_mhz : for reporting latency
    """

    name: str = "custom"
    t_oc: int = 16
    t_ic: int = 16
    operand_bits: tuple[int, ...] = (4, 8)
    weight_buffer_bytes: int = 64 * 1024
    act_buffer_bytes: int = 128 * 1024
    acc_buffer_bytes: int = 16 * 1024
    dma_bytes_per_cycle: int = 8
    requant: str = "mult_shift"
    rounding: str | None = "double"
    clock_mhz: float = 500.0

    def __post_init__(self):
        _positive("t_oc", self.t_oc)
        _positive("t_ic", self.t_ic)
        bad_bits = [b for b in self.operand_bits if b not in OPERAND_BITS]
        if not self.operand_bits or bad_bits:
            raise ValueError(f"AccelConfig.operand_bits={self.operand_bits!r}: use widths from "
                             f"{OPERAND_BITS}.")
        _positive("weight_buffer_bytes", self.weight_buffer_bytes, self.t_oc * self.t_ic,
                  f"one {self.t_oc}x{self.t_ic} int8 weight tile")
        _positive("act_buffer_bytes", self.act_buffer_bytes, self.t_ic,
                  f"one {self.t_ic}-lane input vector")
        _positive("acc_buffer_bytes", self.acc_buffer_bytes, 4 * self.t_oc,
                  f"{self.t_oc} int32 accumulators")
        _positive("dma_bytes_per_cycle", self.dma_bytes_per_cycle)
        if self.requant not in REQUANTS:
            raise ValueError(f"AccelConfig.requant={self.requant!r}: use one of {REQUANTS}.")
        if self.requant == "mult_shift" and self.rounding not in ROUNDINGS:
            raise ValueError(f"AccelConfig.rounding={self.rounding!r}: mult_shift needs one of "
                             f"{ROUNDINGS}.")
        if self.requant == "fp32" and self.rounding is not None:
            raise ValueError(f"AccelConfig.rounding={self.rounding!r}: fp32 requant has no "
                             "rounding mode; use rounding=None.")
        if not isinstance(self.clock_mhz, int | float) or not self.clock_mhz > 0:
            raise ValueError(f"AccelConfig.clock_mhz={self.clock_mhz!r}: use a positive number.")

    @property
    def macs_per_cycle(self) -> int:
        return self.t_oc * self.t_ic

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, AccelConfig] = {
    # MCU-class NPU: 8x8 PEs, small SRAMs, a narrow bus.
    "npu-small": AccelConfig(name="npu-small", t_oc=8, t_ic=8, weight_buffer_bytes=32 * 1024,
                             act_buffer_bytes=64 * 1024, acc_buffer_bytes=8 * 1024,
                             dma_bytes_per_cycle=4, clock_mhz=200.0),
    # Mid-size edge NPU: 32x16 PEs.
    "npu-mid": AccelConfig(name="npu-mid", t_oc=32, t_ic=16, weight_buffer_bytes=256 * 1024,
                           act_buffer_bytes=512 * 1024, acc_buffer_bytes=64 * 1024,
                           dma_bytes_per_cycle=16, clock_mhz=800.0),
}


def preset(name: str) -> AccelConfig:
    """A named AccelConfig ('npu-small', 'npu-mid')."""
    if name not in PRESETS:
        raise ValueError(f"unknown accelerator preset {name!r}; use one of {tuple(PRESETS)}.")
    return PRESETS[name]


def hardware_for(accel, quant) -> AccelConfig:
    """The AccelConfig of `tvmq.compile(..., accel=)` for a model quantized with `quant` (a
    QuantConfig): a preset name (default "npu-small") takes its requant/rounding; an explicit
    AccelConfig must already have them (ValueError naming both otherwise), except for LBFP
    schemes, whose layers do not use the requant unit."""
    rounding = None if quant.requant == "fp32" else quant.rounding
    if accel is None or isinstance(accel, str):
        return dataclasses.replace(preset(accel or "npu-small"), requant=quant.requant,
                                   rounding=rounding)
    if not isinstance(accel, AccelConfig):
        raise TypeError(f"accel must be an AccelConfig or a preset name, got {accel!r}")
    if not quant.is_lbfp and (accel.requant, accel.rounding) != (quant.requant, rounding):
        raise ValueError(
            f"AccelConfig {accel.name!r} has a {accel.requant}/{accel.rounding} requant unit but "
            f"QuantConfig asks for {quant.requant}/{rounding}; make them agree.")
    return accel
