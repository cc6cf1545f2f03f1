"""Per-layer accuracy sensitivity by mask-guided estimation (OHQ): quantize one layer, keep the
rest float, measure how far the model output moves.

One float "probe" build serves every measurement. In it each conv2d/matmul layer l reads

    x'_l = x_l + e_l * (fq(x_l; s_l, z_l, qmin_l, qmax_l) - x_l)
    fq(x) = (clip(round(x / s) + z, qmin, qmax) - z) * s

with (e_l, s_l, z_l, qmin_l, qmax_l) one row of a runtime tensor (the mask e_l is 0 or 1), and
its weight W_l is a runtime argument. For layer l and width b:

    weight run      W_l -> dequantize(quantize_weight(W_l, bits=b)), every mask 0
    activation run  e_l = 1 with the b-bit qparams the realized model would use, float weights

and the sensitivity is the mean output distance to the float model over the calibration
samples (`output_distance`). A layer at (w_bits, a_bits) is scored s_w[l, w] + s_a[l, a]
(additive: two runs per width instead of one per pair). Results are cached on disk under
`<cache root>/sensitivity/`, keyed by the model's weights and structure, the samples, the
activation qparams and the widths.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tqdm import tqdm
from tvm import relax

from ..ir import emit_like
from ..numerics import QParams, dequantize
from ..numerics.weights import quantize_weight
from ..passes.annotate_quantizable import composite_kind
from ..targets.host import build

MAC_KINDS = ("conv2d", "matmul")
_CACHE_VERSION = "sensitivity-v2"  # bump when the measurement changes
_ROW = ("enable", "scale", "zero_point", "qmin", "qmax")  # one row of the activation table


@dataclass(frozen=True)
class Sensitivity:
    """s_w[l, i]: output distance with layer l's weights at bits[i] (rest float); s_a[l, i]:
    with its input activation at bits[i]."""

    layers: tuple[str, ...]
    bits: tuple[int, ...]
    weight: np.ndarray
    activation: np.ndarray
    seconds: float = 0.0

    def pair(self, w_bits: int, a_bits: int) -> np.ndarray:
        """(L,) additive score of every layer at (w_bits, a_bits)."""
        return (self.weight[:, self.bits.index(w_bits)]
                + self.activation[:, self.bits.index(a_bits)])


def output_distance(reference: np.ndarray, approx: np.ndarray) -> float:
    """Mean KL(p || q) over the last axis when the output is a distribution or logits (p, q:
    the outputs if `reference` already sums to 1 along it, else their softmax); for a last
    axis of size 1, the MSE divided by the reference's mean square."""
    ref = np.asarray(reference, np.float64)
    out = np.asarray(approx, np.float64)
    if ref.shape[-1] == 1:
        return float(np.mean((ref - out) ** 2) / max(np.mean(ref**2), 1e-30))
    is_distribution = np.all(ref >= 0) and np.allclose(ref.sum(-1), 1.0, atol=1e-3)
    if is_distribution:
        p, q = ref, np.clip(out, 0.0, None)
        q = q / np.maximum(q.sum(-1, keepdims=True), 1e-30)
    else:
        p, q = _softmax(ref), _softmax(out)
    eps = 1e-12
    kl = float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=-1)))
    return max(kl, 0.0)  # KL >= 0; the eps can leave -1e-9 when q == p


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _slice(table: relax.Expr, row: int, col: int) -> relax.Call:
    return relax.op.strided_slice(table, axes=[0, 1], begin=[row, col], end=[row + 1, col + 1])


@relax.expr_functor.mutator
class _Prober(relax.PyExprMutator):
    """Inline every conv2d/matmul composite of `main` with a masked fake-quantized input and a
    weight parameter."""

    def __init__(self, mod, layers: list[str]):
        super().__init__(mod)
        self.mod_ = mod
        self.index = {name: i for i, name in enumerate(layers)}
        self.table = relax.Var("act_fq", relax.TensorType((len(layers), len(_ROW)), "float32"))
        self.weights: list[relax.Var | None] = [None] * len(layers)

    def _fake_quant(self, x: relax.Expr, row: int) -> relax.Expr:
        enable, scale, zp, qmin, qmax = (self.builder_.emit(_slice(self.table, row, c))
                                         for c in range(len(_ROW)))
        emit, op = self.builder_.emit, relax.op
        q = emit(op.add(emit(op.round(emit(op.divide(x, scale)))), zp))
        q = emit(op.minimum(emit(op.maximum(q, qmin)), qmax))
        xq = emit(op.multiply(emit(op.subtract(q, zp)), scale))
        return emit(op.add(x, emit(op.multiply(enable, emit(op.subtract(xq, x))))))

    def visit_var_binding_(self, binding):
        name = binding.var.name
        if name not in self.index:
            emit_like(self, binding.var, self.visit_expr(binding.value))
            return
        row = self.index[name]
        func = self.mod_[binding.value.op]
        env = {func.params[0]: self._fake_quant(self.visit_expr(binding.value.args[0]), row)}
        bindings = [b for block in func.body.blocks for b in block.bindings]
        for i, b in enumerate(bindings):
            call = b.value
            args = [env.get(a, a) if isinstance(a, relax.Var) else a for a in call.args]
            if i == 0:  # the conv2d / matmul: its weight becomes a parameter
                weight = call.args[1]
                self.weights[row] = relax.Var(f"w_{name}", relax.TensorType(
                    weight.ty.shape, "float32"))
                args[1] = self.weights[row]
            env[b.var] = self.builder_.emit(relax.Call(call.op, args, call.attrs,
                                                       call.ty_args))
        emit_like(self, binding.var, env[func.body.body])


