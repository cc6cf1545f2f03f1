"""Build, load and call the C emulator of the accelerator (``emulator/accel.c``): INT8 layers
(`conv2d`) and the LBFP MAC mode (`lbfp_conv2d`, bit-exact with :mod:`tvmq.numerics.lbfp`); the
gradient quantization unit (``emulator/gradq.c``) is called through :mod:`.gradq`.

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
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tvmq.numerics import Requant, lbfp
from tvmq.numerics.weights import pack_int4
from tvmq.toolchain import cache_root, find_compiler

from .config import PRESETS, AccelConfig

SOURCE_DIR = Path(__file__).with_name("emulator")
SOURCES = ("accel.h", "accel.c", "gradq.c")
CFLAGS = ("-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
          "-ffp-contract=off", "-fwrapv")
KINDS = {"double": 0, "single": 1, "tonearest": 2, "fp32": 3}
COUNTERS = ("cycles", "compute_cycles", "dma_cycles", "requant_cycles", "macs", "dma_bytes",
            "tiles")

_i32p = ctypes.POINTER(ctypes.c_int32)
_i8p = ctypes.POINTER(ctypes.c_int8)
_i16p = ctypes.POINTER(ctypes.c_int16)
_f32p = ctypes.POINTER(ctypes.c_float)
_u8p = ctypes.POINTER(ctypes.c_uint8)
_i64p = ctypes.POINTER(ctypes.c_int64)
_f64p = ctypes.POINTER(ctypes.c_double)


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
        *((n, ctypes.c_int32) for n in ("w_bits", "a_bits", "y_bits")),  # 0 reads as 8
    ]


class _Counters(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in COUNTERS]


# The layer descriptor's int32 fields, in the order of accel.h's ACCEL_D_* enum.
DESC_FIELDS = ("C", "H", "W", "in_zp", "O", "KH", "KW", "groups", "stride_h", "stride_w",
               "pad_top", "pad_left", "pad_bottom", "pad_right", "dil_h", "dil_w", "kind",
               "per_channel", "out_zp", "qmin", "qmax", "OH", "OW", "t_oc", "t_ic",
               "weight_buffer_bytes", "act_buffer_bytes", "acc_buffer_bytes",
               "dma_bytes_per_cycle", "counter_slot", "w_bits", "a_bits", "y_bits")

# The LBFP layer descriptor's int32 fields, in the order of accel.h's ACCEL_L_* enum.
LBFP_DESC_FIELDS = ("C", "H", "W", "O", "KH", "KW", "groups", "stride_h", "stride_w", "pad_top",
                    "pad_left", "pad_bottom", "pad_right", "dil_h", "dil_w", "OH", "OW", "bits",
                    "frac_bits", "lut_bits", "w_block", "t_oc", "t_ic", "weight_buffer_bytes",
                    "act_buffer_bytes", "acc_buffer_bytes", "dma_bytes_per_cycle",
                    "counter_slot")


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
        lib.accel_requant.argtypes = [_i32p, ctypes.c_int64, ctypes.c_int, _i32p, _i32p, _f32p,
                                      ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _i32p]
        lib.accel_requant.restype = ctypes.c_int
        lib.accel_conv2d.argtypes = [ctypes.POINTER(_Hw), ctypes.POINTER(_ConvArgs),
                                     ctypes.POINTER(_Counters)]
        lib.accel_conv2d.restype = ctypes.c_int
        lib.accel_last_error.argtypes = []
        lib.accel_last_error.restype = ctypes.c_char_p
        lib.accel_desc_len.restype = ctypes.c_int
        lib.accel_conv2d_check.argtypes = [_i32p, _i32p]
        lib.accel_conv2d_check.restype = ctypes.c_int
        lib.accel_conv2d_tile.argtypes = [_i32p, _i8p, _i8p, _i32p, _i32p, _i8p, ctypes.c_int32]
        lib.accel_conv2d_tile.restype = ctypes.c_int
        lib.accel_counters_alloc.argtypes = [ctypes.c_int32]
        lib.accel_counters_alloc.restype = ctypes.c_int32
        lib.accel_counters_read.argtypes = [ctypes.c_int32, ctypes.POINTER(_Counters)]
        lib.accel_counters_read.restype = ctypes.c_int
        lib.accel_counters_clear.argtypes = [ctypes.c_int32]
        lib.accel_counters_clear.restype = ctypes.c_int
        if lib.accel_desc_len() != len(DESC_FIELDS):
            raise RuntimeError(f"{path}: accel.h has {lib.accel_desc_len()} descriptor fields, "
                               f"emulator.py {len(DESC_FIELDS)}; update DESC_FIELDS")
        _declare_lbfp(lib, path)
        _declare_gradq(lib)
        _LOADED[key] = lib
    return _LOADED[key]


def _declare_lbfp(lib: ctypes.CDLL, path: Path) -> None:
    """Argument types of the LBFP entry points; the descriptor layouts must agree."""
    lib.accel_lbfp_desc_len.restype = ctypes.c_int
    lib.accel_lbfp_conv2d_check.argtypes = [_i32p]
    lib.accel_lbfp_conv2d_check.restype = ctypes.c_int
    lib.accel_lbfp_conv2d_tile.argtypes = [_i32p, _u8p, _u8p, _i32p, _i32p, _i32p, _i64p, _i32p,
                                           _f64p, _i64p, _f64p, _u8p, ctypes.c_int32]
    lib.accel_lbfp_conv2d_tile.restype = ctypes.c_int
    if lib.accel_lbfp_desc_len() != len(LBFP_DESC_FIELDS):
        raise RuntimeError(f"{path}: accel.h has {lib.accel_lbfp_desc_len()} LBFP descriptor "
                           f"fields, emulator.py {len(LBFP_DESC_FIELDS)}; update LBFP_DESC_FIELDS")


def _declare_gradq(lib: ctypes.CDLL) -> None:
    """Argument types of the gradient quantization unit (gradq.c)."""
    lib.accel_gradq.argtypes = [_f32p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_double,
                                ctypes.c_uint32, ctypes.c_uint32, _i16p, _f32p]
    lib.accel_gradq.restype = ctypes.c_int
    lib.accel_uniform.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int64, _f32p]
    lib.accel_uniform.restype = ctypes.c_int


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
           qmax: int, w_bits: int = 8, a_bits: int = 8,
           y_bits: int = 8) -> tuple[np.ndarray, dict[str, int]]:
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
        Output zero point and clamp, within [-128, 127] ([-8, 7] for y_bits 4).
    w_bits, a_bits, y_bits : int
        Operand widths (4 or 8, each in hw.operand_bits): w holds int4 values for w_bits 4 (it
        is packed here with `pack_int4`, as the accelerator stores it), x int4 values for
        a_bits 4 (checked by the emulator).

    Returns
    -------
    y : numpy.ndarray
        int8, (1, O, OH, OW).
    counters : dict
        ``cycles, compute_cycles, dma_cycles, requant_cycles, macs, dma_bytes, tiles`` (see the
        cycle model at the top of ``emulator/accel.c``).
    """
    if x.ndim != 4 or x.shape[0] != 1 or w.ndim != 4:
        raise ValueError(f"x must be NCHW with N == 1 and w OIHW, got x{x.shape}, w{w.shape}")
    desc, rq = conv2d_descriptor(hw, x.shape, w.shape, in_zp, strides, padding, dilation,
                                 groups, requant, out_zp, qmin, qmax, _scratch_slot(),
                                 w_bits=w_bits, a_bits=a_bits, y_bits=y_bits)
    x8 = np.ascontiguousarray(x, np.int8)
    w8 = pack_weights(w, w_bits)
    o, oh, ow = (int(desc[DESC_FIELDS.index(f)]) for f in ("O", "OH", "OW"))
    b32 = None if bias is None else np.ascontiguousarray(bias, np.int32).reshape(-1)
    if b32 is not None and b32.size != o:
        raise ValueError(f"bias has {b32.size} entries, conv2d has O={o}")
    y = np.empty((1, o, oh, ow), np.int8)
    clear_counters(_scratch_slot())
    run_tiles(desc, rq, x8, w8, b32, y)
    return y, read_counters(_scratch_slot())


