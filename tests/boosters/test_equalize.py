import numpy as np
import pytest
from onnx import helper
from tvmq.passes.annotate_quantizable import AnnotateQuantizable, Composite
from tvmq.targets.host import build

import tvmq
from tests.conftest import make_onnx
from tvmq.boosters.activations import float_values
from tvmq.boosters.equalize import Chain, absorb_biases, equalize, find_chains
from tvmq.frontend import import_model
from tvmq.layers import find_layers

SHAPE = (1, 2, 6, 6)


def _chain_model(first_bias=0.0, second_bias=0.0):
    """conv 3x3 -> relu -> depthwise 3x3 -> relu -> conv 1x1 -> conv 1x1 -> clip(0, 6)
    -> conv 1x1 -> flatten -> matmul; the first conv's output channels span 1000x in range,
    the depthwise's the other way round."""
    rng = np.random.default_rng(0)
    gain = np.array([1, 1e-2, 3, 0.1, 1, 10], np.float32)
    w = {
        "w0": rng.normal(0, 0.5, (6, 2, 3, 3)) * gain[:, None, None, None],
        "b0": rng.normal(0, 0.1, 6) * gain + first_bias * np.array([1, 0, 1, 0, 0, 0]),
        "w1": rng.normal(0, 0.5, (6, 1, 3, 3)) / gain[:, None, None, None],
        "b1": rng.normal(0, 0.1, 6) + second_bias * np.array([0, 1, 0, 1, 1, 0]),
        "w2": rng.normal(0, 0.5, (4, 6, 1, 1)), "b2": rng.normal(0, 0.1, 4),
        "w3": rng.normal(0, 0.5, (4, 4, 1, 1)), "b3": rng.normal(0, 0.1, 4),
        "w4": rng.normal(0, 0.5, (3, 4, 1, 1)) * np.array([5, 1, 0.2])[:, None, None, None],
        "b4": rng.normal(0, 0.1, 3),
        "wm": rng.normal(0, 0.2, (108, 5)), "bm": rng.normal(0, 0.1, 5),
        "lo": np.float32(0), "hi": np.float32(6),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], pads=[1] * 4),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1] * 4, group=6),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"]),
        helper.make_node("Clip", ["c3", "lo", "hi"], ["r3"]),
        helper.make_node("Conv", ["r3", "w4", "b4"], ["c4"]),
        helper.make_node("Flatten", ["c4"], ["f"]),
        helper.make_node("MatMul", ["f", "wm"], ["m"]),
        helper.make_node("Add", ["m", "bm"], ["output"]),
    ]
    return make_onnx(nodes, w, SHAPE, (1, 5))


def _annotated(model):
    mod, _, _ = import_model(model, None)
    annotated = AnnotateQuantizable()(mod)
    layers = [la for la in find_layers(annotated)[0] if la.kind in ("conv2d", "matmul")]
    return annotated, [la.name for la in layers]


def _params(annotated, name):
    """(weight, bias) of layer `name`."""
    call = next(b.value for block in annotated["main"].body.blocks for b in block.bindings
                if b.var.name == name)
    comp = Composite(annotated[call.op])
    return comp.root.args[1].value.numpy(), comp.bias().reshape(-1)


def _outputs(mod, xs):
    runner = build(mod)
    return np.concatenate([runner.run(x) for x in xs])


def _samples(n, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, SHAPE).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def chain_model():
    return _annotated(_chain_model())


def test_chains_are_relu_or_identity_pairs_with_one_reader(chain_model):
    annotated, (c0, c1, c2, c3, c4, mm) = chain_model
    chains = find_chains(annotated)
    reshape = chains[-1].through
    assert chains == [Chain(c0, c1, (), True, 1), Chain(c1, c2, (), True, 1),
                      Chain(c2, c3, (), False, 1), Chain(c4, mm, reshape, False, 36)]
    assert len(reshape) == 1  # the flatten; conv3 -> clip(0, 6) -> conv4 is no chain


def test_a_layer_read_twice_starts_no_chain():
    rng = np.random.default_rng(0)
    w = {"w0": rng.normal(size=(3, 2, 1, 1)), "w1": rng.normal(size=(3, 3, 1, 1)),
         "w2": rng.normal(size=(3, 3, 1, 1))}
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"]),
             helper.make_node("Conv", ["r0", "w2"], ["c2"]),
             helper.make_node("Add", ["c1", "c2"], ["output"])]
    annotated, _ = _annotated(make_onnx(nodes, w, SHAPE, (1, 3, 6, 6)))
    assert find_chains(annotated) == []


def test_a_matmul_on_a_convs_width_axis_is_no_chain():
    """conv (1, 6, 6, 6) -> matmul over the last axis: 6 columns but W's, not the channels."""
    rng = np.random.default_rng(0)
    w = {"w0": rng.normal(size=(6, 2, 1, 1)), "w1": rng.normal(size=(6, 4))}
    nodes = [helper.make_node("Conv", ["input", "w0"], ["c0"]),
             helper.make_node("MatMul", ["c0", "w1"], ["output"])]
    annotated, names = _annotated(make_onnx(nodes, w, SHAPE, (1, 6, 6, 4)))
    assert len(names) == 2 and find_chains(annotated) == []


