"""The host build cache: a compile of the same module loads the library built before, with the
same outputs; a changed constant, schedule choice or a cache turned off builds anew."""

import importlib

import numpy as np
import pytest
import tvm
from tvm import relax
from tvmq.targets.host import build_cache, schedules
from tvmq.targets.host.build_cache import BuildCache
from tvmq.targets.host.target import export_library

import tvmq
from tvmq import data

host_build = importlib.import_module("tvmq.targets.host.build")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMQ_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TVMQ_BUILD_CACHE", raising=False)
    return tmp_path / "builds"


def _compile(calib):
    return tvmq.compile(data.digits_model_path(), calib=calib, progress=False)


def test_a_second_compile_loads_the_builds_of_the_first(cache_dir, digits, tmp_path):
    calib, x = digits[0][:16], digits[1][:4]
    cold = _compile(calib)
    assert "build/codegen" in cold.report().timings
    assert len(list(cache_dir.glob("*.so"))) == 3  # calibration, bias correction, main
    warm = _compile(calib)
    timings = warm.report().timings
    assert "build/cache" in timings and not any("codegen" in name for name in timings)
    assert warm.host.library in {p.read_bytes() for p in cache_dir.glob("*.so")}
    assert warm.host.schedules == cold.host.schedules
    np.testing.assert_array_equal(warm.run(x), cold.run(x))
    assert warm.verify(x, n=2).ok
    out = warm.export(tmp_path / "out")
    assert (out / "model.so").read_bytes() == warm.host.library
    np.testing.assert_array_equal(host_build.load(out / "model.so").run(x[:1]), cold.run(x[:1]))


def test_other_calibration_data_builds_anew_but_reuses_the_float_builds(cache_dir, digits):
    _compile(digits[0][:16])
    other = _compile(digits[0][16:32])
    timings = other.report().timings
    assert "calibrate/codegen" not in timings  # the float model with taps: the same module
    # the simulated integer model takes its grids and weights as arguments: the same module
    assert "bias correction/codegen" not in timings
    assert "build/codegen" in timings          # other ranges: other constants
    assert len(list(cache_dir.glob("*.so"))) == 4


def _module(value: float) -> tvm.IRModule:
    x = relax.Var("x", relax.TensorType((1, 16), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            shift = relax.const(np.full((1, 16), value, np.float32))
            out = bb.emit_output(relax.op.multiply(relax.op.add(x, shift), shift))
        bb.emit_func_output(out)
    return bb.get()


def test_the_key_covers_constants_schedule_choices_and_target():
    target = host_build.host_target()
    fused = host_build.fuse(_module(1.0), target)
    key = BuildCache.key(fused, {"k": "loops"}, target)
    assert BuildCache.key(host_build.fuse(_module(1.0), target), {"k": "loops"}, target) == key
    assert BuildCache.key(host_build.fuse(_module(2.0), target), {"k": "loops"}, target) != key
    assert BuildCache.key(fused, {"k": "ScheduleParams(vec=8)"}, target) != key
    assert BuildCache.key(fused, {"k": "loops"}, tvm.target.Target("llvm")) != key


def test_a_changed_default_schedule_is_not_served_from_the_cache(cache_dir, monkeypatch):
    first = host_build.build(_module(1.0))
    assert first.library is not None
    monkeypatch.setattr(schedules, "default_params", lambda info: None)
    second = host_build.build(_module(1.0))
    assert second.library is not None and len(list(cache_dir.glob("*.so"))) == 2
    assert all(s.schedule == host_build.LOOPS for s in second.schedules.values())


def test_turned_off_or_failing_export_builds_in_memory(cache_dir, monkeypatch):
    monkeypatch.setenv("TVMQ_BUILD_CACHE", "0")
    assert host_build.build(_module(1.0)).library is None
    assert not cache_dir.exists()
    monkeypatch.delenv("TVMQ_BUILD_CACHE")

    def no_compiler(executable, path, options=None):
        raise RuntimeError("cc: not found")

    target = importlib.import_module("tvmq.targets.host.target")
    monkeypatch.setattr(target, "export_executable", no_compiler)
    model = host_build.build(_module(3.0))
    assert model.library is None and not list(cache_dir.glob("*"))
    x = np.ones((1, 16), np.float32)
    np.testing.assert_array_equal(model.run(x), (x + 3) * 3)


def test_only_the_most_recently_used_entries_stay(cache_dir, monkeypatch):
    monkeypatch.setattr(build_cache, "MAX_ENTRIES", 2)
    first = host_build.build(_module(1.0))
    libraries = [host_build.build(_module(v)).library for v in (2.0, 3.0)]
    kept = sorted(cache_dir.glob("*.so"))
    assert len(kept) == 2 and {p.read_bytes() for p in kept} == set(libraries)
    assert len(list(cache_dir.glob("*.json"))) == 2
    x = np.ones((1, 16), np.float32)  # a model whose entry was dropped still runs and exports
    np.testing.assert_array_equal(first.run(x), (x + 1) * 1)
    export_library(first, cache_dir / "first.so")
    assert (cache_dir / "first.so").read_bytes() == first.library


def test_the_accelerator_target_builds_its_host_module_anew(cache_dir, digits):
    cm = tvmq.compile(data.digits_model_path(), target="accel", calib=digits[0][:8],
                      progress=False)
    assert cm.host.library is None  # model.so is linked against the emulator at export