def probe_module(annotated: tvm.IRModule, layers: list[str]) -> tvm.IRModule:
    """`main(x, act_fq, *weights)`: the float model with each of `layers` (conv2d/matmul
    composites) reading a masked fake-quantized input and its weight as a parameter."""
    for name in layers:
        if name not in _mac_names(annotated):
            raise ValueError(f"probe_module: {name!r} is not a conv2d/matmul layer of the model")
    prober = _Prober(annotated, layers)
    main = prober.visit_expr(annotated["main"])
    params = [*main.params, prober.table, *prober.weights]
    func = relax.Function(params, main.body, main.ret_ty, attrs=main.attrs)
    prober.builder_.update_func(annotated.get_global_var("main"), func)
    mod = prober.builder_.get()
    return relax.transform.DeadCodeElimination(["main"])(mod)


def _mac_names(annotated: tvm.IRModule) -> set[str]:
    return {b.var.name for block in annotated["main"].body.blocks for b in block.bindings
            if composite_kind(annotated, b.value) in MAC_KINDS}


def _weights(annotated: tvm.IRModule, layers: list[str]) -> list[np.ndarray]:
    found = {}
    for block in annotated["main"].body.blocks:
        for b in block.bindings:
            if b.var.name in layers:
                func = annotated[b.value.op]
                found[b.var.name] = func.body.blocks[0].bindings[0].value.args[1].value.numpy()
    return [found[name] for name in layers]


def _weight_axis(w: np.ndarray) -> int:
    """Output-channel axis: 0 for OIHW conv weights, 1 for (K, N) matmul weights."""
    return 0 if w.ndim == 4 else 1


def fake_quant_weight(w: np.ndarray, bits: int, per_channel: bool = True) -> np.ndarray:
    """float32 dequantize(quantize_weight(w, bits)): the weight the realized layer computes with."""
    q, qp = quantize_weight(w, axis=_weight_axis(w), per_channel=per_channel, bits=bits)
    return dequantize(q, qp).astype(np.float32)


def _row(qp: QParams) -> list[float]:
    return [1.0, float(qp.scale), float(qp.zero_point), float(qp.qmin), float(qp.qmax)]


def measure(annotated: tvm.IRModule, layers: list[str], inputs: list[str],
            act_qparams: Callable[[str, int], QParams], samples: list[np.ndarray],
            bits: tuple[int, ...], *, per_channel: bool = True, cache_dir: Path | None = None,
            progress: bool = True) -> Sensitivity:
    """Sensitivity of each conv2d/matmul layer (`layers`, reading tensors `inputs`) at each of
    `bits`, over `samples` (float32 model inputs). `act_qparams(tensor, bits)` gives the qparams
    the realized model would use for a tensor at a width."""
    start = time.perf_counter()
    weights = _weights(annotated, layers)
    table = {(name, b): act_qparams(name, b) for name in inputs for b in bits}
    key = _cache_key(annotated, weights, samples, table, bits, per_channel)
    path = None if cache_dir is None else Path(cache_dir) / f"{key}.npz"
    if path is not None and path.is_file():
        with np.load(path) as cached:
            return Sensitivity(tuple(layers), tuple(bits), cached["weight"],
                               cached["activation"], time.perf_counter() - start)
    vm = build(probe_module(annotated, layers)).vm
    off = np.zeros((len(layers), len(_ROW)), np.float32)
    off[:, 1] = 1.0  # scale 1 keeps the disabled rows finite
    xs = [tvm.runtime.tensor(np.ascontiguousarray(x)) for x in samples]
    ws = [tvm.runtime.tensor(np.ascontiguousarray(w, np.float32)) for w in weights]

    def run(act, ws_):
        act_t = tvm.runtime.tensor(act)
        return [_first(vm["main"](x, act_t, *ws_)) for x in xs]

    reference = run(off, ws)
    s_w = np.zeros((len(layers), len(bits)))
    s_a = np.zeros((len(layers), len(bits)))
    total = 2 * len(layers) * len(bits)
    with tqdm(total=total, desc="sensitivity", unit="run", leave=False,
              disable=not progress) as bar:
        for i, w in enumerate(weights):
            for j, b in enumerate(bits):
                swapped = list(ws)
                swapped[i] = tvm.runtime.tensor(fake_quant_weight(w, b, per_channel))
                s_w[i, j] = _distance(reference, run(off, swapped))
                act = off.copy()
                act[i] = _row(table[(inputs[i], b)])
                s_a[i, j] = _distance(reference, run(act, ws))
                bar.update(2)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, weight=s_w, activation=s_a)
        tmp.rename(path)
    return Sensitivity(tuple(layers), tuple(bits), s_w, s_a, time.perf_counter() - start)


def _first(out) -> np.ndarray:
    return (out if isinstance(out, tvm.runtime.Tensor) else out[0]).numpy()


def _distance(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    return float(np.mean([output_distance(r, o) for r, o in zip(reference, outputs)]))


def _cache_key(annotated, weights, samples, table, bits, per_channel) -> str:
    h = hashlib.sha256(_CACHE_VERSION.encode())
    h.update(str(tvm_ffi.structural_hash(annotated)).encode())  # constants by value
    for a in (*weights, *samples):
        h.update(np.ascontiguousarray(a).tobytes())
    rows = {f"{name}/{b}": _row(qp) for (name, b), qp in table.items()}
    h.update(json.dumps([rows, list(bits), per_channel], sort_keys=True).encode())
    return h.hexdigest()[:24]
