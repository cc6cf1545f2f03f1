"""benchmarks/zoo.py: the scoreboard's cells, markdown and result-file round trip (no model run)."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common
import zoo


def _rows():
    return [
        zoo.Row("rec", "fp32 ort", "exact %", 80.0, {"CER %": 2.5}, agree=100.0, ms=8.0),
        zoo.Row("rec", "int8 ort", "exact %", 70.0, {"CER %": 4.0}, agree=75.0, sqnr_db=9.5,
                compile_s=4.4, ms=4.0),
        zoo.Row("rec", "tvmq int8", "exact %", 78.0, {"CER %": 3.0}, agree=90.0, sqnr_db=11.25,
                exact="8/8", float_ops=273, compile_s=104.0, ms=2742.4, loops_pct=12.34,
                timings={"build": 60.0, "build/codegen": 40.0}),
        zoo.Row("rec", "tvmq mixed", "exact %", error="CompileError: budget cannot be met"),
    ]


def test_latency_has_three_significant_digits_and_no_exponent():
    assert [zoo._ms(v) for v in (0.02471, 0.5391, 16.42, 2742.4, math.nan)] == \
        ["0.0247", "0.539", "16.4", "2742", ""]


def test_markdown_names_each_metric_and_compares_with_ort_int8():
    lines = zoo.markdown(_rows(), {"yolo": "no network"}).splitlines()
    assert lines[0].startswith("| model | config | metric | Δ pts |")
    assert lines[4] == ("| rec | tvmq int8 | exact %: 78.00, CER 3.00 | -2.00 | 90.0 | 11.2 | 8/8 "
                        "| 273 | 104.0 | 2742 | 685.60x | 12.3 |")
    assert lines[5].startswith("| rec | tvmq mixed | failed: CompileError: budget cannot be met |")
    assert lines[-1] == "yolo: skipped: no network"


def test_result_file_round_trip(tmp_path):
    path = _common.write_results(tmp_path / "zoo.json", "zoo",
                                 {"rows": [zoo._record(r) for r in _rows()], "skipped": {}},
                                 argv=[], threads={})
    rows, skipped = zoo.read_rows(path)
    assert zoo.markdown(rows, skipped) == zoo.markdown(_rows(), {})


def test_render_joins_runs_and_drops_a_skip_another_run_scored(tmp_path):
    first, second = _rows()[:2], _rows()[2:]
    for name, rows, skipped in (("a", first, {"rec": "later", "yolo": "no network"}),
                                ("b", second, {})):
        _common.write_results(tmp_path / f"{name}.json", "zoo",
                              {"rows": [zoo._record(r) for r in rows], "skipped": skipped},
                              argv=[], threads={})
    out = tmp_path / "zoo.md"
    assert zoo.main(["--render", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                     "--markdown", str(out)]) == 0
    assert out.read_text() == zoo.markdown(_rows(), {"yolo": "no network"}) + "\n"
