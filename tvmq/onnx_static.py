"""Fix an ONNX model's input shape and fold everything that depends only on shapes and constants.

Exporters (Paddle2ONNX, torch.onnx) compute reshape targets, pads, `Unsqueeze` axes and initial
states at run time: `Shape -> Gather -> Concat -> Reshape`, `ConstantOfShape`, ... TVM's importer
needs them static. Once the input shape is fixed they are constants, and ONNX Runtime's basic
graph optimizer (constant folding plus node eliminations and fusions that keep standard ONNX ops:
Conv+BatchNorm, Conv+Add/Mul, ...) folds them. ORT is used because it knows the shape of every op
it can run, contrib ops included (`com.microsoft.DynamicQuantizeLSTM`), where ONNX shape
inference and the folders built on it (onnxsim, onnxslim) leave such graphs partly dynamic; and
because ORT is the runtime tvmq is scored against, so its folding is the reference's own.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from .errors import CompileError


def make_static(proto: onnx.ModelProto, input_name: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    """A copy of `proto` with input `input_name` of static `shape`, folded by ORT's basic optimizer.

    Raises CompileError when ONNX Runtime cannot load the model at that shape (its message names
    the node and op)."""
    fixed = onnx.ModelProto.FromString(proto.SerializeToString())
    (inp,) = [i for i in fixed.graph.input if i.name == input_name]
    for dim, size in zip(inp.type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = size
    # Output and intermediate shapes follow from the input: a declared -1 (Paddle2ONNX's "any
    # batch") or a wrong declared size would only conflict with inference.
    for out in fixed.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.Clear()
    del fixed.graph.value_info[:]
    with tempfile.TemporaryDirectory(prefix="tvmq-onnx-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 4  # fatal only: its errors come back in the exception
        try:
            ort.InferenceSession(fixed.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises Fail, InvalidGraph, InvalidArgument, ...
            detail = " ".join(str(err).split())
            raise CompileError(f"the model cannot run at input shape {tuple(shape)}: "
                               f"{detail}") from err
        return onnx.load(str(folded))
