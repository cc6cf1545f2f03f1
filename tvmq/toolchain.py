"""Services every target shares: tvmq's cache folder and the host C compiler."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path


def cache_root() -> Path:
    """tvmq's cache folder: $TVMQ_CACHE_DIR or ~/.cache/tvmq."""
    root = os.environ.get("TVMQ_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "tvmq"


def find_compiler() -> str | None:
    """Path of the C compiler: ``$CC`` if set, else ``cc``, else ``gcc``; None if none found."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc"]
    for name in names:
        path = _which(name, os.environ.get("PATH"))
        if path:
            return path
    return None


@functools.lru_cache(maxsize=16)
def _which(name: str, search_path: str | None) -> str | None:
    """`shutil.which`, remembered per PATH: the emulator looks on every call into its library."""
    return shutil.which(name, path=search_path)
