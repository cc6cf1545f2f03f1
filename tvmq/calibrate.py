"""Calibration: run float tensors through the annotated model and observe every tapped tensor.

Calibration data is an iterable of arrays or an `.npz` file. Each array is either one input of the
model's exact shape or a stack of them (N, *shape[1:]); every sample runs through a host build of
the model with InsertTaps, and each tapped tensor feeds its own observer.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tqdm import tqdm

from . import calibration
from .errors import CalibrationWarning, CompileError
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


HOLD_BACK_EVERY = 5  # every 5th calibration sample, up to `hold_back`, is held back


@dataclass
class Calibration:
    """What calibration gives: an observer per tapped tensor, fed by the observed samples, and
    the samples held back from them (`inputs`, with their float values by tensor name in
    `values`; "output" is the model output) to measure quantization error on data the ranges
    never saw. With fewer than HOLD_BACK_EVERY samples none are held back (`held_back` False):
    `inputs` are then the first observed samples."""

    observers: dict
    inputs: list[np.ndarray] = field(default_factory=list)
    values: dict[str, list] = field(default_factory=dict)
    held_back: bool = True
    channel_ranges: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def calibrate(mod: tvm.IRModule, names: list[str], data, inp: ModelInput, *,
              observer: str = "minmax", hold_back: int = 0, channel_names=(),
              progress: bool = True) -> Calibration:
    """Observe tensors `names` of the annotated float `mod` over the calibration data, except
    every HOLD_BACK_EVERY-th sample up to `hold_back` of them, which is held back. For the
    tensors in `channel_names` (NCHW) also the min and max of each channel (axis 1):
    `channel_ranges[name] = (lo[C], hi[C])`.

    `observer` is an observer name (tvmq.calibration.OBSERVERS) or a factory name -> observer.
    Warns (CalibrationWarning) when the data is constant, every sample is the same, or a
    tensor took one value over all observed samples.
    """
    runner = build(InsertTaps(names)(mod))
    observers = {n: observer(n) if callable(observer) else
                 calibration.make_observer(observer, name=n) for n in names}
    held = Calibration(observers, values={n: [] for n in ["output", *names]})
    first = Calibration(observers, values={n: [] for n in ["output", *names]}, held_back=False)
    constant = _ConstantTensors([inp.name, *names])
    channels = _ChannelRanges(channel_names)
    samples = tqdm(iter_samples(data, inp), desc="calibrate", unit="sample", leave=False,
                   disable=not progress)
    for i, x in enumerate(samples):
        out, *taps = runner.run(x)
        if i % HOLD_BACK_EVERY == HOLD_BACK_EVERY - 1 and len(held.inputs) < hold_back:
            _record(held, x, out, names, taps)
            continue
        for name, value in zip(names, taps):
            observers[name].observe(value)
            channels.observe(name, value)
        constant.update([x, *taps])
        if len(first.inputs) < hold_back and not held.inputs:
            _record(first, x, out, names, taps)
    constant.warn(inp.name)
    result = held if held.inputs or not first.inputs else first
    result.channel_ranges = channels.ranges
    return result


class _ChannelRanges:
    """Running per-channel (axis 1) min and max of chosen tensors."""

    def __init__(self, names):
        self.names = set(names)
        self.ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def observe(self, name: str, value: np.ndarray) -> None:
        if name not in self.names:
            return
        axes = tuple(a for a in range(value.ndim) if a != 1)
        lo, hi = value.min(axis=axes), value.max(axis=axes)
        if name in self.ranges:
            lo, hi = np.minimum(lo, self.ranges[name][0]), np.maximum(hi, self.ranges[name][1])
        self.ranges[name] = (lo, hi)


def _record(calib: Calibration, x, out, names, taps) -> None:
    calib.inputs.append(x)
    calib.values["output"].append(out)
    for name, value in zip(names, taps):
        calib.values[name].append(value)


class _ConstantTensors:
    """Which tensors took one value over every observed sample, and whether all samples (the
    first tensor) were the same."""

    def __init__(self, names: list[str]):
        self.names = names
        self.first: list[np.ndarray] | None = None
        self.constant = set(names)
        self.same_samples = True
        self.count = 0

    def update(self, values: list[np.ndarray]) -> None:
        self.count += 1
        if self.first is None:
            self.first = [v.copy() for v in values[:1]] + [v.flat[:1].copy() for v in values[1:]]
        elif self.same_samples:
            self.same_samples = np.array_equal(values[0], self.first[0])
        for name, value, first in zip(self.names, values, self.first):
            if name in self.constant and value.size and (
                    value.min() != value.max() or value.flat[0] != first.flat[0]):
                self.constant.discard(name)

    def warn(self, input_name: str) -> None:
        if input_name in self.constant:
            value = self.first[0].flat[0]
            warnings.warn(f"the calibration data is constant (every value of input "
                          f"{input_name!r} is {value:g}): ranges set from it will not fit real "
                          "inputs; calibrate on representative samples.", CalibrationWarning,
                          stacklevel=3)
            return
        if self.same_samples and self.count > 1:
            warnings.warn(f"all {self.count} calibration samples are the same: ranges set from "
                          "them will not fit other inputs; calibrate on representative samples.",
                          CalibrationWarning, stacklevel=3)
        flat = [n for n in self.names[1:] if n in self.constant]
        if flat:
            shown = ", ".join(flat[:5]) + (f" and {len(flat) - 5} more" if len(flat) > 5 else "")
            warnings.warn(f"{len(flat)} tensor(s) took a single value over the calibration data "
                          f"(a zero range: {shown}); they quantize to a constant; calibrate on "
                          "more varied samples.", CalibrationWarning, stacklevel=3)
