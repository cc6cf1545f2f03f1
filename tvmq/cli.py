"""The `tvmq` command line: compile or tune a model, run the bundled demo, show a saved report."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .config import DEFAULTS, OBSERVERS, REQUANTS, ROUNDINGS, SCHEMES, WEIGHT_ROUNDINGS, QuantConfig
from .errors import CompileError
from .targets.accel import PRESETS
from .targets.target import names as target_names

EPILOG = """examples:
  tvmq demo
  tvmq compile model.onnx --calib calib.npz --requant fp32 --out build/model
  tvmq compile cls.onnx --input-shape 1,3,48,192 --calib lines.npz --observer kl --out build/cls
  tvmq compile model.onnx --calib calib.npz --scheme mixed --latency-budget 0.75 --target accel \
      --out build/mixed
  tvmq compile model.onnx --calib calib.npz --target mcu --ram-bytes 65536 --out build/mcu
  tvmq tune model.onnx --calib calib.npz --budget 300
  tvmq report build/model
  tvmq debug rec.onnx --input-shape 1,3,48,320 --calib lines.npz --eval test.npz --top 20
  tvmq hw-report
  tvmq hw-report cls.onnx --input-shape 1,3,48,192 --calib lines.npz --eval test.npz
"""


def _add_input_shape(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=_shape, metavar="1,C,H,W",
                   help="static input shape for models with symbolic dimensions (default: the "
                   "model's own)")


def _add_model_and_calib(p: argparse.ArgumentParser) -> None:
    """MODEL and --calib of the commands that compile as `tvmq compile` does."""
    p.add_argument("model", help="float ONNX model file")
    p.add_argument("--calib", required=True, metavar="DATA.npz",
                   help="calibration inputs, as for tvmq compile")


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    """The QuantConfig flags, with QuantConfig's own defaults: a flag left out never trips its
    check that fields fit the scheme (e.g. --latency-budget is for --scheme mixed only)."""
    g = p.add_argument_group("quantization (a flag for another --scheme is an error)")
    g.add_argument("--scheme", default=DEFAULTS["scheme"], choices=SCHEMES, help="number format")
    g.add_argument("--requant", default=DEFAULTS["requant"], choices=REQUANTS,
                   help="int8, mixed: int32 -> int8 rescaling: integer multiplier+shift or one "
                   "float32 multiply")
    g.add_argument("--rounding", default=DEFAULTS["rounding"], choices=ROUNDINGS,
                   help="int8, mixed with --requant mult_shift: gemmlowp double, CMSIS-NN "
                   "single, TVM tonearest")
    g.add_argument("--observer", default=DEFAULTS["observer"], choices=OBSERVERS,
                   help="activation range from calibration data (default minmax); LBFP block "
                   "exponents: minmax (default) or kl")
    g.add_argument("--lbfp-frac-bits", type=int, default=DEFAULTS["lbfp_frac_bits"],
                   help="LBFP fractional bits of the log code (default 4/2/1 for lbfp8/6/4)")
    g.add_argument("--lbfp-block-size", type=int, default=DEFAULTS["lbfp_block_size"],
                   help="LBFP weight elements sharing one exponent (default 16)")
    g.add_argument("--lbfp-activation-block-size", type=int,
                   default=DEFAULTS["lbfp_activation_block_size"],
                   help="LBFP activation channels sharing one exponent (default 1)")
    g.add_argument("--bits", type=_ints, default=DEFAULTS["bits"], metavar="4,8",
                   help="mixed: candidate weight/activation widths")
    g.add_argument("--latency-budget", type=float, default=DEFAULTS["latency_budget"],
                   metavar="F", help="mixed: accelerator cycles at most F x uniform INT8")
    g.add_argument("--weight-budget", type=float, default=DEFAULTS["weight_budget"], metavar="F",
                   help="mixed: weight bytes at most F x uniform INT8 (default: no limit)")
    g.add_argument("--bops-budget", type=float, default=DEFAULTS["bops_budget"], metavar="F",
                   help="mixed: bit operations (MACs x w_bits x a_bits) at most F x uniform INT8 "
                   "(default: no limit)")
    g.add_argument("--per-tensor-weights", action="store_true",
                   help="int8, mixed: one weight scale per tensor instead of per output channel")
    g.add_argument("--symmetric-activations", action="store_true",
                   help="int8, mixed: activation zero point 0 (default: asymmetric)")
    g.add_argument("--weight-rounding", default=DEFAULTS["weight_rounding"],
                   choices=WEIGHT_ROUNDINGS,
                   help="int8, mixed: conv/matmul weights rounded to nearest, or up or down as "
                   "AdaRound learns on the calibration data")
    g.add_argument("--weight-bits", type=int, default=DEFAULTS["weight_bits"], metavar="N",
                   help="int8: weight width of every conv/matmul layer, 2..8 (4: W4A8)")
    g.add_argument("--keep-float", type=_names, default=(), metavar="NAME,PATTERN",
                   help="layers to leave in float: report names or patterns, e.g. "
                   "conv2d_12,mean_*")
    g.add_argument("--equalize", action="store_true",
                   help="int8, mixed: cross-layer equalization (DFQ) before calibration")
    g.add_argument("--bias-absorption", action="store_true",
                   help="int8, mixed: DFQ bias absorption from ReLU layers into unpadded next "
                   "layers, fit to the calibration samples")
    g.add_argument("--bias-correction", action=argparse.BooleanOptionalAction, default=True,
                   help="int8, mixed: subtract from each conv/matmul bias the mean error "
                   "of its output in the integer model on the calibration samples (default: "
                   "on)")


def _config(args) -> QuantConfig:
    return QuantConfig(scheme=args.scheme, requant=args.requant, rounding=args.rounding,
                       observer=args.observer, per_channel_weights=not args.per_tensor_weights,
                       symmetric_activations=args.symmetric_activations,
                       lbfp_frac_bits=args.lbfp_frac_bits, lbfp_block_size=args.lbfp_block_size,
                       lbfp_activation_block_size=args.lbfp_activation_block_size,
                       bits=args.bits, latency_budget=args.latency_budget,
                       weight_budget=args.weight_budget, bops_budget=args.bops_budget,
                       weight_rounding=args.weight_rounding, weight_bits=args.weight_bits,
                       keep_float=args.keep_float, equalize=args.equalize,
                       bias_absorption=args.bias_absorption, bias_correction=args.bias_correction)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape {text!r}: use comma-separated ints, "
                                         "e.g. 1,3,48,192") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"--input-shape {text!r}: dimensions must be positive")
    return shape


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use comma-separated ints, e.g. 4,8,16") \
            from None


COMPILE_EPILOG = """examples:
  tvmq compile model.onnx --calib calib.npz --out build/model
  tvmq compile cls.onnx --input-shape 1,3,48,192 --calib lines.npz --target accel \\
      --out build/cls --force