def test_equalization_keeps_the_float_model(chain_model):
    annotated, _ = chain_model
    equalized, _ = equalize(annotated)
    xs = _samples(8)
    want, got = _outputs(annotated, xs), _outputs(equalized, xs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_equalized_pairs_share_their_ranges(chain_model):
    annotated, names = chain_model
    equalized, chains = equalize(annotated)
    w = {n: _params(annotated, n)[0] for n in names}
    v = {n: _params(equalized, n)[0] for n in names}
    out_range = {n: np.abs(w).max(axis=(1, 2, 3)) for n, w in v.items() if w.ndim == 4}

    def in_range(weights, name, repeat=1):
        x = weights[name]
        if x.ndim == 2:
            return np.abs(x).max(axis=1).reshape(-1, repeat).max(axis=1)
        return np.abs(x).max(axis=(0, 2, 3)) if x.shape[1] > 1 else np.abs(x).max(axis=(1, 2, 3))

    for chain in chains:
        np.testing.assert_allclose(out_range[chain.first], in_range(v, chain.second, chain.repeat),
                                   rtol=1e-3, err_msg=f"{chain.first} -> {chain.second}")
    # conv4 -> matmul is the only chain of both: one step makes both sqrt(r1 * r2)
    c4, mm = chains[-1].first, chains[-1].second
    r1 = np.abs(w[c4]).max(axis=(1, 2, 3))
    r2 = in_range(w, mm, 36)
    np.testing.assert_allclose(out_range[c4], np.sqrt(r1 * r2), rtol=1e-5)
    # 1000x before, within 30x after (the chained depthwise pulls the other way)
    c0 = chains[0].first
    before, after = np.abs(w[c0]).max(axis=(1, 2, 3)), out_range[c0]
    assert before.max() / before.min() > 300 and after.max() / after.min() < 30


def test_the_relu6_chain_is_left_alone(chain_model):
    annotated, (_, _, _, c3, c4, _) = chain_model
    equalized, _ = equalize(annotated)
    # conv3 only reads scaled inputs (its output bias is untouched); conv4's rows only
    # take its own output scales (each row one factor)
    np.testing.assert_array_equal(_params(equalized, c3)[1], _params(annotated, c3)[1])
    ratio = _params(equalized, c4)[0] / _params(annotated, c4)[0]
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=1e-5)


def test_bias_absorption_moves_the_positive_floor_and_keeps_outputs():
    annotated, (c0, c1, c2, *_) = _annotated(_chain_model(first_bias=4.0, second_bias=6.0))
    equalized, chains = equalize(annotated)
    xs = _samples(8)
    absorbed, done = absorb_biases(equalized, chains, xs)
    assert [(c.first, c.second) for c in done] == [(c1, c2)]  # c0 -> c1 is padded
    b_eq, b_ab = _params(equalized, c1)[1], _params(absorbed, c1)[1]
    moved = b_eq - b_ab
    assert (moved >= 0).all() and (moved[[1, 3, 4]] > 1).all()
    floor = np.stack(float_values(absorbed, [c1], xs)[c1]).min(axis=(0, 1, 3, 4))
    np.testing.assert_allclose(floor[moved > 0], 0, atol=1e-5)
    want, got = _outputs(annotated, xs), _outputs(absorbed, xs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    _, with_padded = absorb_biases(equalized, chains, xs, padded=True)
    assert [(c.first, c.second) for c in with_padded] == [(c0, c1), (c1, c2)]


def test_compile_with_bias_absorption_is_exact_and_keeps_the_calibration_outputs():
    model = _chain_model(first_bias=4.0, second_bias=6.0)
    calib = np.concatenate(_samples(16))
    cfg = tvmq.QuantConfig(equalize=True, bias_absorption=True, sqnr_samples=0)
    cm = tvmq.compile(model, config=cfg, calib=calib, progress=False)
    assert cm.verify(calib, n=4).ok and cm.report().config["bias_absorption"] is True
    annotated, (_, c1, *_) = _annotated(model)
    # the compiled model's float graph is the absorbed one: c1's floor moved to 0
    floor = np.stack(float_values(cm.float_mod, [c1], _samples(16))[c1]).min(axis=(0, 1, 3, 4))
    assert (floor[[1, 3, 4]] < 1e-5).all()
    want = _outputs(annotated, [x[None] for x in calib])
    got = _outputs(cm.float_mod, [x[None] for x in calib])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _sqnr(want, got):
    return 10 * np.log10(np.sum(want ** 2) / np.sum((want - got) ** 2))


def test_compile_with_equalize_is_exact_and_gains_with_per_tensor_weights():
    model = _chain_model()
    calib, test = np.concatenate(_samples(32)), np.concatenate(_samples(16, seed=2))
    annotated, _ = _annotated(model)
    want = _outputs(annotated, [x[None] for x in test])
    sqnr = {}
    for on in (False, True):
        cfg = tvmq.QuantConfig(per_channel_weights=False, equalize=on, sqnr_samples=0)
        cm = tvmq.compile(model, config=cfg, calib=calib, progress=False)
        assert cm.verify(test, n=4).ok
        assert cm.report().config["equalize"] is on
        sqnr[on] = _sqnr(want, np.concatenate([cm.run(x[None]) for x in test]))
    assert sqnr[True] > sqnr[False] + 10, sqnr
