"""Synthetic text pages for the PP-OCRv4 text detector (DBNet): rendering with known line boxes,
rapidocr's preprocessing, a simple DB post-processing and the box metrics.

A page is 320x320 px, the detector's input as benchmarked (fixed so tvmq compiles one shape;
rapidocr would resize a page to a multiple of 32 with its short side at least 736, which at
batch 1 costs 5x the compute on this slow machine and changes nothing in what is compared). It
holds 3 to 12 lines of ``textlines``' texts and fonts (10 to 26 px; the smallest and the
closest lines are where the detector misses or merges some), dark or grey (ink 0 to 150) on a
light background, with seeded noise and blur. A line's box spans its ink horizontally and the
font's line height (ascent + descent) vertically, as text-detection labels do (a line of digits
gets the same height as one with descenders).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from boxes import box_iou, count_matches, detection_scores
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage
from textlines import fonts, load_font, random_text

__all__ = [
    "DB_BOX_THRESHOLD",
    "DB_THRESHOLD",
    "DB_UNCLIP_RATIO",
    "PAGE_SIZE",
    "PageDetection",
    "db_boxes",
    "make_page_dataset",
    "match_boxes",
    "page_detections",
    "page_metric",
    "preprocess_page",
    "render_pages",
]

PAGE_SIZE = 320
"""Side of a page and of the detector's input, ``[1, 3, 320, 320]``."""

DB_THRESHOLD = 0.3
"""Binarization threshold of the probability map (rapidocr's ``thresh``)."""

DB_BOX_THRESHOLD = 0.5
"""A component is kept when its mean probability reaches this (rapidocr's ``box_thresh``)."""

DB_UNCLIP_RATIO = 1.6
"""rapidocr's ``unclip_ratio``: a shrunk region of area A and perimeter L grows by
``A * ratio / L`` on every side."""

