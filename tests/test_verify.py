"""CompiledModel.verify: per output, how many samples the compiled model and the oracle agree on
bit for bit, and by how much they differ where they do not."""

import numpy as np
import pytest

from tvmq.compiled_model import OutputCheck, Verification


def test_digits_is_bit_exact_on_the_first_n_samples(compile_digits, digits):
    cm = compile_digits()
    result = cm.verify(digits[1], n=5)
    assert result.ok
    (out,) = result.outputs
    assert (out.name, out.dtype, out.samples, out.exact, out.max_diff) == \
        (cm.outputs[0].name, "float32", 5, 5, 0.0)
    text = str(result)
    assert "5/5" in text and "bit-exact on 5 samples" in text and "NOT" not in text


def test_one_input_of_the_model_shape_is_one_sample(compile_digits, digits):
    result = compile_digits().verify(digits[1][:1])
    assert result.ok and result.outputs[0].samples == 1


class _OffOnSecondCall:
    """An oracle whose second run is one float32 step above the real one."""

    def __init__(self, oracle):
        self.oracle, self.calls = oracle, 0

    def run(self, x):
        self.calls += 1
        y = self.oracle.run(x)
        return np.nextafter(y, np.float32(np.inf)) if self.calls == 2 else y


def test_a_difference_is_counted_and_measured(compile_digits, digits, monkeypatch):
    cm = compile_digits()
    real = cm.oracle()
    monkeypatch.setattr(cm, "oracle", lambda: _OffOnSecondCall(real))
    result = cm.verify(digits[1], n=3)
    assert not result.ok
    (out,) = result.outputs
    want = cm.run(digits[1][1:2])
    assert (out.exact, out.samples) == (2, 3)
    assert out.max_diff == float(np.abs(np.nextafter(want, np.float32(np.inf)) - want).max())
    assert "2/3" in str(result) and "NOT bit-exact on 3 samples" in str(result)


def test_n_must_be_positive(compile_digits, digits):
    with pytest.raises(ValueError, match="n=0"):
        compile_digits().verify(digits[1], n=0)


@pytest.mark.parametrize("got, want, exact, diff", [
    (np.array([1, -3], np.int8), np.array([1, -1], np.int8), False, 2.0),
    (np.array([-128, 127], np.int8), np.array([127, -128], np.int8), False, 255.0),
    (np.array([0.0], np.float32), np.array([-0.0], np.float32), False, 0.0),
    (np.array([np.nan, 1], np.float32), np.array([np.nan, 1], np.float32), True, 0.0),
    (np.array([np.nan], np.float32), np.array([1], np.float32), False, np.inf),
    (np.array([1], np.float32), np.array([1], np.float64), False, np.inf),
    (np.array([1, 2], np.float32), np.array([[1, 2]], np.float32), False, np.inf),
], ids=["lsb", "int8_range", "signed_zero", "same_nan", "one_nan", "dtype", "shape"])
def test_output_check_compares_bits(got, want, exact, diff):
    check = OutputCheck.of("y", [(got, want)])
    assert (check.exact, check.max_diff) == (int(exact), diff)


def test_table_gives_lsb_for_integer_outputs():
    result = Verification((OutputCheck("logits", "float32", 4, 4, 0.0),
                           OutputCheck("codes", "int8", 4, 3, 1.0)))
    assert not result.ok
    lines = str(result).splitlines()
    assert lines[0].split() == ["output", "dtype", "bit-exact", "max", "|diff|"]
    assert lines[2].split() == ["logits", "float32", "4/4", "0"]
    assert lines[3].split() == ["codes", "int8", "3/4", "1", "LSB"]
    assert lines[-1] == "compiled model vs oracle: NOT bit-exact on 4 samples"
