"""The integer model simulated in float: the float model with every place the integer model
rounds a value (tvmq.realize.rounding_sites: each input and output of a quantized layer)
fake-quantized,

    fq(x) = x + e * ((clip(round(x / s) + z, qmin, qmax) - z) * s - x)

with (e, s, z, qmin, qmax) one row of a runtime table per site (`site_row`; a per-channel site
takes its scale vector as its own argument, zero point 0), and each conv2d/matmul weight a
runtime argument. With every mask e = 1 and the weights the integer model uses
(`fake_quant_weight`) it simulates the integer model; with every mask 0 and the float weights it
is the float model. One build serves both, and every width in between: the mixed-precision
sensitivity (tvmq.mixed.sensitivity) and bias correction (tvmq.boosters.bias_correction) run it.

With `offsets=True` each conv2d/matmul also adds a runtime per-channel offset to its product,
before the bias, and names that sum `<layer>_acc` (to tap with InsertTaps).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .ir import emit_like
from .numerics import QParams, dequantize
from .numerics.weights import quantize_weight
from .passes.annotate_quantizable import composite_kind

MAC_KINDS = ("conv2d", "matmul")
Site = tuple[str, int | None]  # (layer, input index) or (layer, None) for its output
ROW = ("enable", "scale", "zero_point", "qmin", "qmax")  # one row of the site table


def site_row(qp: QParams) -> list[float]:
    """A site's table row, enabled (a per-channel site's scale column is unused: 1)."""
    per_tensor = not np.ndim(qp.scale)
    return [1.0, float(qp.scale) if per_tensor else 1.0,
            float(qp.zero_point) if per_tensor else 0.0, float(qp.qmin), float(qp.qmax)]


def disabled_table(n_sites: int) -> np.ndarray:
    """The table of the float model: every mask 0 (scale 1 keeps the rows finite)."""
    table = np.zeros((n_sites, len(ROW)), np.float32)
    table[:, 1] = 1.0
    return table


def channel_shape(shape, axis: int) -> list[int]:
    """[1, .., C, .., 1]: a per-channel vector broadcast along `axis` of a tensor of `shape`."""
    dims = [int(d) for d in shape]
    axis %= len(dims)
    return [dims[i] if i == axis else 1 for i in range(len(dims))]


def fake_quant_weight(w: np.ndarray, bits: int, per_channel: bool = True) -> np.ndarray:
    """float32 dequantize(quantize_weight(w, bits)): the weight the realized layer computes with
    (output channels on axis 0 of an OIHW conv weight, axis 1 of a (K, N) matmul weight)."""
    q, qp = quantize_weight(w, axis=0 if w.ndim == 4 else 1, per_channel=per_channel, bits=bits)
    return dequantize(q, qp).astype(np.float32)


def site_tensors(annotated: tvm.IRModule, sites) -> dict[Site, relax.Var]:
    """The tensor each site rounds: its layer's output or input (one scan of `main`)."""
    bindings = {b.var.name: b for block in annotated["main"].body.blocks
                for b in block.bindings}
    return {site: bindings[site[0]].var if site[1] is None
            else bindings[site[0]].value.args[site[1]] for site in sites}


def channel_scale(qp: QParams, shape, ones: bool = False) -> np.ndarray:
    """A per-channel site's float32 scale vector (`ones`: the float model's), shaped to
    broadcast along its axis of a tensor of `shape`."""
    scale = np.ones_like(qp.scale) if ones else qp.scale
    return np.asarray(scale, np.float32).reshape(channel_shape(shape, qp.axis))


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


