"""QuantConfig: how tvmq quantizes a model (validated on construction)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SCHEMES = ("int8",)
REQUANTS = ("mult_shift", "fp32")
ROUNDINGS = ("double", "single", "tonearest")
OBSERVERS = ("minmax", "percentile", "kl", "mse")


def _check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"QuantConfig.{field}={value!r} is not supported; use one of {allowed}.")


@dataclass(frozen=True)
class QuantConfig:
    """Quantization settings.

    Parameters
    ----------
    scheme : "int8"
        int8 activations and weights, int32 accumulators and bias.
    requant : "mult_shift" | "fp32"
        Integer Q31 multiplier + shift, or one float32 multiply (the first paper's two options).
    rounding : "double" | "single" | "tonearest"
        mult_shift rounding: gemmlowp/TFLite double rounding, CMSIS-NN single rounding (half up),
        TVM QNN TONEAREST (half away from zero). Ignored for fp32.
    observer : "minmax" | "percentile" | "kl" | "mse"
        How activation ranges are chosen from calibration data.
    per_channel_weights : bool
        One weight scale per output channel (default) or per tensor.
    symmetric_activations : bool
        Zero point 0 for activations (default: asymmetric, zero point chosen from the range).
    sqnr_samples : int
        Calibration samples kept to measure each layer's SQNR for the report (0 disables).

    Example
    -------
    >>> QuantConfig(requant="fp32", observer="kl")  # doctest: +ELLIPSIS
    QuantConfig(scheme='int8', requant='fp32', ...)
    """

    scheme: str = "int8"
    requant: str = "mult_shift"
    rounding: str = "double"
    observer: str = "minmax"
    per_channel_weights: bool = True
    symmetric_activations: bool = False
    sqnr_samples: int = 32

    def __post_init__(self):
        _check_choice("scheme", self.scheme, SCHEMES)
        _check_choice("requant", self.requant, REQUANTS)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        _check_choice("observer", self.observer, OBSERVERS)
        if not isinstance(self.sqnr_samples, int) or self.sqnr_samples < 0:
            raise ValueError(
                f"QuantConfig.sqnr_samples={self.sqnr_samples!r}; use an integer >= 0.")

    @property
    def label(self) -> str:
        """Short name, e.g. 'int8 mult_shift/double minmax'."""
        rq = self.requant if self.requant == "fp32" else f"{self.requant}/{self.rounding}"
        return f"{self.scheme} {rq} {self.observer}"

    def to_dict(self) -> dict:
        return asdict(self)
