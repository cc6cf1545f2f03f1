"""QuantTrainer: a Relax training module (relax.training) for a float model, run on the CPU.

    model --load_model--> main(x) --lift_weights--> main(x, *params) --FakeQuantize-->
    backbone(x, step, *params) --SetupTrainer(CrossEntropyLoss, optimizer)--> train module
    --QuantizeGradients--> tvm.compile --> relax.training.Trainer
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import tvm
from tqdm import tqdm
from tvm import relax
from tvm.relax.training import SetupTrainer, Trainer
from tvm.relax.training.loss import CrossEntropyLoss
from tvm.relax.training.optimizer import SGD, Adam, MomentumSGD

from tvmq.frontend import load_model
from tvmq.passes import gradients
from tvmq.passes.fake_quantize import FakeQuantize
from tvmq.passes.quantize_gradients import (
    ADJOINT_FUNC,
    QuantizeGradients,
    activation_sites,
    register_gradient_quantizer,
)
from tvmq.targets.accel import gradq as accel_gradq

from .config import TrainConfig
from .export import to_onnx
from .graph import lift_weights, make_backbone


@dataclass
class History:
    """Per-step training loss and per-epoch evaluation accuracy."""

    loss: list[float] = field(default_factory=list)
    epoch_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


class _Adam(Adam):
    """TVM 0.27's Adam stores its dtype as a PrimType and then fails in SetupTrainer."""

    def _set_params_and_dtype(self, params):
        super()._set_params_and_dtype(params)
        self.dtype = str(self.dtype.dtype) if hasattr(self.dtype, "dtype") else str(self.dtype)


def _optimizer(config: TrainConfig):
    if config.optimizer == "sgd":
        return SGD(config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "momentum":
        return MomentumSGD(config.lr, config.momentum, weight_decay=config.weight_decay)
    return _Adam(config.lr, weight_decay=config.weight_decay)


class QuantTrainer:
    """Train a float model with a fake-quantized forward and quantized gradients.

    Parameters
    ----------
    model : path, onnx.ModelProto or tvm.IRModule
        A classifier with one float32 NCHW (or NC) input and logits [N, classes] out. An ONNX
        model's input is declared ``(config.batch_size, *sample_shape)``; a Relax module must
        already have that shape. Its float32 constants become the trained parameters, starting
        from their values.
    sample_shape : tuple of int
        One input sample's shape without the batch, e.g. ``(1, 8, 8)``.
    config : TrainConfig
    target : str
        TVM target of the training module.

    Examples
    --------
    >>> tr = QuantTrainer("model.onnx", (1, 8, 8), TrainConfig())     # doctest: +SKIP
    >>> history = tr.fit(x, y, epochs=5)                              # doctest: +SKIP
    >>> tr.export_onnx("trained.onnx")                                # doctest: +SKIP
    """

    def __init__(self, model, sample_shape: tuple[int, ...], config: TrainConfig | None = None,
                 target: str = "llvm"):
        self.config = config or TrainConfig()
        batch = self.config.batch_size
        input_shape = (batch, *sample_shape)
        if isinstance(model, str | os.PathLike | onnx.ModelProto):
            model = _with_input_shape(model, input_shape)
        float_mod, self.input = load_model(model, input_shape)
        if tuple(self.input.shape) != input_shape:
            raise ValueError(f"the model's input {self.input.name!r} has shape "
                             f"{tuple(self.input.shape)}, training needs {input_shape} (batch "
                             "TrainConfig.batch_size, then sample_shape); build the Relax module "
                             "at that batch size")
        self.float_mod, params = lift_weights(float_mod)
        self.param_names, self._initial = list(params), params
        if not params:
            raise ValueError("the model has no float32 weights to train")
        logits = self.float_mod["main"].ret_ty
        if len(logits.shape) != 2 or int(logits.shape[0]) != batch:
            raise ValueError(f"the model must return logits [batch, classes], got {logits}")
        self.num_classes = int(logits.shape[1])
        self.train_mod = training_module(self.float_mod, self.config, self.num_classes)
        vm = relax.VirtualMachine(tvm.compile(self.train_mod, target=target), tvm.cpu())
        self._trainer = Trainer(self.train_mod, vm, tvm.cpu(), zero_init_param_state=True)
        self._trainer.load_params({k: v.astype(np.float32) for k, v in params.items()})
        self.seed, self.step = self.config.seed, 0
        self._shuffle = np.random.default_rng(self.seed)

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    def reset(self, seed: int, init: str = "he") -> None:
        """Start over with seed `seed`: fresh parameters, optimizer state, step 0.

        ``init="he"`` draws weights from N(0, 2 / fan_in) and zeroes biases (1-D parameters and
        those named ``*_bias``); ``init="model"`` restores the model's own values.
        """
        if init not in ("he", "model"):
            raise ValueError(f"init must be 'he' or 'model', got {init!r}")
        rng = np.random.default_rng(seed)
        params = {}
        for name, value in self._initial.items():
            if init == "model":
                params[name] = value
            elif name.endswith("_bias") or value.ndim == 1:
                params[name] = np.zeros_like(value)
            else:
                fan_in = int(np.prod(value.shape[1:])) if name.startswith("conv") \
                    else value.shape[0]
                params[name] = (rng.normal(size=value.shape) * np.sqrt(2 / fan_in)).astype(
                    np.float32)
        self.load_params(params)
        self._trainer._optim_state = [s.copyto(tvm.cpu()) for s in
                                      self.train_mod.attrs["optim_state"]]
        self.seed, self.step = seed, 0
        self._shuffle = np.random.default_rng(seed)

    def params(self) -> dict[str, np.ndarray]:
        """The current parameter values."""
        return {k: v.numpy() for k, v in self._trainer.export_params().items()}

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        self._trainer.load_params({k: np.asarray(v, np.float32) for k, v in params.items()})

    def update(self, x: np.ndarray, y: np.ndarray) -> float:
        """One optimizer step on a full batch; returns the batch loss."""
        loss = self._trainer.update([np.asarray(x, np.float32), self._rng()],
                                    np.asarray(y, np.int64))
        self.step += 1
        return float(loss.numpy())

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, gradient per parameter) of one batch as the optimizer would receive them
        (quantized if configured), without updating anything."""
        adjoint = self._trainer.vm[Trainer.ADJOINT_FUNC]
        loss, grads = adjoint(tvm.runtime.tensor(np.asarray(x, np.float32)),
                              tvm.runtime.tensor(self._rng()),
                              *self._trainer._params,
                              tvm.runtime.tensor(np.asarray(y, np.int64)))
        return float(loss.numpy()), {n: g.numpy() for n, g in zip(self.param_names, grads,
                                                                  strict=True)}

    def _rng(self) -> np.ndarray:
        return np.array([self.seed, self.step], np.int64)

    def export_onnx(self, path: str | os.PathLike | None = None) -> onnx.ModelProto:
        """The trained float model as ONNX (batch dimension ``N``), written to `path` if given;
        `tvmq.compile` takes it."""
        model = to_onnx(self.float_mod, self.params(), input_name=self.input.name)
        if path is not None:
            onnx.save(model, os.fspath(path))
        return model

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits of the training-mode forward (fake-quantized if configured) for any N.

        The fake-quantized forward takes each activation scale from its batch's max, so a
        sample's logits depend slightly on its batch-mates (batches of ``batch_size``, the last
        one zero-padded); the exported model, compiled by `tvmq.compile`, has calibrated scales.
        """
        x = np.asarray(x, np.float32)
        outs = []
        for start in range(0, len(x), self.batch_size):
            chunk = x[start:start + self.batch_size]
            pad = self.batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            logits = self._trainer.predict(chunk, self._rng()).numpy()
            outs.append(logits[:len(logits) - pad])
        return np.concatenate(outs)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> float:
        """Top-1 accuracy in [0, 1]."""
        return float(np.mean(self.predict(x).argmax(1) == np.asarray(y)))

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int, x_val=None, y_val=None,
            progress: bool = True) -> History:
        """Train for `epochs` passes over (x, y) in shuffled full batches (the last partial
        batch of each epoch is dropped); evaluates on (x_val, y_val) after each epoch if given."""
        if len(x) != len(y) or len(x) < self.batch_size:
            raise ValueError(f"x and y must hold the same number (>= batch_size "
                             f"{self.batch_size}) of samples, got {len(x)} and {len(y)}")
        history = History()
        steps = len(x) // self.batch_size
        bar = tqdm(total=epochs * steps, desc="train", disable=not progress, leave=False)
        for _ in range(epochs):
            order = self._shuffle.permutation(len(x))
            losses = []
            for i in range(steps):
                idx = order[i * self.batch_size:(i + 1) * self.batch_size]
                losses.append(self.update(x[idx], y[idx]))
                bar.update()
            history.loss.extend(losses)
            history.epoch_loss.append(float(np.mean(losses)))
            if x_val is not None:
                history.val_accuracy.append(self.evaluate(x_val, y_val))
            bar.set_postfix(loss=f"{history.epoch_loss[-1]:.3f}")
        bar.close()
        return history


