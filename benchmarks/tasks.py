"""The benchmarked tasks: each model with its calibration and test data, its prediction and its
metric (top-1 for the classifiers; exact match and CER for the PP-OCRv4 recognizer).

- ``digits``: the bundled CNN (``tvmq.data``) and its calibration / test images;
- ``ppocr_cls``: the PP-OCR mobile v2.0 text-direction classifier (``models.fetch_model``) on
  synthetic text lines (``textlines.make_cls_dataset``: calibration seed 1, test seed 0), input
  fixed to 1x3x48x192;
- ``ppocr_rec``: the PP-OCRv4 recognizer on upright synthetic lines
  (``textlines.make_rec_dataset``, same seeds), input fixed to 1x3x48x320, greedy CTC decoding.

``LOADERS[name](n_calib, n_test)`` gives a ``Task``, or raises ``Skip`` when the model or its data
cannot be had here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from ctc import ctc_classes, ctc_greedy_decode
from metrics import Score, text_metric, top1_list, top1_metric
from models import fetch_model
from textlines import CLS_IMAGE_SHAPE, REC_IMAGE_SHAPE, make_cls_dataset, make_rec_dataset

from tvmq.data import digits_model_path, load_digits

__all__ = ["DIGITS_TARGET_POINTS", "LOADERS", "SIZES", "Skip", "Task"]

DIGITS_TARGET_POINTS = 0.5
"""The INT8 issue's target: accuracy within 0.5 points of FP32 on the bundled digits model."""

_PPOCR_CLS_INPUT_SHAPE = (1, *CLS_IMAGE_SHAPE)
_PPOCR_REC_INPUT_SHAPE = (1, *REC_IMAGE_SHAPE)


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
    try:
        path = fetch_model("ppocr_rec")
        classes = ctc_classes(path)
        x_calib, _ = make_rec_dataset(n_calib, seed=1)
        x_test, texts = make_rec_dataset(n_test, seed=0)
    except RuntimeError as e:
        raise Skip(str(e).replace("\n", " | ")) from e
    return Task("ppocr_rec", path, path, _PPOCR_REC_INPUT_SHAPE, x_calib, x_test, texts,
                predict=lambda out: ctc_greedy_decode(out, classes), metric=text_metric,
                primary="exact %", extras=("CER %",))


LOADERS: dict[str, Callable[[int, int], Task]] = {
    "digits": _digits_task,
    "ppocr_cls": _ppocr_cls_task,
    "ppocr_rec": _ppocr_rec_task,
}
"""Task name -> ``loader(n_calib, n_test)``."""

SIZES = {
    "digits": ((200, 360), (200, 360)),
    "ppocr_cls": ((64, 400), (16, 100)),
    "ppocr_rec": ((16, 50), (4, 20)),
}
"""Task name -> ((n_calib, n_test) of a full run, (n_calib, n_test) of a quick one)."""
