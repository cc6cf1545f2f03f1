"""Real photos for the YOLOv8n detector (NudeNet's ``320n.onnx``): the photos shipped in the
scikit-image wheel, seeded variations of them, NudeNet's preprocessing, YOLOv8 decoding with
NMS, and the agreement of two sets of detections.

NudeNet's 18 classes are what they are (exposed or covered body parts, faces); none of these
photos is what it was trained for, and they carry no labels for it. The benchmark scores
agreement only: the detections of a quantized model against those of the FP32 model on the
same inputs (the FP32 detections are the labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from boxes import box_iou, count_matches, detection_scores
from models import fetch_wheel_members
from PIL import Image
from textlines import resize_bilinear_like_cv2

__all__ = [
    "PHOTOS",
    "YOLO_INPUT_SIZE",
    "Detection",
    "agreement_metric",
    "fetch_photos",
    "make_photo_dataset",
    "match_detections",
    "nms",
    "preprocess_photo",
    "yolo_decode",
    "yolo_detections",
]

YOLO_INPUT_SIZE = 320
"""Side of the detector's square input, ``[1, 3, 320, 320]``."""

CANDIDATE_SCORE = 0.2  # NudeNet's _postprocess keeps rows whose best class score is >= 0.2
NMS_SCORE = 0.25  # then cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45)
NMS_IOU = 0.45

_SKIMAGE = "scikit-image==0.26.0"
PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage/data/astronaut.png",
     "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    ("skimage/data/camera.png",
     "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    ("skimage/data/chelsea.png",
     "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    ("skimage/data/coffee.png",
     "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    ("skimage/data/rocket.jpg",
     "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    ("skimage/data/motorcycle_left.png",
     "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    ("skimage/data/hubble_deep_field.jpg",
     "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    ("skimage/data/ihc.png",
     "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
    ("skimage/data/coins.png",
     "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
    ("skimage/data/clock_motion.png",
     "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955"),
)
"""(wheel member, SHA-256) of the photos used, from the scikit-image 0.26.0 wheel ``pip``
picks for this machine (checked on x86-64 Linux; data files, not compiled, so other platforms'
wheels should hold the same bytes, and the check says so if not)."""

Detection = tuple[int, int, int, int, int]
"""``(class, x0, y0, x1, y1)`` in whole input pixels (320x320)."""


def fetch_photos(cache_dir: Path | None = None) -> list[Path]:
    """Local paths of ``PHOTOS``, downloading the scikit-image wheel (never installed) on first
    use; raises ``RuntimeError`` when it cannot be had."""
    kwargs = {} if cache_dir is None else {"cache_dir": cache_dir}
    return fetch_wheel_members(_SKIMAGE, PHOTOS, **kwargs)


def make_photo_dataset(
    photos: Sequence[Image.Image], n: int, seed: int = 0,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """``n`` seeded variations of ``photos``, preprocessed: ``[n, 3, 320, 320]`` float32.

    Each sample draws a photo (with probabilities proportional to ``weights``, default equal),
    crops a random window of 50 to 100% of each side, mirrors it left-right with probability
    1/2 and scales it by 0.5 to 1 (PIL bilinear), then ``preprocess_photo``.
    """
    if n < 0:
        raise ValueError(f"make_photo_dataset: n must be >= 0, got {n}")
    p = np.ones(len(photos)) if weights is None else np.asarray(weights, dtype=np.float64)
    if p.shape != (len(photos),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"make_photo_dataset: weights must be {len(photos)} non-negative "
                         f"numbers, not all 0; got {weights}")
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, YOLO_INPUT_SIZE, YOLO_INPUT_SIZE), dtype=np.float32)
    for i in range(n):
        photo = photos[int(rng.choice(len(photos), p=p / p.sum()))].convert("RGB")
        w, h = photo.size
        fw, fh = rng.uniform(0.5, 1.0, size=2)
        cw, ch = round(w * float(fw)), round(h * float(fh))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = photo.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = rng.uniform(0.5, 1.0)
        img = img.resize((max(1, round(cw * scale)), max(1, round(ch * scale))),
                         Image.Resampling.BILINEAR)
        x[i] = preprocess_photo(img)
    return x


