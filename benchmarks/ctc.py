"""CTC output of the PP-OCRv4 recognizer: its classes and greedy (best-path) decoding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

__all__ = ["ctc_classes", "ctc_greedy_decode"]


def ctc_classes(path: Path) -> list[str]:
    """PaddleOCR's CTC classes of the recognizer: ``["blank", *dictionary, " "]``.

    The dictionary is the model's ``character`` metadata (newline-separated, as rapidocr reads
    it); the class count must equal the model's output size, else ``RuntimeError``.
    """
    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise RuntimeError(f"{path.name} has no 'character' metadata (the CTC dictionary)")
    classes = ["blank", *meta["character"].splitlines(), " "]
    n_out = model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    if n_out != len(classes):
        raise RuntimeError(f"{path.name} outputs {n_out} classes but its dictionary gives "
                           f"{len(classes)} (blank + characters + space)")
    return classes


def ctc_greedy_decode(out: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Best-path CTC decoding of ``[N, T, C]`` scores: argmax per time step, repeats collapsed,
    blanks (class 0) dropped; leading and trailing spaces stripped."""
    texts = []
    for best in out.argmax(axis=-1):
        keep = np.ones(len(best), dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        keep &= best != 0
        texts.append("".join(classes[i] for i in best[keep]).strip(" "))
    return texts
