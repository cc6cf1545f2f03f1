"""The requant unit question of the accelerator: hardware size next to accuracy.

Each requant option (mult/shift with the double, single or tonearest rounding, or FP32) is one
compile of the model, evaluated once: tiling over output channels is exact (the accel target is
bit-exact with the host), so accuracy depends on the requant option, not on t_oc. The area of the
t_oc requant units and their parameter registers comes from the analytic model in
`tvmq.targets.accel.area`, next to the PE array's area for scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import QuantConfig
from .frontend import load_model
from .targets.accel import area
from .targets.host import build

T_OCS = (4, 8, 16, 32, 64)


@dataclass(frozen=True)
class RequantResult:
    """One requant option's accuracy: top-1 against labels (or agreement with FP32 argmax when
    there are no labels) and the output SQNR vs float on the calibration samples."""

    requant: str
    rounding: str | None
    top1: float
    output_sqnr_db: float | None

    @property
    def label(self) -> str:
        return area.kind_label(self.requant, self.rounding)


@dataclass(frozen=True)
class HwReport:
    """Accuracy per requant option and the area table over t_oc; `str()` is the table."""

    model: str
    metric: str  # "top-1 accuracy" or "top-1 agreement with FP32"
    float_top1: float
    results: tuple[RequantResult, ...]
    t_ocs: tuple[int, ...]
    t_ic: int

    def rows(self) -> list[dict]:
        """`area.area_table` rows with the option's top1 and its change vs FP32 added."""
        by_label = {r.label: r for r in self.results}
        rows = []
        for row in area.area_table(self.t_ocs, self.t_ic):
            result = by_label[row["requant"]]
            rows.append({**row, "top1": result.top1, "delta_top1": result.top1 - self.float_top1,
                         "output_sqnr_db": result.output_sqnr_db})
        return rows

    def __str__(self) -> str:
        head = ("t_oc", "requant", "requant um^2", "param bits", "share of datapath",
                self.metric, "vs FP32")
        body = [(str(r["t_oc"]), r["requant"], f"{r['requant_um2']:,.0f}",
                 str(r["register_bits"]), f"{r['requant_share']:.1%}", f"{100 * r['top1']:.2f}%",
                 f"{100 * r['delta_top1']:+.2f} pts") for r in self.rows()]
        widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
        lines = [f"tvmq hw-report: {self.model}, requant units per t_oc (t_ic={self.t_ic}); "
                 f"FP32 model {self.metric}: {100 * self.float_top1:.2f}%"]
        for i, line in enumerate((head, *body)):
            lines.append("  ".join(c.ljust(w) if j == 1 else c.rjust(w)
                                   for j, (c, w) in enumerate(zip(line, widths))).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("area: analytic 45 nm estimate (tvmq/targets/accel/area.py, sources cited "
                     "there); share of datapath = requant / (requant + PE array)")
        return "\n".join(lines)


def hw_report(model, calib, x_eval, y_eval=None, *, t_ocs=T_OCS, t_ic: int = 8,
              input_shape=None, observer: str = "minmax", progress: bool = True) -> HwReport:
    """Compile `model` once per requant option and evaluate it on `x_eval` (N, *input[1:]).

    With labels `y_eval` (N,) the metric is top-1 accuracy, else top-1 agreement with the float
    model. Raises ValueError for empty or mismatched evaluation data.
    """
    from .compiler import compile, model_name

    area.area_table(t_ocs, t_ic)  # bad t_oc / t_ic fail now, not after the compiles
    x_eval = np.asarray(x_eval, np.float32)
    if x_eval.ndim < 2 or len(x_eval) == 0:
        raise ValueError(f"x_eval has shape {x_eval.shape}: pass (N, *input_shape[1:]), N >= 1")
    if y_eval is not None and len(y_eval) != len(x_eval):
        raise ValueError(f"y_eval has {len(y_eval)} labels for {len(x_eval)} inputs")
    float_mod, _ = load_model(model, input_shape)
    fp32 = build(float_mod)
    float_top = np.array([fp32.run(x[None]).argmax() for x in x_eval])
    truth = float_top if y_eval is None else np.asarray(y_eval)
    results = []
    for requant, rounding in area.KINDS:
        config = QuantConfig(requant=requant, rounding=rounding or "double", observer=observer)
        cm = compile(model, config=config, calib=calib, input_shape=input_shape,
                     progress=progress)
        top = cm.run(x_eval).argmax(axis=1)
        results.append(RequantResult(requant, rounding, float((top == truth).mean()),
                                     cm.report().output_sqnr_db))
    metric = "top-1 accuracy" if y_eval is not None else "top-1 agreement with FP32"
    return HwReport(model_name(model), metric, float((float_top == truth).mean()),
                    tuple(results), tuple(t_ocs), t_ic)