def preprocess_photo(img: Image.Image) -> np.ndarray:
    """NudeNet 3.4.2's input (``_read_image``): pad the image with black at the bottom and the
    right to a square, resize it to 320x320 (``cv2.dnn.blobFromImage``: ``cv2.resize``
    bilinear, reproduced bit-exactly), RGB, ``x / 255``, CHW; ``[3, 320, 320]`` float32."""
    rgb = np.asarray(img.convert("RGB"))
    side = max(rgb.shape[:2])
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[: rgb.shape[0], : rgb.shape[1]] = rgb
    resized = resize_bilinear_like_cv2(square, YOLO_INPUT_SIZE, YOLO_INPUT_SIZE)
    return (resized.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)


def yolo_decode(out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of one ``[4 + C, A]`` YOLOv8 output (``cx, cy, w, h`` then C class scores per
    anchor): boxes ``[K, 4]`` (``x0, y0, x1, y1``), best score ``[K]`` and its class ``[K]``,
    for the anchors whose best score is >= ``CANDIDATE_SCORE``."""
    rows = out.T.astype(np.float64)
    scores = rows[:, 4:].max(axis=1)
    classes = rows[:, 4:].argmax(axis=1)
    keep = scores >= CANDIDATE_SCORE
    cx, cy, w, h = rows[keep, :4].T
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return boxes, scores[keep], classes[keep]


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float = NMS_SCORE,
        iou_threshold: float = NMS_IOU) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, class-agnostic as NudeNet's
    ``cv2.dnn.NMSBoxes``: boxes with score >= ``score_threshold``, highest score first (ties:
    lower index first); a box is dropped if its IoU with a kept box exceeds
    ``iou_threshold``."""
    candidates = np.flatnonzero(scores >= score_threshold)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    ious = box_iou(boxes, boxes)
    kept: list[int] = []
    for i in order:
        if all(ious[i, k] <= iou_threshold for k in kept):
            kept.append(int(i))
    return np.array(kept, dtype=np.int64)


def yolo_detections(out: np.ndarray) -> list[tuple[Detection, ...]]:
    """``[N, 4 + C, A]`` outputs -> each sample's detections after NMS, highest score first,
    corners rounded to whole pixels (NudeNet reports whole pixels too), so two runs whose boxes
    differ by a fraction of a pixel give equal predictions."""
    result = []
    for sample in out:
        boxes, scores, classes = yolo_decode(sample)
        result.append(tuple((int(classes[k]), *(int(v) for v in np.rint(boxes[k])))
                            for k in nms(boxes, scores)))
    return result


def match_detections(found: Sequence[Detection], truth: Sequence[Detection],
                     iou: float = 0.5) -> int:
    """One-to-one matches between two detection sets: same class and IoU >= ``iou``, greedy
    with the highest IoU first (ties: lower index of ``found``, then of ``truth``)."""
    if not found or not truth:
        return 0
    a, b = np.array(found, dtype=np.float64), np.array(truth, dtype=np.float64)
    ious = box_iou(a[:, 1:], b[:, 1:])
    ious[a[:, :1] != b[:, 0][None, :]] = -1.0  # never matches across classes
    return count_matches(ious, iou)


def agreement_metric(
    predicted: Sequence[Sequence[Detection]], fp32: Sequence[Sequence[Detection]]
) -> tuple[float, dict[str, float]]:
    """F1 % of the detections against the FP32 ones, pooled over the samples (matched at IoU
    0.5, same class), with extras recall % and precision %; 100 when both found nothing."""
    matched = sum(match_detections(p, r) for p, r in zip(predicted, fp32, strict=True))
    recall, precision, f1 = detection_scores(matched, sum(map(len, predicted)),
                                             sum(map(len, fp32)))
    return f1, {"recall %": recall, "precision %": precision}
