"""Issue 20's bugs, each reproduced: (1) export never deletes a user's files, (2) the output
location is checked before any work, (3) a model with two outputs compiles (tests/test_multi_output
covers every target), (4) degenerate calibration warns and SQNR comes from held-back samples,
(5) the accelerator export is self-contained; also Ctrl-C, permissions, bad inputs to `run`."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

import tvmq
from tvmq import data
from tvmq.cli import main
from tvmq.output_folder import MANIFEST, OutputFolderError, check_output_folder, write_folder


def _user_folder(path):
    """A folder of the user's own files; returns {name: bytes} to check it later."""
    path.mkdir(parents=True, exist_ok=True)
    files = {"notes.txt": b"my notes\n", "model.onnx": b"not tvmq's", "config.json": b"{}"}
    for name, content in files.items():
        (path / name).write_bytes(content)
    return files


def _assert_intact(path, files):
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files


def _write_two_files(out):
    (out / "a.txt").write_text("a")
    (out / "sub").mkdir()
    (out / "sub" / "b.txt").write_text("b")


@pytest.fixture
def calib_npz(tmp_path, digits):
    path = tmp_path / "calib.npz"
    np.savez(path, calib=digits[0][:8])
    return path


# ---------------------------------------------------------------- 1. export never deletes

def test_export_refuses_a_folder_of_user_files(compile_digits, tmp_path):
    cm = compile_digits(requant="fp32")
    files = _user_folder(tmp_path / "mydocs")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match="holds files tvmq did not write"):
            cm.export(tmp_path / "mydocs", overwrite=overwrite)
        _assert_intact(tmp_path / "mydocs", files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydocs"]  # no temp folder left


def test_cli_out_dot_refuses_the_working_folder(tmp_path, monkeypatch, capsys, digits):
    files = _user_folder(tmp_path)
    np.savez(tmp_path / "calib.npz", calib=digits[0][:8])
    files["calib.npz"] = (tmp_path / "calib.npz").read_bytes()
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path), "/", str(tmp_path.parent)):
        assert main(["compile", str(data.digits_model_path()), "--calib", "calib.npz",
                     "--out", out, "--force", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "refusing to export into" in err and len(err.strip().splitlines()) == 1
    _assert_intact(tmp_path, files)


def test_export_refuses_the_home_folder(compile_digits, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(OutputFolderError, match="your home folder"):
        compile_digits(requant="fp32").export(tmp_path, overwrite=True)
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_only_its_own_export_and_only_with_overwrite(compile_digits, tmp_path):
    cm = compile_digits(requant="fp32")
    out = tmp_path / "build"
    (out).mkdir()
    cm.export(out)  # an empty folder is fine
    manifest = (out / MANIFEST).read_text()
    assert "model.so" in manifest and "report.json" in manifest
    with pytest.raises(OutputFolderError, match="earlier tvmq export; pass overwrite=True"):
        cm.export(out)
    (out / "report.txt").write_text("edited by the user, still tvmq's file\n")
    cm.export(out, overwrite=True)
    assert (out / "report.txt").read_text().startswith("tvmq report")
    (out / "mine.txt").write_text("the user's")
    with pytest.raises(OutputFolderError, match=r"did not write \(mine.txt\)"):
        cm.export(out, overwrite=True)
    assert (out / "mine.txt").read_text() == "the user's" and (out / "model.so").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]


def test_replacing_keeps_files_that_appear_during_the_export(tmp_path):
    out = write_folder(tmp_path / "o", _write_two_files)

    def sneaky(tmp):  # the user drops a file into the old export while tvmq writes
        (out / "late.txt").write_text("mine")
        _write_two_files(tmp)

    with pytest.raises(OutputFolderError, match=r"late\.txt"):
        write_folder(out, sneaky, overwrite=True)
    assert (out / "late.txt").read_text() == "mine" and (out / "a.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_build_products_of_the_exported_makefile_count_as_tvmqs(tmp_path):
    out = write_folder(tmp_path / "mcu", _write_two_files, build_products=["model_host"])
    (out / "model_host").write_bytes(b"\x7fELF")  # `make host` in the project
    write_folder(out, _write_two_files, overwrite=True)
    assert not (out / "model_host").exists() and (out / "sub" / "b.txt").is_file()


def test_exported_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_folder(tmp_path / "o", _write_two_files)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes == {"o": 0o755, "sub": 0o755, "a.txt": 0o644, "b.txt": 0o644, MANIFEST: 0o644}


# ---------------------------------------------------------------- 2. checked before any work

@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if the CLI starts compiling."""
    import tvmq.compiler

    def compile(*args, **kwargs):
        raise AssertionError("compiled before checking --out")

    monkeypatch.setattr(tvmq.compiler, "compile", compile)


@pytest.mark.parametrize("out, why", [
    ("afile", "is a file, not a folder"),
    ("afile/sub", "afile is a file, not a folder"),
    ("/proc/tvmq-out", "is not writable"),
    ("userdir", "holds files tvmq did not write"),
])
def test_cli_checks_out_before_compiling(tmp_path, capsys, calib_npz, no_compile, out, why):
    (tmp_path / "afile").write_text("x")
    _user_folder(tmp_path / "userdir")
    out = out if out.startswith("/") else str(tmp_path / out)
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib_npz),
                 "--out", out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert why in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_check_output_folder_writes_nothing(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- Ctrl-C

def test_ctrl_c_during_compile_exits_130_and_writes_nothing(tmp_path, capsys, calib_npz,
                                                            monkeypatch):
    import tvmq.compiler

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tvmq.compiler, "compile", interrupted)
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib_npz),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == "tvmq compile: interrupted, nothing written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz"]


def test_ctrl_c_inside_a_tvm_callback_is_still_an_interrupt(tmp_path, capsys, calib_npz,
                                                          monkeypatch):
    import signal
    import time

    import tvmq.compiler

    def tvm_pass(*args, **kwargs):  # TVM's FFI turns a KeyboardInterrupt in a Python
        try:  # callback (a pass, a TE compute) into a bare RuntimeError
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise RuntimeError from None

    monkeypatch.setattr(tvmq.compiler, "compile", tvm_pass)
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib_npz),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == "tvmq compile: interrupted, nothing written"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back


def test_ctrl_c_during_export_keeps_the_old_export(tmp_path):
    out = write_folder(tmp_path / "o", _write_two_files)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(tmp):
        (tmp / "half.bin").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_folder(out, interrupted, overwrite=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


# ---------------------------------------------------------------- bad calibration files

@pytest.mark.parametrize("content", [b"garbage, not numpy", b"\x93NUMPY\x01\x00", b""])
def test_calib_that_is_not_an_npz_archive_says_so(tmp_path, capsys, content):
    path = tmp_path / "calib.npz"
    path.write_bytes(content)
    assert main(["compile", str(data.digits_model_path()), "--calib", str(path),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("is not an .npz archive; write one with numpy.savez(path, calib=x).")
    assert "pickle" not in err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- 4. degenerate calibration

def test_constant_calibration_warns_in_python_and_on_the_cli(tmp_path, capsys, digits):
    zeros = np.zeros_like(digits[0][:8])
    with pytest.warns(tvmq.CalibrationWarning, match="calibration data is constant"):
        tvmq.compile(data.digits_model_path(), calib=zeros, progress=False)
    np.savez(tmp_path / "zeros.npz", calib=zeros)
    assert main(["compile", str(data.digits_model_path()), "--calib", str(tmp_path / "zeros.npz"),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "tvmq compile: warning: the calibration data is constant (every value of input " \
        "'input' is 0)" in err


def test_repeated_calibration_sample_warns(digits):
    same = np.repeat(digits[0][:1], 6, axis=0)
    with pytest.warns(tvmq.CalibrationWarning, match="all 5 calibration samples are the same"):
        tvmq.compile(data.digits_model_path(), calib=same, progress=False)


def test_sqnr_is_measured_on_samples_held_back_from_the_ranges(digits):
    x = digits[0][:10].copy()
    x[4] *= 100  # every 5th sample is held back: this one must not set the input's range
    cm = tvmq.compile(data.digits_model_path(), calib=x, progress=False,
                      config=tvmq.QuantConfig(sqnr_samples=4))
    lo, hi = x[np.arange(10) % 5 != 4].min(), x[np.arange(10) % 5 != 4].max()
    assert cm.act_qparams["input"].scale == pytest.approx((hi - lo) / 255)
    rep = cm.report()
    assert (rep.sqnr_samples, rep.sqnr_held_back) == (2, True)
    assert "on 2 held-back calibration samples (not used to set ranges)" in str(rep)
    assert rep.output_sqnr_db < 10  # the held-back sample is far outside the ranges


def test_too_few_samples_to_hold_back_are_measured_and_say_so(digits):
    cm = tvmq.compile(data.digits_model_path(), calib=digits[0][:3], progress=False)
    rep = cm.report()
    assert (rep.sqnr_samples, rep.sqnr_held_back) == (3, False)
    assert "on 3 calibration samples that also set the ranges (too few to hold any back)" \
        in str(rep)


# ---------------------------------------------------------------- run: inputs users pass

def test_run_refuses_integer_and_empty_input_and_the_oracle_takes_a_stack(compile_digits,
                                                                         digits):
    cm = compile_digits(requant="fp32")
    x = digits[1][:3]
    with pytest.raises(TypeError, match="dtype int8: the model takes float values"):
        cm.run((x * 16).astype(np.int8))
    with pytest.raises(ValueError, match="empty input batch"):
        cm.run(x[:0])
    np.testing.assert_array_equal(cm.oracle().run(x), cm.run(x))
    with pytest.raises(ValueError, match="keep=True runs one input"):
        cm.oracle().run(x, keep=True)


# ---------------------------------------------------------------- 3. two outputs

def test_two_output_model_compiles_on_the_cli(tmp_path, capsys):
    import onnx

    from tests.test_multi_output import CALIB, classifier

    onnx.save(classifier(), tmp_path / "two.onnx")
    np.savez(tmp_path / "c.npz", calib=CALIB)
    assert main(["compile", str(tmp_path / "two.onnx"), "--calib", str(tmp_path / "c.npz"),
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert "  output feat: " in capsys.readouterr().out
    outputs = json.loads((tmp_path / "o" / "config.json").read_text())["outputs"]
    assert [o["name"] for o in outputs] == ["logits", "feat"]


# ---------------------------------------------------------------- 5. self-contained accel export

def test_accel_export_runs_moved_with_an_empty_cache(tmp_path, digits):
    """Moved elsewhere, with tvmq's cache pointed at an empty folder, a fresh process loads
    model.so with TVM alone and links the libaccel.so beside it."""
    cm = tvmq.compile(data.digits_model_path(), target="accel", calib=digits[0][:8],
                      progress=False)
    moved = shutil.copytree(cm.export(tmp_path / "out"), tmp_path / "moved")
    x = digits[1][:1]
    np.save(tmp_path / "x.npy", x)
    script = ("import numpy as np, tvm\n"
              "from tvm import relax\n"
              f"vm = relax.VirtualMachine(tvm.runtime.load_module({str(moved / 'model.so')!r}), "
              "tvm.cpu())\n"
              f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
              f"np.save({str(tmp_path / 'y.npy')!r}, vm['main'](tvm.runtime.tensor(x)).numpy())\n"
              "maps = open('/proc/self/maps').read()\n"
              "print(sorted({l.split()[-1] for l in maps.splitlines() if 'libaccel' in l}))\n")
    env = {**os.environ, "TVMQ_CACHE_DIR": str(tmp_path / "empty_cache")}
    done = subprocess.run([sys.executable, "-c", script], check=True, env=env,
                          capture_output=True, text=True)
    assert done.stdout.strip() == str([str(moved / "libaccel.so")])
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), cm.run(x))