def outputs_noise(reference: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """output_noise summed over the model's outputs (samples x outputs lists)."""
    return sum(output_noise([r[k] for r in reference], [g[k] for g in got])
               for k in range(len(got[0])))


def model_outputs(out) -> list[np.ndarray]:
    """A VM result as a list of the model's outputs."""
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [o.numpy() for o in out]


def _slice(table: relax.Expr, row: int, col: int) -> relax.Call:
    return relax.op.strided_slice(table, axes=[0, 1], begin=[row, col], end=[row + 1, col + 1])


@relax.expr_functor.mutator
class _FakeQuantizer(relax.PyExprMutator):
    """Fake-quantize every site of `main`'s quantized layers and inline every conv2d/matmul
    composite with its weight (and, with offsets, a per-channel offset) as a parameter."""

    def __init__(self, mod, sites: dict[Site, QParams], macs: list[str], offsets: bool):
        super().__init__(mod)
        self.mod_ = mod
        self.row = {site: i for i, site in enumerate(sites)}
        self.site_layers = {layer for layer, _ in sites}
        self.mac_index = {name: i for i, name in enumerate(macs)}
        self.table = relax.Var("site_fq", relax.TensorType((len(sites), len(ROW)), "float32"))
        self.scales: dict[Site, relax.Var] = {}  # per-channel sites' scale vectors
        self.axis = {site: qp.axis for site, qp in sites.items() if np.ndim(qp.scale)}
        self.weights: list[relax.Var | None] = [None] * len(macs)
        self.offsets: list[relax.Var | None] | None = [None] * len(macs) if offsets else None

    def _fake_quant(self, x: relax.Expr, site: Site, shape) -> relax.Expr:
        emit, op = self.builder_.emit, relax.op
        enable, scale, zp, qmin, qmax = (emit(_slice(self.table, self.row[site], c))
                                         for c in range(len(ROW)))
        if site in self.axis:
            name = f"fq_{site[0]}_{'out' if site[1] is None else site[1]}"
            self.scales[site] = relax.Var(name, relax.TensorType(
                channel_shape(shape, self.axis[site]), "float32"))
            scale = self.scales[site]
        q = emit(op.add(emit(op.round(emit(op.divide(x, scale)))), zp))
        q = emit(op.minimum(emit(op.maximum(q, qmin)), qmax))
        xq = emit(op.multiply(emit(op.subtract(q, zp)), scale))
        return emit(op.add(x, emit(op.multiply(enable, emit(op.subtract(xq, x))))))

    def visit_var_binding_(self, binding):
        name = binding.var.name
        if name not in self.site_layers and name not in self.mac_index:
            emit_like(self, binding.var, self.visit_expr(binding.value))
            return
        args = []
        for i, arg in enumerate(binding.value.args):
            new = self.visit_expr(arg)
            args.append(self._fake_quant(new, (name, i), arg.ty.shape) if (name, i) in self.row
                        else new)
        if name in self.mac_index:
            out = self._inline_mac(binding.value, args, self.mac_index[name], name)
        else:
            out = self.builder_.emit(relax.Call(binding.value.op, args, binding.value.attrs,
                                                binding.value.ty_args))
        if (name, None) in self.row:
            out = self._fake_quant(out, (name, None), binding.var.ty.shape)
        emit_like(self, binding.var, out)

    def _inline_mac(self, call, args, index, name):
        func = self.mod_[call.op]
        env = dict(zip(func.params, args))
        bindings = [b for block in func.body.blocks for b in block.bindings]
        for i, b in enumerate(bindings):
            inner = b.value
            inner_args = [env.get(a, a) if isinstance(a, relax.Var) else a for a in inner.args]
            if i == 0:  # the conv2d / matmul: its weight becomes a parameter
                weight = inner.args[1]
                self.weights[index] = relax.Var(f"w_{name}", relax.TensorType(
                    weight.ty.shape, "float32"))
                inner_args[1] = self.weights[index]
            value = self.builder_.emit(relax.Call(inner.op, inner_args, inner.attrs,
                                                  inner.ty_args))
            if i == 0 and self.offsets is not None:
                axis = 1 if composite_kind(self.mod_, call) == "conv2d" else -1
                self.offsets[index] = relax.Var(f"d_{name}", relax.TensorType(
                    channel_shape(b.var.ty.shape, axis), "float32"))
                value = self.builder_.emit(relax.op.add(value, self.offsets[index]),
                                           f"{name}_acc")
            env[b.var] = value
        return env[func.body.body]


def fake_quant_module(annotated: tvm.IRModule, sites: dict[Site, QParams], macs: list[str],
                      offsets: bool = False) -> tuple[tvm.IRModule, list[Site]]:
    """(`main(x, site_fq, *weights, *scales[, *offsets])`, the per-channel sites in `scales`
    order): the float model with every site of `sites` fake-quantized (table rows in `sites`
    order) and the conv2d/matmul layers `macs` taking their weights (and offsets) as
    parameters, in `macs` order."""
    names = mac_names(annotated)
    for name in macs:
        if name not in names:
            raise ValueError(f"fake_quant_module: {name!r} is not a conv2d/matmul layer of the "
                             "model")
    mutator = _FakeQuantizer(annotated, sites, macs, offsets)
    main = mutator.visit_expr(annotated["main"])
    channel_sites = list(mutator.scales)
    params = [*main.params, mutator.table, *mutator.weights,
              *(mutator.scales[site] for site in channel_sites), *(mutator.offsets or [])]
    func = relax.Function(params, main.body, main.ret_ty, attrs=main.attrs)
    mutator.builder_.update_func(annotated.get_global_var("main"), func)
    mod = mutator.builder_.get()
    return relax.transform.DeadCodeElimination(["main"])(mod), channel_sites


def mac_names(annotated: tvm.IRModule) -> set[str]:
    """The conv2d/matmul layers of `main`."""
    return {b.var.name for block in annotated["main"].body.blocks for b in block.bindings
            if composite_kind(annotated, b.value) in MAC_KINDS}
