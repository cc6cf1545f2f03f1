"""The quantization debugger: where a compiled model's error comes from, layer by layer.

For each quantized layer L (its output tensor) on a few samples:

- **cumulative SQNR**: the compiled model's output of L (host build, whole model quantized)
  against the float model's value of L;
- **isolated SQNR**: L alone quantized, every other layer float: the oracle runs the integer
  model with each layer's input replaced by its float value (quantized with the layer's own
  input qparams where it reads integers), so L's error is only its own (input quantization,
  weight rounding, requant, output rounding and clipping);
- **range** (integer schemes): the float interval its output qparams represent, against the
  values L took in float: `clipped %`, the share of values outside it, and `outliers`,
  max |x| / (99.9th percentile of |x|) (large: a few values set the step for all).

    10 log10(sum(ref^2) / sum((ref - approx)^2))    (tvmq.report.sqnr_db)

Ranked worst isolated SQNR first: a layer with low isolated SQNR is a root cause; one whose
cumulative SQNR is low but isolated high only inherits its inputs' error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .batch import check_input, output_fields
from .boosters.activations import float_run
from .compiler import TAPS_FUNCTION
from .layers import tensor_names
from .report import sqnr_db

TOP = 20  # rows the table shows by default
OUTLIER_PERCENTILE = 99.9


@dataclass(frozen=True)
class LayerError:
    """One layer's error (see the module docstring); range fields are None under LBFP."""

    index: int  # position in graph order
    name: str
    op: str
    isolated_db: float
    cumulative_db: float
    range_lo: float | None
    range_hi: float | None
    seen_lo: float
    seen_hi: float
    clipped: float | None  # share of float values outside [range_lo, range_hi]
    outliers: float  # max |x| / percentile(|x|, 99.9)


