import numpy as np
import pytest
from tvmq.passes.annotate_quantizable import AnnotateQuantizable, composite_kind
from tvmq.passes.insert_taps import InsertTaps
from tvmq.targets.host import build

from tvmq import data
from tvmq.frontend import load_model


@pytest.fixture(scope="module")
def annotated():
    return AnnotateQuantizable()(load_model(data.digits_model_path())[0])


def test_digits_model_becomes_named_composites(annotated):
    bindings = annotated["main"].body.blocks[0].bindings
    kinds = [composite_kind(annotated, b.value) for b in bindings]
    assert kinds == ["conv2d", "conv2d", "conv2d", "max_pool2d", "conv2d", "conv2d", "add",
                     "avg_pool2d", "concat", "mean", "reshape", "matmul"]
    assert [b.var.name for b in bindings] == [f"{k}_{i}" for i, k in enumerate(kinds)]
    composites = {str(f.attrs["Composite"]) for _, f in annotated.functions_items()
                  if f.attrs is not None and "Composite" in f.attrs}
    assert "tvmq.conv2d" in composites and "tvmq.add" in composites


def test_epilogues_are_absorbed(annotated):
    """conv + bias + relu, conv + clip (ReLU6), add + relu are each one composite."""
    def ops(name):
        call = next(b.value for b in annotated["main"].body.blocks[0].bindings
                    if b.var.name == name)
        func = annotated[call.op]
        return [b.value.op.name for b in func.body.blocks[0].bindings]

    assert ops("conv2d_0") == ["relax.nn.conv2d", "relax.add", "relax.nn.relu"]
    assert ops("conv2d_2") == ["relax.nn.conv2d", "relax.add", "relax.clip"]
    assert ops("add_6") == ["relax.add", "relax.nn.relu"]


def test_taps_return_named_tensors(annotated, digits):
    tapped = build(InsertTaps(["input", "conv2d_0", "add_6"])(annotated))
    x = digits[1][:1]
    out, x_tap, conv, add = tapped.run(x)
    np.testing.assert_array_equal(x_tap, x)
    assert conv.shape == (1, 16, 8, 8) and conv.min() >= 0   # after ReLU
    assert add.shape == (1, 32, 4, 4) and out.shape == (1, 10)
    np.testing.assert_allclose(out, build(annotated).run(x), rtol=1e-6)


def test_unknown_tap_name(annotated):
    with pytest.raises(ValueError, match="no tensor named"):
        InsertTaps(["nope"])(annotated)
