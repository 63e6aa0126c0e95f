"""Keyword overrides of settings dataclasses (`diffusion.sampling.GenerationConfig`, `diffusion.codd.PriorTrainConfig`).

A function with many knobs takes one settings object and still accepts the
knobs as keywords: ``f(data, config, epochs=3)`` is
``f(data, dataclasses.replace(config, epochs=3))``. `with_overrides` does
that replacement and names what is wrong otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["with_overrides"]

C = TypeVar("C")


def with_overrides(cls: type[C], config: C | None, overrides: dict[str, Any], where: str) -> C:
    """``config`` (default ``cls()``) with the fields named in ``overrides`` replaced.

    Args:
        cls: the settings dataclass.
        config: an instance of ``cls`` or None.
        overrides: field name -> value, the keyword arguments of the caller.
        where: the caller's name, for messages (``"generate"``).

    Returns:
        A new ``cls`` instance (``config`` itself when nothing is overridden);
        the dataclass validates it.

    Raises:
        TypeError: ``config`` is not a ``cls`` (e.g. a setting passed by
            position), or a keyword that is not a field of ``cls``.
    """
    if config is None:
        config = cls()
    elif not isinstance(config, cls):
        raise TypeError(
            f"config: expected a {cls.__name__} or None, got {type(config).__name__} "
            f"(pass the settings of {where}() by keyword, e.g. {where}(..., {dataclasses.fields(cls)[0].name}=...))"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(
            f"{where}() got unexpected keyword argument(s) {', '.join(unknown)}; "
            f"its settings are the fields of {cls.__name__}: {', '.join(sorted(names))}"
        )
    return dataclasses.replace(config, **overrides) if overrides else config