@dataclass(frozen=True)
class DebugReport:
    """What `CompiledModel.debug` found: `layers` in graph order; `ranked()` worst first."""

    model: str
    samples: int
    layers: tuple[LayerError, ...]
    outputs_db: dict[str, float]  # each model output's SQNR, whole model quantized

    def ranked(self) -> list[LayerError]:
        """Layers by isolated SQNR, worst first (ties: lower cumulative first)."""
        return sorted(self.layers, key=lambda r: (r.isolated_db, r.cumulative_db, r.index))

    def worst(self, n: int = 5) -> list[str]:
        return [r.name for r in self.ranked()[:n]]

    def to_dict(self) -> dict:
        return {"model": self.model, "samples": self.samples, "outputs_db": self.outputs_db,
                "layers": [asdict(r) for r in self.layers]}

    def table(self, top: int = TOP) -> str:
        head = ("#", "layer", "op", "isolated dB", "cumul. dB", "range", "seen",
                "clipped %", "outliers")
        rows = [head]
        for r in self.ranked()[:top]:
            rng = "" if r.range_lo is None else f"{r.range_lo:.3g}..{r.range_hi:.3g}"
            clipped = "" if r.clipped is None else f"{100 * r.clipped:.2f}"
            rows.append((str(r.index), r.name, r.op, _db(r.isolated_db), _db(r.cumulative_db),
                         rng, f"{r.seen_lo:.3g}..{r.seen_hi:.3g}", clipped,
                         f"{r.outliers:.1f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [f"tvmq debug: {self.model}, {self.samples} sample"
                 f"{'s' * (self.samples != 1)}; layers by isolated SQNR, worst first "
                 f"({min(top, len(self.layers))} of {len(self.layers)})"]
        for i, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines += [f"output {name}: {_db(db)} dB" for name, db in self.outputs_db.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, ax=None, label: int = 5):
        """Cumulative and isolated SQNR along the graph (matplotlib), the `label` worst
        layers named. Returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(10, 3.5))
        index = [r.index for r in self.layers]
        ax.plot(index, [_finite(r.cumulative_db) for r in self.layers], label="cumulative")
        ax.plot(index, [_finite(r.isolated_db) for r in self.layers], ".", label="isolated")
        for r in self.ranked()[:label]:
            ax.annotate(r.name, (r.index, _finite(r.isolated_db)), fontsize=8,
                        textcoords="offset points", xytext=(3, -10))
        ax.set_xlabel("layer (graph order)")
        ax.set_ylabel("SQNR vs float (dB)")
        ax.set_title(f"{self.model}: quantization error by layer")
        ax.legend()
        return ax


def debug(cm, x: np.ndarray, n: int = 4) -> DebugReport:
    """DebugReport of CompiledModel `cm` on the first `n` samples of `x` (see module doc)."""
    if n < 1:
        raise ValueError(f"debug n={n}: use at least one sample (n >= 1).")
    x = check_input(x, cm.input.shape)
    samples = [x] if x.shape == cm.input.shape else [s[None] for s in x[:n]]
    layers = cm.layers
    names = tensor_names(list(layers))
    float_outputs, ref = float_run(cm.float_mod, names, samples)
    compiled = [cm.host.run(s, TAPS_FUNCTION) for s in samples]
    oracle = cm.oracle()
    isolated: dict[str, list[np.ndarray]] = {layer.name: [] for layer in layers}
    for i, s in enumerate(samples):
        substitute = {name: ref[name][i] for name in names if name != cm.input.name}
        substitute.update({f"{layer.name}_q": cm.encoders[layer.name](ref[layer.name][i])
                           for layer in layers})
        _, named = oracle.run(s, keep=True, substitute=substitute)
        for layer in layers:
            isolated[layer.name].append(cm.decoders[layer.name](named[f"{layer.name}_q"]))
    rows = []
    for i, layer in enumerate(layers):
        values = np.stack(ref[layer.name])
        cumulative = np.stack([cm.decoders[layer.name](out[1 + i]) for out in compiled])
        rows.append(_row(i, layer, values, np.stack(isolated[layer.name]), cumulative,
                         _range(cm, layer)))
    got = [output_fields(out[0]) for out in compiled]
    outputs_db = {o.name: sqnr_db(np.stack([r[k] for r in float_outputs]),
                                  np.stack([g[k] for g in got]))
                  for k, o in enumerate(cm.outputs)}
    return DebugReport(cm.name, len(samples), tuple(rows), outputs_db)


def _range(cm, layer) -> tuple[float, float] | None:
    """The float interval layer's output qparams represent (integer schemes), else None."""
    decode = cm.decoders[layer.name]
    qp = cm.act_qparams.get(layer.name)
    if not hasattr(qp, "qmin"):  # LBFP: per-channel exponents
        return None
    if qp.axis is None:
        ends = decode(np.array([qp.qmin, qp.qmax], qp.dtype))
        return float(ends[0]), float(ends[1])
    ends = (np.array([qp.qmin, qp.qmax])[:, None] - qp.zero_point) * qp.scale  # per channel
    return float(ends[0].min()), float(ends[1].max())


def _row(index, layer, values, isolated, cumulative, rng) -> LayerError:
    magnitude = np.abs(values.astype(np.float64))
    bulk = float(np.percentile(magnitude, OUTLIER_PERCENTILE))
    peak = float(magnitude.max(initial=0.0))
    outliers = peak / bulk if bulk > 0 else (1.0 if peak == 0 else math.inf)
    clipped = None
    if rng is not None:
        clipped = float(np.mean((values < rng[0]) | (values > rng[1])))
    return LayerError(index, layer.name, layer.kind, sqnr_db(values, isolated),
                      sqnr_db(values, cumulative), None if rng is None else rng[0],
                      None if rng is None else rng[1], float(values.min()), float(values.max()),
                      clipped, outliers)


def _finite(db: float) -> float:
    return 99.0 if db == math.inf else db


def _db(db: float) -> str:
    return "inf" if db == math.inf else f"{db:.1f}"
