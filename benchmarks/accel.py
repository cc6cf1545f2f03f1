"""Accelerator benchmark: bit-exactness, cycles, utilization, requant area vs accuracy, emulator
speed.

Run from the repository root::

    python benchmarks/accel.py [--models digits,ppocr_cls] [--quick] [--test N] [--check N]
                               [--json PATH]

For each model, each requant option (mult_shift with double / single / tonearest rounding, fp32;
minmax observer) is compiled once for the host. Then:

1. bit-exact: the realized model is lowered to the accelerator (npu-mid with t_oc in 4, 16, 64),
   built, and its output on ``--check`` inputs compared with the NumPy oracle bit for bit; the
   table shows the emulated cycles of one inference beside it.
2. presets: the default option on npu-small and npu-mid: cycles, latency at the preset clock,
   MAC-array utilization (MACs / (cycles * t_oc * t_ic)) per layer and in total, and the layers
   left on the host with the reason.
3. requant area vs accuracy (``tvmq hw-report``): the requant units' estimated area for t_oc in
   4..64 next to each option's top-1 on the test set (host == accel, so one evaluation each).
4. emulator speed: the model's largest conv run alone through ``accel_conv2d_tile`` (the call
   the compiled tile loop makes), in emulated int8 MACs per second of wall time (target: 200 M/s
   on one core for the bundled model), and whole inferences on the accel and host targets side
   by side (ratio beside the absolute times: this machine is shared and noisy).
5. LBFP MAC mode: the model compiled with ``scheme="lbfp8"`` and ``"lbfp4"``, lowered to the
   emulator's LBFP mode (npu-mid, t_oc 4/16/64) and compared with the oracle bit for bit; cycles
   on both presets next to INT8's (exponent bytes add to the weight DMA); top-1; and the
   multiplier's estimated area next to the INT8 multiplier's (the paper: 45% smaller).

Every section's rows and the run's environment go to ``benchmarks/results/accel.json``
(``--json PATH``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    add_json_argument,
    format_table,
    seconds_per_call,
    tvm_pool_threads,
    write_results,
)
from models import fetch_model
from textlines import CLS_IMAGE_SHAPE, make_cls_dataset
from tqdm import tqdm
from tvm import relax
from tvmq.targets.accel import area, preset
from tvmq.targets.accel.c_api import DESC_FIELDS
from tvmq.targets.accel.int8_unit import tile_runner
from tvmq.targets.accel.lower import AccelRuntime, LowerToAccel
from tvmq.targets.host import build

import tvmq
from tvmq.data import digits_model_path, load_digits
from tvmq.hw_report import HwReport, RequantResult

T_OCS_CHECKED = (4, 16, 64)
T_OCS_AREA = (4, 8, 16, 32, 64)
OPTIONS = area.KINDS  # (requant, rounding)
SPEED_TARGET_MACS = 200e6


@dataclasses.dataclass
class Model:
    name: str
    path: Path
    input_shape: tuple[int, ...] | None
    x_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_models(names: list[str], quick: bool, n_test: int | None) -> list[Model]:
    out = []
    for name in names:
        if name == "digits":
            x_calib, x_test, y_test = load_digits()
            out.append(Model(name, digits_model_path(), None, x_calib, x_test, y_test))
        else:
            x_calib, _ = make_cls_dataset(16 if quick else 64, seed=1)
            x_test, y_test = make_cls_dataset(100 if quick else 400, seed=0)
            out.append(Model(name, fetch_model("ppocr_cls"), (1, *CLS_IMAGE_SHAPE), x_calib,
                             x_test, y_test))
        if n_test is not None:
            out[-1].x_test, out[-1].y_test = out[-1].x_test[:n_test], out[-1].y_test[:n_test]
    return out


def lower(cm, hw) -> tuple[AccelRuntime, object]:
    runtime = AccelRuntime(hw)
    return runtime, LowerToAccel(runtime)(cm.quant_mod)


def bit_exact_section(m: Model, compiled: dict, n_check: int) -> tuple[str, list[dict]]:
    """The table and its rows as dicts."""
    rows, records = [], []
    for (requant, rounding), cm in compiled.items():
        oracle = cm.oracle()
        want = [oracle.run(x[None]) for x in m.x_test[:n_check]]
        for t_oc in T_OCS_CHECKED:
            hw = dataclasses.replace(preset("npu-mid"), t_oc=t_oc, requant=requant,
                                     rounding=rounding)
            runtime, lowered = lower(cm, hw)
            module = build(lowered)
            same = sum(np.array_equal(module.run(x[None]), w)
                       for x, w in zip(m.x_test[:n_check], want))
            cycles = sum(c["cycles"] for c in
                         runtime.one_inference(module, m.x_test[:1]).values())
            rows.append([area.kind_label(requant, rounding), t_oc, f"{same}/{n_check}",
                         len(runtime.slots), len(runtime.host_layers), f"{cycles:,}"])
            records.append({"requant": area.kind_label(requant, rounding), "t_oc": t_oc,
                            "equal": same, "checked": n_check,
                            "accel layers": len(runtime.slots),
                            "host layers": len(runtime.host_layers), "cycles": cycles})
    return (f"{m.name}: accel (npu-mid, t_oc varied) == NumPy oracle, bit for bit\n"
            + format_table(["requant", "t_oc", "equal", "accel layers", "host layers", "cycles"],
                           rows)), records


def presets_section(m: Model, cm) -> tuple[str, dict]:
    """The per-preset layer tables; per preset its totals, layers and host layers."""
    out, data = [], {}
    for name in ("npu-small", "npu-mid"):
        hw = dataclasses.replace(preset(name), requant=cm.config.requant,
                                 rounding=cm.config.rounding)
        runtime, lowered = lower(cm, hw)
        counters = runtime.one_inference(build(lowered), m.x_test[:1])
        rows = []
        for layer, c in counters.items():
            util = c["macs"] / (c["cycles"] * hw.macs_per_cycle)
            rows.append([layer, c["tiles"], f"{c['macs']:,}", f"{c['cycles']:,}",
                         f"{c['compute_cycles']:,}", f"{c['dma_cycles']:,}",
                         f"{c['dma_bytes']:,}", f"{util:.0%}"])
        macs = sum(c["macs"] for c in counters.values())
        cycles = sum(c["cycles"] for c in counters.values())
        rows.append(["total", sum(c["tiles"] for c in counters.values()), f"{macs:,}",
                     f"{cycles:,}", "", "", f"{sum(c['dma_bytes'] for c in counters.values()):,}",
                     f"{macs / (cycles * hw.macs_per_cycle):.0%}"])
        data[name] = {"t_oc": hw.t_oc, "t_ic": hw.t_ic, "clock_mhz": hw.clock_mhz,
                      "cycles": cycles, "us": cycles / hw.clock_mhz, "macs": macs,
                      "utilization": macs / (cycles * hw.macs_per_cycle),
                      "layers": counters, "host_layers": runtime.host_layers}
        lines = [f"{m.name} on {name} ({hw.t_oc}x{hw.t_ic} PEs, {hw.clock_mhz:g} MHz, "
                 f"{hw.dma_bytes_per_cycle} B/cycle DMA): {cycles:,} cycles = "
                 f"{cycles / hw.clock_mhz:,.1f} us per inference",
                 format_table(["layer", "tiles", "MACs", "cycles", "compute", "DMA", "DMA bytes",
                               "util"], rows, left=(0,))]
        lines += [f"  on the host: {layer}: {why}" for layer, why in runtime.host_layers.items()]
        out.append("\n".join(lines))
    return "\n\n".join(out), data


LBFP_SCHEMES = ("lbfp8", "lbfp4")


def lbfp_section(m: Model, int8, n_check: int) -> tuple[str, dict]:
    """The LBFP tables; their rows as dicts."""
    rows, records, models = [], [], {"int8": int8}
    for scheme in LBFP_SCHEMES:
        config = tvmq.QuantConfig(scheme=scheme, observer="minmax", sqnr_samples=0)
        models[scheme] = cm = tvmq.compile(m.path, config=config, calib=m.x_calib,
                                           input_shape=m.input_shape, progress=False)
        oracle = cm.oracle()
        want = [oracle.run(x[None]) for x in m.x_test[:n_check]]
        top1 = 100 * np.mean(np.concatenate([cm.run(x[None]) for x in m.x_test]).argmax(1)
                             == m.y_test)
        fmt = cm.config.lbfp_format
        mult = area.lbfp_multiplier_area(fmt.bits, fmt.frac_bits, fmt.lut_bits).total_um2
        for t_oc in T_OCS_CHECKED:
            runtime, lowered = lower(cm, dataclasses.replace(preset("npu-mid"), t_oc=t_oc))
            module = build(lowered)
            same = sum(np.array_equal(module.run(x[None]), w)
                       for x, w in zip(m.x_test[:n_check], want))
            cycles = sum(c["cycles"] for c in
                         runtime.one_inference(module, m.x_test[:1]).values())
            rows.append([cm.config.label, t_oc, f"{same}/{n_check}", len(runtime.slots),
                         len(runtime.host_layers), f"{cycles:,}", f"{top1:.2f}",
                         f"{mult:.0f}"])
            records.append({"config": cm.config.label, "t_oc": t_oc, "equal": same,
                            "checked": n_check, "accel layers": len(runtime.slots),
                            "host layers": len(runtime.host_layers), "cycles": cycles,
                            "top-1 %": top1, "mult um^2": mult})
    int8_top1 = 100 * np.mean(np.concatenate([int8.run(x[None]) for x in m.x_test]).argmax(1)
                              == m.y_test)
    presets, preset_records = [], []
    for name in ("npu-small", "npu-mid"):
        for label in ("int8", "lbfp8"):
            cm = models[label]
            hw = dataclasses.replace(preset(name), requant=int8.config.requant,
                                     rounding=int8.config.rounding)
            runtime, lowered = lower(cm, hw)
            counters = runtime.one_inference(build(lowered), m.x_test[:1])
            cycles = sum(c["cycles"] for c in counters.values())
            dma = sum(c["dma_bytes"] for c in counters.values())
            presets.append([name, label, len(runtime.slots), f"{cycles:,}",
                            f"{cycles / hw.clock_mhz:,.1f}", f"{dma:,}"])
            preset_records.append({"preset": name, "scheme": label,
                                   "accel layers": len(runtime.slots), "cycles": cycles,
                                   "us": cycles / hw.clock_mhz, "DMA bytes": dma})
    int8_mult = area.UNIT_AREAS["int_mult8"].value
    text = (f"{m.name}: LBFP MAC mode (npu-mid, t_oc varied) == NumPy oracle, bit for bit; "
            f"INT8 top-1 {int8_top1:.2f}%, INT8 multiplier {int8_mult:.0f} um^2\n"
            + format_table(["config", "t_oc", "equal", "accel layers", "host layers", "cycles",
                            "top-1 %", "mult um^2"], rows)
            + "\n\n"
            + format_table(["preset", "scheme", "accel layers", "cycles", "us", "DMA bytes"],
                           presets)
            + "\n(INT8 also runs average pooling on the accelerator; LBFP runs it in float on "
            "the host)")
    return text, {"int8 top-1 %": int8_top1, "int8 mult um^2": int8_mult, "rows": records,
                  "presets": preset_records}


def area_section(m: Model, compiled: dict) -> tuple[str, dict]:
    """The hw-report table; the float top-1 and its rows."""
    fp32 = build(tvmq.frontend.load_model(m.path, m.input_shape)[0])
    float_top1 = float(np.mean([fp32.run(x[None]).argmax() == y
                                for x, y in zip(m.x_test, m.y_test)]))
    results = []
    for (requant, rounding), cm in compiled.items():
        top = cm.run(m.x_test).reshape(len(m.x_test), -1).argmax(axis=1)
        results.append(RequantResult(requant, rounding, float(np.mean(top == m.y_test)),
                                     cm.report().output_sqnr_db))
    rep = HwReport(m.path.name, "top-1 accuracy", float_top1, tuple(results), T_OCS_AREA,
                   preset("npu-small").t_ic)
    return (f"{m.name}: requant area vs accuracy ({len(m.x_test)} test samples)\n{rep}",
            {"float top-1": float_top1, "rows": rep.rows()})


def speed_section(m: Model, cm) -> tuple[str, dict]:
    """The emulator speed lines; their figures."""
    hw = dataclasses.replace(preset("npu-small"), requant=cm.config.requant,
                             rounding=cm.config.rounding)
    runtime, lowered = lower(cm, hw)
    layer, args = largest_conv(lowered)
    desc = args["desc"]
    fields = dict(zip(DESC_FIELDS, desc.tolist()))
    x = np.random.default_rng(0).integers(-128, 128, args["x_shape"], dtype=np.int8)
    y = np.empty(args["y_shape"], np.int8)

    run_layer = tile_runner(desc, args["rq"], x, args["w"], args["bias"], y)
    accel_module, host_module, xs = build(lowered), cm.host, m.x_test[:1]
    macs = runtime.one_inference(accel_module, xs)[layer]["macs"]
    seconds = seconds_per_call(run_layer)
    accel_s = seconds_per_call(lambda: accel_module.run(xs))
    host_s = seconds_per_call(lambda: host_module.run(xs))
    rate = macs / seconds
    ok = "meets" if rate >= SPEED_TARGET_MACS else "misses"
    data = {"layer": layer, "macs": macs, "layer us": 1e6 * seconds, "MAC/s": rate,
            "target MAC/s": SPEED_TARGET_MACS, "accel ms": 1e3 * accel_s,
            "host ms": 1e3 * host_s, "accel/host": accel_s / host_s}
    text = "\n".join([
        f"{m.name}: emulator speed (one core, npu-small tiles of {fields['t_oc']})",
        f"  largest conv {layer}: {fields['C']}x{fields['H']}x{fields['W']} -> "
        f"{fields['O']}x{fields['OH']}x{fields['OW']}, {fields['KH']}x{fields['KW']}, "
        f"groups {fields['groups']}: {macs:,} MACs in {1e6 * seconds:.1f} us = "
        f"{rate / 1e6:,.0f} M int8 MAC/s ({ok} the {SPEED_TARGET_MACS / 1e6:.0f} M MAC/s target)",
        f"  whole inference: accel target {1e3 * accel_s:.3f} ms, host target "
        f"{1e3 * host_s:.3f} ms (accel / host = {accel_s / host_s:.2f}x)"])
    return text, data


def largest_conv(lowered):
    """(layer, its call_tir arguments) with the most MACs per the descriptors."""
    best = None
    for binding in (b for block in lowered["main"].body.blocks for b in block.bindings):
        value = binding.value
        if not (isinstance(value, relax.Call) and getattr(value.op, "name", "") == "relax.call_tir"
                and value.args[0].name_hint.startswith("accel_")):
            continue
        x, w, bias, rq, desc = value.args[1].fields
        d = dict(zip(DESC_FIELDS, desc.value.numpy().tolist()))
        macs = d["O"] * d["OH"] * d["OW"] * d["C"] // d["groups"] * d["KH"] * d["KW"]
        if best is None or macs > best[0]:
            args = dict(x_shape=[int(s) for s in x.ty.shape], w=w.value.numpy(),
                        bias=bias.value.numpy(), rq=rq.value.numpy(), desc=desc.value.numpy(),
                        y_shape=[int(s) for s in binding.var.ty.shape])
            best = (macs, value.args[0].name_hint.removeprefix("accel_"), args)
    return best[1], best[2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,ppocr_cls",
                        help="comma-separated: digits, ppocr_cls (default both)")
    parser.add_argument("--quick", action="store_true", help="fewer PP-OCR lines")
    parser.add_argument("--test", type=int, help="test samples per model")
    parser.add_argument("--check", type=int, default=8,
                        help="inputs compared with the oracle per (option, t_oc) (default 8)")
    add_json_argument(parser, "accel")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results: dict = {"models": {}}
    for m in load_models(args.models.split(","), args.quick, args.test):
        compiled = {}
        for requant, rounding in tqdm(OPTIONS, desc=f"{m.name}: compile", unit="option",
                                      file=sys.stderr, leave=False):
            config = tvmq.QuantConfig(requant=requant, rounding=rounding or "double",
                                      sqnr_samples=8)
            compiled[(requant, rounding)] = tvmq.compile(
                m.path, config=config, calib=m.x_calib, input_shape=m.input_shape,
                progress=False)
        default = compiled[OPTIONS[0]]
        print(f"\n{m.name}: compile {default.report().compile_seconds:.1f} s per option")
        data = results["models"][m.name] = {
            "compile s": default.report().compile_seconds, "test": len(m.x_test)}
        for key, section in (
                ("bit_exact", lambda: bit_exact_section(m, compiled, args.check)),
                ("presets", lambda: presets_section(m, default)),
                ("area", lambda: area_section(m, compiled)),
                ("emulator_speed", lambda: speed_section(m, default)),
                ("lbfp", lambda: lbfp_section(m, default, args.check))):
            text, data[key] = section()
            print()
            print(text)
    results["total_s"] = time.perf_counter() - start
    print(f"\nTotal benchmark time: {results['total_s']:.0f} s")
    path = write_results(args.json, "accel", results, argv=argv,
                         threads={"tvm": tvm_pool_threads(), "emulator": 1})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
