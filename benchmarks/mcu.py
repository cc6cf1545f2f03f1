"""Microcontroller benchmark: bit-exactness, flash, RAM, instructions per inference.

Run from the repository root::

    python benchmarks/mcu.py [--models digits,digits_mixed,digits_w4,ppocr_cls] [--check N]
                             [--m4-samples N] [--json PATH]

For each model: compile with ``target="mcu"`` (INT8, mult/shift double rounding; digits_mixed:
scheme "mixed" at 75% of uniform-INT8 accelerator cycles; digits_w4: every conv/matmul at 4-bit
weights, stored two per byte; PP-OCR's hard-swish islands and softmax run as float C kernels:
``McuConfig(allow_float=True)``), export the C project, then

1. bit-exact: the exported C built with the host gcc (-Wall -Wextra -Werror) on ``--check``
   inputs against the host build (llvm) and the NumPy oracle; the same C for Cortex-M4
   (arm-none-eabi-gcc, newlib) on qemu ``mps2-an386`` against the host C, on ``--m4-samples``
   inputs;
2. sizes: flash (.text + .rodata + .data load copy) and RAM (.data + .bss + stack) from
   arm-none-eabi-size; the arena next to the most bytes live at one step, the two largest
   tensors live together (goal: arena <= 1.2x that pair) and every activation in its own buffer;
   weight bytes per parameter;
3. speed: instructions per ``tvmq_model_run`` on qemu (``-icount shift=0``: one instruction per
   ns of virtual time, read with SysTick at 25 MHz, so +-40 instructions), and host C time per
   inference next to the host build's.

The rows and the run's environment go to ``benchmarks/results/mcu.json`` (``--json PATH``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_json_argument, tvm_pool_threads, write_results
from models import fetch_model
from textlines import CLS_IMAGE_SHAPE, make_cls_dataset
from tvmq.targets import mcu

import tvmq
from tvmq.data import digits_model_path, load_digits

DIGITS_MACS = ("conv2d_0", "conv2d_1", "conv2d_2", "conv2d_4", "conv2d_5", "matmul_11")


def _digits(n_check, config=None):
    x_calib, x_test, _ = load_digits()
    return digits_model_path(), None, x_calib[:64], x_test[:n_check], config


def _ppocr_cls(n_check):
    x_calib, _ = make_cls_dataset(16, seed=1)
    x_test, _ = make_cls_dataset(n_check, seed=0)
    return fetch_model("ppocr_cls"), (1, *CLS_IMAGE_SHAPE), x_calib, x_test, None


MODELS = {  # name -> (model, input shape, calibration, test inputs, QuantConfig)
    "digits": _digits,
    # mixed precision at 75% of uniform-INT8 accelerator cycles (the ILP's choice)
    "digits_mixed": lambda n: _digits(n, tvmq.QuantConfig(scheme="mixed", latency_budget=0.75)),
    # every conv/matmul at 4-bit weights: weights packed two per byte
    "digits_w4": lambda n: _digits(n, tvmq.QuantConfig(
        scheme="mixed", layer_bits={name: (4, 8) for name in DIGITS_MACS})),
    "ppocr_cls": _ppocr_cls,
}


def bench(name, n_check, m4_samples, work: Path) -> dict:
    path, shape, x_calib, x_test, quant = MODELS[name](n_check)
    config = tvmq.McuConfig(ram_bytes=None, flash_bytes=None, allow_float=True)
    t0 = time.perf_counter()
    cm = tvmq.compile(path, target="mcu", config=quant, calib=x_calib, input_shape=shape,
                      mcu=config, progress=False)
    compile_s = time.perf_counter() - t0
    project = cm.export(work / name, samples=x_test[:m4_samples])
    row = {"model": name, "compile_s": compile_s, "float_ops": len(cm.report().float_ops)}

    t0 = time.perf_counter()
    mcu.build_host(project)
    row["gcc_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    host_c = mcu.run_host(project, x_test)
    row["host_c_ms"] = 1e3 * (time.perf_counter() - t0) / len(x_test)  # includes process start
    t0 = time.perf_counter()
    host = [cm.run(x[None]).reshape(-1) for x in x_test]
    row["host_ms"] = 1e3 * (time.perf_counter() - t0) / len(x_test)
    oracle = cm.oracle()
    row["c_eq_host"] = sum(np.array_equal(y, h) for (_, y), h in zip(host_c, host))
    row["c_eq_oracle"] = sum(np.array_equal(y, oracle.run(x[None]).reshape(-1))
                             for (_, y), x in zip(host_c, x_test))
    row["checked"] = len(x_test)

    if shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"):
        elf = mcu.build_m4(project)
        t0 = time.perf_counter()
        m4, instructions = mcu.run_qemu(project)
        row["qemu_s"] = time.perf_counter() - t0
        row["m4_eq_c"] = sum(np.array_equal(a[0], b[0]) and np.array_equal(
            a[1].view(np.uint32), b[1].view(np.uint32)) for a, b in zip(m4, host_c))
        row["m4_checked"] = len(m4)
        row["instructions"] = int(np.median(instructions))
        row.update(mcu.m4_sizes(elf))
    summary = cm.mcu.summary()
    row.update(summary)
    weights = summary["weights"]
    row["weight_params"] = weights["int8_params"] + weights["int4_params"]
    row["weight_bytes"] = weights["bytes"]
    return row


def print_tables(rows: list[dict]) -> None:
    print("\n== bit-exact (exported C) ==")
    print(f"{'model':<12} {'host C == host build':>21} {'host C == oracle':>17} "
          f"{'Cortex-M4 (qemu) == host C':>27} {'float ops':>10}")
    for r in rows:
        m4 = f"{r['m4_eq_c']}/{r['m4_checked']}" if "m4_eq_c" in r else "no toolchain"
        print(f"{r['model']:<12} {r['c_eq_host']:>17}/{r['checked']:<3} "
              f"{r['c_eq_oracle']:>13}/{r['checked']:<3} {m4:>27} {r['float_ops']:>10}")
    print("\n== memory (bytes) ==")
    print(f"{'model':<12} {'arena':>9} {'peak live':>10} {'live pair':>10} {'arena/pair':>11} "
          f"{'no reuse':>10} {'workspace':>10} {'weights B/param':>16}")
    for r in rows:
        print(f"{r['model']:<12} {r['arena_bytes']:>9,} {r['peak_live_bytes']:>10,} "
              f"{r['largest_pair_bytes']:>10,} "
              f"{r['arena_bytes'] / max(1, r['largest_pair_bytes']):>10.2f}x "
              f"{r['no_reuse_bytes']:>10,} {r['workspace_bytes']:>10,} "
              f"{r['weight_bytes'] / max(1, r['weight_params']):>10.2f} "
              f"({r['weight_params']:,})")
    print("\n== Cortex-M4 image (arm-none-eabi-size) and speed ==")
    print("flash: .text + .rodata + .data without the harness's test inputs; RAM: .data + .bss"
          " + stack")
    print(f"{'model':<12} {'flash':>9} {'(.text':>8} {'.rodata)':>9} {'RAM':>9} {'(.bss':>8} "
          f"{'stack)':>7} {'instr/inference':>16} {'host C ms':>10} {'host build ms':>14}")
    for r in rows:
        if "flash" not in r:
            print(f"{r['model']:<12} (no arm-none-eabi-gcc / qemu)")
            continue
        print(f"{r['model']:<12} {r['model_flash']:>9,} {r['text']:>8,} "
              f"{r['rodata'] - r['test_inputs']:>9,} "
              f"{r['ram']:>9,} {r['bss']:>8,} {r['stack']:>7,} {r['instructions']:>16,} "
              f"{r['host_c_ms']:>10.2f} {r['host_ms']:>14.2f}")
    print("\n== time ==")
    for r in rows:
        qemu = f", qemu run {r['qemu_s']:.1f} s" if "qemu_s" in r else ""
        print(f"{r['model']}: compile {r['compile_s']:.1f} s, host gcc {r['gcc_s']:.1f} s{qemu}; "
              f"{r['kernels']} kernels, {r['steps']} steps")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,digits_mixed,digits_w4,ppocr_cls")
    parser.add_argument("--check", type=int, default=50, help="inputs checked on the host")
    parser.add_argument("--m4-samples", type=int, default=4, help="inputs run on qemu")
    add_json_argument(parser, "mcu")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"[{name}] compiling and checking ...", flush=True)
            rows.append(bench(name, args.check, args.m4_samples, Path(tmp)))
    print_tables(rows)
    ok = all(r["c_eq_host"] == r["checked"] == r["c_eq_oracle"] and
             r.get("m4_eq_c", 0) == r.get("m4_checked", 0) for r in rows)
    # The exported C runs single-threaded (host and qemu); the host build in TVM's pool.
    path = write_results(args.json, "mcu", {"rows": rows, "all_equal": ok}, argv=argv,
                         threads={"tvm": tvm_pool_threads(), "exported_c": 1})
    print(f"wrote {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
