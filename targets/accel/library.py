"""Build and load the emulator's C library, ``libaccel.so``, from the sources in ``emulator/``.

`build()` compiles ``accel.c`` and ``gradq.c`` once with the system C compiler
(:func:`tvmq.toolchain.find_compiler`: ``$CC``, else ``cc``, else ``gcc``) into
``$TVMQ_CACHE_DIR/accel/<sha256>/libaccel.so`` (default ``~/.cache/tvmq``), the hash covering
the sources, the compiler and the flags. `load()` opens it with ``ctypes`` (``RTLD_GLOBAL``, so
code compiled later, e.g. TVM's, can resolve the ``accel_*`` symbols), once per build hash per
process, with the argument types of :mod:`.c_api` declared.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from tvmq.toolchain import cache_root, find_compiler

from . import c_api

SOURCE_DIR = Path(__file__).with_name("emulator")
SOURCES = ("accel.h", "accel.c", "gradq.c")
CFLAGS = ("-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
          "-ffp-contract=off", "-fwrapv")

_BUILT: dict[tuple[str, Path], Path] = {}  # (compiler, cache root) -> library, per process


def build() -> Path:
    """Compile the emulator if its cached library is missing; return the library's path.

    Raises
    ------
    RuntimeError
        If no C compiler is found (naming what was looked for) or compilation fails.
    """
    cc = find_compiler()
    if cc is None:
        wanted = f"$CC={os.environ['CC']!r}" if os.environ.get("CC") else "'cc' or 'gcc'"
        raise RuntimeError(f"the accel emulator needs a C compiler: {wanted} is not on PATH; "
                           "install gcc or set CC.")
    key = (cc, cache_root())
    if key in _BUILT and _BUILT[key].exists():  # hashing the sources on every call is slow
        return _BUILT[key]
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    digest.update("\0".join((cc, *CFLAGS)).encode())
    out_dir = cache_root() / "accel" / digest.hexdigest()
    lib = out_dir / "libaccel.so"
    if lib.exists():
        _BUILT[key] = lib
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        sources = [str(SOURCE_DIR / name) for name in SOURCES if name.endswith(".c")]
        cmd = [cc, *CFLAGS, "-o", tmp, *sources, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building the accel emulator failed: {' '.join(cmd)}\n"
                               f"{done.stderr}")
        os.replace(tmp, lib)  # atomic: concurrent builders never see a partial library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _BUILT[key] = lib
    return lib


_LOADED: dict[str, ctypes.CDLL] = {}


def load() -> ctypes.CDLL:
    """The emulator library (built if needed), with argument types declared.

    One copy per build hash per process, wherever it is cached: compiled models resolve the
    `accel_*` symbols globally, so their counter bank must be the one Python reads.
    """
    path = build()
    key = path.parent.name
    if key not in _LOADED:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        c_api.declare(lib, path)
        _LOADED[key] = lib
    return _LOADED[key]
