"""QuantConfig: how tvmq quantizes a model (validated on construction)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .numerics.lbfp import LBFPFormat

SCHEMES = ("int8", "lbfp8", "lbfp6", "lbfp4")
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
    scheme : "int8" | "lbfp8" | "lbfp6" | "lbfp4"
        int8 activations and weights, int32 accumulators and bias; or LBFP (logarithmic block
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
        return f"{self.scheme} {rq} {self.observer}"

    def to_dict(self) -> dict:
        return asdict(self)
