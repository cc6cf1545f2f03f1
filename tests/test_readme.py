"""The README's Python code blocks run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)  # cm.export("build/...") writes here
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    assert (tmp_path / "build" / "digits" / "report.json").is_file()
