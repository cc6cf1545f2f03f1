import numpy as np
import pytest
from tvmq.passes.annotate_quantizable import AnnotateQuantizable

from tvmq import data
from tvmq.boosters.activations import float_values
from tvmq.frontend import import_model
from tvmq.ir import const_value
from tvmq.layers import find_layers
from tvmq.oracle import conv2d


@pytest.fixture(scope="module")
def digits():
    mod, inp, _ = import_model(data.digits_model_path(), None)
    annotated = AnnotateQuantizable()(mod)
    layers, _ = find_layers(annotated)
    return annotated, inp, layers


def test_float_values_are_each_samples_tensors(digits):
    annotated, inp, layers = digits
    x_calib, _, _ = data.load_digits()
    samples = [x_calib[i:i + 1] for i in range(3)]
    first = layers[0]
    values = float_values(annotated, [inp.name, first.name], samples)
    assert [len(v) for v in values.values()] == [3, 3]
    for x, seen in zip(samples, values[inp.name]):
        np.testing.assert_array_equal(seen, x)
    # conv2d_0 is conv(x, W) + b, ReLU: its value is that of the float conv (float32 sums)
    func = annotated[annotated["main"].body.blocks[0].bindings[0].value.op]
    conv, add = (b.value for b in func.body.blocks[0].bindings[:2])
    bias = const_value(add.args[1]).reshape(1, -1, 1, 1)
    a = conv.attrs
    for x, seen in zip(samples, values[first.name]):
        want = conv2d(x, first.weight, a.strides, a.padding, a.dilation, int(a.groups)) + bias
        np.testing.assert_allclose(seen, np.maximum(want, 0), rtol=1e-5, atol=1e-5)