def pack_weights(w: np.ndarray, w_bits: int) -> np.ndarray:
    """The weight buffer the accelerator reads: int8 OIHW, or `pack_int4` bytes (as int8)."""
    if w_bits == 4:
        return pack_int4(np.asarray(w)).view(np.int8)
    return np.ascontiguousarray(w, np.int8)


def run_tiles(desc: np.ndarray, rq: np.ndarray, x: np.ndarray, w: np.ndarray,
              bias: np.ndarray | None, y: np.ndarray) -> None:
    """The tile loop a compiled model runs in TIR: `accel_conv2d_tile` for o0 = 0, t_oc, ...
    on contiguous int32 desc/rq/bias, int8 x/w and the int8 output buffer y."""
    tile_runner(desc, rq, x, w, bias, y)()


def tile_runner(desc, rq, x, w, bias, y):
    """`run_tiles` with its arguments converted once: a no-argument callable (for timing the
    emulator without ctypes' per-call argument conversion)."""
    ptrs = (_ptr(desc, _i32p), _ptr(x, _i8p), _ptr(w, _i8p), _ptr(bias, _i32p), _ptr(rq, _i32p),
            _ptr(y, _i8p))
    return _tile_loop("accel_conv2d_tile", desc, DESC_FIELDS, ptrs)


