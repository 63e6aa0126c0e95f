"""Argument checks shared by the learners: every message names the argument and what was expected."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

from .._index import as_int

__all__ = ["build_config", "check_int", "check_real"]

C = TypeVar("C")


def check_int(value: object, name: str, minimum: int | None = None) -> int:
    """``value`` as an int (numpy integers and 0-d integer tensors accepted, bools refused), at least ``minimum``.

    The same rule as every builder's integer arguments (`pcircuits._index.as_int`).

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value < minimum``.
    """
    return as_int(value, name, minimum)


def check_real(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within ``low``/``high`` (open or closed bounds).

    Raises:
        TypeError: ``value`` is not a real number (bools refused).
        ValueError: NaN, ``+-inf`` or outside the bounds.
    """
    if isinstance(value, (bool, complex, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})") from None
    lo = "" if low is None else ("(" if low_open else "[") + f"{low}, "
    hi = "" if high is None else f"{high}" + (")" if high_open else "]")
    wanted = f"a finite number in {lo or '(-inf, '}{hi or 'inf)'}"
    if not math.isfinite(out):
        raise ValueError(f"{name} must be {wanted}, got {out}")
    if low is not None and (out < low or (low_open and out == low)):
        raise ValueError(f"{name} must be {wanted}, got {out}")
    if high is not None and (out > high or (high_open and out == high)):
        raise ValueError(f"{name} must be {wanted}, got {out}")
    return out


def build_config(cls: type[C], config: C | None, options: dict[str, Any], owner: str) -> C:
    """``config`` (or ``cls()``) with the keyword ``options`` of ``owner`` replacing its fields.

    This lets a learner take either ``config=cls(...)`` or the fields as keywords.

    Raises:
        TypeError: ``config`` is not a ``cls``, or an option is not a field of ``cls``.
        ValueError: a field value is refused by ``cls``'s checks.
    """
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{owner}() got unexpected keyword arguments {unknown}; expected fields of {cls.__name__}")
    return dataclasses.replace(config, **options) if options else config  # type: ignore[type-var]
