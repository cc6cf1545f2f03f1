"""Train the bundled demo CNN on scikit-learn's handwritten digits and write it as ONNX.

Run from the repository root, in a separate venv that has torch (needed only for training; the
demo loads the committed files with onnx / onnxruntime / TVM and never imports torch)::

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.13.0 numpy scikit-learn onnx onnxruntime
    /work/torchenv/bin/python benchmarks/train_digits.py

Writes ``tvmq/data/digits_cnn.onnx`` and ``tvmq/data/digits.npz``. The data is
``sklearn.datasets.load_digits`` (1797 real 8x8 UCI images, pixels 0..16, scaled by 1/16). The
ONNX graph is built node by node with ``onnx.helper`` from the trained weights (no
``torch.onnx.export``), opset 17, so it holds exactly the ops a quantizer must handle: Conv with
and without bias, depthwise Conv, unfolded BatchNormalization, Relu, Clip (ReLU6), MaxPool, a
residual Add, AveragePool, Concat, GlobalAveragePool, Flatten and Gemm. Training is seeded and
single-threaded, and the script checks that onnxruntime reproduces torch's eval-mode logits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

_DATA_DIR = Path(__file__).resolve().parent.parent / "tvmq" / "data"
_SEED = 0
_EPOCHS = 60
_BATCH = 64
_LR = 3e-3
_WEIGHT_DECAY = 1e-4
_N_CALIB = 200
_OPSET = 17
_IR_VERSION = 8
_BN_EPS = 1e-5
_SOURCE = (
    "scikit-learn load_digits: UCI ML hand-written digits (1797 8x8 grayscale images, pixel values "
    "0..16), scaled by 1/16 to float32 NCHW. Test split: sklearn train_test_split(test_size=0.2, "
    "random_state=0, stratify=y). x_calib: 200 images of the train split drawn with "
    "numpy.random.default_rng(0). Made by benchmarks/train_digits.py."
)


class DigitsCNN(nn.Module):
    """The demo CNN; ``forward`` mirrors the ONNX graph op for op."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(16, eps=_BN_EPS)
        self.dwconv = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16, eps=_BN_EPS)
        self.pwconv = nn.Conv2d(16, 32, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(32, eps=_BN_EPS)
        self.res_conv1 = nn.Conv2d(32, 32, 3, padding=1, bias=True)
        self.res_conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.dwconv(x)))
        x = torch.clamp(self.bn3(self.pwconv(x)), 0.0, 6.0)
        x = F.max_pool2d(x, 2, 2)
        r = F.relu(self.res_conv1(x))
        x = F.relu(self.res_conv2(r) + x)
        x = torch.cat([x, F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)], dim=1)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``x_train, y_train, x_test, y_test`` with x float32 [N, 1, 8, 8] in [0, 1]."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    return x_train, y_train, x_test, y_test


def _random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel in each axis, filling with zeros."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8] for i in range(n)])