def _tile_loop(entry: str, desc: np.ndarray, fields: tuple[str, ...], ptrs) -> Callable[[], None]:
    """A no-argument callable running the C per-tile `entry(*ptrs, o0)` for o0 = 0, t_oc, ...
    < O (read from `desc` laid out as `fields`), raising ValueError on a nonzero return."""
    lib = load()
    fn = getattr(lib, entry)
    o, t_oc = (int(desc[fields.index(f)]) for f in ("O", "t_oc"))

    def run() -> None:
        for o0 in range(0, o, t_oc):
            _check(lib, fn(*ptrs, o0), entry)

    return run


def _conv_geometry(x_shape, w_shape, strides, padding, dilation, groups: int) -> dict[str, int]:
    """C, H, W, O, KH, KW, groups, stride_*, pad_*, dil_*, OH, OW of a conv2d with NCHW input
    `x_shape` and OIHW weights `w_shape`: OH = (H + pad_top + pad_bottom - dil_h*(KH-1) - 1) //
    stride_h + 1, likewise OW. ValueError if OH or OW < 1 or I * groups != C."""
    _, c, h, wd = (int(v) for v in x_shape)
    o, _, kh, kw = (int(v) for v in w_shape)
    sh, sw = (int(v) for v in strides)
    pt, pl, pb, pr = (int(v) for v in padding)
    dh, dw = (int(v) for v in dilation)
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d output would be {oh}x{ow} for input {h}x{wd}, kernel {kh}x{kw}")
    if int(w_shape[1]) * groups != c:
        raise ValueError(f"w{tuple(w_shape)} with groups={groups} needs C == "
                         f"{int(w_shape[1]) * groups}, got C={c}")
    return dict(C=c, H=h, W=wd, O=o, KH=kh, KW=kw, groups=groups, stride_h=sh, stride_w=sw,
                pad_top=pt, pad_left=pl, pad_bottom=pb, pad_right=pr, dil_h=dh, dil_w=dw, OH=oh,
                OW=ow)


