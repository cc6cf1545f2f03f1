"""benchmarks/_common.py: tables, command-line types and the JSON result file."""

import argparse
import importlib.util
import json
import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_common", REPO / "benchmarks" / "_common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_format_table_aligns_text_left_and_numbers_right():
    table = common.format_table(["name", "kind", "ms"], [["a", "conv", 1.5], ["bb", "x", 12]])
    assert table.splitlines() == [
        "name  kind   ms",
        "----  ----  ---",
        "a     conv  1.5",
        "bb    x      12",
    ]


def test_name_list_keeps_order_and_drops_duplicates():
    assert common.name_list("b, a,b,", ["a", "b"], "models") == ["b", "a"]


@pytest.mark.parametrize("text", ["c", "a,c", "", ","])
def test_name_list_refuses_unknown_or_no_names(text):
    with pytest.raises(argparse.ArgumentTypeError, match="choose from"):
        common.name_list(text, ["a", "b"], "models")


@pytest.mark.parametrize("text", ["0", "-3"])
def test_positive_int_refuses_zero_and_negatives(text):
    with pytest.raises(argparse.ArgumentTypeError, match="positive"):
        common.positive_int(text)


def test_json_argument_defaults_to_the_results_folder(tmp_path):
    parser = argparse.ArgumentParser()
    common.add_json_argument(parser, "speed")
    assert parser.parse_args([]).json == REPO / "benchmarks" / "results" / "speed.json"
    assert parser.parse_args(["--json", str(tmp_path / "x.json")]).json == tmp_path / "x.json"


@dataclass
class _Row:
    name: str
    ms: float


def test_write_results_records_rows_and_environment(tmp_path):
    rows = [_Row("a", 0.5), {"sqnr": math.inf, "low": -math.inf, "missing": math.nan,
                             "n": np.int64(3), "x": np.float32(0.25), "v": np.arange(2),
                             "path": Path("m.onnx"), "ok": True}]
    path = common.write_results(tmp_path / "sub" / "bench.json", "speed", {"rows": rows},
                                argv=["--quick"], threads={"tvm": 2})
    record = json.loads(path.read_text())
    assert record["results"] == {"rows": [
        {"name": "a", "ms": 0.5},
        {"sqnr": "inf", "low": "-inf", "missing": None, "n": 3, "x": 0.25, "v": [0, 1],
         "path": "m.onnx", "ok": True},
    ]}
    assert record["benchmark"] == "speed"
    assert record["command"].endswith(" --quick")
    assert record["threads"]["tvm"] == 2
    assert set(record["threads"]) >= {"TVM_NUM_THREADS", "OMP_NUM_THREADS", "os_cpu_count"}
    assert set(record["versions"]) == {"python", "tvm", "onnxruntime", "numpy", "tvmq"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["date_utc"])
    assert record["cpu"]


def test_git_commit_is_head_with_dirty_mark():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert common.run_environment("x", [], {})["git_commit"] in (head, f"{head}-dirty")
