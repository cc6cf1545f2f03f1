"""Input validation shared by the numerics modules.

Every check raises ``ValueError`` naming the argument, the offending value and what is allowed.
"""

from __future__ import annotations

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> str:
    """Describe the first element of ``arr`` where ``bad`` holds, e.g. ``'-3 at index (1, 0)'``."""
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    value = arr[index].item()
    return f"{value!r} at index {index}" if index else repr(value)


def check_int(value: object, name: str, lo: int, hi: int) -> int:
    """Return ``value`` as a Python int after checking it is an integer in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name}={int(value)} is out of range; allowed: integers in [{lo}, {hi}]")
    return int(value)


def as_int_array(value: object, name: str, lo: int, hi: int) -> np.ndarray:
    """Return ``value`` as an int64 array after checking every entry is an integer in [lo, hi]."""
    arr = np.asarray(value)
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got dtype {arr.dtype}")
    bad = (arr < lo) | (arr > hi)
    if np.any(bad):
        raise ValueError(
            f"{name} contains {_first_bad(arr, bad)}; allowed: integers in [{lo}, {hi}]"
        )
    return arr.astype(np.int64)


def as_real_array(value: object, name: str) -> np.ndarray:
    """Return ``value`` as a float64 array after checking it is real-valued and finite."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if np.any(bad):
        raise ValueError(f"{name} contains {_first_bad(arr, bad)}; allowed: finite numbers")
    return arr


def check_param_shape(arr: np.ndarray, name: str) -> None:
    """Check a quantization parameter is a scalar, shape (), or a non-empty vector, shape (C,)."""
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(
            f"{name} must have shape () (per-tensor) or (C,) with C >= 1 (per-channel), "
            f"got shape {arr.shape}"
        )


def frozen(arr: np.ndarray) -> np.ndarray:
    """Return a read-only copy of ``arr``, so value types holding it stay immutable."""
    out = np.array(arr, copy=True)
    out.flags.writeable = False
    return out


def along_axis(
    param: np.ndarray, shape: tuple[int, ...], axis: int | None, name: str, target: str
) -> np.ndarray:
    """Reshape a per-channel ``param`` of shape (C,) to broadcast along ``axis`` of ``shape``.

    A per-tensor ``param`` (shape ``()``) is returned unchanged and ``axis`` is ignored.
    """
    if param.ndim == 0:
        return param
    if axis is None:
        raise ValueError(
            f"{name} is per-channel (shape {param.shape}) so an axis of {target} is required, "
            "got axis=None"
        )
    ndim = len(shape)
    if ndim == 0:
        raise ValueError(f"{name} is per-channel (shape {param.shape}) but {target} is a scalar")
    if (
        isinstance(axis, bool)
        or not isinstance(axis, int | np.integer)
        or not (-ndim <= axis < ndim)
    ):
        raise ValueError(
            f"axis={axis!r} is not a valid axis of {target} with shape {shape}; "
            f"allowed: integers in [{-ndim}, {ndim - 1}]"
        )
    axis = int(axis) % ndim
    if shape[axis] != param.shape[0]:
        raise ValueError(
            f"{name} has {param.shape[0]} channels but {target} has {shape[axis]} entries "
            f"along axis {axis} (shape {shape})"
        )
    view = [1] * ndim
    view[axis] = param.shape[0]
    return param.reshape(view)
