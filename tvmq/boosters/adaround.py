"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"):
learn, for every weight of a conv2d/matmul layer, whether it rounds down or up.

The weight scale s is the one `quantize_weight` chooses; only the rounding is learned. Per layer,
with rows X (float inputs) and X_q (the same inputs fake-quantized with the layer's input
QParams, as the integer model sees them):

    W_soft = s * clip(floor(W / s) + h(V), qmin, qmax)
    h(V)   = clip(sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)        (rectified sigmoid)
    loss   = ||X_q W_soft - X W||^2 / (M * norm)  +  LAMBDA * sum(1 - |2 h(V) - 1|^beta)

V starts where h(V) = frac(W / s) (W_soft = W), is optimized by Adam for ITERATIONS steps
(no regularizer for the first WARMUP of them, then beta annealed linearly BETA_START ->
BETA_END), and the learned weight is floor(W / s) + [h(V) >= 0.5], clipped. `norm` (per
output column, each column being its own problem) is mean(diag(X_q^T X_q)) / M * s^2, the
reconstruction error of one step on one weight, so LAMBDA means the same for every layer and
channel whatever their scales.

The reconstruction term is a quadratic in W_soft: with the Gram matrix G = X_q^T X_q and
R0 = X_q^T (X_q - X) W, its gradient is 2 (G (W_soft - W) + R0) / M, computed once per step
on every row (no mini-batches): a step costs K^2 N multiply-adds, not M K N (or 2 M K N
through the rows when there are fewer than K / 2 of them). float32 throughout.

A conv2d is the matmul of its im2col rows (ROWS output positions drawn at random from SAMPLES
calibration samples) with W reshaped (K = C/groups * kh * kw, O/groups) per group; the groups
(depthwise: one output channel each) are solved together as a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tvm
from tqdm import tqdm

