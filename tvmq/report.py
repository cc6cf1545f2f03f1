"""Per-layer quantization report: a table for people, a dict for report.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """10 log10(sum(ref^2) / sum((ref - approx)^2)); inf when equal."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum((ref - np.asarray(approx, np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


@dataclass
class LayerRow:
    name: str
    op: str
    shape: tuple[int, ...]
    bits: int
    in_scale: float | None = None  # int8 schemes
    out_scale: float | None = None
    out_zero_point: int | None = None
    weight_scale: tuple[float, float] | None = None  # (min, max) over channels
    out_exponents: tuple[int, int] | None = None  # LBFP schemes: (min, max) block exponent
    weight_exponents: tuple[int, int] | None = None
    w_bits: int | None = None  # mixed precision: weight and input activation widths
    a_bits: int | None = None
    sqnr_db: float | None = None
    cycles: int | None = None  # accel target: emulated cycles per inference
    macs: int | None = None
    utilization: float | None = None  # macs / (cycles * PE count)


@dataclass
class Report:
    """What was quantized and how well: `print(report)` shows the table."""

    model: str
    target: str
    config: dict
    layers: list[LayerRow] = field(default_factory=list)
    float_ops: list[str] = field(default_factory=list)
    output_sqnr_db: float | None = None  # the worst model output's
    outputs_sqnr_db: dict[str, float] | None = None  # each model output's, by name, in order
    sqnr_samples: int | None = None  # calibration samples the SQNR columns are measured on,
    sqnr_held_back: bool | None = None  # held back from setting the ranges (else observed too)
    compile_seconds: float | None = None
    timings: dict[str, float] | None = None  # seconds per compile phase (tvmq.timings)
    accel: dict | None = None  # config, cycles, latency_us, host_layers {layer: why}
    mixed: dict | None = None  # mixed precision: tvmq.mixed.assign.MixedPlan.summary()
    mcu: dict | None = None  # target "mcu": tvmq.targets.mcu.McuBuild.summary()
    fallback: dict | None = None  # compile(max_drop=...): tvmq.fallback.Fallback.summary()
    bias_correction: dict | None = None  # tvmq.boosters.bias_correction.BiasCorrection.summary()

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        layers = [LayerRow(**{**row, "shape": tuple(row["shape"])}) for row in d.get("layers", [])]
        for row in layers:
            for name in ("weight_scale", "out_exponents", "weight_exponents"):
                if getattr(row, name) is not None:
                    setattr(row, name, tuple(getattr(row, name)))
        return cls(**{**d, "layers": layers})

    def __str__(self) -> str:
        lbfp = any(r.out_exponents is not None for r in self.layers)
        head = ("layer", "op", "shape", "bits", "in scale", "out scale (zp)", "w scale min..max",
                "SQNR dB")
        if lbfp:
            head = ("layer", "op", "shape", "bits", "out exp min..max", "w exp min..max",
                    "SQNR dB")
        on_accel = any(r.cycles is not None for r in self.layers)
        if on_accel:
            head = (*head, "cycles", "MACs", "util")
        rows = [head]
        for r in self.layers:
            shape = "x".join(map(str, r.shape))
            if lbfp:
                row = (r.name, r.op, shape, str(r.bits), "{}..{}".format(*r.out_exponents),
                       "{}..{}".format(*r.weight_exponents), _fmt_db(r.sqnr_db))
            else:
                w = "" if r.weight_scale is None else "{:.2e}..{:.2e}".format(*r.weight_scale)
                row = (r.name, r.op, shape, _bits(r), f"{r.in_scale:.3e}",
                       f"{r.out_scale:.3e} ({r.out_zero_point})", w, _fmt_db(r.sqnr_db))
            if on_accel:
                row = (*row, *(("-",) * 3 if r.cycles is None else
                               (str(r.cycles), str(r.macs), f"{100 * r.utilization:.0f}%")))
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = [f"tvmq report: {self.model} -> {self.target} [{_label(self.config)}]"]
        for i, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(f"output SQNR vs float: {_fmt_db(self.output_sqnr_db)} dB")
        several = self.outputs_sqnr_db is not None and len(self.outputs_sqnr_db) > 1
        if several:
            lines[-1] += f" (the worst of {len(self.outputs_sqnr_db)} outputs)"
        if self.sqnr_samples:
            lines[-1] += (f" on {self.sqnr_samples} held-back calibration samples (not used to "
                          "set ranges)" if self.sqnr_held_back else
                          f" on {self.sqnr_samples} calibration samples that also set the ranges "
                          "(too few to hold any back)")
        if several:
            lines += [f"  output {name}: {_fmt_db(db)} dB"
                      for name, db in self.outputs_sqnr_db.items()]
        lines.append("float ops (not quantized): " + (", ".join(self.float_ops) or "none"))
        if self.fallback is not None:
            f = self.fallback
            verdict = "met" if f["met"] else "NOT met"
            lines.append(
                f"fallback: {f['metric']} {f['final']:.4g} (float {f['float_value']:.4g}, "
                f"plain {f['start']:.4g}, allowed drop {f['max_drop']:g}: {verdict}); "
                f"{len(f['raised'])} layer(s) raised to float"
                + (f": {', '.join(f['raised'])} ({f['macs']} MACs, {f['weight_bytes']} weight "
                   "bytes in float32" + ("" if f["accel_cycles"] is None else
                                          f", {f['accel_cycles']} accelerator cycles") + ")"
                   if f["raised"] else ""))
        if self.bias_correction is not None and not self.bias_correction["layers"]:
            lines.append("bias correction: no layer to correct (each conv/matmul is a head)")
        elif self.bias_correction is not None:
            b = self.bias_correction
            sim = b["simulated_sqnr_db"]
            change = f"{_fmt_db(sim['before'])} -> {_fmt_db(sim['after'])} dB"
            lines.append(
                f"bias correction: {b['layers']} layer(s), simulated output SQNR on its "
                f"samples {change}: " + ("kept" if b["kept"] else "dropped (it did not raise "
                                         "the SQNR; bias_correction=False skips it)"))
        if self.accel is not None:
            hw = self.accel["config"]
            pes = f"{hw['t_oc']}x{hw['t_ic']} PEs"
            lines.append(
                f"accelerator {hw['name']} ({pes}, {hw['clock_mhz']:g} MHz):"
                f" {self.accel['cycles']} cycles = {self.accel['latency_us']:.1f} us per inference"
                f" for the conv/matmul layers; other ops run on the host")
            for layer, why in self.accel["host_layers"].items():
                lines.append(f"  {layer} runs on the host: {why}")
        if self.mixed is not None and "predicted_cycles" in self.mixed:
            m = self.mixed
            lines.append(
                f"mixed precision: predicted {m['predicted_cycles']:,.0f} cycles = "
                f"{m['predicted_cycles'] / max(m['uniform_int8_cycles'], 1):.1%} of uniform "
                f"INT8 ({m['uniform_int8_cycles']:,.0f}); program solved in "
                f"{m.get('solve_seconds', 0):.3f} s")
            sim = m.get("simulated_sqnr_db")
            if sim:
                lines.append(
                    f"  output SQNR simulated on the sensitivity samples: INT8 "
                    f"{_fmt_db(sim['int8'])} dB, this plan {_fmt_db(sim['plan'])} dB"
                    + (" (more than 3 dB lost: a larger latency_budget keeps more accuracy)"
                       if sim["int8"] - sim["plan"] > 3.0 else ""))
        if self.mcu is not None:
            m = self.mcu
            lines.append(
                f"mcu: arena {m['arena_bytes']:,} B (peak live {m['peak_live_bytes']:,} B, "
                f"largest live pair {m['largest_pair_bytes']:,} B, no reuse "
                f"{m['no_reuse_bytes']:,} B) + workspace {m['workspace_bytes']:,} B; constant "
                f"tables {m['const_bytes']:,} B; {m['kernels']} kernels, {m['steps']} steps")
        if self.compile_seconds is not None:
            lines.append(f"compile time: {self.compile_seconds:.1f} s")
        return "\n".join(lines)


