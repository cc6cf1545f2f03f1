"""InsertTaps: Before / Expected for tapped bindings, tapped parameters and a tapped copy."""

import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R
from tvmq.passes.insert_taps import InsertTaps


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 4), "float32")):
        with R.dataflow():
            relu_0 = R.nn.relu(x)
            exp_1 = R.exp(relu_0)
            add_2 = R.add(exp_1, relu_0)
            R.output(add_2)
        return add_2


@I.ir_module
class Tapped:
    @R.function
    def main(x: R.Tensor((1, 4), "float32")):
        with R.dataflow():
            relu_0 = R.nn.relu(x)
            exp_1 = R.exp(relu_0)
            add_2 = R.add(exp_1, relu_0)
            R.output(relu_0, add_2)
        return (add_2, relu_0, x)


def test_tapped_binding_and_parameter_are_returned_after_the_output():
    after = InsertTaps(["relu_0", "x"])(Before)
    tvm.ir.assert_structural_equal(after, Tapped)
    returned = after["main"].body.body.fields
    assert [v.name for v in returned] == ["add_2", "relu_0", "x"]


@I.ir_module
class TappedCopy:
    @R.function
    def main(x: R.Tensor((1, 4), "float32")):
        with R.dataflow():
            relu_0 = R.nn.relu(x)
            exp_1 = R.exp(relu_0)
            add_2 = R.add(exp_1, relu_0)
            R.output(add_2)
        return add_2

    @R.function
    def main_taps(x: R.Tensor((1, 4), "float32")):
        with R.dataflow():
            relu_0 = R.nn.relu(x)
            exp_1 = R.exp(relu_0)
            add_2 = R.add(exp_1, relu_0)
            R.output(exp_1, add_2)
        return (add_2, exp_1)


def test_tapped_copy_leaves_main_as_it_is():
    after = InsertTaps(["exp_1"], function="main_taps")(Before)
    tvm.ir.assert_structural_equal(after, TappedCopy)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"no tensor named \['nope'\]"):
        InsertTaps(["relu_0", "nope"])(Before)
