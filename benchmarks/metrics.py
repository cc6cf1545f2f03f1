"""Task metrics (top-1, exact match and character error rate) and the output SQNR."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["Score", "edit_distance", "sqnr_db", "text_metric", "top1", "top1_list",
           "top1_metric"]

Score = tuple[float, dict[str, float]]
"""A task's metric on a test set: the primary value in %, and extra columns by name."""


def top1(out: np.ndarray) -> np.ndarray:
    """Index of the largest score of each sample: ``out.reshape(N, -1).argmax(1)``."""
    return out.reshape(len(out), -1).argmax(axis=1)


def top1_list(out: np.ndarray) -> list:
    """``top1(out)`` as a list (one prediction per sample)."""
    return top1(out).tolist()


def top1_metric(predicted: list, labels: Sequence) -> Score:
    """Top-1 accuracy %: share of predictions equal to their label."""
    return 100.0 * float(np.mean(np.asarray(predicted) == np.asarray(labels))), {}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions of one character each."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def text_metric(predicted: list[str], truth: Sequence[str]) -> Score:
    """Exact-match % and character error rate % (edit distances / ground-truth characters)."""
    exact = 100.0 * float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth, strict=True))
    chars = sum(len(t) for t in truth)
    return exact, {"CER %": 100.0 * errors / max(chars, 1)}


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """``10 log10(sum(ref^2) / sum((ref - approx)^2))`` in float64; inf when equal."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - approx.astype(np.float64)) ** 2))
    return math.inf if noise == 0.0 else 10.0 * math.log10(float(np.sum(ref**2)) / noise)
