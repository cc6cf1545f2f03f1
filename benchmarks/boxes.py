"""Axis-aligned boxes ``(x0, y0, x1, y1)``: IoU, one-to-one matching and the detection scores
(recall, precision and their harmonic mean) shared by the text-page and photo tasks."""

from __future__ import annotations

import numpy as np

__all__ = ["box_iou", "count_matches", "detection_scores"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``[M, 4]`` with every box of ``b`` ``[K, 4]`` (``x0, y0, x1,
    y1``): ``area(a & b) / area(a | b)``, ``[M, K]`` float64; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def count_matches(ious: np.ndarray, threshold: float = 0.5) -> int:
    """Number of one-to-one pairs (row, column) of ``ious`` ``[M, K]`` with IoU >= ``threshold``,
    matched greedily: the highest IoU first (ties: lower row, then lower column)."""
    pairs = np.argwhere(ious >= threshold)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -ious[pairs[:, 0], pairs[:, 1]]))
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    for i, j in pairs[order]:
        if i not in used_rows and j not in used_cols:
            used_rows.add(int(i))
            used_cols.add(int(j))
    return len(used_rows)


def detection_scores(matched: int, found: int, expected: int) -> tuple[float, float, float]:
    """(recall %, precision %, hmean %): ``matched / expected``, ``matched / found`` and their
    harmonic mean (F1). With nothing expected, recall is 100; with nothing found, precision is
    100 if nothing was expected, else 0."""
    recall = 100.0 * matched / expected if expected else 100.0
    precision = 100.0 * matched / found if found else (100.0 if expected == 0 else 0.0)
    hmean = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    return recall, precision, hmean
