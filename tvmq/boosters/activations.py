"""Float activations of an annotated model on a few samples: what the boosters fit to and the
debugger compares with."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tvm

from ..batch import output_fields
from ..passes.insert_taps import InsertTaps
from ..targets.host import build


def float_values(annotated: tvm.IRModule, names: list[str],
                 samples: Iterable[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """{name: [value of tensor `name` for each sample]} from one float host build of `annotated`
    with every tensor in `names` tapped (binding names, or main's input)."""
    return float_run(annotated, names, samples)[1]


def float_run(annotated: tvm.IRModule, names: list[str], samples: Iterable[np.ndarray]
              ) -> tuple[list[tuple[np.ndarray, ...]], dict[str, list[np.ndarray]]]:
    """(main's outputs for each sample, as tuples; `float_values`) from the same build."""
    runner = build(InsertTaps(names)(annotated))
    outputs, values = [], {name: [] for name in names}
    for x in samples:
        out, *taps = runner.run(x)
        outputs.append(output_fields(out))
        for name, value in zip(names, taps):
            values[name].append(value)
    return outputs, values
