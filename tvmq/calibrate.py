"""Calibration: run float tensors through the annotated model and observe every tapped tensor.

Calibration data is an iterable of arrays or an `.npz` file. Each array is either one input of the
model's exact shape or a stack of them (N, *shape[1:]); every sample runs through a host build of
the model with InsertTaps, and each tapped tensor feeds its own observer.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tvm
from tqdm import tqdm

from . import calibration
from .errors import CompileError
from .frontend import ModelInput
from .passes.insert_taps import InsertTaps
from .targets.host import build

NPZ_KEYS = ("calib", "x_calib", "x")
ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive of .npy files


def load_calibration(data) -> Iterable[np.ndarray]:
    """Calibration arrays from an `.npz` path (key 'calib', 'x_calib', 'x' or its only array),
    an array, or an iterable of arrays."""
    if isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.is_file():
            raise CompileError(f"calibration file not found: {path}")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != ZIP_MAGIC:
            raise CompileError(f"calibration file {path} is not an .npz archive; write one with "
                               "numpy.savez(path, calib=x).")
        try:
            npz = np.load(path, allow_pickle=False)
            keys = list(npz.keys())
        except Exception as err:
            raise CompileError(f"cannot read calibration archive {path}: {err}") from err
        key = next((k for k in NPZ_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise CompileError(
                f"{path} holds arrays {keys}; name the calibration array one of {NPZ_KEYS}.")
        return [npz[key]]
    if isinstance(data, np.ndarray):
        return [data]
    if data is None:
        raise CompileError("no calibration data: pass calib=<array, list of arrays or .npz>.")
    return data


def iter_samples(data, inp: ModelInput) -> Iterator[np.ndarray]:
    """Yield float32 arrays of exactly `inp.shape`, validating each batch."""
    count = 0
    for i, batch in enumerate(load_calibration(data)):
        batch = np.asarray(batch)
        if batch.dtype.kind != "f":
            raise CompileError(
                f"calibration batch {i} has dtype {batch.dtype}; the model input "
                f"{inp.name!r} needs float32 values.")
        if batch.shape == inp.shape:
            samples = batch[None]
        elif batch.shape[1:] == inp.shape[1:] and inp.shape[0] == 1:
            samples = batch[:, None]
        else:
            raise CompileError(
                f"calibration batch {i} has shape {batch.shape}; the model input {inp.name!r} "
                f"has shape {inp.shape} (pass arrays of that shape, or stacked as "
                f"(N, {', '.join(map(str, inp.shape[1:]))})).")
        if not np.all(np.isfinite(batch)):
            raise CompileError(f"calibration batch {i} contains NaN or Inf values.")
        for s in samples:
            count += 1
            yield np.ascontiguousarray(s, dtype=np.float32)
    if count == 0:
        raise CompileError("the calibration set is empty: give at least one input sample.")


def calibrate(mod: tvm.IRModule, names: list[str], data, inp: ModelInput, *,
              observer: str = "minmax", keep: int = 0, progress: bool = True):
    """Observe tensors `names` of the annotated float `mod` over the calibration data.

    `observer` is an observer name (tvmq.calibration.OBSERVERS) or a factory name -> observer.

    Returns (observers by name, float outputs of the first `keep` samples by name, the samples).
    """
    runner = build(InsertTaps(names)(mod))
    observers = {n: observer(n) if callable(observer) else
                 calibration.make_observer(observer, name=n) for n in names}
    kept_values: dict[str, list[np.ndarray]] = {n: [] for n in ["output", *names]}
    kept_inputs: list[np.ndarray] = []
    samples = tqdm(iter_samples(data, inp), desc="calibrate", unit="sample", leave=False,
                   disable=not progress)
    for x in samples:
        out, *taps = runner.run(x)
        for name, value in zip(names, taps):
            observers[name].observe(value)
        if len(kept_inputs) < keep:
            kept_inputs.append(x)
            kept_values["output"].append(out)
            for name, value in zip(names, taps):
                kept_values[name].append(value)
    return observers, kept_values, kept_inputs
