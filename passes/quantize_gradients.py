"""QuantizeGradients: quantize the gradients inside a Relax training module's backward function.

Run on the module `relax.training.SetupTrainer` returns (its `backbone_loss_adjoint`, made by the
Gradient pass), before building. Two kinds of gradient are quantized, each switchable:

- activation gradients: the adjoint of every conv2d / matmul output, ``dL/dy`` -- the error signal
  the backward convolutions consume. The quantized value replaces it in every later use.
- weight gradients: the returned adjoint of every parameter, ``dL/dW``, before the optimizer.

Each site becomes ``call_dps_packed("tvmq.quantize_gradient", (g, rng, spec))`` computing
`tvmq.numerics.gradq.fake_quantize_gradient`; `register_gradient_quantizer` chooses the
implementation (default that NumPy function; tvmq.train gives it the accelerator's C unit,
bit-exact with it and faster). Site ``i`` (in binding order) draws its stochastic-rounding
uniforms with key ``seed + i`` and counter offset ``step * g.size``, where ``rng = [seed, step]``
is the module's int64 input (see `tvmq.train`), so a run is reproducible from its seed.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tvm
from tvm import relax

from tvmq.numerics.gradq import GradQuant, fake_quantize_gradient

ADJOINT_FUNC = "backbone_loss_adjoint"
RNG_INPUT = "rng"
QUANTIZE_GRADIENT = "tvmq.quantize_gradient"  # the packed function every site calls
_LINEAR_PRIMS = ("conv2d", "matmul")


@tvm.transform.module_pass(opt_level=0, name="tvmq.QuantizeGradients")
class QuantizeGradients:
    """Insert gradient quantization into `backbone_loss_adjoint`.

    Parameters
    ----------
    activations, weights : GradQuant or None
        Quantizer of activation gradients / weight gradients; None leaves them float.
    sites : sequence of str or None
        Names of the forward variables whose adjoints are activation gradients; None finds the
        outputs of conv2d / matmul kernels.
    """

    def __init__(self, activations: GradQuant | None = None, weights: GradQuant | None = None,
                 sites=None):
        for name, q in (("activations", activations), ("weights", weights)):
            if q is not None and not isinstance(q, GradQuant):
                raise TypeError(f"{name} must be a GradQuant or None, got {type(q).__name__}")
        self.activations, self.weights = activations, weights
        self.sites = None if sites is None else tuple(sites)
        register_gradient_quantizer(override=False)

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        if ADJOINT_FUNC not in [gv.name_hint for gv in mod.get_global_vars()]:
            raise ValueError(f"QuantizeGradients needs a `{ADJOINT_FUNC}` function (run "
                             "relax.training.SetupTrainer first)")
        func = mod[ADJOINT_FUNC]
        rng = next((p for p in func.params if p.name == RNG_INPUT), None)
        uses_sr = any(q is not None and q.rounding == "stochastic"
                      for q in (self.activations, self.weights))
        if rng is None and uses_sr:
            raise ValueError(f"stochastic rounding needs the int64 input `{RNG_INPUT}` = [seed, "
                             "step] in the backbone (tvmq.train.make_backbone adds it)")
        sites = self.sites if self.sites is not None else activation_sites(func)
        rewriter = _Rewriter(mod, self, set(sites), rng)
        out = rewriter.builder_
        out.update_func(mod.get_global_var(ADJOINT_FUNC), rewriter.visit_expr(func))
        return out.get()


def activation_sites(func: relax.Function) -> list[str]:
    """Forward variables of `func` bound to a conv2d / matmul kernel that have an adjoint."""
    bound = {b.var.name: b.value for block in func.body.blocks for b in block.bindings}
    sites = []
    for name, value in bound.items():
        if f"{name}_adjoint" not in bound or not isinstance(value, relax.Call):
            continue
        if value.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            callee = value.args[0].name_hint
            if callee.startswith(_LINEAR_PRIMS):
                sites.append(name)
    return sites


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod, qpass, sites, rng):
        super().__init__(mod)
        self.qpass, self.sites, self.rng, self.count = qpass, sites, rng, 0
        self.params: set[str] = set()

    def visit_function_(self, func):
        self.params = {p.name for p in func.params}
        return super().visit_function_(func)

    def visit_var_binding_(self, binding):
        super().visit_var_binding_(binding)
        name = binding.var.name
        q = None
        if name.endswith("_adjoint") and name[: -len("_adjoint")] in self.sites:
            q = self.qpass.activations
        elif name.endswith("_adjoint_out") and name[: -len("_adjoint_out")] in self.params:
            q = self.qpass.weights
            if q is not None and q.axis is not None and len(binding.var.ty.shape) < 2:
                q = dataclasses.replace(q, axis=None)  # a bias: per tensor
        if q is None:
            return
        new = self.get_var_remap(binding.var) or binding.var
        emit = (self.builder_.emit if isinstance(binding.var, relax.DataflowVar)
                else self.builder_.emit_output)
        rng = self.rng if self.rng is not None else relax.const(np.zeros(2, np.int64))
        spec = tvm.ir.StringImm(json.dumps({**dataclasses.asdict(q), "site": self.count}))
        self.count += 1
        call = relax.call_dps_packed(QUANTIZE_GRADIENT, [new, rng, spec], new.ty)
        self.set_var_remap(binding.var, emit(call, f"{name}_q"))


def quantize_gradient_site(g: np.ndarray, rng, spec: dict) -> np.ndarray:
    """What one inserted site computes: the fake-quantized gradient (golden numerics)."""
    q, seed, offset = _site_key(rng, spec, g.size)
    return fake_quantize_gradient(g, q, seed=seed, offset=offset)


def _site_key(rng, spec: dict, size: int) -> tuple[GradQuant, int, int]:
    """(quantizer, stochastic-rounding key, counter offset) of a site at ``rng = [seed, step]``."""
    spec = dict(spec)
    site = spec.pop("site")
    seed, step = (int(v) for v in np.asarray(rng).reshape(2))
    return GradQuant(**spec), (seed + site) % (1 << 32), (step * size) % (1 << 32)


def register_gradient_quantizer(quantize=fake_quantize_gradient, *, override: bool = True) -> None:
    """Implement the sites' packed function with `quantize(g, q, seed=, offset=)` -> the
    fake-quantized float32 gradient (default: the golden NumPy function). It replaces an earlier
    implementation, unless `override=False`, which keeps one already registered (a user's own)."""
    if not override and tvm.get_global_func(QUANTIZE_GRADIENT, allow_missing=True) is not None:
        return

    def _quantize(g, rng, spec, out):
        a = g.numpy()
        q, seed, offset = _site_key(rng.numpy(), json.loads(str(spec)), a.size)
        out.copyfrom(np.asarray(quantize(a, q, seed=seed, offset=offset), np.float32))

    tvm.register_global_func(QUANTIZE_GRADIENT, _quantize, override=True)
