"""The PP-OCR text-direction classifier on the accel target equals the NumPy oracle bit for bit.

A real MobileNetV3-style model: depthwise and pointwise convs, hard-swish float islands, SE blocks
with hard-sigmoid, softmax. Downloaded once from the rapidocr_onnxruntime wheel on PyPI
(benchmarks/models.py); skipped with the reason if it cannot be fetched. One compile (~60 s);
benchmarks/accel.py checks every requant mode for t_oc in {4, 16, 64}.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from tvmq.targets.accel import preset
from tvmq.targets.accel.lower import AccelRuntime, LowerToAccel
from tvmq.targets.host import build

import tvmq

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from models import fetch_model
from textlines import CLS_IMAGE_SHAPE, make_cls_dataset


@pytest.fixture(scope="module")
def ppocr_cls():
    try:
        path = fetch_model("ppocr_cls")
    except RuntimeError as err:
        pytest.skip(f"PP-OCR classifier not available: {err}")
    x_calib, _ = make_cls_dataset(8, seed=1)
    x_test, _ = make_cls_dataset(3, seed=0)
    config = tvmq.QuantConfig(requant="fp32", sqnr_samples=0)
    cm = tvmq.compile(path, config=config, calib=x_calib, input_shape=(1, *CLS_IMAGE_SHAPE),
                      progress=False)
    return cm, x_test


def test_ppocr_cls_on_accel_equals_oracle(ppocr_cls):
    cm, x_test = ppocr_cls
    hw = dataclasses.replace(preset("npu-small"), t_oc=16, requant="fp32", rounding=None)
    runtime = AccelRuntime(hw)
    accel = build(LowerToAccel(runtime)(cm.quant_mod))
    assert len(runtime.slots) >= 50 and runtime.host_layers == {}  # every conv on the emulator
    oracle = cm.oracle()
    for x in x_test:
        np.testing.assert_array_equal(accel.run(x[None]), oracle.run(x[None]))
    counters = runtime.one_inference(accel, x_test[:1])
    assert sum(c["cycles"] for c in counters.values()) > 0
    assert all(c["tiles"] >= 1 for c in counters.values())
