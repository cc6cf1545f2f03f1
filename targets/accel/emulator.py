"""Build, load and call the C emulator of the accelerator (``emulator/accel.c``).

The C sources are compiled once with the system C compiler (``$CC``, else ``cc``, else ``gcc``)
into ``$TVMQ_CACHE_DIR/accel/<sha256>/libaccel.so`` (default ``~/.cache/tvmq``), the hash
covering the sources, the compiler and the flags, and loaded with ``ctypes`` (``RTLD_GLOBAL``,
so code compiled later, e.g. TVM's, can resolve the ``accel_*`` symbols).

Examples
--------
>>> import numpy as np
>>> from tvmq.numerics import Requant
>>> rq = Requant.from_scale(0.5, "mult_shift", "double")
>>> requant(np.array([5, -5], np.int32), "mult_shift", "double", rq.multiplier, rq.shift, None,
...         0, -128, 127)
array([ 3, -2], dtype=int32)
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tvmq.numerics import Requant

from .config import AccelConfig

SOURCE_DIR = Path(__file__).with_name("emulator")
SOURCES = ("accel.h", "accel.c")
CFLAGS = ("-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
          "-ffp-contract=off", "-fwrapv")
KINDS = {"double": 0, "single": 1, "tonearest": 2, "fp32": 3}
COUNTERS = ("cycles", "compute_cycles", "dma_cycles", "requant_cycles", "macs", "dma_bytes",
            "tiles")

_i32p = ctypes.POINTER(ctypes.c_int32)
_i8p = ctypes.POINTER(ctypes.c_int8)
_f32p = ctypes.POINTER(ctypes.c_float)


class _Hw(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("t_oc", "t_ic", "weight_buffer_bytes",
                                              "act_buffer_bytes", "acc_buffer_bytes",
                                              "dma_bytes_per_cycle")]


class _ConvArgs(ctypes.Structure):
    _fields_ = [
        ("x", _i8p), *((n, ctypes.c_int32) for n in ("C", "H", "W", "in_zp")),
        ("w", _i8p), *((n, ctypes.c_int32) for n in ("O", "KH", "KW", "groups")),
        *((n, ctypes.c_int32) for n in ("stride_h", "stride_w", "pad_top", "pad_left",
                                        "pad_bottom", "pad_right", "dil_h", "dil_w")),
        ("bias", _i32p), ("kind", ctypes.c_int32), ("mult", _i32p), ("shift", _i32p),
        ("scale", _f32p), ("per_channel", ctypes.c_int32),
        *((n, ctypes.c_int32) for n in ("out_zp", "qmin", "qmax")),
        ("y", _i8p), ("OH", ctypes.c_int32), ("OW", ctypes.c_int32),
    ]


class _Counters(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in COUNTERS]


def find_compiler() -> str | None:
    """Path of the C compiler: ``$CC`` if set, else ``cc``, else ``gcc``; None if none found."""
    names = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc"]
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def _cache_root() -> Path:
    root = os.environ.get("TVMQ_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "tvmq"


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
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    digest.update("\0".join((cc, *CFLAGS)).encode())
    out_dir = _cache_root() / "accel" / digest.hexdigest()
    lib = out_dir / "libaccel.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        cmd = [cc, *CFLAGS, "-o", tmp, str(SOURCE_DIR / "accel.c"), "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building the accel emulator failed: {' '.join(cmd)}\n"
                               f"{done.stderr}")
        os.replace(tmp, lib)  # atomic: concurrent builders never see a partial library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


_LOADED: dict[Path, ctypes.CDLL] = {}


def load() -> ctypes.CDLL:
    """The emulator library (built if needed), with argument types declared."""
    path = build()
    if path not in _LOADED:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        lib.accel_requant.argtypes = [_i32p, ctypes.c_int64, ctypes.c_int, _i32p, _i32p, _f32p,
                                      ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _i32p]
        lib.accel_requant.restype = ctypes.c_int
        lib.accel_conv2d.argtypes = [ctypes.POINTER(_Hw), ctypes.POINTER(_ConvArgs),
                                     ctypes.POINTER(_Counters)]
        lib.accel_conv2d.restype = ctypes.c_int
        lib.accel_last_error.argtypes = []
        lib.accel_last_error.restype = ctypes.c_char_p
        _LOADED[path] = lib
    return _LOADED[path]


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != 0:
        raise ValueError(f"{what}: {lib.accel_last_error().decode()}")


def _kind(kind: str, rounding: str | None) -> int:
    if kind == "fp32" and rounding is None:
        return KINDS["fp32"]
    if kind == "mult_shift" and rounding in ("double", "single", "tonearest"):
        return KINDS[rounding]
    raise ValueError(f"kind={kind!r}, rounding={rounding!r}: use kind='mult_shift' with rounding "
                     "'double'/'single'/'tonearest', or kind='fp32' with rounding=None")


def _ptr(a: np.ndarray | None, ctype):
    return None if a is None else a.ctypes.data_as(ctype)


def _params(kind: int, multiplier, shift, scale):
    if kind == KINDS["fp32"]:
        return None, None, np.ascontiguousarray(scale, np.float32).reshape(-1)
    return (np.ascontiguousarray(multiplier, np.int32).reshape(-1),
            np.ascontiguousarray(shift, np.int32).reshape(-1), None)


def requant(acc: np.ndarray, kind: str, rounding: str | None, multiplier, shift, scale,
            out_zp: int, qmin: int, qmax: int) -> np.ndarray:
    """The accelerator's requant unit on int32 ``acc`` with per-tensor parameters.

    ``clip(requant(acc) + out_zp, qmin, qmax)``, bit-exact with
    :func:`tvmq.numerics.requantize`.

    Parameters
    ----------
    acc : numpy.ndarray
        int32 accumulators, any shape.
    kind, rounding : "mult_shift" with "double"/"single"/"tonearest", or "fp32" with None.
    multiplier, shift : int or 0-d/1-element array, for mult_shift (else ignored).
    scale : float or 0-d/1-element array, for fp32 (else ignored).
    out_zp, qmin, qmax : int32 zero point and clamp.

    Returns
    -------
    numpy.ndarray
        int32 with the shape of ``acc``.
    """
    lib = load()
    k = _kind(kind, rounding)
    mult, sh, sc = _params(k, multiplier, shift, scale)
    for name, p in (("multiplier", mult), ("shift", sh), ("scale", sc)):
        if p is not None and p.size != 1:
            raise ValueError(f"{name} has {p.size} entries; requant takes per-tensor parameters")
    acc32 = np.ascontiguousarray(acc, np.int32)
    out = np.empty_like(acc32)
    _check(lib, lib.accel_requant(_ptr(acc32, _i32p), acc32.size, k, _ptr(mult, _i32p),
                                  _ptr(sh, _i32p), _ptr(sc, _f32p), out_zp, qmin, qmax,
                                  _ptr(out, _i32p)), "accel_requant")
    return out


def conv2d(hw: AccelConfig, x: np.ndarray, in_zp: int, w: np.ndarray, bias: np.ndarray | None,
           strides, padding, dilation, groups: int, requant: Requant, out_zp: int, qmin: int,
           qmax: int) -> tuple[np.ndarray, dict[str, int]]:
    """Integer conv2d on the emulated accelerator, with its cycle counters.

    Bit-exact with tvmq's realized conv: ``acc = conv(x - in_zp, w) + bias`` (int32), then
    ``tvmq.numerics.requantize(acc, requant, zero_point=out_zp, qmin, qmax, axis=1)``.

    Parameters
    ----------
    hw : AccelConfig
    x : numpy.ndarray
        int8, NCHW with N == 1.
    in_zp : int
        Input zero point (padding contributes 0, i.e. pads with in_zp).
    w : numpy.ndarray
        int8, OIHW, I == C / groups.
    bias : numpy.ndarray or None
        int32, (O,).
    strides, dilation : (h, w)
    padding : (top, left, bottom, right)
    groups : int
    requant : tvmq.numerics.Requant
        Per-tensor or per-output-channel (O,).
    out_zp, qmin, qmax : int
        Output zero point and clamp, within [-128, 127].

    Returns
    -------
    y : numpy.ndarray
        int8, (1, O, OH, OW).
    counters : dict
        ``cycles, compute_cycles, dma_cycles, requant_cycles, macs, dma_bytes, tiles`` (see the
        cycle model at the top of ``emulator/accel.c``).
    """
    lib = load()
    if x.ndim != 4 or x.shape[0] != 1 or w.ndim != 4:
        raise ValueError(f"x must be NCHW with N == 1 and w OIHW, got x{x.shape}, w{w.shape}")
    _, c, h, wd = (int(v) for v in x.shape)
    o, _, kh, kw = (int(v) for v in w.shape)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in padding)
    dh, dw = (int(v) for v in dilation)
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d output would be {oh}x{ow} for input {h}x{wd}, kernel {kh}x{kw}")
    if w.shape[1] * groups != c:
        raise ValueError(f"w{w.shape} with groups={groups} needs C == {w.shape[1] * groups}, "
                         f"got C={c}")
    k = _kind(requant.kind, requant.rounding)
    mult, shf, sc = _params(k, requant.multiplier, requant.shift, requant.scale)
    n_params = (sc if sc is not None else mult).size
    per_channel = (requant.scale if k == KINDS["fp32"] else requant.multiplier).ndim == 1
    if per_channel and n_params != o:
        raise ValueError(f"per-channel requant has {n_params} entries, conv2d has O={o}")
    x8 = np.ascontiguousarray(x, np.int8)
    w8 = np.ascontiguousarray(w, np.int8)
    b32 = None if bias is None else np.ascontiguousarray(bias, np.int32).reshape(-1)
    if b32 is not None and b32.size != o:
        raise ValueError(f"bias has {b32.size} entries, conv2d has O={o}")
    y = np.empty((1, o, oh, ow), np.int8)
    args = _ConvArgs(
        _ptr(x8, _i8p), c, h, wd, int(in_zp), _ptr(w8, _i8p), o, kh, kw, int(groups),
        sh, sw, pt, pl, pb, pr, dh, dw, _ptr(b32, _i32p), k, _ptr(mult, _i32p), _ptr(shf, _i32p),
        _ptr(sc, _f32p), int(per_channel), int(out_zp), int(qmin), int(qmax), _ptr(y, _i8p),
        oh, ow)
    hw_c = _Hw(hw.t_oc, hw.t_ic, hw.weight_buffer_bytes, hw.act_buffer_bytes,
               hw.acc_buffer_bytes, hw.dma_bytes_per_cycle)
    counters = _Counters()
    _check(lib, lib.accel_conv2d(ctypes.byref(hw_c), ctypes.byref(args), ctypes.byref(counters)),
           "accel_conv2d")
    return y, {name: int(getattr(counters, name)) for name in COUNTERS}
