"""Frontend: an ONNX model (path or ModelProto) or a Relax IRModule in, a normalized IRModule out.

Normalization binds every weight as a constant, fixes the input shape (folding the ONNX shape
arithmetic that depends on it, see onnx_static), rewrites the ONNX ops TVM's importer lacks
(LSTM, dynamic quantization: see onnx_lower), folds BatchNorm and other
per-channel scale/shift constants into the preceding conv2d/matmul, and turns the importer's clip
lowering back into `R.clip`, so later passes see `conv2d(x, W) + b -> relu/clip` chains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import tvm
from tvm import relax

from .errors import CompileError
from .ir import returned_fields
from .onnx_lower import lower_for_tvm
from .onnx_static import make_static
from .passes.fold_batch_norm import FoldBatchNorm
from .passes.simplify_clip import SimplifyClip


@dataclass(frozen=True)
class ModelInput:
    """The single input of a model: its name, static shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ModelOutput:
    """One output of a model: its name (the ONNX output's, or the variable `main` returns),
    static shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


def normalize_pipeline() -> tvm.transform.Pass:
    """The passes that bring an imported float module into tvmq's canonical form."""
    return tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            relax.transform.FoldConstant(),
            SimplifyClip(),
            FoldBatchNorm(),
            relax.transform.FoldConstant(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
        ],
        name="tvmq.Normalize",
    )


