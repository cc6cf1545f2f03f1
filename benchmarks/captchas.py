"""Synthetic captchas for ddddocr's old recognizer (``common_old.onnx``): rendering, ddddocr's
preprocessing, its charset and its CTC decoding.

Captchas are drawn by the ``captcha`` package (``ImageCaptcha``, its bundled DroidSansMono font)
with milder settings than its defaults: 200x64 canvas, font sizes 36/42/48, rotation within
+-10 degrees, no overlap between characters and no extra spaces; its noise dots and curve are
kept. With the defaults (160x60, +-30 degrees, overlapping glyphs) ddddocr reads only about 1 in
5 correctly, and a benchmark should measure quantization, not the model's limit. The texts are
4 to 6 characters of digits and lowercase letters without the look-alikes ``0 o 1 i l`` (captcha
alphabets drop them too: ddddocr's charset has both ``0`` and ``o``, and the glyphs differ by a
few pixels).

``captcha`` draws with the ``secrets`` module, which cannot be seeded; ``render_captchas``
swaps the module's ``secrets`` for a seeded ``random.Random`` while it draws, so a given
``(n, seed)`` gives the same images on any machine with the same ``captcha`` release.
"""

from __future__ import annotations

import ast
import contextlib
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "CAPTCHA_ALPHABET",
    "CAPTCHA_IMAGE_SHAPE",
    "captcha_ctc_decode",
    "make_captcha_dataset",
    "parse_charset",
    "preprocess_captcha",
    "render_captchas",
]

CAPTCHA_IMAGE_SHAPE = (1, 64, 200)
"""Model input ``(C, H, W)``: grayscale, ddddocr's height 64, width fixed at 200 (the canvas
width, so ddddocr's resize to height 64 keeps the aspect ratio)."""

CAPTCHA_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
"""Characters of the captcha texts: digits and lowercase letters less ``0 o 1 i l``."""

_CANVAS = (200, 64)  # (width, height) of ImageCaptcha
_FONT_SIZES = (36, 42, 48)
_TEXT_LENGTHS = (4, 7)  # [low, high) of the text length


class _SeededSecrets:
    """The three ``secrets`` functions ``captcha.image`` calls, drawn from ``random.Random``."""

    def __init__(self, seed: int):
        self._rng = random.Random(seed)

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq: Sequence):
        return self._rng.choice(seq)


@contextlib.contextmanager
def _seeded_captcha(seed: int) -> Iterator[object]:
    """``captcha.image`` with its ``secrets`` replaced by a seeded generator, restored on
    exit; yields an ``ImageCaptcha`` with this module's settings."""
    try:
        import captcha.image as captcha_image
    except ImportError as e:
        raise RuntimeError("the captcha package is missing: pip install -e '.[bench]'") from e

    class _MildCaptcha(captcha_image.ImageCaptcha):
        character_rotate = (-10, 10)
        word_offset_dx = 0.0  # no overlap between neighbouring characters
        word_space_probability = 1.0  # never insert a blank character

    saved = captcha_image.secrets
    captcha_image.secrets = _SeededSecrets(seed)
    try:
        yield _MildCaptcha(width=_CANVAS[0], height=_CANVAS[1], font_sizes=_FONT_SIZES)
    finally:
        captcha_image.secrets = saved


def render_captchas(n: int, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """Render ``n`` captchas of random texts (``CAPTCHA_ALPHABET``, 4 to 6 characters).

    Returns the RGB images (200x64) and their texts. Raises ``RuntimeError`` when the
    ``captcha`` package is missing.

    Examples
    --------
    >>> images, texts = render_captchas(2, seed=3)  # doctest: +SKIP
    >>> images[0].size, len(texts)  # doctest: +SKIP
    ((200, 64), 2)
    """
    if n < 0:
        raise ValueError(f"render_captchas: n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    texts = ["".join(rng.choice(list(CAPTCHA_ALPHABET), size=int(rng.integers(*_TEXT_LENGTHS))))
             for _ in range(n)]
    with _seeded_captcha(seed) as generator:
        images = [generator.generate_image(text) for text in texts]
    return images, texts


def preprocess_captcha(img: Image.Image) -> np.ndarray:
    """ddddocr 1.6.1's input for its default models (``OCREngine._preprocess_image``): PIL
    LANCZOS resize to height 64 and width ``int(w * 64 / h)`` (200 for the 200x64 canvas), then
    grayscale (``convert("L")``), then ``x / 255``; ``[1, 64, 200]`` float32 in ``[0, 1]``."""
    _, out_h, out_w = CAPTCHA_IMAGE_SHAPE
    width = int(img.size[0] * (out_h / img.size[1]))
    if width != out_w:
        raise ValueError(f"preprocess_captcha: a {img.size[0]}x{img.size[1]} image becomes "
                         f"{width} px wide at height {out_h}; expected {out_w}")
    gray = img.resize((width, out_h), Image.LANCZOS).convert("L")
    return (np.asarray(gray, dtype=np.float32) / 255.0)[None]


def make_captcha_dataset(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """``render_captchas(n, seed)`` preprocessed: ``[n, 1, 64, 200]`` float32 and the texts."""
    images, texts = render_captchas(n, seed)
    x = np.zeros((n, *CAPTCHA_IMAGE_SHAPE), dtype=np.float32)
    for i, img in enumerate(images):
        x[i] = preprocess_captcha(img)
    return x, texts


def parse_charset(path: Path, name: str = "CHARSET_OLD") -> list[str]:
    """The list literal assigned to ``name`` in the Python file ``path`` (ddddocr's
    ``charsets.py``), read with ``ast.literal_eval``: the file is parsed, never executed."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name):
            charset = ast.literal_eval(node.value)
            if not (isinstance(charset, list) and all(isinstance(c, str) for c in charset)):
                raise RuntimeError(f"{Path(path).name}: {name} is not a list of strings")
            return charset
    raise RuntimeError(f"{Path(path).name} assigns no {name}")


def captcha_ctc_decode(out: np.ndarray, charset: Sequence[str], steps: int) -> list[str]:
    """ddddocr's decoding: argmax per time step, repeats collapsed, index 0 (the blank, ``""``)
    dropped; one string per sample.

    ``out`` holds ``steps`` time steps per sample, time first as ddddocr's models give them:
    ``[T, 1, C]`` for one sample, ``[N * T, 1, C]`` for samples run one at a time and
    concatenated on axis 0 (or ``[N, T, C]``: same memory order).
    """
    if out.size % (steps * out.shape[-1]):
        raise ValueError(f"captcha_ctc_decode: output of shape {out.shape} is not a whole "
                         f"number of samples of {steps} steps")
    texts = []
    for best in out.reshape(-1, steps, out.shape[-1]).argmax(axis=-1):
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        keep &= best != 0
        texts.append("".join(charset[i] for i in best[keep]))
    return texts
