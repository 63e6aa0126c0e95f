"""Integer arguments: accept anything integer-like (``operator.index``), refuse bools and floats.

Users index variables with numpy all the time, so ``np.int64(3)`` and a 0-d
integer tensor are as good as ``3``; ``True``, ``3.0`` and 1-element arrays
are not integers and are refused with an error that names the argument.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

__all__ = ["as_int"]


def as_int(value: object, name: str, minimum: int | None = None) -> int:
    """``value`` as a Python int.

    Args:
        value: an int, a numpy integer or a 0-d integer tensor / array.
        name: the argument's name, for the error message.
        minimum: smallest allowed value, or ``None``.

    Raises:
        TypeError: ``value`` is a bool, a float or not integer-like.
        ValueError: ``value`` is below ``minimum``.
    """
    if isinstance(value, (bool, np.bool_)) or _is_bool_array(value):
        raise TypeError(f"{name} must be an int, got a bool ({value!r})")
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim != 0:
        raise TypeError(
            f"{name} must be an int (a 0-d integer tensor at most), got an array of shape {tuple(value.shape)}"
        )
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {out}")
    return out


def _is_bool_array(value: object) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.bool
    return isinstance(value, np.ndarray) and value.dtype == np.bool_
