import json

import numpy as np
import pytest

from tvmq import data
from tvmq.cli import build_parser, cli_words, main
from tvmq.config import SCHEMES


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("compile", "demo", "report"))


def test_compile_then_report(tmp_path, capsys, digits, monkeypatch):
    monkeypatch.setenv("TVMQ_CACHE_DIR", str(tmp_path / "cache"))  # cold: phases all timed
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=digits[0][:16])
    out = tmp_path / "build"
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--requant",
                 "fp32", "--observer", "percentile", "--out", str(out), "--quiet",
                 "--timings"]) == 0
    assert (out / "model.so").is_file()
    timings = capsys.readouterr().out.split("compile time by phase:\n")[1]
    for phase in ("import", "calibrate", "bias correction", "build", "codegen", "load"):
        assert f"  {phase} " in timings
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8 fp32, observer percentile" in text and "conv2d_0" in text


def test_errors_exit_2_with_message(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "report.json not found" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "nope.onnx"), "--calib", "x.npz",
                 "--out", str(tmp_path / "o")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_bad_choices_and_shapes_are_usage_errors():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["compile", "m.onnx", "--calib", "c", "--out", "o", "--rounding", "up"])
    with pytest.raises(SystemExit):
        parser.parse_args(["compile", "m.onnx", "--calib", "c", "--out", "o",
                           "--input-shape", "1,x"])
    args = parser.parse_args(["compile", "m.onnx", "--calib", "c", "--out", "o",
                              "--input-shape", "1,3,48,192"])
    assert args.input_shape == (1, 3, 48, 192)


def test_compile_with_boosters_records_them_and_refuses_them_for_lbfp(tmp_path, capsys, digits):
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=digits[0][:16])
    out = tmp_path / "build"
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--equalize",
                 "--bias-absorption", "--bias-correction", "--out", str(out), "--verify", "2",
                 "--quiet"]) == 0
    assert "bit-exact on 2 samples" in capsys.readouterr().out
    config = json.loads((out / "report.json").read_text())["config"]
    assert config["equalize"] is config["bias_absorption"] is config["bias_correction"] is True
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib),
                 "--no-bias-correction", "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())["config"]
    assert plain["bias_correction"] is False  # on by default
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--scheme",
                 "lbfp8", "--equalize", "--out", str(tmp_path / "o")]) == 2
    assert "--equalize applies to schemes 'int8', 'mixed' only" in capsys.readouterr().err


def test_compile_lbfp_scheme(tmp_path, capsys, digits):
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=digits[0][:16])
    out = tmp_path / "build"
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--scheme",
                 "lbfp6", "--observer", "minmax", "--lbfp-block-size", "8", "--out", str(out),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "lbfp6 frac_bits default, block 8, activation block 1, exponents minmax" in text
    assert "out exp min..max" in text and (out / "model.so").is_file()


def test_compile_mixed_scheme_with_budget(tmp_path, capsys, digits):
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=digits[0][:16])
    out = tmp_path / "build"
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--scheme",
                 "mixed", "--latency-budget", "0.8", "--target", "accel", "--out", str(out),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "mixed 4/8 bits, latency budget 0.8" in text and "w4a8" in text
    assert "% of uniform INT8" in text
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--scheme",
                 "mixed", "--latency-budget", "0.3", "--out", str(out), "--force",
                 "--quiet"]) == 2
    assert "--latency-budget 0.3 cannot be met: the smallest feasible is" in \
        capsys.readouterr().err


def test_compile_for_mcu_writes_the_c_project_or_refuses_with_the_numbers(tmp_path, capsys,
                                                                          digits):
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=digits[0][:16])
    out = tmp_path / "mcu"
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--target",
                 "mcu", "--out", str(out), "--quiet"]) == 0
    assert (out / "model.c").is_file() and (out / "Makefile").is_file()
    assert "mcu: arena 3,072 B" in capsys.readouterr().out
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--target",
                 "mcu", "--ram-bytes", "1000", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "but --ram-bytes is 1,000" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compile_w4a8_with_adaround_is_exact(tmp_path, capsys, digits):
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=digits[0][:16])
    out = tmp_path / "build"
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib),
                 "--weight-bits", "4", "--weight-rounding", "adaround", "--verify", "2",
                 "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "w4a8" in text and "vs oracle: bit-exact on 2 samples" in text
    assert (out / "model.so").is_file()


