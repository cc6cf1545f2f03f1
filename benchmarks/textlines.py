"""Synthetic text-line images for the PP-OCR text-direction classifier (labels "0" / "180") and
the PP-OCRv4 text recognizer (ground-truth strings).

Lines are drawn with PIL in DejaVu fonts (the system copy, else matplotlib's bundled copy, else
Pillow's own default font) from a fixed word list, with seeded random size, length, colours,
noise and blur, so a given ``(n, seed)`` gives the same data on any machine with the same fonts.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "CLS_IMAGE_SHAPE",
    "CLS_LABELS",
    "REC_IMAGE_SHAPE",
    "make_cls_dataset",
    "make_rec_dataset",
    "preprocess_cls",
    "preprocess_rec",
    "render_text_lines",
]

CLS_IMAGE_SHAPE = (3, 48, 192)
"""Input shape ``(C, H, W)`` of the PP-OCR classifier (rapidocr ``cls_image_shape``)."""

REC_IMAGE_SHAPE = (3, 48, 320)
"""Input shape ``(C, H, W)`` of the PP-OCRv4 recognizer as benchmarked: rapidocr's
``rec_img_shape`` [3, 48, 320] with the width fixed at 320 (rapidocr widens a batch to its widest
line; every line here fits in 320)."""

CLS_LABELS = ("0", "180")
"""Class names in output order: 0 = upright, 1 = rotated by 180 degrees."""

# Faces shipped both by Debian's fonts-dejavu-core and by matplotlib, so either source gives the
# same set.
_DEJAVU_FACES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
)
_SYSTEM_DEJAVU_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),  # Debian / Ubuntu
    Path("/usr/share/fonts/dejavu"),  # Fedora / Arch
    Path("/usr/share/fonts/TTF"),
)

_WORDS = """
the of and to in is for on with as by at from this that are was be it or an not have has can
will all one new more time data model text image line page order total price date name number
account invoice receipt customer address phone email office street city north south east west
report table figure section chapter result value input output layer network compile quantize
integer float scale zero point memory device board sensor signal power energy battery voltage
current system program function module package version update release build test check error
warning status ready open close start stop enter select print save load file folder window
green blue red black white yellow orange light dark small large high low fast slow first last
next previous morning evening monday friday january march july october december year month week
hello world welcome thank you please sign here amount paid balance due cash card change tax
""".split()
_UNITS = ("kg", "km", "mm", "ml", "MB", "GHz", "mV", "%", "USD", "EUR")


def render_text_lines(n: int, seed: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """Render ``n`` single text lines; a seeded random half is rotated by 180 degrees.

    Parameters
    ----------
    n : int
        Number of lines.
    seed : int
        Seed of every random choice (text, font, size, colours, noise, which lines rotate).

    Returns
    -------
    images : list of PIL.Image.Image
        RGB images, dark text on a light background, 30 to 50 px high, width by text length.
    labels : np.ndarray
        ``[n]`` int64, 0 = upright, 1 = rotated by 180 degrees (see ``CLS_LABELS``).

    Examples
    --------
    >>> images, labels = render_text_lines(4, seed=1)
    >>> len(images), labels.tolist().count(1)
    (4, 2)
    """
    if n < 0:
        raise ValueError(f"render_text_lines: n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    labels[rng.permutation(n)[: n // 2]] = 1
    images = [_render_line(rng, rotate=bool(label)) for label in labels]
    return images, labels


def preprocess_cls(img: Image.Image) -> np.ndarray:
    """Turn one text-line image into the PP-OCR classifier input, ``[3, 48, 192]`` float32.

    Same recipe as ``TextClassifier.resize_norm_img`` in rapidocr_onnxruntime 1.4.4
    (``ch_ppocr_cls/text_cls.py``, copied from PaddleOCR ``tools/infer/predict_cls.py``):
    bilinear resize (``cv2.resize``, ``INTER_LINEAR``) to height 48 and width
    ``min(192, ceil(48 * w / h))``, ``x / 255``, ``(x - 0.5) / 0.5``, HWC -> CHW, zero padding
    on the right up to width 192. Channels are in BGR order, as rapidocr and PaddleOCR feed the
    model (they decode images with OpenCV, or convert PIL input with ``cv2.COLOR_RGB2BGR``).

    Parameters
    ----------
    img : PIL.Image.Image
        A text line, any mode PIL can convert to RGB.

    Returns
    -------
    np.ndarray
        ``[3, 48, 192]`` float32 in ``[-1, 1]``; padding columns are 0.

    Examples
    --------
    >>> preprocess_cls(Image.new("RGB", (100, 40), "white")).shape
    (3, 48, 192)
    """
    return _resize_norm_pad(img, CLS_IMAGE_SHAPE)


def preprocess_rec(img: Image.Image) -> np.ndarray:
    """Turn one text-line image into the PP-OCRv4 recognizer input, ``[3, 48, 320]`` float32.

    ``TextRecognizer.resize_norm_img`` of rapidocr_onnxruntime 1.4.4 (PaddleOCR
    ``tools/infer/predict_rec.py``) for a batch whose widest line is at most 320 px wide at
    height 48: the same resize, normalisation, BGR order and right zero padding as
    ``preprocess_cls``, to width ``min(320, ceil(48 * w / h))`` padded to 320.

    Examples
    --------
    >>> preprocess_rec(Image.new("RGB", (100, 40), "white")).shape
    (3, 48, 320)
    """
    return _resize_norm_pad(img, REC_IMAGE_SHAPE)


def make_cls_dataset(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` lines and preprocess them for the PP-OCR classifier.

    Parameters
    ----------
    n : int
        Number of samples.
    seed : int
        Seed passed to ``render_text_lines``.

    Returns
    -------
    x : np.ndarray
        ``[n, 3, 48, 192]`` float32 model inputs.
    y : np.ndarray
        ``[n]`` int64 labels, 0 = upright, 1 = rotated by 180 degrees.

    Examples
    --------
    >>> x, y = make_cls_dataset(8)
    >>> x.shape, x.dtype, y.shape, y.dtype
    ((8, 3, 48, 192), dtype('float32'), (8,), dtype('int64'))
    """
    images, labels = render_text_lines(n, seed)
    x = np.zeros((n, *CLS_IMAGE_SHAPE), dtype=np.float32)
    for i, img in enumerate(images):
        x[i] = preprocess_cls(img)
    return x, labels