from ..layers import Layer
from ..numerics import QParams, dequantize, quantize
from ..numerics.weights import quantize_weight
from ..numerics.windows import pad_nchw, windows
from ..passes.annotate_quantizable import composites
from .activations import float_values

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (the paper's values)
ITERATIONS = 500  # Adam steps per layer
LEARNING_RATE = 3e-2  # Adam's step on V
WARMUP = 0.2  # fraction of the steps without the rounding regularizer
BETA_START, BETA_END = 20.0, 2.0  # annealing of the regularizer's exponent
LAMBDA = 1.0  # weight of the rounding regularizer (per unit of `norm`)
SAMPLES = 16  # calibration samples the layer inputs are taken from
ROWS = 4096  # rows (conv: output positions) drawn from them per layer

__all__ = ["adaround", "learn_rounding"]


def learn_rounding(x: np.ndarray, x_q: np.ndarray, w: np.ndarray, scale, qmin: int,
                   qmax: int, *, iterations: int = ITERATIONS) -> np.ndarray:
    """Integer weights of `x_q @ Wq * s ~= x @ w` with each Wq in {floor(w/s), ceil(w/s)}
    (clipped to [qmin, qmax]), learned by AdaRound (module docstring).

    Parameters
    ----------
    x, x_q : (G, M, K) float rows: the float inputs and the quantized model's view of them, for
        G independent problems (conv groups; 1 for a matmul)
    w : (G, K, N) float weights
    scale : weight scale broadcastable to (G, 1, N) (per output column, or one)
    qmin, qmax : the integer range of the weights

    Returns
    -------
    (G, K, N) int64 weights
    """
    w = np.asarray(w, np.float32)
    s = np.ascontiguousarray(np.broadcast_to(np.asarray(scale, np.float32),
                                             (w.shape[0], 1, w.shape[2])))
    w_over_s = w / s  # one float32 division, as quantize does
    base = np.floor(w_over_s)
    frac = w_over_s - base
    x, x_q = np.asarray(x, np.float32), np.asarray(x_q, np.float32)
    m, k = x.shape[1:]
    error0 = np.matmul(x_q - x, w)  # (G, M, N): the input quantization's error at W_soft = W
    if 2 * m < k:  # fewer rows than columns: X_q^T (X_q D + E0) is the cheaper form
        def gradient(d):
            return np.stack([xq.T @ (xq @ dg + eg) for xq, dg, eg in zip(x_q, d, error0)])
        diag = np.einsum("gmk,gmk->gk", x_q, x_q)
    else:  # G D + R0 with the Gram matrix G = X_q^T X_q, R0 = X_q^T E0
        gram = np.stack([xq.T @ xq for xq in x_q])
        r0 = np.stack([xq.T @ eg for xq, eg in zip(x_q, error0)])

        def gradient(d):
            return np.matmul(gram, d) + r0
        diag = np.diagonal(gram, axis1=1, axis2=2)
    # per group and column (each column is its own problem): one step on one weight
    norm = np.mean(diag, axis=1)[:, None, None] / m * s**2
    grad_scale = 2.0 / (m * np.maximum(norm, np.finfo(np.float32).tiny))

    # V with h(V) = frac: sigmoid(V) = (frac - GAMMA) / (ZETA - GAMMA)
    p = (frac - GAMMA) / (ZETA - GAMMA)
    v = np.log(p) - np.log1p(-p)
    adam_m, adam_v = np.zeros_like(v), np.zeros_like(v)
    warmup = int(WARMUP * iterations)
    for t in range(1, iterations + 1):
        sig = 1.0 / (1.0 + np.exp(-v))
        h_raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(h_raw, 0.0, 1.0)
        z = base + h
        grad_w = grad_scale * gradient(s * np.clip(z, qmin, qmax) - w)  # d/dW_soft
        grad_h = grad_w * s * ((z >= qmin) & (z <= qmax))
        if t > warmup:
            beta = BETA_START + (BETA_END - BETA_START) * (t - warmup) / (iterations - warmup)
            d = 2.0 * h - 1.0  # d/dh of 1 - |d|^beta
            grad_h -= LAMBDA * 2.0 * beta * np.abs(d) ** (beta - 1.0) * np.sign(d)
        grad_v = grad_h * ((h_raw > 0.0) & (h_raw < 1.0)) * sig * (1.0 - sig) * (ZETA - GAMMA)
        adam_m = 0.9 * adam_m + 0.1 * grad_v
        adam_v = 0.999 * adam_v + 0.001 * grad_v**2
        v -= LEARNING_RATE * (adam_m / (1 - 0.9**t)) / (np.sqrt(adam_v / (1 - 0.999**t)) + 1e-8)
    h = np.clip((1.0 / (1.0 + np.exp(-v))) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
    return np.clip(base + (h >= 0.5), qmin, qmax).astype(np.int64)


def adaround(annotated: tvm.IRModule, layers: Sequence[Layer],
             input_qparams: Mapping[str, QParams], weight_bits: Mapping[str, int],
             samples: Sequence[np.ndarray], *, per_channel: bool = True, progress: bool = True,
             seed: int = 0) -> dict[str, tuple[np.ndarray, QParams]]:
    """AdaRound weights of every conv2d/matmul layer of an annotated model.

    Parameters
    ----------
    annotated : the AnnotateQuantizable module
    layers : its layers (`tvmq.layers.find_layers`); those with a weight are rounded
    input_qparams : {layer name: QParams of its input in the integer model}
    weight_bits : {layer name: weight width} (default 8)
    samples : calibration inputs; the first SAMPLES are used
    per_channel : weight scale per output channel (as `quantize_weight`)

    Returns
    -------
    {layer name: (integer weights of the weight's shape, their QParams)}: the QParams are
    `quantize_weight`'s, each weight its floor or ceil in steps of the scale.
    """
    macs = [layer for layer in layers if layer.weight is not None]
    inputs = list(dict.fromkeys(layer.inputs[0] for layer in macs))
    values = float_values(annotated, inputs, list(samples)[:SAMPLES])
    by_name = composites(annotated)
    rng = np.random.default_rng(seed)
    learned = {}
    for layer in tqdm(macs, desc="adaround", unit="layer", leave=False, disable=not progress):
        is_conv = layer.kind == "conv2d"
        _, wqp = quantize_weight(layer.weight, axis=0 if is_conv else 1,
                                 per_channel=per_channel,
                                 bits=weight_bits.get(layer.name, 8))
        x = np.concatenate(values[layer.inputs[0]]).astype(np.float32)
        qp = input_qparams[layer.name]
        x_q = dequantize(quantize(x, qp), qp)
        if is_conv:
            learned[layer.name] = (_conv(layer, by_name[layer.name].root, x, x_q, wqp, rng),
                                   wqp)
        else:
            learned[layer.name] = (_matmul(layer, x, x_q, wqp, rng), wqp)
    return learned


def _rows(count: int, rng: np.random.Generator) -> np.ndarray:
    """ROWS row indices out of `count` (all of them when there are fewer), sorted."""
    return np.sort(rng.choice(count, ROWS, replace=False)) if count > ROWS else np.arange(count)


def _conv(layer: Layer, root, x, x_q, wqp: QParams, rng) -> np.ndarray:
    """Learned weights of a conv2d: im2col rows at random output positions, per group."""
    a = root.attrs  # NCHW / OIHW (AnnotateQuantizable's condition)
    w = layer.weight
    o, cg, kh, kw = w.shape
    groups = int(a.groups)
    wins = [windows(pad_nchw(v, a.padding, 0.0), kh, kw, a.strides, a.dilation)
            for v in (x, x_q)]
    n, _, oh, ow = wins[0].shape[:4]
    idx = np.unravel_index(_rows(n * oh * ow, rng), (n, oh, ow))

    def rows(win):  # (groups, R, Cg * kh * kw), columns in W's (c, kh, kw) order
        r = win[idx[0], :, idx[1], idx[2]]
        return r.reshape(len(idx[0]), groups, cg * kh * kw).transpose(1, 0, 2)
    w_g = w.reshape(groups, o // groups, cg * kh * kw).transpose(0, 2, 1)
    scale = np.broadcast_to(wqp.scale, (o,)).reshape(groups, 1, o // groups)
    wq = learn_rounding(rows(wins[0]), rows(wins[1]), w_g, scale, wqp.qmin, wqp.qmax)
    return wq.transpose(0, 2, 1).reshape(w.shape).astype(wqp.dtype)


def _matmul(layer: Layer, x, x_q, wqp: QParams, rng) -> np.ndarray:
    """Learned weights of x @ W (W: (K, N)) on ROWS random rows of x."""
    w = layer.weight
    if w.ndim != 2:
        raise NotImplementedError(f"adaround: layer {layer.name!r} has a {w.ndim}-D matmul "
                                  "weight; 2-D (K, N) only")
    k = w.shape[0]
    x, x_q = x.reshape(-1, k), x_q.reshape(-1, k)
    pick = _rows(x.shape[0], rng)
    wq = learn_rounding(x[pick][None], x_q[pick][None], w[None], wqp.scale, wqp.qmin, wqp.qmax)
    return wq[0].astype(wqp.dtype)
