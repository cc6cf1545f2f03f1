"""QuantConfig: how tvmq quantizes a model (validated on construction, per scheme)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields

from .numerics.lbfp import LBFPFormat

SCHEMES = ("int8", "mixed", "lbfp8", "lbfp6", "lbfp4")
INTEGER_SCHEMES = ("int8", "mixed")  # int8/int4 values, integer or fp32 requant
LBFP_SCHEMES = ("lbfp8", "lbfp6", "lbfp4")
MIXED_BITS = (4, 8)  # operand widths the mixed-precision search chooses from (the accel's MACs)
LBFP_OBSERVERS = ("kl", "minmax")  # kl: the paper's exponent choice; minmax: ceil(log2 max)
LBFP_FRAC_BITS = {8: 4, 6: 2, 4: 1}  # default fractional bits of the log code per width
REQUANTS = ("mult_shift", "fp32")
ROUNDINGS = ("double", "single", "tonearest")
OBSERVERS = ("minmax", "percentile", "kl", "mse")
WEIGHT_ROUNDINGS = ("nearest", "adaround")
WEIGHT_BITS = range(2, 9)  # uniform weight widths of scheme int8 (int8 containers)

# The schemes each QuantConfig field means something to. Under any other scheme the field must
# keep its default: QuantConfig raises rather than ignore it. (rounding also needs
# requant="mult_shift".) The one table behind the check, the docstring and `label`.
FIELD_SCHEMES: dict[str, tuple[str, ...]] = {
    "scheme": SCHEMES,
    "requant": INTEGER_SCHEMES,  # the LBFP path has no requant (passes/realize_lbfp.py)
    "rounding": INTEGER_SCHEMES,
    "observer": SCHEMES,  # LBFP: how block exponents are chosen
    "per_channel_weights": INTEGER_SCHEMES,  # LBFP: one exponent per block of channels
    "symmetric_activations": INTEGER_SCHEMES,  # LBFP has no zero point
    "sqnr_samples": SCHEMES,
    "lbfp_frac_bits": LBFP_SCHEMES,
    "lbfp_block_size": LBFP_SCHEMES,
    "lbfp_activation_block_size": LBFP_SCHEMES,
    "bits": ("mixed",),
    "latency_budget": ("mixed",),
    "weight_budget": ("mixed",),
    "bops_budget": ("mixed",),
    "layer_bits": ("mixed",),
    "sensitivity_samples": ("mixed",),
    "weight_rounding": INTEGER_SCHEMES,
    "weight_bits": ("int8",),  # mixed chooses each layer's width (bits, layer_bits)
    "keep_float": SCHEMES,
    "equalize": INTEGER_SCHEMES,  # boosters: they change the weights / biases realize quantizes
    "bias_absorption": INTEGER_SCHEMES,
    "bias_correction": INTEGER_SCHEMES,
}


def applies(field: str, scheme: str) -> bool:
    """Whether QuantConfig.`field` means something under `scheme` (FIELD_SCHEMES)."""
    return scheme in FIELD_SCHEMES[field]


def _check_choice(field: str, value, allowed, context: str = "") -> None:
    if value not in allowed:
        raise ValueError(f"QuantConfig.{field}={value!r} is not supported{context}; use one of "
                         f"{allowed}.")


class LayerBits(Mapping):
    """An immutable, hashable {layer name: (w_bits, a_bits)} mapping, sorted by name
    (QuantConfig.layer_bits). Compares equal to a dict with the same pairs."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: Mapping):
        self._pairs = dict(sorted((str(name), tuple(int(b) for b in pair))
                                  for name, pair in pairs.items()))

    def __getitem__(self, name: str) -> tuple[int, int]:
        return self._pairs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __hash__(self) -> int:
        return hash(tuple(self._pairs.items()))

    def __repr__(self) -> str:
        return f"LayerBits({self._pairs!r})"


