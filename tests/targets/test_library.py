"""Building the emulator's C library: cached by hash, and a clear error without a compiler."""

import pytest
from tvmq.targets.accel import library

from tvmq.toolchain import find_compiler

pytestmark = pytest.mark.skipif(find_compiler() is None,
                                reason="the accel emulator needs a C compiler (cc/gcc or $CC)")


def test_build_is_cached_and_needs_a_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMQ_CACHE_DIR", str(tmp_path))
    lib = library.build()
    assert lib.is_file() and lib.parent.parent == tmp_path / "accel"
    assert library.build() == lib and [p.name for p in lib.parent.iterdir()] == ["libaccel.so"]
    monkeypatch.setenv("CC", "no-such-cc-for-tvmq")
    with pytest.raises(RuntimeError, match="no-such-cc-for-tvmq"):
        library.build()