def _hw_fields(hw: AccelConfig) -> dict[str, int]:
    """The hardware fields of a layer descriptor."""
    return dict(t_oc=hw.t_oc, t_ic=hw.t_ic, weight_buffer_bytes=hw.weight_buffer_bytes,
                act_buffer_bytes=hw.act_buffer_bytes, acc_buffer_bytes=hw.acc_buffer_bytes,
                dma_bytes_per_cycle=hw.dma_bytes_per_cycle)


def conv2d_descriptor(hw: AccelConfig, x_shape, w_shape, in_zp: int, strides, padding, dilation,
                      groups: int, requant: Requant, out_zp: int, qmin: int, qmax: int,
                      counter_slot: int, w_bits: int = 8, a_bits: int = 8,
                      y_bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The layer descriptor (int32, DESC_FIELDS) and requant register file (int32, (P, 2)) of a
    conv2d with NCHW input `x_shape` (N == 1) and OIHW weights `w_shape`.

    The register file holds {M0, shift} per parameter set for mult_shift, {float32 bits of the
    scale, 0} for fp32; P = O per channel, else 1. w_bits / a_bits / y_bits are the operand
    widths (4 or 8; each must be in hw.operand_bits). Raises ValueError for shapes or parameters
    the accelerator cannot take (the reason comes from the C checker, see `check_layer`).
    """
    for name, bits in (("w_bits", w_bits), ("a_bits", a_bits), ("y_bits", y_bits)):
        if bits not in hw.operand_bits:
            raise ValueError(f"AccelConfig {hw.name!r} operand_bits={hw.operand_bits} has no "
                             f"{bits}-bit operands ({name}={bits}); add {bits} to operand_bits.")
    geometry = _conv_geometry(x_shape, w_shape, strides, padding, dilation, groups)
    o = geometry["O"]
    k = _kind(requant.kind, requant.rounding)
    if k == KINDS["fp32"]:
        params = np.asarray(requant.scale, np.float32)
        rq = np.stack([params.reshape(-1).view(np.int32),
                       np.zeros(params.size, np.int32)], axis=1)
    else:
        params = np.asarray(requant.multiplier)
        rq = np.stack([params.reshape(-1), np.asarray(requant.shift).reshape(-1)],
                      axis=1).astype(np.int32)
    per_channel = params.ndim == 1
    if per_channel and params.size != o:
        raise ValueError(f"per-channel requant has {params.size} entries, conv2d has O={o}")
    fields = dict(**geometry, **_hw_fields(hw), in_zp=in_zp, kind=k,
                  per_channel=int(per_channel), out_zp=out_zp, qmin=qmin, qmax=qmax,
                  counter_slot=counter_slot, w_bits=w_bits, a_bits=a_bits, y_bits=y_bits)
    desc = np.array([int(fields[f]) for f in DESC_FIELDS], np.int32)
    rq = np.ascontiguousarray(rq)
    reason = check_layer(desc, rq)
    if reason is not None:
        raise ValueError(reason)
    return desc, rq


def check_layer(desc: np.ndarray, rq: np.ndarray) -> str | None:
    """None if the accelerator can run the layer, else the C checker's reason."""
    lib = load()
    if lib.accel_conv2d_check(_ptr(desc, _i32p), _ptr(rq, _i32p)) == 0:
        return None
    return lib.accel_last_error().decode()


def alloc_counters(n: int) -> int:
    """The first of `n` new zeroed slots of the emulator's counter bank."""
    slot = load().accel_counters_alloc(n)
    if slot < 0:
        raise MemoryError(f"the accel counter bank cannot grow by {n} slots")
    return slot


def read_counters(slot: int) -> dict[str, int]:
    lib, out = load(), _Counters()
    _check(lib, lib.accel_counters_read(slot, ctypes.byref(out)), "accel_counters_read")
    return {name: int(getattr(out, name)) for name in COUNTERS}


def clear_counters(slot: int) -> None:
    lib = load()
    _check(lib, lib.accel_counters_clear(slot), "accel_counters_clear")


_SCRATCH: dict[int, int] = {}


def _scratch_slot() -> int:
    """The counter slot `conv2d` uses for one call (one per loaded library)."""
    lib = id(load())
    if lib not in _SCRATCH:
        _SCRATCH[lib] = alloc_counters(1)
    return _SCRATCH[lib]


# ---- LBFP mode ------------------------------------------------------------------------------


def lbfp_conv2d_descriptor(hw: AccelConfig, x_shape, w_shape, fmt: lbfp.LBFPFormat, strides,
                           padding, dilation, groups: int, counter_slot: int,
                           w_block: int | None = None) -> np.ndarray:
    """The LBFP layer descriptor (int32, LBFP_DESC_FIELDS) of a conv2d with NCHW input
    `x_shape` (N == 1), OIHW weights `w_shape` and format `fmt` (bits, frac_bits, lut_bits;
    shared by activations, weights and output). `w_block` (default fmt.block_size) is the
    weight block size along input channels, which sets the exponent bytes the DMA moves.
    Raises ValueError for shapes or settings the accelerator cannot take (the reason names the
    field; it comes from the C checker, see `lbfp_check_layer`)."""
    fields = dict(**_conv_geometry(x_shape, w_shape, strides, padding, dilation, groups),
                  **_hw_fields(hw), bits=fmt.bits, frac_bits=fmt.frac_bits,
                  lut_bits=fmt.lut_bits, w_block=fmt.block_size if w_block is None else w_block,
                  counter_slot=counter_slot)
    desc = np.array([int(fields[f]) for f in LBFP_DESC_FIELDS], np.int32)
    reason = lbfp_check_layer(desc)
    if reason is not None:
        raise ValueError(reason)
    return desc


def lbfp_check_layer(desc: np.ndarray) -> str | None:
    """None if the accelerator can run the LBFP layer `desc`, else the C checker's reason."""
    lib = load()
    desc = np.ascontiguousarray(desc, np.int32)
    if lib.accel_lbfp_conv2d_check(_ptr(desc, _i32p)) == 0:
        return None
    return lib.accel_last_error().decode()


def lbfp_tile_runner(desc, x, w, x_exp, w_exp, e_ref, bias, out_exp, clip, lut, thresholds, y):
    """The tile loop of an LBFP layer (`accel_lbfp_conv2d_tile` for o0 = 0, t_oc, ...) as a
    no-argument callable, on contiguous arrays typed as in accel.h: int32 desc, x_exp, w_exp,
    e_ref, out_exp; uint8 x, w, y; int64 bias (or None) and lut; float64 clip and thresholds."""
    ptrs = (_ptr(desc, _i32p), _ptr(x, _u8p), _ptr(w, _u8p), _ptr(x_exp, _i32p),
            _ptr(w_exp, _i32p), _ptr(e_ref, _i32p), _ptr(bias, _i64p), _ptr(out_exp, _i32p),
            _ptr(clip, _f64p), _ptr(lut, _i64p), _ptr(thresholds, _f64p), _ptr(y, _u8p))
    return _tile_loop("accel_lbfp_conv2d_tile", desc, LBFP_DESC_FIELDS, ptrs)


def _exact(a, dtype, name: str, shape=None) -> np.ndarray:
    """`a` as a contiguous `dtype` array (reshaped to `shape` if given); ValueError if a value
    does not survive the conversion (e.g. a word outside [0, 255] or a fractional exponent)."""
    src = np.asarray(a)
    if shape is not None:
        if src.size != int(np.prod(shape)):
            raise ValueError(f"{name} has shape {src.shape}, expected {tuple(shape)} entries")
        src = src.reshape(shape)
    out = np.ascontiguousarray(src, dtype)
    if not np.array_equal(out, src):
        raise ValueError(f"{name} does not fit {np.dtype(dtype).name} exactly")
    return out


def _per_channel(a, o: int) -> np.ndarray:
    """(O,) from O values of any shape (e.g. (1, O, 1, 1)) or one value broadcast."""
    a = np.asarray(a)
    return a.reshape(-1) if a.size == o else np.broadcast_to(a, (o,))


def lbfp_conv2d(x_words, x_exp, w_words, w_exp, fmt: lbfp.LBFPFormat, *, out_exp,
                bias_acc=None, lo: float = -np.inf, hi: float = np.inf, strides=(1, 1),
                padding=(0, 0, 0, 0), dilation=(1, 1), groups: int = 1,
                hw: AccelConfig = PRESETS["npu-small"], w_block: int | None = None
                ) -> tuple[np.ndarray, dict[str, int]]:
    """LBFP conv2d on the emulated accelerator, with its cycle counters.

    Bit-exact with the golden model: ``acc, e_ref = lbfp.conv2d(x, x_exp, w, w_exp, fmt, fmt,
    ...)``, ``acc += bias_acc[:, None, None]``, then ``lbfp.acc_to_lbfp(acc, e_ref[:, None,
    None], out_exp (per channel), fmt, lo=lo, hi=hi)``.

    Parameters
    ----------
    x_words : uint8 code words, (C, H, W) or (1, C, H, W).
    x_exp : (C,) exponents, one per input channel (blocks expanded).
    w_words : uint8 code words, OIHW, I == C / groups.
    w_exp : exponents of `w_words`' shape (per element, blocks expanded).
    fmt : the format of activations, weights and output (bits, frac_bits, lut_bits).
    out_exp : (O,) output exponents (the exponent of the block holding channel o).
    bias_acc : (O,) int64 bias in accumulator units 2^(e_ref - lut_bits)
        (`lbfp.bias_to_acc`), or None.
    lo, hi : the clip epilogue (ReLU: lo=0).
    strides, dilation : (h, w); padding : (top, left, bottom, right); groups : int.
    hw : AccelConfig (default the 'npu-small' preset).
    w_block : weight block size along input channels for the exponent DMA bytes
        (default fmt.block_size).

    Returns
    -------
    y : uint8 code words, (1, O, OH, OW).
    counters : dict
        ``cycles, compute_cycles, dma_cycles, requant_cycles, macs, dma_bytes, tiles`` (the LBFP
        cycle model at the top of ``emulator/accel.c``).
    """
    x = np.asarray(x_words)
    x = x[None] if x.ndim == 3 else x
    w = np.asarray(w_words)
    if x.ndim != 4 or x.shape[0] != 1 or w.ndim != 4:
        raise ValueError(f"x_words must be CHW or NCHW with N == 1 and w_words OIHW, got "
                         f"x{np.shape(x_words)}, w{w.shape}")
    desc = lbfp_conv2d_descriptor(hw, x.shape, w.shape, fmt, strides, padding, dilation, groups,
                                  _scratch_slot(), w_block)
    c, o, oh, ow = (int(desc[LBFP_DESC_FIELDS.index(f)]) for f in ("C", "O", "OH", "OW"))
    x_e = _exact(x_exp, np.int32, "x_exp", (c,))
    w_e = _exact(w_exp, np.int32, "w_exp", w.shape)
    args = dict(desc=desc, x=_exact(x, np.uint8, "x_words"), w=_exact(w, np.uint8, "w_words"),
                x_exp=x_e, w_exp=w_e,
                e_ref=_exact(lbfp.conv_e_ref(x_e, w_e, groups), np.int32, "e_ref"),
                bias=None if bias_acc is None else _exact(bias_acc, np.int64, "bias_acc", (o,)),
                out_exp=_exact(_per_channel(out_exp, o), np.int32, "out_exp"),
                clip=np.array([lo, hi], np.float64), lut=np.ascontiguousarray(fmt.lut, np.int64),
                thresholds=np.ascontiguousarray(fmt.thresholds, np.float64))
    y = np.empty((1, o, oh, ow), np.uint8)
    clear_counters(_scratch_slot())
    lbfp_tile_runner(**args, y=y)()
    return y, read_counters(_scratch_slot())
