"""The bundled demo model and data: a CNN trained on scikit-learn's handwritten digits."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np


def digits_model_path() -> Path:
    """Path of the bundled float ONNX model (input [1, 1, 8, 8], output logits [1, 10])."""
    return Path(str(resources.files(__package__) / "digits_cnn.onnx"))


def digits_data_path() -> Path:
    return Path(str(resources.files(__package__) / "digits.npz"))


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x_calib [200,1,8,8], x_test [360,1,8,8], y_test [360]) float32 / int64."""
    with np.load(digits_data_path(), allow_pickle=False) as d:
        return d["x_calib"], d["x_test"], d["y_test"]


def load_digits_train() -> tuple[np.ndarray, np.ndarray]:
    """(x_train [1437,1,8,8] float32 in [0, 1], y_train [1437] int64): the train split.

    The complement of `load_digits`' test split (same ``train_test_split``), stored as the
    original 0..16 pixel values and scaled by 1/16 here.
    """
    with np.load(Path(str(resources.files(__package__) / "digits_train.npz"))) as d:
        return d["pixels"].astype(np.float32) / 16, d["y_train"]