--out: the folder is written only after the compile succeeds, through a temporary folder renamed
into place. It may be new or empty; an earlier tvmq export there (it has tvmq-manifest.json) is
replaced only with --force; a folder holding any other file is refused, and so are ., / and
your home folder. tvmq never deletes a file it did not write.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and appends each option's default to its help, unless the
    help already states it or the option is an off-by-default flag."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        default = action.default
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        return f"{text} (default {default})"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tvmq", description="tvmq: quantize a float ONNX model for real hardware arithmetic.",
        epilog=EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"tvmq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def sub_parser(name: str, **kwargs) -> argparse.ArgumentParser:
        return commands.add_parser(name, formatter_class=_HelpFormatter, **kwargs)

    p = sub_parser("compile", help="calibrate, quantize and build a model; write --out DIR",
                   description="Calibrate, quantize and compile MODEL, print its per-layer "
                   "report and write the artefacts to --out (only after success).",
                   epilog=COMPILE_EPILOG)
    p.add_argument("model", help="float ONNX model file")
    p.add_argument("--target", default="host", choices=target_names(),
                   help="host (llvm), accel (conv/matmul on the C accelerator emulator) or mcu "
                        "(a self-contained C project for microcontrollers)")
    p.add_argument("--accel", default="npu-small", choices=tuple(PRESETS),
                   help="accelerator preset for --target accel (default npu-small)")
    g = p.add_argument_group("microcontroller (--target mcu)")
    g.add_argument("--ram-bytes", type=int, default=256 * 1024, metavar="N",
                   help="RAM for the arena and kernel workspace (default 262144)")
    g.add_argument("--flash-bytes", type=int, default=1024 * 1024, metavar="N",
                   help="flash for the constant tables (default 1048576)")
    g.add_argument("--allow-float", action="store_true",
                   help="run ops that stayed float as float C kernels instead of refusing")
    p.add_argument("--calib", required=True, metavar="DATA.npz",
                   help="calibration inputs: .npz with array 'calib', 'x_calib' or 'x' "
                   "(N, *input_shape[1:]) float32")
    _add_input_shape(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: new or empty; an earlier tvmq export there is replaced "
                   "only with --force; a folder holding other files is refused")
    p.add_argument("--force", action="store_true",
                   help="replace the tvmq export already in --out (never other files)")
    p.add_argument("--verify", type=int, default=0, metavar="N",
                   help="after compiling, check the compiled model against the oracle bit for "
                   "bit on the first N calibration samples, print the table, and exit 1 (after "
                   "writing --out) when they differ (default 0: no check)")
    p.add_argument("--timings", action="store_true",
                   help="print where the compile's time went, phase by phase")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_quant_args(p)

    p = sub_parser("tune", help="tune the host kernels of a model; later compiles use them",
                   description="Quantize MODEL as `tvmq compile` does, then time schedule "
                   "candidates for each of its host kernels for at most --budget seconds "
                   "and store the fastest in the tuning cache ($TVMQ_CACHE_DIR or "
                   "~/.cache/tvmq). Prints the per-kernel table and the model latency "
                   "before and after.")
    _add_model_and_calib(p)
    _add_input_shape(p)
    p.add_argument("--budget", type=float, default=600.0, metavar="SECONDS",
                   help="tuning time after the first timing pass (default 600)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_quant_args(p)

    p = sub_parser("demo", help="quantize the bundled digits CNN and compare with float",
                   description="Quantize the bundled handwritten-digits CNN (no network "
                   "needed), compare INT8 with FP32 and check host == NumPy oracle.")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_quant_args(p)

    p = sub_parser("debug", help="rank the layers by their quantization error",
                   description="Quantize MODEL as `tvmq compile` does (host), then measure each "
                   "layer's SQNR against float with the whole model quantized (cumulative) and "
                   "with only that layer quantized (isolated), its range against the values it "
                   "saw (clipped share, outliers), and print the layers worst first.")
    _add_model_and_calib(p)
    p.add_argument("--eval", metavar="DATA.npz", help="inputs to measure on: array 'x' "
                   "(default: the first calibration samples)")
    p.add_argument("-n", "--samples", type=int, default=4, metavar="N",
                   help="samples to measure on (default 4; seconds each on a recognizer)")
    p.add_argument("--top", type=int, default=20, metavar="K",
                   help="rows to print, worst first (default 20)")
    p.add_argument("--json", metavar="PATH", help="also write every layer's figures as JSON")
    _add_input_shape(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_quant_args(p)

    p = sub_parser("report", help="print the report saved by `tvmq compile --out DIR`")
    p.add_argument("dir", help="folder written by tvmq compile")

    p = sub_parser("hw-report", help="requant unit area per t_oc next to accuracy",
                   description="Compile MODEL with each requant option (mult/shift with "
                   "double, single, tonearest rounding; FP32) and print the requant units' "
                   "area for each output-channel tile width t_oc next to the accuracy.")
    p.add_argument("model", nargs="?", help="float ONNX model (default: the bundled digits CNN "
                   "with its calibration and test data)")
    p.add_argument("--calib", metavar="DATA.npz", help="calibration inputs (required with MODEL)")
    p.add_argument("--eval", metavar="DATA.npz", help="evaluation data: 'x' (N, ...) and "
                   "optionally labels 'y' (else: agreement with FP32); required with MODEL")
    _add_input_shape(p)
    p.add_argument("--t-oc", type=_ints, default=(4, 8, 16, 32, 64), metavar="4,8,...",
                   help="output-channel tile widths (default 4,8,16,32,64)")
    p.add_argument("--t-ic", type=int, default=8, help="input lanes of the PE array (default 8)")
    p.add_argument("--observer", default="minmax", choices=OBSERVERS)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def cmd_compile(args) -> int:
    from .compiler import compile
    from .output_folder import check_output_folder
    from .targets.mcu import McuConfig
    from .timings import timings_table

    config = _config(args)  # usage errors first
    if args.verify < 0:
        raise CompileError(f"--verify {args.verify}: give a number of samples (0: no check).")
    check_output_folder(args.out, args.force)  # before any work
    mcu = None
    if args.target == "mcu":
        mcu = McuConfig(args.ram_bytes, args.flash_bytes, args.allow_float)
    cm = compile(args.model, target=args.target, config=config, calib=args.calib,
                 input_shape=args.input_shape, accel=args.accel, mcu=mcu,
                 progress=not args.quiet)
    print(cm.report())
    if args.timings:
        print("compile time by phase:\n" + timings_table(cm.report().timings,
                                                         cm.report().compile_seconds))
    out = cm.export(args.out, overwrite=args.force)
    print(f"wrote {args.out.rstrip('/')}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    if not args.verify:
        return 0
    result = cm.verify(_first_samples(args.calib, cm.input, args.verify), n=args.verify)
    print(result)
    return 0 if result.ok else 1


def _first_samples(calib, inp, n: int) -> np.ndarray:
    """The first `n` calibration samples, stacked (N, *shape[1:]) for a batch-1 model."""
    from .calibrate import iter_samples

    samples = list(itertools.islice(iter_samples(calib, inp), n))
    return np.concatenate(samples) if inp.shape[0] == 1 else samples[0]


def cmd_tune(args) -> int:
    from .compiler import compile
    from .targets.host import build
    from .targets.host.benchmark import benchmark
    from .targets.host.tune import tune_model

    config = _config(args)
    if args.budget <= 0:
        raise CompileError(f"--budget {args.budget}: give a positive number of seconds.")
    cm = compile(args.model, config=config, calib=args.calib,
                 input_shape=args.input_shape, progress=not args.quiet)
    result = tune_model(cm.quant_mod, args.budget, progress=not args.quiet)
    print(result.table())
    tuned = build(cm.quant_mod)  # now with the tuned schedules
    x = np.zeros(cm.input.shape, np.float32)
    times: tuple[list, list] = ([], [])
    for _ in range(LATENCY_ROUNDS):  # alternating, so a change of machine load hits both
        times[0].append(cm.benchmark(x, runs=20).ms)
        times[1].append(benchmark(tuned.vm, x, runs=20).ms)
    print(latency_line(*(float(np.median(t)) for t in times)))
    print(f"tuning cache: {result.cache_path}")
    return 0


LATENCY_ROUNDS = 3  # tvmq tune: whole-model timings before and after, in alternation


def latency_line(before_ms: float, after_ms: float) -> str:
    """The whole-model verdict of `tvmq tune`, one line: the speed-up, or a warning when the
    tuned model is not faster (every stored kernel choice measured at least as fast as its
    default schedule alone, but kernels can be slower together, e.g. parallel loops on a busy
    machine)."""
    how = f"batch 1, median of {LATENCY_ROUNDS} x 20 runs"
    if after_ms < before_ms:
        return (f"model latency: {before_ms:.3f} ms before tuning -> {after_ms:.3f} ms tuned, "
                f"{before_ms / after_ms:.2f}x faster ({how})")
    return (f"warning: tuning did not speed the model up: {before_ms:.3f} ms before tuning -> "
            f"{after_ms:.3f} ms tuned, {before_ms / after_ms:.2f}x ({how}); each kernel's "
            "stored choice was at least as fast as its default schedule when timed alone")


def cmd_demo(args) -> int:
    from . import data
    from .compiler import compile
    from .frontend import load_model
    from .targets.host import build

    config = _config(args)
    x_calib, x_test, y_test = data.load_digits()
    float_mod, _ = load_model(data.digits_model_path())
    float_model = build(float_mod)
    fp32 = np.concatenate([float_model.run(x[None]) for x in x_test])
    start = time.perf_counter()
    cm = compile(data.digits_model_path(), config=config, calib=x_calib,
                 progress=not args.quiet)
    seconds = time.perf_counter() - start
    quant = cm.run(x_test)
    scheme = cm.config.scheme.upper()
    print(cm.report())
    oracle = cm.oracle()
    exact = sum(np.array_equal(cm.run(x[None]), oracle.run(x[None])) for x in x_test[:50])
    acc_f, acc_q = (fp32.argmax(1) == y_test).mean(), (quant.argmax(1) == y_test).mean()
    rows = [("model", "accuracy", "vs FP32"),
            ("FP32 (TVM host)", f"{100 * acc_f:.2f}%", ""),
            (f"{scheme} ({cm.config.label.split(' ', 1)[1]})", f"{100 * acc_q:.2f}%",
             f"{100 * (acc_q - acc_f):+.2f} pts")]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"\nbundled digits CNN, {len(y_test)} test images (scikit-learn digits)")
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    agree = 100 * (quant.argmax(1) == fp32.argmax(1)).mean()
    print(f"top-1 agreement {scheme} vs FP32: {agree:.2f}%")
    print(f"host == NumPy oracle (bit-exact) on {exact}/50 inputs")
    print(f"compile time (calibrate + quantize + build): {seconds:.1f} s")
    return 0 if exact == 50 else 1


def cmd_debug(args) -> int:
    from .compiler import compile

    config = _config(args)
    if args.samples < 1 or args.top < 1:
        raise CompileError("-n and --top take a positive number.")
    cm = compile(args.model, config=config, calib=args.calib, input_shape=args.input_shape,
                 progress=not args.quiet)
    x = (_eval_data(args.eval)[0] if args.eval else
         _first_samples(args.calib, cm.input, args.samples))
    found = cm.debug(x, n=args.samples)
    print(found.table(args.top))
    if args.json:
        Path(args.json).write_text(json.dumps(found.to_dict(), indent=2, default=float))
    return 0


def cmd_report(args) -> int:
    from .report import Report

    path = Path(args.dir) / "report.json"
    if not path.is_file():
        raise CompileError(f"{path} not found: pass a folder written by `tvmq compile --out`.")
    print(Report.from_dict(json.loads(path.read_text())))
    return 0


def cmd_hw_report(args) -> int:
    from . import data
    from .hw_report import hw_report

    if args.model is None:
        calib, x_eval, y_eval = data.load_digits()
        model = data.digits_model_path()
    else:
        if not (args.calib and args.eval):
            raise CompileError("hw-report MODEL needs --calib DATA.npz and --eval DATA.npz.")
        model, calib = args.model, args.calib
        x_eval, y_eval = _eval_data(args.eval)
    print(hw_report(model, calib, x_eval, y_eval, t_ocs=args.t_oc, t_ic=args.t_ic,
                    input_shape=args.input_shape, observer=args.observer,
                    progress=not args.quiet))
    return 0


def _eval_data(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    if not Path(path).is_file():
        raise CompileError(f"--eval {path}: file not found.")
    with np.load(path) as npz:
        if "x" not in npz:
            raise CompileError(f"--eval {path}: no array 'x' (has {sorted(npz.files)}); save "
                               "the inputs as 'x' and optional labels as 'y'.")
        return npz["x"], (npz["y"] if "y" in npz else None)


# Config fields set by a CLI flag of the same name (--latency-budget sets latency_budget).
FLAG_FIELDS = ("scheme", "requant", "rounding", "observer", "lbfp_frac_bits", "lbfp_block_size",
               "lbfp_activation_block_size",
               "bits", "latency_budget", "weight_budget", "bops_budget", "symmetric_activations",
               "weight_rounding", "weight_bits", "ram_bytes", "flash_bytes", "allow_float",
               "keep_float")
# Config values set by an on/off flag.
FLAG_SWITCHES = {"per_channel_weights=False": "--per-tensor-weights",
                 "symmetric_activations=True": "--symmetric-activations",
                 "equalize=True": "--equalize", "bias_absorption=True": "--bias-absorption",
                 "bias_correction=False": "--no-bias-correction"}


def cli_words(message: str) -> str:
    """An error message in the CLI's words: `QuantConfig.latency_budget=2` -> `--latency-budget
    2`, `QuantConfig.requant='fp32'` or `requant='fp32'` -> `--requant fp32`,
    `QuantConfig.per_channel_weights=False` -> `--per-tensor-weights`,
    `mcu=McuConfig(allow_float=True)` -> `--allow-float`, `overwrite=True (CLI: --force)` ->
    `--force`."""
    def flag(field: str) -> str:
        return "--" + field.replace("_", "-")

    def field_words(m: re.Match) -> str:
        field, equals, quoted = m[1], m[2], m[3]
        if field not in FLAG_FIELDS:
            return m[0]
        return flag(field) + (f" {quoted}" if quoted is not None else " " * bool(equals))

    message = re.sub(r"\S+=\S+ \(CLI: ([^)]+)\)", r"\1", message)
    message = re.sub(r"(?:mcu=)?McuConfig\((\w+)=True\)",
                     lambda m: flag(m[1]) if m[1] in FLAG_FIELDS else m[0], message)
    message = re.sub(r"\bQuantConfig\.(\w+=\w+)\b",
                     lambda m: FLAG_SWITCHES.get(m[1], m[0]), message)
    message = re.sub(r"\b(?:QuantConfig|McuConfig)\.(\w+)(?:(=)(?:'([^']*)')?)?", field_words,
                     message)
    return re.sub(r"(?<![\w.])(\w+)(=)'([^']*)'", field_words, message)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"compile": cmd_compile, "tune": cmd_tune, "demo": cmd_demo,
               "report": cmd_report, "hw-report": cmd_hw_report,
               "debug": cmd_debug}[args.command]

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"tvmq {args.command}: warning: {cli_words(str(message))}", file=sys.stderr)

    try:
        with warnings.catch_warnings(), _interrupts() as interrupted:
            warnings.showwarning = show_warning  # one line each, in the CLI's words
            return handler(args)
    except BaseException as err:
        if isinstance(err, KeyboardInterrupt) or interrupted:
            what = "interrupted, nothing written" if args.command == "compile" else "interrupted"
            print(f"\ntvmq {args.command}: {what}", file=sys.stderr)
            return 130
        if isinstance(err, CompileError | ValueError):
            print(f"tvmq {args.command}: error: {cli_words(str(err))}", file=sys.stderr)
            return 2
        if isinstance(err, OSError):  # e.g. a full disk: nothing is left half-written
            print(f"tvmq {args.command}: error: {err}", file=sys.stderr)
            return 1
        raise


@contextlib.contextmanager
def _interrupts():
    """Yields a list that Ctrl-C makes non-empty. A KeyboardInterrupt raised while TVM runs a
    Python callback reaches us as a bare RuntimeError; the list tells them apart."""
    interrupted: list[bool] = []

    def on_sigint(signum, frame):
        interrupted.append(True)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        yield interrupted
        return
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