def test_a_flag_for_another_scheme_is_a_usage_error(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "nope.onnx"), "--calib", "c.npz", "--out",
                 str(tmp_path / "o"), "--latency-budget", "0.5"]) == 2
    assert capsys.readouterr().err == (
        "tvmq compile: error: --latency-budget 0.5 applies to scheme 'mixed' only (scheme is "
        "'int8'); drop it or use --scheme mixed.\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_flags_left_out_never_trip_the_scheme_check(tmp_path, capsys, scheme):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")  # the folder check is the next error
    assert main(["compile", "m.onnx", "--calib", "c.npz", "--out", str(tmp_path / "o"),
                 "--scheme", scheme]) == 2
    assert "holds files tvmq did not write" in capsys.readouterr().err


@pytest.mark.parametrize("python, cli", [
    ("QuantConfig.latency_budget=0.3 cannot be met", "--latency-budget 0.3 cannot be met"),
    ("QuantConfig.requant='fp32' applies to schemes 'int8', 'mixed' only (scheme is 'lbfp8')",
     "--requant fp32 applies to schemes 'int8', 'mixed' only (scheme is 'lbfp8')"),
    ("QuantConfig.rounding='single' applies to requant='mult_shift' only",
     "--rounding single applies to --requant mult_shift only"),
    ("QuantConfig.per_channel_weights=False applies", "--per-tensor-weights applies"),
    ("QuantConfig.symmetric_activations=True applies", "--symmetric-activations applies"),
    ("QuantConfig.equalize=True applies", "--equalize applies"),
    ("QuantConfig.bias_absorption=True applies", "--bias-absorption applies"),
    ("QuantConfig.bias_correction=False applies", "--no-bias-correction applies"),
    ("drop it or use scheme='mixed'.", "drop it or use --scheme mixed."),
    ("kind='fp32' takes rounding=None", "kind='fp32' takes rounding=None"),  # not a flag
    ("but McuConfig.ram_bytes is 1,000", "but --ram-bytes is 1,000"),
    ("Pass mcu=McuConfig(allow_float=True) to accept", "Pass --allow-float to accept"),
    ("pass overwrite=True (CLI: --force) to replace", "pass --force to replace"),
    ("QuantConfig.sqnr_samples=-1; use", "QuantConfig.sqnr_samples=-1; use"),  # no flag
    ("QuantConfig.weight_bits=4 applies to scheme 'int8' only",
     "--weight-bits 4 applies to scheme 'int8' only"),
    ("QuantConfig.weight_rounding='adaround' applies", "--weight-rounding adaround applies"),
])
def test_errors_speak_in_flags(python, cli):
    assert cli_words(python) == cli


def test_version_and_help_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("tvmq ")
    with pytest.raises(SystemExit):
        main(["compile", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default host)" in text and "(default mult_shift)" in text
    assert "replaced only with --force" in text and "examples:" in text


def test_compile_verify_prints_the_table_and_exits_0_when_exact(tmp_path, capsys, digits):
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=digits[0][:16])
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--out",
                 str(tmp_path / "build"), "--verify", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3/3" in out and "compiled model vs oracle: bit-exact on 3 samples" in out


def test_compile_verify_exits_1_when_not_exact(tmp_path, capsys, digits, monkeypatch):
    from tvmq import compiled_model

    class Off(compiled_model.Oracle):  # one float32 step above the real oracle
        def run(self, x, keep=False):
            return np.nextafter(super().run(x), np.float32(np.inf))

    monkeypatch.setattr(compiled_model, "Oracle", Off)
    calib = tmp_path / "calib.npz"
    np.savez(calib, calib=digits[0][:16])
    assert main(["compile", str(data.digits_model_path()), "--calib", str(calib), "--out",
                 str(tmp_path / "build"), "--verify", "2", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "0/2" in out and "NOT bit-exact on 2 samples" in out
    assert (tmp_path / "build" / "model.so").is_file()  # written before the check


def test_verify_needs_a_count(tmp_path, capsys):
    assert main(["compile", "m.onnx", "--calib", "c.npz", "--out", str(tmp_path / "o"),
                 "--verify", "-1"]) == 2
    assert "--verify -1" in capsys.readouterr().err
