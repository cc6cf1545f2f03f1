"""The host tuner with a fake timer: a choice slower than the default is never stored, however
lucky one of its timings was; the cache keeps what other processes wrote."""

import importlib
import itertools

import numpy as np
import pytest
import tvm
from onnx import helper
from tvm import te
from tvmq.targets.host import tune
from tvmq.targets.host.schedules import ScheduleParams
from tvmq.targets.host.tune import UNSCHEDULED, TuningCache, tune_model

import tvmq
from tests.conftest import make_onnx
from tvmq.cli import latency_line

TARGET = tvm.target.Target({"kind": "llvm"})


@pytest.fixture(scope="module")
def gemm():
    """A Gemm model: two kernels (input quantize, matmul + requant), both with a default."""
    rng = np.random.default_rng(0)
    model = make_onnx([helper.make_node("Gemm", ["input", "w", "b"], ["output"])],
                      {"w": rng.normal(size=(20, 16)), "b": rng.normal(size=16)}, [1, 20],
                      [1, 16])
    return tvmq.compile(model, calib=rng.normal(size=(8, 20)).astype(np.float32),
                        config=tvmq.QuantConfig(sqnr_samples=0), progress=False)


def fake_timer(monkeypatch, ms):
    """Replace the tuner's compile + time_evaluator: the n-th timing (from 0) of `choice` for
    one function takes ms(choice, n) milliseconds; a choice is the default when ms gets
    "default" (ScheduleParams default of that function) instead."""
    count = itertools.count
    counters: dict = {}

    def compile_timer(func, choice, target, **_):
        default = tune.schedules.default_params(tune.schedules.describe(func))
        n = counters.setdefault((id(func), choice), count())
        name = "default" if choice == default else choice
        return lambda args: ms(name, next(n))

    monkeypatch.setattr(tune, "compile_timer", compile_timer)


def tune_with(gemm, tmp_path, monkeypatch, ms):
    fake_timer(monkeypatch, ms)
    cache = TuningCache(tmp_path / "tuning.json")
    result = tune_model(gemm.quant_mod, budget_seconds=5, cache=cache, progress=False)
    reloaded = TuningCache(tmp_path / "tuning.json")
    target = importlib.import_module("tvmq.targets.host.build").host_target()
    stored = [reloaded.lookup(t.func, target) for t in result.tasks]
    return result, stored


@pytest.mark.parametrize("unscheduled_ms", [2.0, 0.8])
def test_a_candidate_slower_than_the_default_is_never_stored(gemm, tmp_path, monkeypatch,
                                                            unscheduled_ms):
    """Every candidate times 0.5 ms once (a quiet moment) and 1.5 ms otherwise; the default
    1.0 ms; TVM's loops 2.0 or 0.8 ms. The search's winner is a candidate; the final check
    must store the default, or TVM's loops where they are faster."""
    def ms(choice, n):
        if choice == "default":
            return 1.0
        if choice == UNSCHEDULED:
            return unscheduled_ms
        return 0.5 if n == 0 else 1.5

    result, stored = tune_with(gemm, tmp_path, monkeypatch, ms)
    want = UNSCHEDULED if unscheduled_ms < 1.0 else "default"
    for task, choice in zip(result.tasks, stored, strict=True):
        assert task.trials > 2  # candidates were tried
        assert isinstance(task.default, ScheduleParams)
        assert choice == task.best == (task.default if want == "default" else want)
        assert task.best_ms == min(1.0, unscheduled_ms) <= task.default_ms == 1.0


def test_a_faster_candidate_is_stored(gemm, tmp_path, monkeypatch):
    def ms(choice, n):
        return {"default": 1.0, UNSCHEDULED: 2.0}.get(choice, 0.5)

    result, stored = tune_with(gemm, tmp_path, monkeypatch, ms)
    for task, choice in zip(result.tasks, stored, strict=True):
        assert choice == task.best not in (task.default, UNSCHEDULED)
        assert (task.best_ms, task.default_ms) == (0.5, 1.0)


def _func(n):
    a = te.placeholder((n,), "int32", name="a")
    return te.create_prim_func([a, te.compute((n,), lambda i: a[i] + 1, name="b")])


def test_save_keeps_entries_another_process_wrote(tmp_path):
    path = tmp_path / "tuning.json"
    f, g = _func(8), _func(16)
    first = TuningCache(path)
    first.store(f, TARGET, UNSCHEDULED)
    first.save()
    one, other = TuningCache(path), TuningCache(path)  # two processes read the same file
    one.store(f, TARGET, ScheduleParams(vec=8))
    one.save()
    other.store(g, TARGET, UNSCHEDULED)
    other.save()  # its stale copy of f's entry must not undo the first one's update
    final = TuningCache(path)
    assert final.lookup(f, TARGET) == ScheduleParams(vec=8)
    assert final.lookup(g, TARGET) == UNSCHEDULED


def test_latency_line_says_when_tuning_made_the_model_slower():
    assert "1.25x faster" in latency_line(1.25, 1.0)
    slower = latency_line(1.0, 1.25)
    assert slower.startswith("warning: tuning did not speed the model up") and "0.80x" in slower
    assert "\n" not in slower