_MIN_SIDE = 3  # DBPostProcess.min_size: smaller components are dropped
_TEXT_ATTEMPTS = 5

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` in pixels, ``x1`` and ``y1`` exclusive."""


@dataclass(frozen=True)
class PageDetection:
    """What the detector found on one page: its line boxes and its binarized probability map
    (``map > DB_THRESHOLD``, ``np.packbits`` of the flattened map, for the map IoU). Two
    detections are equal when their boxes are: the map is left out of ``==`` (a benchmark's
    "agree" column), since a quantized map almost never equals the FP32 one bit for bit."""

    boxes: tuple[Box, ...]
    mask_bits: bytes = field(compare=False)


def render_pages(n: int, seed: int = 0) -> tuple[list[Image.Image], list[tuple[Box, ...]]]:
    """Render ``n`` pages; return the RGB images and each page's line boxes.

    Lines are stacked from a random top margin with random gaps and left offsets; a line that
    would leave the page is dropped, so every box lies inside the page.

    Examples
    --------
    >>> images, boxes = render_pages(2, seed=1)
    >>> images[0].size, all(len(b) >= 1 for b in boxes)
    ((320, 320), True)
    """
    if n < 0:
        raise ValueError(f"render_pages: n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    pages, truths = [], []
    for _ in range(n):
        page, boxes = _render_page(rng)
        pages.append(page)
        truths.append(boxes)
    return pages, truths


def preprocess_page(img: Image.Image) -> np.ndarray:
    """rapidocr 1.4.4's detector input (``DetPreProcess`` with its config's mean and std 0.5)
    for a page already 320x320 (no resize): BGR, ``(x / 255 - 0.5) / 0.5``, HWC -> CHW;
    ``[3, 320, 320]`` float32."""
    bgr = np.asarray(img.convert("RGB"), dtype=np.float32)[:, :, ::-1]
    if bgr.shape[:2] != (PAGE_SIZE, PAGE_SIZE):
        raise ValueError(f"preprocess_page: expected a {PAGE_SIZE}x{PAGE_SIZE} page, got "
                         f"{bgr.shape[1]}x{bgr.shape[0]}")
    return ((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1).astype(np.float32)


def make_page_dataset(n: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[Box, ...]]]:
    """``render_pages(n, seed)`` preprocessed: ``[n, 3, 320, 320]`` float32 and the boxes."""
    pages, boxes = render_pages(n, seed)
    x = np.zeros((n, 3, PAGE_SIZE, PAGE_SIZE), dtype=np.float32)
    for i, page in enumerate(pages):
        x[i] = preprocess_page(page)
    return x, boxes


def db_boxes(prob: np.ndarray) -> tuple[Box, ...]:
    """Line boxes from one ``[H, W]`` probability map, DBNet's post-processing simplified.

    As rapidocr's ``DBPostProcess``: binarize at ``DB_THRESHOLD``, dilate with a 2x2 kernel
    (``use_dilation``), one candidate per 8-connected component (``scipy.ndimage.label``, in
    place of ``cv2.findContours``), dropped if its shorter side is under 3 px or its mean
    probability under ``DB_BOX_THRESHOLD``, then unclipped. Simplified: a candidate is its
    axis-aligned bounding box (rapidocr takes the minimum-area rotated rectangle; the same for
    the horizontal lines here), and unclip grows that box by ``d = A * DB_UNCLIP_RATIO / L`` on
    every side (A, L: the box's area and perimeter), which is exactly the bounding box of
    pyclipper's round offset by ``d``. Boxes are rounded to pixels and clipped to the map.
    """
    h, w = prob.shape
    mask = ndimage.binary_dilation(prob > DB_THRESHOLD, structure=np.ones((2, 2), bool),
                                   origin=(-1, -1))
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), int))
    boxes = []
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        rows, cols = found
        bw, bh = cols.stop - cols.start, rows.stop - rows.start
        if min(bw, bh) < _MIN_SIDE:
            continue
        if prob[rows, cols][labels[rows, cols] == index].mean() < DB_BOX_THRESHOLD:
            continue
        d = bw * bh * DB_UNCLIP_RATIO / (2 * (bw + bh))
        box = (max(0, round(cols.start - d)), max(0, round(rows.start - d)),
               min(w, round(cols.stop + d)), min(h, round(rows.stop + d)))
        boxes.append(box)
    return tuple(boxes)


def match_boxes(found: Sequence[Box], truth: Sequence[Box], iou: float = 0.5) -> int:
    """Number of one-to-one matches between ``found`` and ``truth`` boxes with IoU >= ``iou``
    (``boxes.count_matches``)."""
    return count_matches(box_iou(np.array(found), np.array(truth)), iou)


def page_metric(
    predicted: Sequence[PageDetection], truth: Sequence[Sequence[Box]],
    fp32_masks: Sequence[bytes],
) -> tuple[float, dict[str, float]]:
    """hmean % of the line boxes over all pages (matches at IoU 0.5, pooled), with extras
    recall %, precision % and "map IoU %": the binarized probability maps against the FP32
    ones, ``|pred & fp32| / |pred | fp32|`` pooled over the pages (100 when both are empty)."""
    matched = found = expected = inter = union = 0
    for detection, boxes, fp32 in zip(predicted, truth, fp32_masks, strict=True):
        matched += match_boxes(detection.boxes, boxes)
        found += len(detection.boxes)
        expected += len(boxes)
        mine = np.unpackbits(np.frombuffer(detection.mask_bits, np.uint8))
        ref = np.unpackbits(np.frombuffer(fp32, np.uint8))
        inter += int(np.count_nonzero(mine & ref))
        union += int(np.count_nonzero(mine | ref))
    recall, precision, hmean = detection_scores(matched, found, expected)
    map_iou = 100.0 * inter / union if union else 100.0
    return hmean, {"recall %": recall, "precision %": precision, "map IoU %": map_iou}


def page_detections(out: np.ndarray) -> list[PageDetection]:
    """``[N, 1, H, W]`` probability maps -> one ``PageDetection`` per page."""
    return [PageDetection(db_boxes(prob[0]), np.packbits(prob[0] > DB_THRESHOLD).tobytes())
            for prob in out]


def _render_page(rng: np.random.Generator) -> tuple[Image.Image, tuple[Box, ...]]:
    background = int(rng.integers(200, 256))
    bg_rgb = tuple(int(np.clip(background + t, 0, 255)) for t in rng.integers(-10, 11, size=3))
    page = Image.new("RGB", (PAGE_SIZE, PAGE_SIZE), bg_rgb)
    draw = ImageDraw.Draw(page)
    boxes: list[Box] = []
    top = int(rng.integers(4, 40))
    for _ in range(int(rng.integers(3, 13))):
        font = load_font(int(rng.integers(len(fonts()))), int(rng.integers(10, 27)))
        ascent, descent = font.getmetrics()
        if top + ascent + descent > PAGE_SIZE - 4:
            break
        x = int(rng.integers(4, 60))
        for _attempt in range(_TEXT_ATTEMPTS):  # a text too wide for the page is redrawn
            text = random_text(rng)
            x0, _, x1, _ = draw.textbbox((x, top), text, font=font)
            if x1 <= PAGE_SIZE - 4:
                break
        else:
            continue
        ink = int(rng.integers(0, 150))
        fg_rgb = tuple(int(np.clip(ink + t, 0, 255)) for t in rng.integers(-20, 21, size=3))
        draw.text((x, top), text, font=font, fill=fg_rgb)
        boxes.append((x0, top, x1, top + ascent + descent))
        top += ascent + descent + int(rng.integers(0, 16))
    if rng.random() < 0.5:
        page = page.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    pixels = np.asarray(page, dtype=np.float32)
    pixels = pixels + rng.normal(0, rng.uniform(0, 6), size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB"), tuple(boxes)