def make_rec_dataset(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Render ``n`` upright lines that fit the recognizer input and preprocess them.

    Same texts and rendering as ``render_text_lines`` (never rotated); a line whose width at
    height 48 would exceed 320 px is redrawn with the next random text, so no line is squeezed.
    Every character is in the PP-OCRv4 dictionary (ASCII letters, digits, ``.,:!?-%`` and
    spaces).

    Parameters
    ----------
    n : int
        Number of samples.
    seed : int
        Seed of every random choice.

    Returns
    -------
    x : np.ndarray
        ``[n, 3, 48, 320]`` float32 model inputs.
    texts : list of str
        The ground-truth string of each line.

    Examples
    --------
    >>> x, texts = make_rec_dataset(4)
    >>> x.shape, x.dtype, len(texts)
    ((4, 3, 48, 320), dtype('float32'), 4)
    """
    if n < 0:
        raise ValueError(f"make_rec_dataset: n must be >= 0, got {n}")
    _, out_h, out_w = REC_IMAGE_SHAPE
    rng = np.random.default_rng(seed)
    x = np.zeros((n, *REC_IMAGE_SHAPE), dtype=np.float32)
    texts: list[str] = []
    while len(texts) < n:
        text = random_text(rng)
        img = _render_line(rng, rotate=False, text=text)
        if math.ceil(out_h * img.width / float(img.height)) > out_w:
            continue
        x[len(texts)] = preprocess_rec(img)
        texts.append(text)
    return x, texts


def _resize_norm_pad(img: Image.Image, shape: tuple[int, int, int]) -> np.ndarray:
    """PaddleOCR's ``resize_norm_img`` to ``shape`` = (C, H, W) (see ``preprocess_cls``)."""
    c, out_h, out_w = shape
    bgr = np.asarray(img.convert("RGB"))[:, :, ::-1]
    h, w = bgr.shape[:2]
    resized_w = min(out_w, math.ceil(out_h * w / float(h)))
    resized = resize_bilinear_like_cv2(bgr, resized_w, out_h).astype(np.float32)
    resized = resized.transpose(2, 0, 1) / 255
    resized = (resized - 0.5) / 0.5
    out = np.zeros((c, out_h, out_w), dtype=np.float32)
    out[:, :, :resized_w] = resized
    return out


def resize_bilinear_like_cv2(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a ``[H, W, C]`` uint8 array bit-exactly as ``cv2.resize(img, (width, height))``.

    OpenCV's ``INTER_LINEAR`` for uint8: pixel centres aligned, no antialiasing, 11-bit
    fixed-point weights; a horizontal pass to int32, then a vertical pass rounded as its SIMD
    kernel does (``((D0 >> 4) * b0 >> 16) + ((D1 >> 4) * b1 >> 16) + 2 >> 2``). Checked equal to
    opencv-python-headless 5.0.0 on x86-64.
    """
    src = img.astype(np.int64)
    c0, c1, a0, a1 = _linear_taps(img.shape[1], width, clamp_weights=True)
    r0, r1, b0, b1 = _linear_taps(img.shape[0], height, clamp_weights=False)
    rows = src[:, c0] * a0[None, :, None] + src[:, c1] * a1[None, :, None]
    top = ((rows[r0] >> 4) * b0[:, None, None]) >> 16
    bottom = ((rows[r1] >> 4) * b1[:, None, None]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def _linear_taps(
    src_size: int, dst_size: int, clamp_weights: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit weights of both taps of each output pixel, as OpenCV computes.

    OpenCV zeroes the fractional weight of taps clamped at the border for the horizontal pass
    only (``clamp_weights``); the vertical pass just clamps the row index.
    """
    scale = 1.0 / (dst_size / src_size)  # OpenCV's scale_x = 1 / inv_scale_x, in double
    pos = ((np.arange(dst_size) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0.astype(np.float32)
    if clamp_weights:
        frac[i0 < 0] = 0
        i0 = np.maximum(i0, 0)
        frac[i0 >= src_size - 1] = 0
    w0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(frac * np.float32(2048)).astype(np.int64)
    return np.clip(i0, 0, src_size - 1), np.clip(i0 + 1, 0, src_size - 1), w0, w1


def random_text(rng: np.random.Generator) -> str:
    """A short sentence, a phrase with numbers, or a code/date/amount."""
    kind = rng.random()
    if kind < 0.55:
        words = [str(w) for w in rng.choice(_WORDS, size=int(rng.integers(1, 8)))]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        text = " ".join(words)
        if rng.random() < 0.3:
            text += str(rng.choice([".", ",", ":", "!", "?"]))
        return text
    if kind < 0.8:
        word = str(rng.choice(_WORDS)).capitalize()
        value = f"{rng.integers(0, 10000)}.{rng.integers(0, 100):02d}"
        return f"{word}: {value} {rng.choice(_UNITS)}"
    if kind < 0.9:
        return f"{rng.integers(1990, 2031)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
    digits = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(4, 14))))
    return f"No.{digits}" if rng.random() < 0.5 else digits


def _render_line(rng: np.random.Generator, rotate: bool, text: str | None = None) -> Image.Image:
    """Draw one line of ``text`` (default: ``random_text(rng)``); rotate it by 180 degrees if
    ``rotate``."""
    if text is None:
        text = random_text(rng)
    font = load_font(int(rng.integers(len(fonts()))), int(rng.integers(20, 35)))
    ascent, descent = font.getmetrics()
    left, _, right, _ = font.getbbox(text)
    pad_x = int(rng.integers(2, 12))
    pad_top, pad_bottom = (int(p) for p in rng.integers(1, 7, size=2))
    size = (right - left + 2 * pad_x, ascent + descent + pad_top + pad_bottom)

    background = rng.integers(185, 256)
    bg_rgb = tuple(int(np.clip(background + t, 0, 255)) for t in rng.integers(-12, 13, size=3))
    ink = rng.integers(0, 90)
    fg_rgb = tuple(int(np.clip(ink + t, 0, 255)) for t in rng.integers(-20, 21, size=3))
    img = Image.new("RGB", size, bg_rgb)
    ImageDraw.Draw(img).text((pad_x - left, pad_top), text, font=font, fill=fg_rgb)

    if rotate:
        img = img.transpose(Image.Transpose.ROTATE_180)
    if rng.random() < 0.6:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    pixels = np.asarray(img, dtype=np.float32)
    # Mild illumination gradient across the line, then sensor-like Gaussian noise.
    gradient = np.linspace(0, rng.uniform(-25, 25), size[0], dtype=np.float32)
    pixels = pixels + gradient[None, :, None]
    pixels = pixels + rng.normal(0, rng.uniform(0, 8), size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


@functools.cache
def fonts() -> tuple[Path | None, ...]:
    """Font files to draw with; ``(None,)`` means Pillow's bundled default font."""
    dirs = list(_SYSTEM_DEJAVU_DIRS)
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        dirs.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    for d in dirs:
        faces = tuple(d / f for f in _DEJAVU_FACES if (d / f).is_file())
        if faces:
            return faces
    return (None,)


@functools.cache
def load_font(index: int, size: int) -> ImageFont.FreeTypeFont:
    """Font number ``index`` of ``fonts()`` at ``size`` pixels."""
    path = fonts()[index]
    if path is None:
        font = ImageFont.load_default(size=size)
        if not isinstance(font, ImageFont.FreeTypeFont):
            raise RuntimeError(
                "no TrueType font found: install the Debian package fonts-dejavu-core, "
                "matplotlib, or Pillow >= 10.1 built with FreeType"
            )
        return font
    return ImageFont.truetype(str(path), size)
