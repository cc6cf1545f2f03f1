"""Inputs as users pass them to `run`: one input of the model's shape, or a stack of N of them
(N, *shape[1:]) when the model's batch is 1, each run alone and the outputs concatenated."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def check_input(x, shape: tuple[int, ...]) -> np.ndarray:
    """`x` as float32 if it is one input of `shape` or a non-empty stack of them; else a
    TypeError (not float) or ValueError (shape) saying what to pass."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"input of dtype {x.dtype}: the model takes float values and quantizes "
                        "them itself; pass x.astype(np.float32) if these are float values.")
    stack = x.ndim == len(shape) and x.shape[1:] == shape[1:] and shape[0] == 1
    if x.shape != shape and not stack:
        raise ValueError(f"input shape {x.shape} does not match the model input {shape}"
                         + (f" (or a stack (N, {', '.join(map(str, shape[1:]))}))"
                            if shape[0] == 1 else ""))
    if x.shape[0] == 0:
        raise ValueError(f"empty input batch {x.shape}: pass at least one input.")
    return np.ascontiguousarray(x, np.float32)


def run_stacked(run_one: Callable, x, shape: tuple[int, ...]):
    """`run_one` on `x` (checked), or on each input of a stack with the outputs concatenated
    (output by output when `run_one` returns a tuple)."""
    x = check_input(x, shape)
    if x.shape == shape:
        return run_one(x)
    outs = [run_one(s[None]) for s in x]
    if isinstance(outs[0], tuple):
        return tuple(np.concatenate(out) for out in zip(*outs))
    return np.concatenate(outs)


def output_fields(value) -> tuple[np.ndarray, ...]:
    """A model's outputs as a tuple: `run` gives an array for one output, a tuple for several."""
    return value if isinstance(value, tuple) else (value,)
