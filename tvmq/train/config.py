"""TrainConfig: how `tvmq.train` trains (forward fake quantization, gradient quantization, SGD)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvmq.numerics.gradq import GradQuant

OPTIMIZERS = ("sgd", "momentum", "adam")
REQUANTS = ("mult_shift", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Parameters
    ----------
    fake_quant : bool
        INT8 fake-quantized forward (weights per channel, activations per tensor, straight-
        through gradients) with simulated requantization; False trains in FP32.
    requant : {"mult_shift", "fp32"}
        Simulated requantization of each conv/matmul output (see `tvmq.passes.FakeQuantize`).
    bits : int
        Forward bit-width, 2..8.
    activation_grads, weight_grads : GradQuant or None
        Quantizers of the activation gradients and weight gradients (`QuantizeGradients`); None
        keeps them FP32.
    quantize_logits_grad : bool
        Whether the activation gradient of the last conv/matmul layer (for a classifier:
        ``dL/dlogits = softmax - onehot``, made by the loss) is quantized too. Off by default:
        it is bounded by 1 and its few large entries are the misclassified samples, which
        z-score clipping cuts; with it on, RTZ + z-score training on digits oscillated
        (benchmarks/gradq.py shows the row).
    optimizer : {"sgd", "momentum", "adam"}
    lr, momentum, weight_decay : float
        Optimizer settings (momentum is used by "momentum" only).
    batch_size : int
    seed : int
        Seeds the batch order and stochastic rounding.
    """

    fake_quant: bool = True
    requant: str = "mult_shift"
    bits: int = 8
    activation_grads: GradQuant | None = None
    weight_grads: GradQuant | None = None
    quantize_logits_grad: bool = False
    optimizer: str = "momentum"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.fake_quant, bool):
            raise ValueError(f"fake_quant must be a bool, got {self.fake_quant!r}")
        if self.requant not in REQUANTS:
            raise ValueError(f"requant must be one of {REQUANTS}, got {self.requant!r}")
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be an int in 2..8, got {self.bits!r}")
        for name in ("activation_grads", "weight_grads"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, GradQuant):
                raise ValueError(f"{name} must be a GradQuant or None, got {value!r}")
        if not isinstance(self.quantize_logits_grad, bool):
            raise ValueError(f"quantize_logits_grad must be a bool, got "
                             f"{self.quantize_logits_grad!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name, lo in (("lr", 0.0), ("momentum", 0.0), ("weight_decay", 0.0)):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < lo:
                raise ValueError(f"{name} must be a finite number >= {lo}, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0, got 0")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")

    @property
    def quantizes_gradients(self) -> bool:
        return self.activation_grads is not None or self.weight_grads is not None
