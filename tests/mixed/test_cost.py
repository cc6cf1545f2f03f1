"""Measured layer cost: the emulator's counters, the disk cache, the XGBoost model."""

import numpy as np
import pytest
from tvmq.targets.accel import AccelConfig, int8_unit, preset

from tvmq.mixed import cost
from tvmq.numerics import Requant
from tvmq.toolchain import find_compiler

pytestmark = pytest.mark.skipif(find_compiler() is None,
                                reason="the accel emulator needs a C compiler (cc/gcc or $CC)")

HW = preset("npu-small")
CONV = cost.ConvShape(C=64, H=12, W=12, O=32, KH=3, KW=3, padding=(1, 1, 1, 1))


def test_measure_is_the_emulators_count_and_ignores_values():
    rng = np.random.default_rng(0)
    x = rng.integers(-8, 8, (1, 64, 12, 12)).astype(np.int8)
    w = rng.integers(-7, 8, (32, 64, 3, 3)).astype(np.int8)
    rq = Requant.from_scale(1e-3, HW.requant, HW.rounding)
    _, direct = int8_unit.conv2d(HW, x, 0, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, rq, 0,
                                 -128, 127, w_bits=4, a_bits=4)
    assert cost.measure_cycles(HW, CONV, 4, 4) == direct
    assert cost.measure_cycles(HW, CONV, 4, 8)["cycles"] < cost.measure_cycles(HW, CONV, 8, 8)[
        "cycles"]


def test_cache_hits_survive_a_reload_and_key_on_the_hardware(tmp_path, monkeypatch):
    cache = cost.CostCache(tmp_path)
    first = cost.measure_table(HW, [CONV], [(8, 8), (4, 4)], cache, progress=False)
    assert cache.misses == 2

    def fail(*args, **kwargs):
        raise AssertionError("a cached layer must not run the emulator")

    monkeypatch.setattr(cost, "measure_cycles", fail)
    again = cost.CostCache(tmp_path)
    np.testing.assert_array_equal(
        cost.measure_table(HW, [CONV], [(8, 8), (4, 4)], again, progress=False), first)
    assert again.misses == 0
    other = AccelConfig(name="other", t_oc=8, t_ic=16)
    assert again.path(other) != again.path(HW)
    with pytest.raises(AssertionError, match="must not run"):
        again.cycles(other, CONV, 8, 8)


def test_refused_layer_is_cached_with_its_reason(tmp_path):
    cache = cost.CostCache(tmp_path)
    tiny = AccelConfig(name="tiny", t_oc=4, t_ic=4, weight_buffer_bytes=64)
    assert np.isnan(cache.cycles(tiny, CONV, 8, 8))
    cache.save(tiny)
    entry = cost.CostCache(tmp_path).lookup(tiny, CONV, 8, 8)
    assert "weight_buffer_bytes=64 too small" in entry["refused"]


def test_conv_shape():
    assert cost.ConvShape(C=64, H=1, W=1, O=10).macs == 640
    dw = cost.ConvShape(C=8, H=9, W=9, O=8, KH=3, KW=3, groups=8, stride=(2, 2))
    assert (dw.OH, dw.OW, dw.weight_params) == (4, 4, 72)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        cost.ConvShape(C=8, H=4, W=4, O=8, groups=3)
    with pytest.raises(ValueError, match=r"ConvShape.C=0"):
        cost.ConvShape(C=0, H=4, W=4, O=8)
    with pytest.raises(ValueError, match="output would be"):
        cost.ConvShape(C=8, H=2, W=2, O=8, KH=3, KW=3)


def test_depthwise_gains_less_from_4_bits_than_a_regular_conv():
    dw = cost.ConvShape(C=64, H=16, W=16, O=64, KH=3, KW=3, groups=64, padding=(1, 1, 1, 1))
    d8, d4 = cost.measure_cycles(HW, dw, 8, 8), cost.measure_cycles(HW, dw, 4, 4)
    assert d4["compute_cycles"] * 3 == d8["compute_cycles"]  # ceil(9 taps / 4) = 3 steps
    assert d4["dma_bytes"] < d8["dma_bytes"]
    c8, c4 = cost.measure_cycles(HW, CONV, 8, 8), cost.measure_cycles(HW, CONV, 4, 4)
    assert c4["compute_cycles"] * 4 == c8["compute_cycles"]


def test_cost_model_predicts_held_out_shapes(tmp_path):
    model, report = cost.train_cost_model(HW, n_train=300, n_test=60, seed=1,
                                          cache=cost.CostCache(tmp_path), progress=False)
    print(report)
    assert report.mape_test < 15.0  # measured 4-6% with 300-400 training shapes
    shapes = cost.synthetic_shapes(5, seed=99, hw=HW)
    bits = [(4, 8)] * 5
    path = tmp_path / "model.json"
    model.save(path)
    np.testing.assert_array_equal(cost.CostModel.load(path).predict(shapes, bits),
                                  model.predict(shapes, bits))
