"""The FP32 reference: an ONNX model run by onnxruntime's CPU provider, one sample at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _common import seconds_per_sample

__all__ = ["ORT_THREADS", "run_onnxruntime"]

ORT_THREADS = "default (one per physical core)"
"""The intra-op threads of the sessions made here, for the result files."""


def run_onnxruntime(model: Path | onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, float]:
    """First output of ``model`` for each sample of ``x`` (batch 1) and the seconds per sample
    (``seconds_per_sample``: after one warm-up sample)."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return seconds_per_sample(lambda s: session.run(None, {name: s})[0], x)
