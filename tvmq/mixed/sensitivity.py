"""Per-layer accuracy sensitivity by mask-guided estimation (OHQ): quantize one layer, keep the
rest float, measure how much noise reaches the model outputs.

One float "probe" build serves every measurement. In it each conv2d/matmul layer l reads

    x'_l = x_l + e_l * (fq(x_l; s_l, z_l, qmin_l, qmax_l) - x_l)
    fq(x) = (clip(round(x / s) + z, qmin, qmax) - z) * s

with (e_l, s_l, z_l, qmin_l, qmax_l) one row of a runtime tensor (the mask e_l is 0 or 1), and
its weight W_l is a runtime argument. For layer l and width b:

    weight run      W_l -> dequantize(quantize_weight(W_l, bits=b)), every mask 0
    activation run  e_l = 1 with the b-bit qparams the realized model would use, float weights

and the sensitivity is the output noise-to-signal ratio (1 / SQNR, `output_noise`) over the
calibration samples, summed over the model's outputs. A layer at (w_bits, a_bits) is scored
s_w[l, w] + s_a[l, a] (additive: independent noise powers add to first order; two runs per
width instead of one per pair). `Probe.noise(choice)` measures a whole assignment at once (the
check of tvmq.mixed.assign). Results are cached on disk under `<cache root>/sensitivity/`,
keyed by the model's weights and structure, the samples, the activation qparams and the widths.

Why not KL of the output softmax (the first version): a confident softmax hides logit noise
until the argmax flips, so on CTC outputs (40 steps, mostly sure blanks) each layer scored
small and the program stacked 4-bit layers until every line decoded wrong.
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
_CACHE_VERSION = "sensitivity-v3"  # bump when the measurement changes
Choice = dict[str, tuple[int | None, int | None]]  # (w_bits, a_bits) by layer; None: float
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


def output_noise(references: list[np.ndarray], approx: list[np.ndarray]) -> float:
    """Noise-to-signal power of one output over samples (1 / SQNR, linear):

        sum_n ||t(y~_n) - t(y_n)||^2 / sum_n ||t(y_n)||^2

    with t(p) = log p - mean(log p) along the last axis when the reference is a distribution
    along it (softmax outputs: the logits up to their per-row shift, which a confident softmax
    would hide), else t(y) = y."""
    ref = [np.asarray(r, np.float64) for r in references]
    out = [np.asarray(o, np.float64) for o in approx]
    if all(_is_distribution(r) for r in ref):
        ref, out = [_centered_log(r) for r in ref], [_centered_log(o) for o in out]
    noise = sum(float(np.sum((o - r) ** 2)) for r, o in zip(ref, out))
    signal = sum(float(np.sum(r**2)) for r in ref)
    return noise / max(signal, 1e-30)


def _is_distribution(y: np.ndarray) -> bool:
    return y.shape[-1] > 1 and bool(np.all(y >= 0)) and np.allclose(y.sum(-1), 1.0, atol=1e-3)


def _centered_log(p: np.ndarray) -> np.ndarray:
    """log p - mean(log p) along the last axis; p clipped at 1e-30 (float32 softmax underflow)."""
    log = np.log(np.clip(p, 1e-30, None))
    return log - log.mean(-1, keepdims=True)


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


class Probe:
    """The probe build of one model with its layers, samples and qparams: `run(choice)` gives
    the outputs with each layer of `choice` at its (w_bits, a_bits) (the rest float), `noise`
    their output noise against the float model (summed over outputs). Built on first use.

    `layers` (conv2d/matmul names) read the tensors `inputs`; `act_qparams(tensor, bits)` gives
    the qparams the realized model would use for a tensor at a width."""

    def __init__(self, annotated: tvm.IRModule, layers: list[str], inputs: list[str],
                 act_qparams: Callable[[str, int], QParams], samples: list[np.ndarray],
                 bits: tuple[int, ...], per_channel: bool = True):
        self.annotated, self.layers, self.bits = annotated, list(layers), tuple(bits)
        self.per_channel, self.samples = per_channel, samples
        self.weights = _weights(annotated, self.layers)
        self.qparams = {(name, b): act_qparams(name, b) for name in inputs for b in bits}
        self.inputs = list(inputs)
        self._vm = self._reference = None
        self._fq: dict[tuple[int, int], tvm.runtime.Tensor] = {}

    def key(self) -> str:
        """The cache key of its sensitivity."""
        return _cache_key(self.annotated, self.weights, self.samples, self.qparams, self.bits,
                          self.per_channel)

    def run(self, choice: Choice) -> list[list[np.ndarray]]:
        """Outputs per sample (each a list of the model's outputs) with `choice` applied; a
        width None keeps that operand float."""
        if self._vm is None:
            self._vm = build(probe_module(self.annotated, self.layers)).vm
            self._xs = [tvm.runtime.tensor(np.ascontiguousarray(x)) for x in self.samples]
            self._ws = [tvm.runtime.tensor(np.ascontiguousarray(w, np.float32))
                        for w in self.weights]
        act = np.zeros((len(self.layers), len(_ROW)), np.float32)
        act[:, 1] = 1.0  # scale 1 keeps the disabled rows finite
        ws = list(self._ws)
        for i, name in enumerate(self.layers):
            if name in choice:
                w_bits, a_bits = choice[name]
                if w_bits is not None:
                    ws[i] = self._weight(i, w_bits)
                if a_bits is not None:
                    act[i] = _row(self.qparams[(self.inputs[i], a_bits)])
        act_t = tvm.runtime.tensor(act)
        return [_outputs(self._vm["main"](x, act_t, *ws)) for x in self._xs]

    def noise(self, choice: Choice) -> float:
        """Output noise of `choice` against the float model, summed over the outputs."""
        if self._reference is None:
            self._reference = self.run({})
        got = self.run(choice)
        return sum(output_noise([r[k] for r in self._reference], [g[k] for g in got])
                   for k in range(len(got[0])))

    def _weight(self, i: int, bits: int) -> tvm.runtime.Tensor:
        if (i, bits) not in self._fq:
            self._fq[(i, bits)] = tvm.runtime.tensor(
                fake_quant_weight(self.weights[i], bits, self.per_channel))
        return self._fq[(i, bits)]


def measure(probe: Probe, *, cache_dir: Path | None = None,
            progress: bool = True) -> Sensitivity:
    """Sensitivity of each of the probe's layers at each of its widths: layer l alone with its
    weight (float activations) or its input (float weights) at a width, the rest float."""
    start = time.perf_counter()
    layers, bits = probe.layers, probe.bits
    path = None if cache_dir is None else Path(cache_dir) / f"{probe.key()}.npz"
    if path is not None and path.is_file():
        with np.load(path) as cached:
            return Sensitivity(tuple(layers), bits, cached["weight"], cached["activation"],
                               time.perf_counter() - start)
    s_w = np.zeros((len(layers), len(bits)))
    s_a = np.zeros((len(layers), len(bits)))
    with tqdm(total=2 * len(layers) * len(bits), desc="sensitivity", unit="run", leave=False,
              disable=not progress) as bar:
        for i, name in enumerate(layers):
            for j, b in enumerate(bits):
                s_w[i, j] = probe.noise({name: (b, None)})
                s_a[i, j] = probe.noise({name: (None, b)})
                bar.update(2)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, weight=s_w, activation=s_a)
        tmp.rename(path)
    return Sensitivity(tuple(layers), bits, s_w, s_a, time.perf_counter() - start)


def _outputs(out) -> list[np.ndarray]:
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [o.numpy() for o in out]


def _cache_key(annotated, weights, samples, table, bits, per_channel) -> str:
    h = hashlib.sha256(_CACHE_VERSION.encode())
    h.update(str(tvm_ffi.structural_hash(annotated)).encode())  # constants by value
    for a in (*weights, *samples):
        h.update(np.ascontiguousarray(a).tobytes())
    rows = {f"{name}/{b}": _row(qp) for (name, b), qp in table.items()}
    h.update(json.dumps([rows, list(bits), per_channel], sort_keys=True).encode())
    return h.hexdigest()[:24]
