"""Compile phase timings: nesting, totals, the table, and a compile's report."""

import time

import numpy as np
import pytest

import tvmq
from tvmq.timings import Timings, phase, recording, timings_table


def test_phases_nest_and_add_up():
    timings = Timings()
    with recording(timings):
        with phase("build"):
            with phase("codegen"):
                time.sleep(0.02)
            with phase("load"):
                pass
        with phase("build"):  # entered again: adds to its total
            with phase("codegen"):
                time.sleep(0.01)
    s = timings.seconds
    assert list(s) == ["build", "build/codegen", "build/load"]
    assert s["build/codegen"] >= 0.03 and s["build"] >= s["build/codegen"] + s["build/load"]
    table = timings_table(s, total=2 * s["build"])
    assert table.splitlines()[1].startswith("    codegen")  # indented under its parent
    assert "(other)" in table and "50.0%" in table


def test_phase_records_nothing_outside_a_recording():
    with phase("anything"):
        pass
    timings = Timings()
    with recording(timings):
        pass
    with phase("after"):
        pass
    assert timings.seconds == {}


def test_a_compile_reports_its_phases(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("TVMQ_CACHE_DIR", str(tmp_path))  # cold: nothing in the build cache
    cm = tvmq.compile(tvmq.data.digits_model_path(), calib=digits[0][:16], progress=False)
    report = cm.report()
    for name in ("import", "calibrate", "bias correction", "realize", "build", "build/fuse",
                 "build/codegen", "build/codegen/schedule", "build/cache", "build/load", "sqnr"):
        assert name in report.timings
    top = sum(s for name, s in report.timings.items() if "/" not in name)
    assert 0.5 * report.compile_seconds < top <= report.compile_seconds
    assert report.to_dict()["timings"] == report.timings
    assert np.isfinite(list(report.timings.values())).all()
    with pytest.raises(KeyError):
        report.timings["bits"]  # a phase that did not run is not listed
