"""benchmarks/fallback.py on the digits task: the search runs, is reported and written."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fallback


def test_digits_w4a8_within_zero_drop(tmp_path, capsys):
    out = tmp_path / "fallback.json"
    assert fallback.main(["--model", "digits", "--config", "w4a8", "--calib", "64", "--test",
                          "120", "--max-drop", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layers in float" in text and "held out" in text
    assert "bit-exact with the oracle: True" in text
    result = json.loads(out.read_text())["results"]
    steps = result["fallback"]["steps"]
    assert steps[0]["float_layers"] == 0 and result["validation_samples"] == 60
    found = result["fallback"]
    k = len(found["raised"])
    assert any(s["float_layers"] == k and s["metric"] == found["final"] for s in steps)
    if found["met"]:  # the kept candidate meets the drop; every smaller one tried did not
        assert found["final"] >= found["float_value"]
        assert all(s["metric"] < found["float_value"] for s in steps if s["float_layers"] < k)
