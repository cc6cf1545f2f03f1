"""The quantization debugger: cumulative and isolated SQNR per layer, ranges, ranking."""

import json
import math

import numpy as np
import pytest

import tvmq
from tvmq import data
from tvmq.cli import main


def _compile(digits, **config):
    return tvmq.compile(data.digits_model_path(), config=tvmq.QuantConfig(sqnr_samples=4, **config),
                        calib=digits[0][:32], progress=False)


def test_first_layer_isolated_is_cumulative_and_rows_rank_worst_first(compile_digits, digits):
    cm = compile_digits()
    found = cm.debug(digits[1], n=3)
    assert found.samples == 3 and len(found.layers) == len(cm.layers)
    first = found.layers[0]
    assert first.name == cm.layers[0].name and first.isolated_db == first.cumulative_db
    ranked = found.ranked()
    assert [r.isolated_db for r in ranked] == sorted(r.isolated_db for r in found.layers)
    assert all(20 < r.isolated_db < math.inf for r in found.layers)
    assert all(r.range_lo <= r.seen_lo or r.clipped > 0 for r in found.layers)
    # the last layer's cumulative error is the model's (matmul output = logits)
    assert found.layers[-1].cumulative_db == pytest.approx(found.outputs_db["logits"], abs=1e-9)
    table = found.table(top=3)
    assert table.count("\n") == 3 + 2 + 1 and ranked[0].name in table.splitlines()[3]
    json.dumps(found.to_dict())


def test_isolated_error_does_not_see_other_layers(digits):
    """conv2d_0 at 4-bit weights changes what conv2d_1 receives (cumulative) but not
    conv2d_1's own error (isolated)."""
    # bias correction off: it would fit conv2d_1's bias to what conv2d_0 passes on
    int8 = _compile(digits, bias_correction=False).debug(digits[1], n=2)
    coarse = _compile(digits, scheme="mixed", layer_bits={"conv2d_0": (4, 8)},
                      bias_correction=False).debug(digits[1], n=2)
    by_name = {r.name: r for r in coarse.layers}
    for row in int8.layers:
        other = by_name[row.name]
        if row.name == "conv2d_0":
            assert other.isolated_db < row.isolated_db - 6
        else:
            assert other.isolated_db == row.isolated_db, row.name
    assert by_name["conv2d_1"].cumulative_db < int8.layers[1].cumulative_db


def test_lbfp_has_no_integer_range(digits):
    found = _compile(digits, scheme="lbfp8").debug(digits[1], n=2)
    assert [r.op for r in found.layers] == ["conv2d"] * 5 + ["matmul"]
    assert all(r.range_lo is None and r.clipped is None for r in found.layers)
    assert found.layers[0].isolated_db == found.layers[0].cumulative_db


def test_plot_marks_the_worst(compile_digits, digits):
    import matplotlib

    matplotlib.use("Agg")
    ax = compile_digits().debug(digits[1], n=2).plot(label=2)
    assert len(ax.lines) == 2 and len(ax.texts) == 2


def test_oracle_substitute_checks_what_it_is_given(compile_digits, digits):
    oracle = compile_digits().oracle()
    x = digits[1][:1]
    with pytest.raises(ValueError, match="keep=True"):
        oracle.run(x, substitute={"conv2d_0": np.zeros(1)})
    with pytest.raises(ValueError, match=r"substitute\['conv2d_0_q'\]"):
        oracle.run(x, keep=True, substitute={"conv2d_0_q": np.zeros((1, 16, 8, 8), np.int32)})
    _, named = oracle.run(x, keep=True)
    zero = np.zeros_like(named["conv2d_0_q"])
    _, sub = oracle.run(x, keep=True, substitute={"conv2d_0_q": zero})
    np.testing.assert_array_equal(sub["conv2d_0_q"], named["conv2d_0_q"])  # computed, kept
    assert not np.array_equal(sub["conv2d_1_q"], named["conv2d_1_q"])  # consumers see zeros


def test_cli_debug_prints_the_table_and_writes_json(tmp_path, capsys, digits):
    calib, evaluation = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, calib=digits[0][:16])
    np.savez(evaluation, x=digits[1][:4])
    out_json = tmp_path / "debug.json"
    assert main(["debug", str(data.digits_model_path()), "--calib", str(calib), "--eval",
                 str(evaluation), "-n", "2", "--top", "4", "--json", str(out_json),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "isolated dB" in out and "2 samples" in out and "(4 of 12)" in out
    assert len(json.loads(out_json.read_text())["layers"]) == 12
    assert main(["debug", str(data.digits_model_path()), "--calib", str(calib), "-n", "0"]) == 2
