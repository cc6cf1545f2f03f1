"""The quantizable layers of an annotated model (the `tvmq.*` composites of AnnotateQuantizable)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .ir import returned_fields
from .passes.annotate_quantizable import composite_kind, composites, kept_float


@dataclass(frozen=True)
class Layer:
    """One quantized op of the annotated graph: binding name, kind, input names, output shape,
    the float weight of a conv2d/matmul and a conv2d's groups."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    weight: np.ndarray | None
    groups: int = 1


def find_layers(annotated: tvm.IRModule) -> tuple[list[Layer], list[str]]:
    """The `tvmq.*` composite calls of `main` in order, and the float ops left outside them
    (composites KeepFloat left in float among them, as "name (kind: reason)")."""
    layers, float_ops = [], []
    for block in annotated["main"].body.blocks:
        for binding in block.bindings:
            value, name = binding.value, binding.var.name
            kind = composite_kind(annotated, value)
            if kind is None:
                kept = kept_float(annotated, value)
                if kept is not None:
                    float_ops.append(f"{name} ({kept[0]}: {kept[1]})")
                elif isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                    float_ops.append(f"{name} ({value.op.name.removeprefix('relax.')})")
                continue
            weight, groups = None, 1
            if kind in ("conv2d", "matmul"):
                func = annotated[value.op]
                first = func.body.blocks[0].bindings[0].value
                weight = first.args[1].value.numpy()
                groups = int(first.attrs.groups) if kind == "conv2d" else 1
            layers.append(Layer(name, kind, tuple(a.name for a in value.args),
                                tuple(int(d) for d in binding.var.ty.shape), weight, groups))
    return layers, float_ops


def tensor_names(layers: list[Layer]) -> list[str]:
    """Every tensor a layer reads or writes, in graph order (the calibration taps)."""
    names = []
    for layer in layers:
        for n in (*layer.inputs, layer.name):
            if n not in names:
                names.append(n)
    return names


def is_depthwise(layer: Layer) -> bool:
    """A conv2d with one input channel per group, and more than one group (a conv of a
    one-channel input is an ordinary conv)."""
    return layer.kind == "conv2d" and layer.groups > 1 and layer.weight.shape[1] == 1


def depthwise_float_inputs(layers: list[Layer]) -> list[str]:
    """Tensors a depthwise conv2d layer (one input channel per group) reads that no layer
    writes: they are quantized where the conv reads them, so per channel at no integer cost
    (RealizeQuantization's `channel_qparams`)."""
    written = {layer.name for layer in layers}
    return list(dict.fromkeys(layer.inputs[0] for layer in layers
                              if is_depthwise(layer) and layer.inputs[0] not in written))


def depthwise_only_outputs(annotated: tvm.IRModule, layers: list[Layer]) -> list[str]:
    """conv2d layers whose output every reading layer is a depthwise conv (float ops may read it
    too) and whose epilogue bounds are none or ReLU's: their requant can write each channel at
    its own scale (zero point 0), which the depthwise conv folds into its own requant. Not
    main's outputs."""
    outputs = {f.name for f in returned_fields(annotated["main"]) if isinstance(f, relax.Var)}
    readers: dict[str, list[Layer]] = {}
    for layer in layers:
        for name in layer.inputs:
            readers.setdefault(name, []).append(layer)
    comps = composites(annotated)
    return [layer.name for layer in layers
            if layer.kind == "conv2d" and layer.name not in outputs
            and readers.get(layer.name) and all(is_depthwise(r) for r in readers[layer.name])
            and comps[layer.name].activation()[1] == math.inf]