def train(x_train: np.ndarray, y_train: np.ndarray) -> DigitsCNN:
    """Train with Adam, cosine learning rate and 1-pixel shift augmentation; return eval model."""
    gen = torch.Generator().manual_seed(_SEED)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=_LR, weight_decay=_WEIGHT_DECAY)
    steps = _EPOCHS * ((len(x_train) + _BATCH - 1) // _BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(_EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for start in range(0, len(xt), _BATCH):
            idx = perm[start : start + _BATCH]
            xb, yb = _random_shift(xt[idx], gen), yt[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        if epoch % 5 == 4 or epoch == _EPOCHS - 1:
            acc = correct / total
            print(f"epoch {epoch + 1:3d}  loss {loss_sum / total:.4f}  train acc {acc:.4f}")
    return model.eval()


class _GraphBuilder:
    """Collects ONNX nodes and float32 initializers from torch tensors."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: torch.Tensor | np.ndarray) -> str:
        """Add an initializer and return its name."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op: str, name: str, inputs: list[str], **attrs: object) -> str:
        """Add a node named ``name`` whose single output is also ``name``; return it."""
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, name: str, x: str, conv: nn.Conv2d) -> str:
        """Conv node with the weights (and bias, if any) of ``conv``."""
        inputs = [x, self.const(f"{name}.weight", conv.weight)]
        if conv.bias is not None:
            inputs.append(self.const(f"{name}.bias", conv.bias))
        k = list(conv.kernel_size)
        p = list(conv.padding)
        return self.node(
            "Conv", name, inputs, kernel_shape=k, pads=p + p, strides=[1, 1], group=conv.groups
        )

    def batchnorm(self, name: str, x: str, bn: nn.BatchNorm2d) -> str:
        """Inference BatchNormalization node with the trained running statistics of ``bn``."""
        inputs = [
            x,
            self.const(f"{name}.scale", bn.weight),
            self.const(f"{name}.bias", bn.bias),
            self.const(f"{name}.mean", bn.running_mean),
            self.const(f"{name}.var", bn.running_var),
        ]
        return self.node("BatchNormalization", name, inputs, epsilon=bn.eps)


def to_onnx(model: DigitsCNN) -> onnx.ModelProto:
    """Build the opset-17 ONNX graph of ``model`` node by node."""
    g = _GraphBuilder()
    x = g.conv("conv1", "input", model.conv1)
    x = g.node("Relu", "relu1", [g.batchnorm("bn1", x, model.bn1)])
    x = g.conv("dwconv", x, model.dwconv)
    x = g.node("Relu", "relu2", [g.batchnorm("bn2", x, model.bn2)])
    x = g.conv("pwconv", x, model.pwconv)
    x = g.batchnorm("bn3", x, model.bn3)
    lo, hi = g.const("relu6.min", np.array(0.0)), g.const("relu6.max", np.array(6.0))
    x = g.node("Clip", "relu6", [x, lo, hi])
    x = g.node("MaxPool", "maxpool", [x], kernel_shape=[2, 2], strides=[2, 2])
    r = g.node("Relu", "res_relu1", [g.conv("res_conv1", x, model.res_conv1)])
    r = g.node("Add", "res_add", [g.conv("res_conv2", r, model.res_conv2), x])
    x = g.node("Relu", "res_relu2", [r])
    avg = g.node(
        "AveragePool",
        "avgpool",
        [x],
        kernel_shape=[3, 3],
        strides=[1, 1],
        pads=[1, 1, 1, 1],
        count_include_pad=1,
    )
    x = g.node("Concat", "concat", [x, avg], axis=1)
    x = g.node("GlobalAveragePool", "gap", [x])
    x = g.node("Flatten", "flatten", [x], axis=1)
    fc = [x, g.const("fc.weight", model.fc.weight), g.const("fc.bias", model.fc.bias)]
    g.nodes.append(helper.make_node("Gemm", fc, ["logits"], name="fc", transB=1))

    graph = helper.make_graph(
        g.nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=g.initializers,
    )
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="tvmq benchmarks/train_digits.py",
        doc_string="Demo CNN trained on sklearn load_digits (8x8, pixels / 16).",
    )
    m.ir_version = _IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def _ort_logits(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """Run the ONNX model on each image of ``x`` (batch 1) with onnxruntime."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["logits"], {"input": xi[None]})[0] for xi in x])


def main() -> None:
    """Train, export, verify and write the ONNX model and the data file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=_DATA_DIR)
    args = parser.parse_args()

    torch.manual_seed(_SEED)
    np.random.seed(_SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    x_train, y_train, x_test, y_test = load_data()
    print(f"train {len(x_train)}  test {len(x_test)}")
    model = train(x_train, y_train)

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    m = to_onnx(model)
    model_bytes = m.SerializeToString()
    ort_logits = _ort_logits(model_bytes, x_test)
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    torch_acc = float((torch_logits.argmax(1) == y_test).mean())
    ort_acc = float((ort_logits.argmax(1) == y_test).mean())
    print(f"test accuracy  torch {torch_acc:.4f}  onnxruntime {ort_acc:.4f}  (n={len(y_test)})")
    print(f"max |onnxruntime - torch| logit difference: {max_diff:.2e}")
    if max_diff > 1e-4 or (ort_logits.argmax(1) != torch_logits.argmax(1)).any():
        raise RuntimeError(f"onnxruntime disagrees with torch (max diff {max_diff:.2e})")

    rng = np.random.default_rng(_SEED)
    x_calib = x_train[rng.choice(len(x_train), _N_CALIB, replace=False)]

    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out_dir / "digits_cnn.onnx"
    npz_path = args.out_dir / "digits.npz"
    onnx_path.write_bytes(model_bytes)
    np.savez_compressed(
        npz_path,
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.int64),
        x_calib=x_calib.astype(np.float32),
        source=np.array(_SOURCE),
    )
    print("nodes:", " -> ".join(f"{n.op_type}({n.name})" for n in m.graph.node))
    for path in (onnx_path, npz_path):
        print(f"wrote {path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
