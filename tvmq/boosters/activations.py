"""Float activations of an annotated model on a few samples: what the boosters fit to."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import tvm

from ..passes.insert_taps import InsertTaps
from ..targets.host import build


def float_values(annotated: tvm.IRModule, names: list[str],
                 samples: Iterable[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """{name: [value of tensor `name` for each sample]} from one float host build of `annotated`
    with every tensor in `names` tapped (binding names, or main's input)."""
    runner = build(InsertTaps(names)(annotated))
    values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for x in samples:
        _, *taps = runner.run(x)
        for name, value in zip(names, taps):
            values[name].append(value)
    return values
