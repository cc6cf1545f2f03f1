"""The code passes ruff (rules in pyproject.toml: E, F, I, UP, RUF; line length 100)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    pytest.importorskip("ruff")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "tvmq", "passes", "targets", "tests", "benchmarks",
         "tutorials"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