def load_model(
    model: str | os.PathLike | onnx.ModelProto | tvm.IRModule,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[tvm.IRModule, ModelInput]:
    """Import and normalize a float model.

    Parameters
    ----------
    model : path, onnx.ModelProto or tvm.IRModule
        An ONNX file or model with one float32 input, or a Relax module whose `main` takes one
        float32 tensor of static shape.
    input_shape : tuple of int, optional
        Overrides the model's input shape; required when the ONNX input has symbolic dimensions
        other than the batch (symbolic batch becomes 1).

    Returns
    -------
    (mod, input) : the normalized IRModule and a ModelInput describing `main`'s parameter.

    Example
    -------
    >>> mod, inp = load_model(tvmq.data.digits_model_path())   # doctest: +SKIP
    """
    mod, inp, _ = import_model(model, input_shape)
    return mod, inp


def import_model(
    model: str | os.PathLike | onnx.ModelProto | tvm.IRModule,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[tvm.IRModule, ModelInput, tuple[ModelOutput, ...]]:
    """`load_model`, plus the model's outputs in order (the ONNX graph's output order, which is
    the order of the tuple `main` returns when there are several)."""
    names = None
    if isinstance(model, tvm.IRModule):
        mod, inp = model, _relax_input(model)
    else:
        proto = _read_onnx(model)
        inp = _onnx_input(proto, input_shape)
        _check_finite_initializers(proto)
        mod = _import_onnx(lower_for_tvm(make_static(proto, inp.name, inp.shape)), inp)
        names = [o.name for o in proto.graph.output]
    _check_finite_weights(mod)
    mod = normalize_pipeline()(mod)
    return mod, inp, _outputs(mod, names)


def _outputs(mod: tvm.IRModule, names: list[str] | None) -> tuple[ModelOutput, ...]:
    """The tensors `main` returns, named by `names` (default: the returned variables' names)."""
    fields = returned_fields(mod["main"])
    if names is None or len(names) != len(fields):
        names = [f.name if isinstance(f, relax.Var) else f"output{i}"
                 for i, f in enumerate(fields)]
    outputs = []
    for name, field in zip(names, fields):
        ty = field.ty
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise CompileError(f"output {name!r} is not a tensor of static shape ({ty}); "
                               "tvmq compiles models whose outputs are tensors.")
        outputs.append(ModelOutput(name, tuple(int(d) for d in ty.shape), str(ty.dtype)))
    return tuple(outputs)


def _read_onnx(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        path = Path(model)
        if not path.is_file():
            raise CompileError(f"model file not found: {path}. Pass the path of an .onnx file.")
        try:
            proto = onnx.load(str(path))
        except Exception as err:  # protobuf raises DecodeError and others
            raise CompileError(f"{path} is not a valid ONNX model ({err}).") from err
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise CompileError(f"the ONNX model is malformed: {err}") from err
    return proto


def _onnx_input(proto: onnx.ModelProto, input_shape) -> ModelInput:
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise CompileError(f"tvmq compiles models with exactly one input; this one has {names}.")
    tensor = inputs[0].type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    if dtype != np.float32:
        raise CompileError(f"input {inputs[0].name!r} has dtype {dtype}; tvmq needs float32.")
    # symbolic: a named dim, no value, or a non-positive value (Paddle2ONNX writes -1)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor.shape.dim]
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
            raise CompileError(
                f"input_shape {shape} does not match the model's input {inputs[0].name!r} "
                f"of shape {tuple('?' if d is None else d for d in dims)}."
            )
    else:
        if dims and dims[0] is None:
            dims[0] = 1
        if any(d is None for d in dims):
            raise CompileError(
                f"input {inputs[0].name!r} has symbolic dimensions {dims}; pass input_shape=(...) "
                "(CLI: --input-shape 1,3,48,192)."
            )
        shape = tuple(dims)
    return ModelInput(inputs[0].name, shape)


def _import_onnx(proto: onnx.ModelProto, inp: ModelInput) -> tvm.IRModule:
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(proto, shape_dict={inp.name: list(inp.shape)}, keep_params_in_input=False)
    except Exception as err:
        raise CompileError(f"TVM cannot import this ONNX model: {_import_failure(err, proto)}. "
                           "Fold or replace that node, or report the model.") from err


def _import_failure(err: Exception, proto: onnx.ModelProto) -> str:
    """Which node TVM's importer failed on, and why, in one line.

    An op with no converter: TVM lists the op types, so the first node of each is named. A
    converter that raised: the node is the one TVM's node loop (`_construct_nodes`) was at."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    why = next((line for line in lines if "not supported" in line), lines[-1] if lines else "")
    why = why or type(err).__name__
    if isinstance(err, tvm.error.OpNotImplemented) and ":" in why:
        missing = [op.strip() for op in why.rsplit(":", 1)[1].split(",")]
        nodes = [next(n for n in proto.graph.node if n.op_type == op) for op in missing
                 if any(n.op_type == op for n in proto.graph.node)]
        names = ", ".join(f"node {n.name!r} (op {n.op_type})" for n in nodes)
        return f"no converter for {', '.join(missing)}: first at {names}" if names else why
    tb, node = err.__traceback__, None
    while tb is not None:  # the innermost frame of the importer's node loop
        if tb.tb_frame.f_code.co_name == "_construct_nodes":
            node = tb.tb_frame.f_locals.get("node", node)
        tb = tb.tb_next
    if isinstance(node, onnx.NodeProto):
        return f"node {node.name!r} (op {node.op_type}): {why}"
    return why


def _relax_input(mod: tvm.IRModule) -> ModelInput:
    if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
        raise CompileError("the IRModule has no 'main' function.")
    params = mod["main"].params
    if len(params) != 1:
        raise CompileError(f"'main' must take one tensor; it takes {len(params)} parameters.")
    ty = params[0].ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        raise CompileError("'main' must take one tensor of static shape.")
    try:
        shape = tuple(int(d) for d in ty.shape)
    except TypeError as err:
        raise CompileError(f"'main' input has a symbolic shape {ty.shape}.") from err
    if str(ty.dtype) != "float32":
        raise CompileError(f"'main' input has dtype {ty.dtype}; tvmq needs float32.")
    return ModelInput(params[0].name, shape)


def _check_finite_initializers(proto: onnx.ModelProto) -> None:
    from onnx import numpy_helper

    for init in proto.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise CompileError(
                f"weight {init.name!r} {value.shape} contains NaN or Inf; fix the weights "
                "before quantizing."
            )


def _check_finite_weights(mod: tvm.IRModule) -> None:
    """NaN/Inf in any non-scalar constant (scalars may be +-inf clip bounds)."""
    bad: list[str] = []

    @relax.expr_functor.visitor
    class _Check(relax.PyExprVisitor):
        def visit_generic_const_(self, c):
            value = c.value.numpy()
            if value.ndim and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                bad.append(f"shape {value.shape}")

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            _Check().visit_expr(func)
    if bad:
        raise CompileError(
            f"the model has {len(bad)} weight tensor(s) containing NaN or Inf ({', '.join(bad)}); "
            "fix the weights before quantizing."
        )
