"""The TIR requant kernel on the host equals tvmq.numerics.requantize bit for bit."""

import importlib

import numpy as np
import pytest
import tvm
from tvmq.targets.host import schedules

from tvmq import numerics
from tvmq.ir import INT32_MAX, INT32_MIN, requant_prim_func

TARGET = tvm.target.Target({"kind": "llvm"})
host_build = importlib.import_module("tvmq.targets.host.build")
EDGES = np.array([INT32_MIN, INT32_MIN + 1, -(2**24) - 1, -5, -3, -2, -1, 0, 1, 2, 3, 5,
                  2**24 + 1, INT32_MAX - 1, INT32_MAX], dtype=np.int64)


def _accumulators(channels: int, rng) -> np.ndarray:
    """(1, C, 64, 8) int32: edge values, small ties, and uniform draws over the full int32 range."""
    n = 64 * 8
    body = np.concatenate([
        np.resize(EDGES, n // 4),
        rng.integers(-64, 65, n // 4),                      # many exact ties for small multipliers
        rng.integers(INT32_MIN, INT32_MAX, n // 2, endpoint=True),
    ])
    return np.stack([rng.permutation(body) for _ in range(channels)]).reshape(
        1, channels, 64, 8).astype(np.int32)


def _run(kind, rounding, acc, params, axis, zp, qmin, qmax, out_dtype, vectorized=False):
    func = requant_prim_func(acc.shape, params[0].size, axis, kind, rounding, zp, qmin, qmax,
                             out_dtype)
    target = TARGET
    if vectorized:  # this CPU's vector units (AVX2 lanes of int32 / int64), tvmq's schedule
        target = host_build.host_target()
        func = schedules.schedule(func, schedules.ScheduleParams(vec=8))
    func = func.with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    out = tvm.runtime.tensor(np.zeros(acc.shape, out_dtype))
    lib["main"](tvm.runtime.tensor(acc), *(tvm.runtime.tensor(p) for p in params), out)
    return out.numpy()


# Real multipliers spanning shifts -31..+3, including exactly 0.5 / 0.25 (tie-heavy), values whose
# Q31 mantissa rounds up to 2^31, and one that underflows to multiplier 0.
SCALES = np.array([0.5, 0.25, 0.375, 1.5, 3.0, 9.7, 2.0**-20, 2.0**-31, 2.0**-40,
                   (2**31 - 0.25) / 2**31 * 2.0**-3, 1e-3, 0.7071])


@pytest.mark.parametrize("kind,rounding", [("mult_shift", "double"), ("mult_shift", "single"),
                                           ("mult_shift", "tonearest"), ("fp32", None)])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("vectorized", [False, True])
def test_kernel_matches_golden(kind, rounding, per_channel, vectorized):
    rng = np.random.default_rng(7)
    channels = SCALES.size
    acc = _accumulators(channels, rng)
    scales = SCALES if per_channel else SCALES[:1]
    rq = numerics.Requant.from_scale(scales, kind, rounding)
    params = [rq.scale.astype(np.float32)] if kind == "fp32" else \
        [rq.multiplier.astype(np.int32), rq.shift.astype(np.int32)]
    axis = 1 if per_channel else None
    for zp, qmin, qmax, dtype in [(-3, -128, 127, "int8"), (0, INT32_MIN, INT32_MAX, "int32")]:
        got = _run(kind, rounding, acc, params, axis, zp, qmin, qmax, dtype, vectorized)
        golden_rq = rq if per_channel else numerics.Requant(
            kind, rounding, *(None if p is None else p.reshape(()) for p in
                              (rq.multiplier, rq.shift, rq.scale)))
        want = numerics.requantize(acc, golden_rq, zero_point=zp, qmin=qmin, qmax=qmax,
                                   axis=axis).astype(dtype)
        np.testing.assert_array_equal(got, want)
