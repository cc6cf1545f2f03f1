"""The Target interface: a new target plugs in without touching the compiler."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from tvmq.targets import target as registry
from tvmq.targets.target import LowerInfo, Target

import tvmq
from tvmq import data
from tvmq.ir import REQUANT_ATTR

X_CALIB, X_TEST, _ = data.load_digits()


@dataclass(frozen=True)
class EchoConfig:
    label: str = "echo"


class EchoTarget(Target):
    """A throwaway target: runs the host build, records what compile handed it."""

    name = "echo"
    option = "echo"
    build_products = ("echo.bin",)

    def __init__(self, quant, setting=None):
        super().__init__(quant, setting)
        if setting is not None and not isinstance(setting, EchoConfig):
            raise TypeError(f"echo must be an EchoConfig, got {type(setting).__name__}")
        self.config = setting or EchoConfig()
        self.seen: LowerInfo | None = None
        self.requants = 0

    @property
    def artifact(self):
        return self

    def lower(self, realized, info):
        self.seen = info
        self.requants = sum(REQUANT_ATTR in (f.attrs or {}) for _, f in realized.functions_items())
        return realized

    def add_to_report(self, report, host, inp):
        report.float_ops = [*report.float_ops, f"echo:{self.config.label}"]

    def write(self, out, host, samples):
        (out / "echo.txt").write_text(f"{self.config.label} {samples.shape[0]}\n")


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(EchoTarget)
    return EchoTarget


def test_the_three_targets_are_registered_host_first():
    assert registry.names() == ("host", "accel", "mcu")
    assert set(registry.options()) == {"accel", "mcu"}


def test_a_new_target_compiles_runs_reports_and_exports(echo, tmp_path):
    cm = tvmq.compile(data.digits_model_path(), target="echo", calib=X_CALIB[:16],
                      progress=False, echo=EchoConfig("mine"))
    assert cm.target == "echo" and isinstance(cm.echo, EchoTarget)
    assert cm.accel is None and cm.mcu is None
    assert cm.echo.seen.output_names == tuple(o.name for o in cm.outputs)
    assert cm.echo.requants > 0  # it was handed the realized integer module
    assert cm.report().float_ops[-1] == "echo:mine"
    np.testing.assert_array_equal(cm.run(X_TEST[:3]), cm.oracle().run(X_TEST[:3]))
    out = cm.export(tmp_path / "out", samples=X_TEST[:2])
    assert (out / "echo.txt").read_text() == "mine 2\n"
    manifest = json.loads((out / "tvmq-manifest.json").read_text())
    assert manifest["build_products"] == ["echo.bin"] and "echo.txt" in manifest["files"]
    assert json.loads((out / "config.json").read_text())["target"] == "echo"


def test_a_target_validates_its_setting_before_any_work(echo):
    with pytest.raises(TypeError, match="echo must be an EchoConfig"):
        tvmq.compile("no-such-model.onnx", target="echo", echo="mine", progress=False)


def test_unknown_target_and_unknown_keyword_are_refused():
    with pytest.raises(ValueError, match=r"target='nope' is not available; use one of \('host'"):
        tvmq.compile(data.digits_model_path(), target="nope", progress=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'gpu'"):
        tvmq.compile(data.digits_model_path(), gpu=1, progress=False)
