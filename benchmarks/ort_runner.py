"""ONNX Runtime, the reference: a model's FP32 outputs, and ORT's own static INT8 of it.

`run_onnxruntime` runs an ONNX model with the CPU provider one sample at a time;
`ort_static_int8` writes what a user of ORT's quantizer gets: `quantize_static` with QDQ,
per-channel int8 weights, uint8 activations and the MinMax calibrator, after ORT's recommended
pre-processing (shape inference, BatchNorm folding and fusions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _common import seconds_per_sample
from onnx import version_converter
from onnxruntime import quantization as ortq

__all__ = ["ORT_THREADS", "ort_static_int8", "run_onnxruntime"]

ORT_THREADS = "default (one per physical core)"
"""The intra-op threads of the sessions made here, for the result files."""


def run_onnxruntime(model: Path | onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, float]:
    """First output of ``model`` for each sample of ``x`` (batch 1) and the seconds per sample
    (``seconds_per_sample``: after one warm-up sample)."""
    session = ort_session(model)
    name = session.get_inputs()[0].name
    return seconds_per_sample(lambda s: session.run(None, {name: s})[0], x)


def ort_session(model: Path | onnx.ModelProto) -> ort.InferenceSession:
    """A CPU-provider session of ``model`` with ORT's default options (warnings not logged)."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors: ddddocr's declared [1, -1] output warns every run
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class _Reader(ortq.CalibrationDataReader):
    def __init__(self, input_name: str, xs: np.ndarray):
        self._it = iter([{input_name: x[None]} for x in xs])

    def get_next(self):
        return next(self._it, None)


def ort_static_int8(path: Path, x_calib: np.ndarray, work: Path) -> Path:
    """ORT's static INT8 of the model at ``path`` (QDQ, per-channel, MinMax) calibrated on the
    samples of ``x_calib``; written as ``work / "int8.onnx"``, whose path is returned."""
    model = onnx.load(str(path))
    name = ort_session(path).get_inputs()[0].name
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:  # per-channel QDQ needs DequantizeLinear's axis (opset 13)
        model = version_converter.convert_version(model, 13)
    opset13 = work / "opset13.onnx"
    onnx.save(model, str(opset13))
    pre = work / "pre.onnx"
    ortq.quant_pre_process(str(opset13), str(pre), skip_symbolic_shape=True)
    out = work / "int8.onnx"
    ortq.quantize_static(str(pre), str(out), _Reader(name, x_calib),
                         quant_format=ortq.QuantFormat.QDQ, per_channel=True,
                         activation_type=ortq.QuantType.QUInt8,
                         weight_type=ortq.QuantType.QInt8)
    return out
