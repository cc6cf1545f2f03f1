"""Shared fixtures: bundled digits data, tiny ONNX models, compiled models cached per config.

Every pass run during the session (tvmq's and TVM's, including those inside tvmq.compile and
in fixtures) is followed by `relax.analysis.well_formed` on its result when that holds a Relax
function (`WellFormedAfterEachPass`, entered by the autouse fixture `well_formed_passes`).

The session runs with tvmq's cache folder (tuning, cost and sensitivity caches, emulator
builds) and XDG_CACHE_HOME (onnxruntime writes a device id there) in a fresh temporary
folder: a user's cache cannot change a result and no test writes to the home folder. A test
may still point TVMQ_CACHE_DIR elsewhere with monkeypatch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

import tvmq
from tvmq import data
from tvmq.oracle import Oracle

needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no host C compiler")
needs_m4 = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed (apt-get install "
           "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
SESSION_DIRS = {"TVMQ_CACHE_DIR": "tvmq", "XDG_CACHE_HOME": "cache"}  # variable -> subfolder
_caller_env: dict[str, str | None] = {}
_session_root: list[Path] = []


def pytest_configure(config) -> None:
    """Before any test runs: each SESSION_DIRS variable -> its subfolder of a new temporary
    folder."""
    root = Path(tempfile.mkdtemp(prefix="tvmq-test-"))
    _session_root.append(root)
    for name, sub in SESSION_DIRS.items():
        _caller_env[name] = os.environ.get(name)
        os.environ[name] = str(root / sub)


def pytest_unconfigure(config) -> None:
    """Remove the session's folder and give the variables back their caller's values."""
    shutil.rmtree(_session_root.pop(), ignore_errors=True)
    for name, value in _caller_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _caller_env.clear()


@tvm.ir.instrument.pass_instrument
class WellFormedAfterEachPass:
    """Raise AssertionError, naming the pass, after any pass that returns a module whose Relax
    functions are not well formed; modules with no Relax function (TIR lowering) are skipped.
    `checked` lists the name of every pass whose result was checked, in order."""

    def __init__(self):
        self.checked: list[str] = []

    def run_after_pass(self, mod, info) -> None:
        if not any(isinstance(f, relax.Function) for _, f in mod.functions_items()):
            return
        try:
            relax.analysis.well_formed(mod)
        except Exception as err:  # TVM raises its own error kinds (ValueError, TVMError, ...)
            raise AssertionError(f"pass {info.name} returned a Relax module that is not well "
                                 f"formed: {err}") from err
        self.checked.append(info.name)


@pytest.fixture(scope="session", autouse=True)
def well_formed_passes():
    """The session's PassContext carries a WellFormedAfterEachPass (yielded). Session scope, so
    that passes run by module- and session-scoped fixtures are checked too. A test that opens
    its own PassContext without this instrument runs its passes unchecked."""
    instrument = WellFormedAfterEachPass()
    with tvm.transform.PassContext(instruments=[instrument]):
        yield instrument


def make_onnx(nodes, initializers: dict[str, np.ndarray], input_shape, output_shape,
              *, input_name="input", output_name="output", opset=17) -> onnx.ModelProto:
    """A checked ONNX model from nodes and float initializers (one float32 input and output)."""
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k)
             for k, v in initializers.items()]
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(output_shape))],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def assert_taps_equal_oracle(mod, names, xs, oracle_mod=None) -> None:
    """Build `mod` with the bindings `names` tapped; on each input of `xs` its output and every
    tap equal the NumPy oracle's values bit for bit (dtype too). The oracle runs `oracle_mod`
    (default `mod`; e.g. the realized module of an accel-lowered `mod`)."""
    from tvmq.passes.insert_taps import InsertTaps
    from tvmq.targets.host import build

    tapped = build(InsertTaps(names)(mod))
    oracle = Oracle(mod if oracle_mod is None else oracle_mod)
    for x in xs:
        out, *taps = tapped.run(x[None])
        want, named = oracle.run(x[None], keep=True)
        np.testing.assert_array_equal(out, want)
        for name, got in zip(names, taps):
            assert got.dtype == named[name].dtype, name
            np.testing.assert_array_equal(got, named[name], err_msg=name)


@pytest.fixture(scope="session")
def digits():
    """(x_calib, x_test, y_test) of the bundled scikit-learn digits split."""
    return data.load_digits()


_COMPILED: dict = {}


@pytest.fixture(scope="session")
def compile_digits(digits):
    """compile_digits(**config) -> CompiledModel of the bundled model, compiled once per config."""
    x_calib = digits[0]

    def get(**config):
        key = tuple(sorted(config.items()))
        if key not in _COMPILED:
            cfg = tvmq.QuantConfig(sqnr_samples=8, **config)
            _COMPILED[key] = tvmq.compile(data.digits_model_path(), config=cfg,
                                          calib=x_calib[:64], progress=False)
        return _COMPILED[key]

    return get
