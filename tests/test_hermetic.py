"""The test session never reads or writes the user's caches (tests/conftest.py)."""

import os
import tempfile
from pathlib import Path

from tvmq.targets.host.tune import TuningCache

from tvmq import toolchain
from tvmq.mixed.cost import CostCache


def test_the_session_caches_are_in_a_new_temporary_folder():
    root = toolchain.cache_root()
    session = root.parent
    assert session.parent == Path(tempfile.gettempdir()) and session.name.startswith("tvmq-test-")
    assert TuningCache().path.parent == root and CostCache().root.parent == root
    assert Path(os.environ["XDG_CACHE_HOME"]).parent == session
