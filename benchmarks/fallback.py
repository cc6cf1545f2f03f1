"""Accuracy-aware fallback on a zoo model: `tvmq.compile(eval_fn=, max_drop=)` end to end.

Run from the repository root::

    python benchmarks/fallback.py [--model ppocr_v5_rec] [--max-drop 1.0] [--calib 16]
                                  [--test 200] [--config int8|w4a8] [--json PATH]

The task's test set (``benchmarks/tasks.py``) is split in two: the first half is the
validation set the search scores candidates on (``eval_fn``), the second half is held out and
scored once at the end, for the plain compile and for the fallback's, next to FP32. Prints the
search's steps (layers in float, validation metric, compile seconds), the raised layers and
their cost (MACs, float32 weight bytes), and writes them to
``benchmarks/results/fallback.json``.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import add_json_argument, format_table, positive_int, write_results
from ort_runner import run_onnxruntime
from tasks import LOADERS

import tvmq

CONFIGS = {"int8": tvmq.QuantConfig(), "w4a8": tvmq.QuantConfig(weight_bits=4)}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    task = LOADERS[args.model](args.calib, args.test)
    half = len(task.x_test) // 2
    x_val, y_val = task.x_test[:half], task.y_test[:half]
    x_hold, y_hold = task.x_test[half:], task.y_test[half:]

    def score(run, x, y) -> float:
        return task.metric([task.predict(run(s[None]))[0] for s in x], y)[0]

    def validation(run) -> float:
        return score(run, x_val, y_val)

    config = CONFIGS[args.config]
    common = dict(config=config, calib=task.x_calib, input_shape=task.input_shape,
                  progress=False)
    start = time.perf_counter()
    plain = tvmq.compile(str(task.model), **common)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    within = tvmq.compile(str(task.model), eval_fn=validation, max_drop=args.max_drop,
                          **common)
    search_s = time.perf_counter() - start
    fallback = within.report().fallback
    fp32 = score(lambda x: run_onnxruntime(task.reference, x)[0], x_hold, y_hold)
    held = {"fp32": fp32, "plain": score(plain.run, x_hold, y_hold),
            "fallback": score(within.run, x_hold, y_hold)}
    exact = within.verify(x_hold, n=4).ok

    print(f"{task.name} {args.config}, max drop {args.max_drop} points of {task.primary} on "
          f"{half} validation samples; {len(x_hold)} held out")
    print(format_table(("layers in float", f"validation {task.primary}", "compile s"),
                       [(s["float_layers"], f"{s['metric']:.2f}", f"{s['seconds']:.0f}")
                        for s in fallback["steps"]], left=()))
    print(f"float (validation): {fallback['float_value']:.2f}; met: {fallback['met']}; "
          f"raised: {', '.join(fallback['raised']) or 'none'}")
    print(f"cost: {fallback['macs']} MACs per inference off the integer path, "
          f"{fallback['weight_bytes']} bytes of float32 weights")
    print(format_table(("held out", task.primary),
                       [(k, f"{v:.2f}") for k, v in held.items()], left=(0,)))
    print(f"fallback model bit-exact with the oracle: {exact}; search {search_s:.0f} s "
          f"(plain compile {plain_s:.0f} s)")
    write_results(args.json, "fallback", {
        "model": task.name, "config": args.config, "max_drop": args.max_drop,
        "validation_samples": half, "held_out_samples": len(x_hold), "fallback": fallback,
        "held_out": held, "bit_exact": exact, "search_s": search_s, "plain_s": plain_s},
        argv=argv, threads={})
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ppocr_v5_rec", choices=list(LOADERS))
    parser.add_argument("--config", default="int8", choices=list(CONFIGS))
    parser.add_argument("--max-drop", type=float, default=1.0,
                        help="largest drop of the task's metric (points) accepted")
    parser.add_argument("--calib", type=positive_int, default=16, help="calibration samples")
    parser.add_argument("--test", type=positive_int, default=200,
                        help="test samples: half validation, half held out")
    add_json_argument(parser, "fallback")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