@dataclass(frozen=True)
class QuantConfig:
    """Quantization settings. A field that does not apply to `scheme` (see the table below)
    must keep its default: setting it raises ValueError instead of being ignored.

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
        int8, mixed: integer Q31 multiplier + shift, or one float32 multiply (the first paper's
        two options).
    rounding : "double" | "single" | "tonearest"
        int8, mixed with requant "mult_shift": gemmlowp/TFLite double rounding, CMSIS-NN single
        rounding (half up), TVM QNN TONEAREST (half away from zero).
    observer : "minmax" | "percentile" | "kl" | "mse"
        How activation ranges are chosen from calibration data (default minmax). For LBFP,
        how block exponents are chosen: "minmax" (ceil log2 max, nothing saturates) or "kl"
        (the paper's KL divergence; it saturates rare large values and measured lower SQNR and
        accuracy on PP-OCR, see benchmarks/accuracy.py).
    per_channel_weights : bool
        int8, mixed: one weight scale per output channel (default) or per tensor.
    symmetric_activations : bool
        int8, mixed: zero point 0 for activations (default: asymmetric, zero point chosen from
        the range).
    sqnr_samples : int
        Calibration samples kept to measure each layer's SQNR for the report (0 disables).
    lbfp_frac_bits : int, optional
        LBFP fractional bits of the log code (default 4 / 2 / 1 for 8 / 6 / 4 bits: a code step
        of 2^(1/16) over 8 octaves for lbfp8; see benchmarks/accuracy.py for the others).
    lbfp_block_size : int
        LBFP weight elements sharing one exponent, along the input channels (default 16; the
        exponents travel with the weights).
    lbfp_activation_block_size : int
        LBFP activation channels sharing one exponent, over the batch and spatial axes too
        (default 1: one per channel). The exponents are calibration constants, so a smaller
        block costs no runtime work; one per channel keeps a channel 2^8 times smaller than
        its block's largest (common in depthwise nets) from encoding to zero at 8 bits.
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
        search. Layers not named take (8, 8). Stored as an immutable `LayerBits` mapping.
    sensitivity_samples : int
        mixed: calibration samples the sensitivity of each layer is measured on (default 8).
    weight_rounding : "nearest" | "adaround"
        int8, mixed: conv2d/matmul weights rounded to nearest (default), or up or down as
        learned by AdaRound on the calibration data (tvmq.boosters.adaround; the scale stays
        the same; mixed: at each layer's chosen weight width).
    weight_bits : int
        int8: weight width of every conv2d/matmul layer, 2..8 (default 8; 4: W4A8); the values
        are held in int8.
    keep_float : tuple of str
        Layers to leave in float: report names or fnmatch patterns ("conv2d_12", "mean_*"),
        like NNCF's ignored scope. Besides these, ops other than conv2d/matmul whose inputs
        all come from float ops, or whose output only float ops read, always stay float (a
        rounding that buys no integer work; passes/keep_float.py); the report says why.
    equalize : bool
        int8, mixed: cross-layer equalization before calibration (DFQ, tvmq.boosters.equalize):
        conv/matmul pairs joined by ReLU or nothing get per-channel weight ranges equalized; the
        float model is unchanged.
    bias_absorption : bool
        int8, mixed: DFQ's bias absorption (after equalization when both are on): a ReLU layer
        feeding an unpadded conv/matmul moves the part of its output that is positive on every
        calibration sample into the next layer's bias (the float model is unchanged on the
        calibration samples, not beyond them).
    bias_correction : bool
        int8, mixed (on by default): subtract from each conv/matmul bias (a head's excepted)
        the mean error of its output in the integer model on the first calibration samples,
        layer after layer (tvmq.boosters.bias_correction).

    Notes
    -----
    Fields by scheme (FIELD_SCHEMES):

    FIELDS_BY_SCHEME

    Example
    -------
    >>> QuantConfig(requant="fp32", observer="kl")  # doctest: +ELLIPSIS
    QuantConfig(scheme='int8', requant='fp32', ...)
    >>> QuantConfig(latency_budget=0.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: QuantConfig.latency_budget=0.5 applies to scheme 'mixed' only (scheme is ...
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
    lbfp_activation_block_size: int = 1
    bits: tuple[int, ...] = MIXED_BITS
    latency_budget: float = 0.75
    weight_budget: float | None = None
    bops_budget: float | None = None
    layer_bits: Mapping[str, tuple[int, int]] | None = None
    sensitivity_samples: int = 8
    weight_rounding: str = "nearest"
    weight_bits: int = 8
    keep_float: tuple[str, ...] = ()
    equalize: bool = False
    bias_absorption: bool = False
    bias_correction: bool = True

    def __post_init__(self):
        _check_choice("scheme", self.scheme, SCHEMES)
        self._check_fields_apply()
        _check_choice("requant", self.requant, REQUANTS)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        _check_choice("weight_rounding", self.weight_rounding, WEIGHT_ROUNDINGS)
        if (not isinstance(self.weight_bits, int) or isinstance(self.weight_bits, bool)
                or self.weight_bits not in WEIGHT_BITS):
            raise ValueError(f"QuantConfig.weight_bits={self.weight_bits!r}: use an integer in "
                             "2..8.")
        if self.requant == "fp32" and self.rounding != DEFAULTS["rounding"]:
            raise ValueError(f"QuantConfig.rounding={self.rounding!r} applies to "
                             f"requant='mult_shift' only (requant is 'fp32'); drop it or use "
                             "requant='mult_shift'.")
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
            try:
                self.lbfp_activation_format
            except ValueError as err:
                raise ValueError(str(err).replace("LBFPFormat.block_size",
                                                  "QuantConfig.lbfp_activation_block_size")
                                 ) from None
        for field in ("equalize", "bias_absorption", "bias_correction"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"QuantConfig.{field}={getattr(self, field)!r}; use True or "
                                 "False.")
        if not isinstance(self.sqnr_samples, int) or self.sqnr_samples < 0:
            raise ValueError(
                f"QuantConfig.sqnr_samples={self.sqnr_samples!r}; use an integer >= 0.")
        self._check_mixed()
        self._check_keep_float()

    def _check_keep_float(self) -> None:
        patterns = (self.keep_float,) if isinstance(self.keep_float, str) else self.keep_float
        if not isinstance(patterns, list | tuple) or not all(
                isinstance(p, str) and p for p in patterns):
            raise ValueError(f"QuantConfig.keep_float={self.keep_float!r}: use a list of layer "
                             "names or patterns, e.g. ['conv2d_12', 'mean_*'].")
        object.__setattr__(self, "keep_float", tuple(patterns))

    def _check_fields_apply(self) -> None:
        """Raise on the first field set away from its default that `scheme` does not use."""
        for field, schemes in FIELD_SCHEMES.items():
            value = getattr(self, field)
            if self.scheme in schemes or _is_default(field, value):
                continue
            if len(schemes) == 1:
                which, fix = f"scheme {schemes[0]!r}", f"scheme={schemes[0]!r}"
            else:
                which = "schemes " + ", ".join(map(repr, schemes))
                fix = "one of those schemes"
            raise ValueError(f"QuantConfig.{field}={value!r} applies to {which} only (scheme "
                             f"is {self.scheme!r}); drop it or use {fix}.")

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
            if not isinstance(self.layer_bits, Mapping):
                raise ValueError(f"QuantConfig.layer_bits={self.layer_bits!r}: use a dict "
                                 "{layer name: (w_bits, a_bits)}.")
            for name, pair in self.layer_bits.items():
                if (not isinstance(pair, list | tuple) or len(pair) != 2
                        or any(b not in self.bits for b in pair)):
                    raise ValueError(f"QuantConfig.layer_bits[{name!r}]={pair!r}: use a "
                                     f"(w_bits, a_bits) pair of widths from bits={self.bits}.")
            object.__setattr__(self, "layer_bits", LayerBits(self.layer_bits))

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
    def lbfp_activation_format(self) -> LBFPFormat:
        """lbfp_format with the activations' block size (lbfp_activation_block_size)."""
        return dataclasses.replace(self.lbfp_format,
                                   block_size=self.lbfp_activation_block_size)

    @property
    def lbfp_exponents(self) -> str:
        """How LBFP block exponents are chosen: "kl" or "max" (observer "minmax")."""
        return "kl" if self.observer == "kl" else "max"

    @property
    def label(self) -> str:
        """Short name from the fields that apply to the scheme: scheme, LBFP format, mixed
        search, weight width, requant, observer, learned rounding, boosters; e.g. 'int8
        mult_shift/double minmax', 'lbfp8 f3 b16 kl', 'mixed w,a 4/8 75% cycles fp32 minmax',
        'int8 w4 mult_shift/double minmax adaround', 'int8 fp32 minmax cle ba bc'."""
        words = [self.scheme]
        if applies("lbfp_frac_bits", self.scheme):
            fmt = self.lbfp_format
            words.append(f"f{fmt.frac_bits} b{fmt.block_size}")
            if self.lbfp_activation_block_size != 1:
                words.append(f"ab{self.lbfp_activation_block_size}")
        if applies("bits", self.scheme):
            search = ("fixed" if self.layer_bits is not None
                      else f"{100 * self.latency_budget:g}% cycles")
            words.append(f"w,a {'/'.join(map(str, self.bits))} {search}")
        if applies("weight_bits", self.scheme) and self.weight_bits != 8:
            words.append(f"w{self.weight_bits}")
        if applies("requant", self.scheme):
            words.append(self.requant if self.requant == "fp32"
                         else f"{self.requant}/{self.rounding}")
        words.append(self.observer)
        if applies("weight_rounding", self.scheme) and self.weight_rounding != "nearest":
            words.append(self.weight_rounding)
        words += [word for word, on in (("cle", self.equalize), ("ba", self.bias_absorption))
                  if on]
        if applies("bias_correction", self.scheme) and not self.bias_correction:
            words.append("no-bc")  # on by default
        return " ".join(words)

    @property
    def corrects_biases(self) -> bool:
        """Whether bias correction runs: `bias_correction` under a scheme it applies to."""
        return self.bias_correction and applies("bias_correction", self.scheme)

    def to_dict(self) -> dict:
        """Every field by name, JSON-serializable: layer_bits as {name: [w_bits, a_bits]}.
        `QuantConfig(**cfg.to_dict()) == cfg`."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.layer_bits is not None:
            out["layer_bits"] = {name: list(pair) for name, pair in self.layer_bits.items()}
        out["keep_float"] = list(self.keep_float)
        return out


DEFAULTS = {f.name: f.default for f in fields(QuantConfig)}


def _is_default(field: str, value) -> bool:
    """Whether `value` is the field's default (a list compares as a tuple: bits=[4, 8])."""
    if isinstance(value, list):
        value = tuple(value)
    return value == DEFAULTS[field]


def _fields_by_scheme() -> str:
    """The docstring's table: one line per group of schemes, the fields that apply to it."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for field, schemes in FIELD_SCHEMES.items():
        groups.setdefault(schemes, []).append(field)
    names = {SCHEMES: "every scheme"}
    return "\n    ".join(f"- {names.get(s, ', '.join(s))}: {', '.join(f)}"
                         for s, f in groups.items())


QuantConfig.__doc__ = QuantConfig.__doc__.replace("FIELDS_BY_SCHEME", _fields_by_scheme())
