"""BuildCache: host builds kept on disk, so a compile that builds the same module again (the same
model, calibration data and config; or the calibration build of the same model) loads the
shared library instead of generating code (a warm compile).

Key: SHA-256 of the fused module's structural hash (its ops, shapes and every constant's
bytes), each kernel's schedule choice (the tuned or default ScheduleParams, or TVM's loops),
the target, TVM's version and tvmq's own source (every .py file of tvmq, tvmq.passes and
tvmq.targets, hashed once per process: a code change never reuses an older build).

An entry is `<key>.so`, the executable exported as `CompiledModel.export` writes model.so,
and `<key>.json`, its kernels' KernelSchedule. Both are written under a temporary name and
renamed, so a reader never sees half an entry; at most MAX_ENTRIES entries are kept (the least
recently used go first). A build whose export fails (no C compiler) is used as it is, uncached.
`TVMQ_BUILD_CACHE=0` turns the cache off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import tvm
import tvm_ffi

from tvmq.toolchain import cache_root

MAX_ENTRIES = 24  # about 8 compiles (calibration, bias correction, main build)
log = logging.getLogger(__name__)


def enabled() -> bool:
    return os.environ.get("TVMQ_BUILD_CACHE", "1") != "0"


@functools.cache
def source_hash() -> str:
    """SHA-256 of tvmq's Python source (the tvmq, passes and targets packages)."""
    import tvmq.passes
    import tvmq.targets

    import tvmq

    digest = hashlib.sha256()
    for package in (tvmq, tvmq.passes, tvmq.targets):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class BuildCache:
    """Host builds by key, in `folder` (default: the tvmq cache folder's `builds`)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else cache_root() / "builds"

    @staticmethod
    def key(fused: tvm.IRModule, choices: dict[str, str], target: tvm.target.Target) -> str:
        """The key of a build of `fused` with `choices` (kernel name -> its schedule choice)."""
        text = json.dumps([str(tvm_ffi.structural_hash(fused)), sorted(choices.items()),
                           str(target), tvm.__version__, source_hash()])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def lookup(self, key: str) -> tuple[Path, dict] | None:
        """(the library, its kernels' schedules as stored) or None."""
        library, meta = self.folder / f"{key}.so", self.folder / f"{key}.json"
        if not (library.is_file() and meta.is_file()):
            return None
        os.utime(library)  # recently used
        return library, json.loads(meta.read_text())

    def store(self, key: str, executable, schedules: dict) -> Path | None:
        """Export `executable` as the entry `key` (and its schedules); its path, or None when
        the export failed (logged)."""
        from .target import export_executable  # as `export` writes model.so

        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".so.tmp")
        os.close(fd)
        try:
            export_executable(executable, Path(tmp))
        except Exception as err:
            log.debug("host build not cached: the export failed: %s", err)
            Path(tmp).unlink(missing_ok=True)
            return None
        meta_fd, meta_tmp = tempfile.mkstemp(dir=self.folder, suffix=".json.tmp")
        with os.fdopen(meta_fd, "w") as f:
            json.dump(schedules, f)
        os.replace(meta_tmp, self.folder / f"{key}.json")
        os.replace(tmp, self.folder / f"{key}.so")
        self._prune()
        return self.folder / f"{key}.so"

    def _prune(self) -> None:
        """Keep the MAX_ENTRIES most recently used entries."""
        libraries = sorted(self.folder.glob("*.so"), key=lambda p: p.stat().st_mtime,
                           reverse=True)
        for library in libraries[MAX_ENTRIES:]:
            library.unlink(missing_ok=True)
            library.with_suffix(".json").unlink(missing_ok=True)
