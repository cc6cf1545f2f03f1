"""Training with a fake-quantized forward and quantized gradients, in Relax (relax.training).

>>> import tvmq.train as tt                                              # doctest: +SKIP
>>> cfg = tt.TrainConfig(activation_grads=tt.GradQuant(8, "rtz", "zscore"),
...                      weight_grads=tt.GradQuant(8, "rtz", "zscore"))  # doctest: +SKIP
>>> trainer = tt.QuantTrainer("model.onnx", (1, 8, 8), cfg)              # doctest: +SKIP
>>> history = trainer.fit(x, y, epochs=10, x_val=x_test, y_val=y_test)  # doctest: +SKIP
>>> trainer.export_onnx("trained.onnx")                                  # doctest: +SKIP
"""

from tvmq.numerics.gradq import GradQuant

from .config import TrainConfig
from .export import to_onnx
from .graph import lift_weights, make_backbone
from .trainer import History, QuantTrainer

__all__ = ["GradQuant", "History", "QuantTrainer", "TrainConfig", "lift_weights",
           "make_backbone", "to_onnx"]
