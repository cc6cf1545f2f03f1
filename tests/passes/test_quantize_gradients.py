"""QuantizeGradients on a hand-written backward function: where the quantizers go, and errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T
from tvmq.passes.quantize_gradients import (
    QUANTIZE_GRADIENT,
    QuantizeGradients,
    activation_sites,
    register_gradient_quantizer,
)

from tvmq.numerics.gradq import GradQuant, fake_quantize_gradient

ACT = GradQuant(8, "rtz", "zscore")
WEIGHT = GradQuant(4, "stochastic", "max", axis=0)


def _spec(q: GradQuant, site: int) -> str:
    return json.dumps({"bits": q.bits, "rounding": q.rounding, "clip": q.clip, "k": q.k,
                       "axis": q.axis, "site": site})


@I.ir_module
class Before:
    @T.prim_func(private=True)
    def matmul(a: T.Buffer((2, 3), "float32"), b: T.Buffer((3, 4), "float32"),
               c: T.Buffer((2, 4), "float32")):
        for i, j in T.grid(2, 4):
            c[i, j] = a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j]

    @R.function
    def backbone_loss_adjoint(x: R.Tensor((2, 3), "float32"), rng: R.Tensor((2,), "int64"),
                              w: R.Tensor((3, 4), "float32"), b: R.Tensor((4,), "float32")):
        cls = Before
        with R.dataflow():
            y = R.call_tir(cls.matmul, (x, w), out_ty=R.Tensor((2, 4), "float32"))
            out = R.add(y, b)
            loss = R.sum(out)
            out_adjoint = R.ones((2, 4), "float32")
            y_adjoint: R.Tensor((2, 4), "float32") = out_adjoint
            b_adjoint = R.sum(out_adjoint, axis=[0])
            xt = R.permute_dims(x)
            w_adjoint = R.matmul(xt, y_adjoint)
            w_adjoint_out: R.Tensor((3, 4), "float32") = w_adjoint
            b_adjoint_out: R.Tensor((4,), "float32") = b_adjoint
            R.output(loss, w_adjoint_out, b_adjoint_out)
        return (loss, (w_adjoint_out, b_adjoint_out))


@I.ir_module
class Expected:
    @T.prim_func(private=True)
    def matmul(a: T.Buffer((2, 3), "float32"), b: T.Buffer((3, 4), "float32"),
               c: T.Buffer((2, 4), "float32")):
        for i, j in T.grid(2, 4):
            c[i, j] = a[i, 0] * b[0, j] + a[i, 1] * b[1, j] + a[i, 2] * b[2, j]

    @R.function
    def backbone_loss_adjoint(x: R.Tensor((2, 3), "float32"), rng: R.Tensor((2,), "int64"),
                              w: R.Tensor((3, 4), "float32"), b: R.Tensor((4,), "float32")):
        cls = Expected
        with R.dataflow():
            y = R.call_tir(cls.matmul, (x, w), out_ty=R.Tensor((2, 4), "float32"))
            out = R.add(y, b)
            loss = R.sum(out)
            out_adjoint = R.ones((2, 4), "float32")
            y_adjoint: R.Tensor((2, 4), "float32") = out_adjoint
            y_adjoint_q = R.call_dps_packed(
                "tvmq.quantize_gradient", (y_adjoint, rng, R.str(_spec(ACT, 0))),
                out_ty=R.Tensor((2, 4), "float32"))
            b_adjoint = R.sum(out_adjoint, axis=[0])
            xt = R.permute_dims(x)
            w_adjoint = R.matmul(xt, y_adjoint_q)
            w_adjoint_out: R.Tensor((3, 4), "float32") = w_adjoint
            w_adjoint_out_q = R.call_dps_packed(
                "tvmq.quantize_gradient", (w_adjoint_out, rng, R.str(_spec(WEIGHT, 1))),
                out_ty=R.Tensor((3, 4), "float32"))
            b_adjoint_out: R.Tensor((4,), "float32") = b_adjoint
            b_adjoint_out_q = R.call_dps_packed(  # a bias: per tensor
                "tvmq.quantize_gradient",
                (b_adjoint_out, rng, R.str(_spec(GradQuant(4, "stochastic", "max"), 2))),
                out_ty=R.Tensor((4,), "float32"))
            R.output(loss, w_adjoint_out, b_adjoint_out, w_adjoint_out_q, b_adjoint_out_q)
        return (loss, (w_adjoint_out_q, b_adjoint_out_q))


def test_activation_sites_are_linear_kernel_outputs_with_an_adjoint():
    assert activation_sites(Before["backbone_loss_adjoint"]) == ["y"]


def test_quantizers_inserted_after_activation_and_weight_gradients():
    after = QuantizeGradients(activations=ACT, weights=WEIGHT)(Before)
    tvm.ir.assert_structural_equal(after, Expected)


def test_nothing_to_do_leaves_the_module_unchanged():
    tvm.ir.assert_structural_equal(QuantizeGradients()(Before), Before)


@I.ir_module
class WithoutRng:
    @R.function
    def backbone_loss_adjoint(x: R.Tensor((3,), "float32")):
        with R.dataflow():
            loss = R.sum(x)
            x_adjoint_out = R.ones((3,), "float32")
            R.output(loss, x_adjoint_out)
        return (loss, (x_adjoint_out,))


def test_errors():
    with pytest.raises(TypeError, match="GradQuant"):
        QuantizeGradients(activations="rtz")
    no_adjoint = tvm.IRModule({"main": Before["backbone_loss_adjoint"]})
    with pytest.raises(ValueError, match="SetupTrainer"):
        QuantizeGradients(weights=WEIGHT)(no_adjoint)
    with pytest.raises(ValueError, match="`rng`"):
        QuantizeGradients(weights=WEIGHT)(WithoutRng)
    QuantizeGradients(weights=ACT)(WithoutRng)  # deterministic rounding needs no rng


def test_a_registered_gradient_quantizer_is_kept_unless_replaced():
    """override=False (the pass's default, tvmq.train's C unit) keeps a user's implementation."""
    def run(g):
        out = tvm.runtime.tensor(np.zeros_like(g))
        spec = json.dumps({**dataclasses.asdict(ACT), "site": 0})
        tvm.get_global_func(QUANTIZE_GRADIENT)(tvm.runtime.tensor(g),
                                               tvm.runtime.tensor(np.zeros(2, np.int64)),
                                               spec, out)
        return out.numpy()

    g = np.linspace(-1, 1, 8, dtype=np.float32)
    try:
        register_gradient_quantizer(lambda a, q, seed, offset: np.full_like(a, 7.0))
        register_gradient_quantizer(override=False)
        QuantizeGradients(activations=ACT)
        np.testing.assert_array_equal(run(g), np.full_like(g, 7.0))
        register_gradient_quantizer()
        np.testing.assert_array_equal(run(g), fake_quantize_gradient(g, ACT, seed=0, offset=0))
    finally:
        register_gradient_quantizer()