def _bits(r: LayerRow) -> str:
    """'8', or 'w4a8' for a mixed-precision conv2d/matmul (weight and input widths)."""
    return str(r.bits) if r.w_bits is None else f"w{r.w_bits}a{r.a_bits}"


def _fmt_db(v: float | None) -> str:
    return "-" if v is None else ("inf" if np.isinf(v) else f"{v:.1f}")


def _label(config: dict) -> str:
    if config["scheme"].startswith("lbfp"):
        frac = config.get("lbfp_frac_bits")
        frac = "default" if frac is None else frac
        block = config.get("lbfp_block_size")
        act_block = config.get("lbfp_activation_block_size", block)  # older reports: one size
        return (f"{config['scheme']} frac_bits {frac}, block {block}, activation block "
                f"{act_block}, exponents {config['observer']}")
    rq = config["requant"] if config["requant"] == "fp32" else \
        f"{config['requant']}/{config['rounding']}"
    if config["scheme"] == "mixed":
        widths = "/".join(map(str, config["bits"]))
        how = ("fixed layer_bits" if config.get("layer_bits") is not None
               else f"latency budget {config['latency_budget']:g}")
        return f"mixed {widths} bits, {how}, {rq}, observer {config['observer']}"
    return f"{config['scheme']} {rq}, observer {config['observer']}"
