"""The bad-input tour: run `tvmq` the ways a new user gets wrong and print, for each command, its
exit code, what it printed on stderr (line count and the last line) and what the output
location holds afterwards.

    python benchmarks/bad_input_tour.py [--keep DIR] [--json PATH]

Runs in a scratch folder (the bundled digits model, small calibration sets); about 2 minutes.
The rows and the run's environment go to ``benchmarks/results/bad_input_tour.json``
(``--json PATH``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_json_argument, write_results

from tvmq import data

TVMQ = [sys.executable, "-m", "tvmq.cli"]


def setup(work: Path) -> None:
    x_calib, _, _ = data.load_digits()
    model = data.digits_model_path().read_bytes()
    (work / "m.onnx").write_bytes(model)
    (work / "truncated.onnx").write_bytes(model[: len(model) // 2])
    np.savez(work / "c.npz", calib=x_calib[:32])
    np.savez(work / "zeros.npz", calib=np.zeros_like(x_calib[:32]))
    np.savez(work / "wrong_shape.npz", calib=np.zeros((4, 1, 7, 7), np.float32))
    nan = x_calib[:8].copy()
    nan[0, 0, 0, 0] = np.nan
    np.savez(work / "nan.npz", calib=nan)
    (work / "garbage.npz").write_text("not an archive")
    np.save(work / "array.npy", x_calib[:8])
    (work / "mydocs").mkdir()
    (work / "mydocs" / "thesis.tex").write_text("years of work\n")
    (work / "afile").write_text("a file\n")


CASES = [
    ("missing model", "compile nope.onnx --calib c.npz --out o1", "o1"),
    ("truncated model", "compile truncated.onnx --calib c.npz --out o2", "o2"),
    ("calibration of the wrong shape", "compile m.onnx --calib wrong_shape.npz --out o3", "o3"),
    ("NaN in calibration", "compile m.onnx --calib nan.npz --out o4", "o4"),
    ("--calib not an npz", "compile m.onnx --calib garbage.npz --out o5", "o5"),
    ("--calib a .npy file", "compile m.onnx --calib array.npy --out o5b", "o5b"),
    ("--out a folder of user files", "compile m.onnx --calib c.npz --out mydocs --force",
     "mydocs"),
    ("--out .", "compile m.onnx --calib c.npz --out . --force", "."),
    ("--out a file", "compile m.onnx --calib c.npz --out afile", "afile"),
    ("--out below a file", "compile m.onnx --calib c.npz --out afile/sub", "afile"),
    ("--out not writable", "compile m.onnx --calib c.npz --out /proc/tvmq", None),
    ("bad latency budget", "compile m.onnx --calib c.npz --scheme mixed --latency-budget -1 "
     "--out o6", "o6"),
    ("MCU over its RAM", "compile m.onnx --calib c.npz --target mcu --ram-bytes 1000 --out o7",
     "o7"),
    ("constant calibration", "compile m.onnx --calib zeros.npz --out o8", "o8"),
    ("first export", "compile m.onnx --calib c.npz --out o9", "o9"),
    ("export again without --force", "compile m.onnx --calib c.npz --out o9", "o9"),
    ("export again with --force", "compile m.onnx --calib c.npz --out o9 --force", "o9"),
    ("Ctrl-C during compile", "compile m.onnx --calib c.npz --out o10 SIGINT", "o10"),
    ("version", "--version", None),
]


def run(work: Path, args: str) -> tuple[int, str, str]:
    interrupt = args.endswith(" SIGINT")
    cmd = [*TVMQ, *shlex.split(args.removesuffix(" SIGINT")), "--quiet"] \
        if args.startswith("compile") else [*TVMQ, *shlex.split(args)]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TVMQ_CACHE_DIR": str(work / ".c")})
    if interrupt:
        time.sleep(6)  # inside the compile
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    return proc.returncode, err.strip(), out.strip()


def listing(work: Path, name: str | None) -> str:
    if name is None:
        return ""
    path = work / name
    if not path.exists():
        return "(absent)"
    if path.is_file():
        return "(file, unchanged)" if path.read_text() == "a file\n" else "(file, CHANGED)"
    names = sorted(p.name for p in path.iterdir() if not p.name.startswith(".c"))
    return " ".join(names) if len(names) <= 8 else f"{len(names)} entries: {' '.join(names[:6])}..."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="scratch folder to use and keep")
    add_json_argument(parser, "bad_input_tour")
    opts = parser.parse_args(argv)
    work = Path(opts.keep or tempfile.mkdtemp(prefix="tvmq-tour-"))
    work.mkdir(parents=True, exist_ok=True)
    setup(work)
    print("| case | command | exit | stderr lines | last line (stderr, else stdout) | "
          "output location after |")
    print("|---|---|---|---|---|---|")
    rows = []
    for what, args, out in CASES:
        rc, err, stdout = run(work, args)
        last = (err or stdout).splitlines()[-1:] or [""]
        rows.append({"case": what, "command": f"tvmq {args}", "exit": rc,
                     "stderr lines": len(err.splitlines()), "last line": last[0],
                     "output location after": listing(work, out)})
        print(f"| {what} | `tvmq {args}` | {rc} | {len(err.splitlines())} | "
              f"{last[0].replace('|', '/')} | {listing(work, out)} |", flush=True)
    # Each case is a `tvmq` subprocess with the environment's thread settings.
    path = write_results(opts.json, "bad_input_tour", {"rows": rows}, argv=argv, threads={})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
