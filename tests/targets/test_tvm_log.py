"""Saving and loading a model.so prints none of TVM's per-constant "Scope Saving" / "Scope
Loaded" lines (targets/host/tvm_log.py), and real errors still reach the user."""

import os
import subprocess
import sys

import numpy as np
import pytest
from tvmq.targets.host import build, load
from tvmq.targets.host.target import export_library
from tvmq.targets.host.tvm_log import drop_scope_lines

from tvmq import data
from tvmq.cli import main

SCOPE = "Warning: Scope "


def test_export_and_load_print_no_scope_lines(compile_digits, digits, tmp_path, capfd):
    cm = compile_digits()
    x = digits[1][:1]
    # a build outside the build cache: its executable, run by a VM, is exported as it is
    fresh = build(cm.quant_mod, reuse=False)
    export_library(fresh, tmp_path / "model.so")
    model = load(tmp_path / "model.so")
    err = capfd.readouterr().err
    assert SCOPE not in err, err[:500]
    np.testing.assert_array_equal(model.run(x), cm.run(x))
    # without the filter TVM prints them, so the test would see a regression
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, tvm; tvm.runtime.load_module(sys.argv[1])",
         str(tmp_path / "model.so")], capture_output=True, text=True, check=True)
    assert "Scope Loaded" in loaded.stderr


@pytest.mark.parametrize("target", ["host", "accel"])
def test_cli_compile_out_prints_no_scope_lines(tmp_path, capfd, target):
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=data.load_digits()[0][:16])
    out = tmp_path / "out"
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--target",
                 target, "--out", str(out), "--quiet"]) == 0
    load(out / "model.so")
    captured = capfd.readouterr()
    assert "wrote" in captured.out and SCOPE not in captured.err, captured.err[:500]


def test_other_lines_and_errors_still_reach_the_user(tmp_path, capfd):
    scope = b"[12:00:00] /project/src/runtime/vm/executable.cc:276: Warning: Scope Saving: \n"
    with drop_scope_lines():
        os.write(2, scope)
        os.write(2, b"a C library's warning\n")
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('cc: error\\n')"],
                       check=True)  # a child process (e.g. the C compiler) inherits fd 2
        os.write(2, scope)
    assert capfd.readouterr().err == "a C library's warning\ncc: error\n"
    with pytest.raises(ValueError, match=r"cannot find file .*missing\.so"):
        load(tmp_path / "missing.so")
    os.write(2, b"after\n")  # the filter is gone after an error too
    assert capfd.readouterr().err.endswith("after\n")