def training_module(float_mod: tvm.IRModule, config: TrainConfig,
                    num_classes: int) -> tvm.IRModule:
    """`main(x, *params)` -> the relax.training module: FakeQuantize (if configured),
    `backbone`, SetupTrainer (cross-entropy, the optimizer), QuantizeGradients (if configured)."""
    gradients.register()
    batch = config.batch_size
    fwd = FakeQuantize(config.requant, config.bits)(float_mod) if config.fake_quant else float_mod
    setup = SetupTrainer(CrossEntropyLoss(reduction="mean"), _optimizer(config),
                         [relax.TensorType((batch, num_classes), "float32"),
                          relax.TensorType((batch,), "int64")])
    train_mod = setup(make_backbone(fwd))
    if not config.quantizes_gradients:
        return train_mod
    sites = activation_sites(train_mod[ADJOINT_FUNC])
    if not config.quantize_logits_grad:
        sites = sites[:-1]  # in forward order: the last is the output layer's
    # The accelerator's C gradient unit: bit-exact with the NumPy definition, and faster (an
    # implementation registered before, e.g. a user's tap, is kept).
    register_gradient_quantizer(accel_gradq.fake_quantize_gradient, override=False)
    return QuantizeGradients(config.activation_grads, config.weight_grads,
                             sites=sites)(train_mod)


def _with_input_shape(model, shape: tuple[int, ...]) -> onnx.ModelProto:
    """The ONNX model with its input declared as `shape` (batch and sample dimensions; a fully
    convolutional model then trains on other image sizes too)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model))
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if len(inputs) != 1:
        raise ValueError(f"the model must have one input, got {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise ValueError(f"input {inputs[0].name!r} has rank {len(dims)}, but the batch plus "
                         f"sample_shape {shape} has rank {len(shape)}")
    for dim, value in zip(dims, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    return proto
