"""The MCU program a realized model lowers to: kernels and, per phase, the steps calling them.

A `Program` holds TIR kernels (PrimFuncs with a global symbol), named `Tensor`s (model input and
outputs, the float boundary, activations, constants) and, per phase, a list of `Step`s
``out = kernel(*args)`` (kernel None: ``out`` is a view of ``args[0]``). Phases in order:
``quantize``, ``run``, then ``dequantize_phase(i, n)`` for each of the n model outputs, whose
tensors are named by ``output_names(n)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm


def output_names(count: int) -> list[tuple[str, str]]:
    """(int8, float) tensor names of a program's `count` model outputs: `output_q`/`output` for
    one, `output<i>_q`/`output<i>` for several."""
    if count == 1:
        return [("output_q", "output")]
    return [(f"output{i}_q", f"output{i}") for i in range(count)]


def dequantize_phase(i: int, count: int) -> str:
    """The phase that dequantizes output `i` of `count`: `dequantize`, or `dequantize<i>`."""
    return "dequantize" if count == 1 else f"dequantize{i}"


@dataclass(frozen=True)
class Tensor:
    """A tensor of the program. kind: input (int8 model input), output (int8 model output),
    float_input / float_output (the float boundary), activation, const (`value` set)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    value: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Step:
    """`out = kernel(*args)`; a step with kernel None is a view (`out` aliases `args[0]`)."""

    kernel: str | None
    args: tuple[str, ...]
    out: str


@dataclass
class Program:
    """Kernels (PrimFuncs with a global symbol) and, per phase, the steps that run them.
    Phases in order: quantize, run, then `dequantize_phase(i, n)` for each of the n outputs."""

    kernels: tvm.IRModule
    steps: dict[str, list[Step]]
    tensors: dict[str, Tensor]
    weights: dict[str, int] | None = None  # conv2d/matmul weights: int8_params, int4_params, bytes
    outputs: list[tuple[str, str]] = field(default_factory=list)  # output_names(n)
    _llvm: object = field(default=None, repr=False, compare=False)

    def llvm(self):
        """The kernels built for this CPU with TVM's llvm target (built once)."""
        if self._llvm is None:
            self._llvm = tvm.compile(self.kernels, target="llvm")
        return self._llvm

    @property
    def int_input(self) -> Tensor:
        return next(t for t in self.tensors.values() if t.kind == "input")

    @property
    def int_outputs(self) -> list[Tensor]:
        """The int8 model outputs, in the model's output order."""
        return [self.tensors[q] for q, _ in self.outputs]
