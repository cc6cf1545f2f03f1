"""QuantConfig: how tvmq quantizes a model (validated on construction)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .numerics.lbfp import LBFPFormat

SCHEMES = ("int8", "mixed", "lbfp8", "lbfp6", "lbfp4")
MIXED_BITS = (4, 8)  # operand widths the mixed-precision search chooses from (the accel's MACs)
LBFP_OBSERVERS = ("kl", "minmax")  # kl: the paper's exponent choice; minmax: ceil(log2 max)
LBFP_FRAC_BITS = {8: 4, 6: 2, 4: 1}  # default fractional bits of the log code per width
REQUANTS = ("mult_shift", "fp32")
ROUNDINGS = ("double", "single", "tonearest")
OBSERVERS = ("minmax", "percentile", "kl", "mse")


def _check_choice(field: str, value, allowed, context: str = "") -> None:
    if value not in allowed:
        raise ValueError(f"QuantConfig.{field}={value!r} is not supported{context}; use one of "
                         f"{allowed}.")


@dataclass(frozen=True)
class QuantConfig:
    """Quantization settings.

    Parameters
    ----------
    scheme : "int8" | "mixed" | "lbfp8" | "lbfp6" | "lbfp4"
        int8 activations and weights, int32 accumulators and bias; "mixed": a (weight, input
        activation) width per conv2d/matmul from `bits`, chosen by an integer linear program
        against the accelerator's measured cycles (tvmq.mixed); or LBFP (logarithmic block
        floating point, tvmq.numerics.lbfp) of 8/6/4 bits for conv/matmul inputs, weights and
        outputs, int64 accumulators; the ops between MAC layers run in float32 on decoded
        values.
    requant : "mult_shift" | "fp32"
        Integer Q31 multiplier + shift, or one float32 multiply (the first paper's two options).
    rounding : "double" | "single" | "tonearest"
        mult_shift rounding: gemmlowp/TFLite double rounding, CMSIS-NN single rounding (half up),
        TVM QNN TONEAREST (half away from zero). Ignored for fp32.
    observer : "minmax" | "percentile" | "kl" | "mse"
        How activation ranges are chosen from calibration data (default minmax). For LBFP,
        how block exponents are chosen: "minmax" (ceil log2 max, nothing saturates) or "kl"
        (the paper's KL divergence; it saturates rare large values and measured lower SQNR and
        accuracy on PP-OCR, see benchmarks/accuracy.py).
    per_channel_weights : bool
        One weight scale per output channel (default) or per tensor.
    symmetric_activations : bool
        Zero point 0 for activations (default: asymmetric, zero point chosen from the range).
    sqnr_samples : int
        Calibration samples kept to measure each layer's SQNR for the report (0 disables).
    lbfp_frac_bits : int, optional
        LBFP fractional bits of the log code (default 4 / 2 / 1 for 8 / 6 / 4 bits: a code step
        of 2^(1/16) over 8 octaves for lbfp8; see benchmarks/accuracy.py for the others).
    lbfp_block_size : int
        LBFP elements sharing one exponent, along the channels (default 16).
    bits : tuple of int
        mixed: the candidate widths of weights and of activations (default (4, 8): every layer
        takes one of w4a4, w4a8, w8a4, w8a8).
    latency_budget : float
        mixed: total accelerator cycles of the conv2d/matmul layers at most this fraction of
        uniform INT8 (default 0.75).
    weight_budget, bops_budget : float, optional
        mixed: weight bytes / bit operations (MACs * w_bits * a_bits) at most this fraction of
        uniform INT8.
    layer_bits : dict[str, tuple[int, int]], optional
        mixed: fixed (w_bits, a_bits) per layer name (report names, e.g. "conv2d_0"); skips the
        search. Layers not named take (8, 8).
    sensitivity_samples : int
        mixed: calibration samples the sensitivity of each layer is measured on (default 8).

    Example
    -------
    >>> QuantConfig(requant="fp32", observer="kl")  # doctest: +ELLIPSIS
    QuantConfig(scheme='int8', requant='fp32', ...)
    """

    scheme: str = "int8"
    requant: str = "mult_shift"
    rounding: str = "double"
    observer: str | None = None
    per_channel_weights: bool = True
    symmetric_activations: bool = False
    sqnr_samples: int = 32
    lbfp_frac_bits: int | None = None
    lbfp_block_size: int = 16
    bits: tuple[int, ...] = MIXED_BITS
    latency_budget: float = 0.75
    weight_budget: float | None = None
    bops_budget: float | None = None
    layer_bits: dict | None = None
    sensitivity_samples: int = 8

    def __post_init__(self):
        _check_choice("scheme", self.scheme, SCHEMES)
        _check_choice("requant", self.requant, REQUANTS)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        if self.observer is None:
            object.__setattr__(self, "observer", "minmax")
        _check_choice("observer", self.observer, LBFP_OBSERVERS if self.is_lbfp else OBSERVERS,
                      f" for scheme {self.scheme!r}" if self.is_lbfp else "")
        if self.is_lbfp:
            try:
                self.lbfp_format  # validates bits / frac_bits / block size
            except ValueError as err:
                field = str(err).split("=")[0].removeprefix("LBFPFormat.")
                raise ValueError(str(err).replace(f"LBFPFormat.{field}",
                                                  f"QuantConfig.lbfp_{field}")) from None
        if not isinstance(self.sqnr_samples, int) or self.sqnr_samples < 0:
            raise ValueError(
                f"QuantConfig.sqnr_samples={self.sqnr_samples!r}; use an integer >= 0.")
        self._check_mixed()

    def _check_mixed(self) -> None:
        bits = tuple(self.bits) if isinstance(self.bits, list | tuple) else None
        if not bits or any(b not in MIXED_BITS for b in bits) or len(set(bits)) != len(bits):
            raise ValueError(f"QuantConfig.bits={self.bits!r}: use distinct widths from "
                             f"{MIXED_BITS}.")
        if 8 not in bits:
            raise ValueError(f"QuantConfig.bits={self.bits!r}: include 8 (budgets are fractions "
                             "of uniform INT8, and 8 bits is the fallback).")
        object.__setattr__(self, "bits", tuple(sorted(bits)))
        for field in ("latency_budget", "weight_budget", "bops_budget"):
            value = getattr(self, field)
            if value is None and field != "latency_budget":
                continue
            if (not isinstance(value, int | float) or isinstance(value, bool)
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"QuantConfig.{field}={value!r}: use a fraction of uniform "
                                 "INT8 > 0 (e.g. 0.75).")
        if not isinstance(self.sensitivity_samples, int) or self.sensitivity_samples < 1:
            raise ValueError(f"QuantConfig.sensitivity_samples={self.sensitivity_samples!r}; "
                             "use an integer >= 1.")
        if self.layer_bits is not None:
            if not isinstance(self.layer_bits, dict):
                raise ValueError(f"QuantConfig.layer_bits={self.layer_bits!r}: use a dict "
                                 "{layer name: (w_bits, a_bits)}.")
            for name, pair in self.layer_bits.items():
                if (not isinstance(pair, list | tuple) or len(pair) != 2
                        or any(b not in self.bits for b in pair)):
                    raise ValueError(f"QuantConfig.layer_bits[{name!r}]={pair!r}: use a "
                                     f"(w_bits, a_bits) pair of widths from bits={self.bits}.")
            object.__setattr__(self, "layer_bits",
                               {str(n): tuple(int(b) for b in p)
                                for n, p in self.layer_bits.items()})

    @property
    def is_mixed(self) -> bool:
        return self.scheme == "mixed"

    @property
    def is_lbfp(self) -> bool:
        return self.scheme.startswith("lbfp")

    @property
    def lbfp_format(self) -> LBFPFormat:
        """The LBFP element format of an lbfp scheme (block_axis is set per tensor)."""
        bits = int(self.scheme.removeprefix("lbfp"))
        frac = LBFP_FRAC_BITS[bits] if self.lbfp_frac_bits is None else self.lbfp_frac_bits
        return LBFPFormat(bits=bits, frac_bits=frac, block_size=self.lbfp_block_size)

    @property
    def lbfp_exponents(self) -> str:
        """How LBFP block exponents are chosen: "kl" or "max" (observer "minmax")."""
        return "kl" if self.observer == "kl" else "max"

    @property
    def label(self) -> str:
        """Short name, e.g. 'int8 mult_shift/double minmax' or 'lbfp8 f3 b16 kl'."""
        if self.is_lbfp:
            fmt = self.lbfp_format
            return f"{self.scheme} f{fmt.frac_bits} b{fmt.block_size} {self.observer}"
        rq = self.requant if self.requant == "fp32" else f"{self.requant}/{self.rounding}"
        if self.is_mixed:
            widths = "/".join(map(str, self.bits))
            search = ("fixed" if self.layer_bits is not None
                      else f"{100 * self.latency_budget:g}% cycles")
            return f"mixed w,a {widths} {search} {rq} {self.observer}"
        return f"{self.scheme} {rq} {self.observer}"

    def to_dict(self) -> dict:
        return asdict(self)
