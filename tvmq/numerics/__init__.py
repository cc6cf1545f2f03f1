"""Golden NumPy numerics: the bit-exact reference every backend is tested against."""

from .qparams import QParams, choose_qparams, dequantize, qrange, quantize
from .requant import (
    REQUANT_KINDS,
    ROUNDINGS,
    Requant,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    requantize,
    requantize_fp32,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

__all__ = [
    "REQUANT_KINDS",
    "ROUNDINGS",
    "QParams",
    "Requant",
    "choose_qparams",
    "dequantize",
    "multiply_by_quantized_multiplier",
    "qrange",
    "quantize",
    "quantize_multiplier",
    "requantize",
    "requantize_fp32",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
]
