"""Golden NumPy numerics: the bit-exact reference every backend is tested against."""

from .gradq import GradQuant, clip_value, fake_quantize_gradient, quantize_gradient
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
    "GradQuant",
    "QParams",
    "Requant",
    "choose_qparams",
    "clip_value",
    "dequantize",
    "fake_quantize_gradient",
    "multiply_by_quantized_multiplier",
    "qrange",
    "quantize",
    "quantize_gradient",
    "quantize_multiplier",
    "requantize",
    "requantize_fp32",
    "rounding_divide_by_pot",
    "saturating_rounding_doubling_high_mul",
]
