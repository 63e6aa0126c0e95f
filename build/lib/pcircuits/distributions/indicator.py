"""Indicator leaves ``[X = value]`` for deterministic (logic) circuits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .._index import as_int
from .base import DiscreteDistribution, _check_last_dim, _first_bad, register

__all__ = ["Indicator"]


@register
class Indicator(DiscreteDistribution):
    """Point mass on one value; has no learnable parameters.

    Args:
        value: the value every node of the group indicates, or one value per
            node (a sequence of length ``num_nodes``).
        num_cats: number of values of the variable (default ``max(value) + 1``,
            at least 2).
    """

    trainable = False

    def __init__(self, value: int | Sequence[int], num_cats: int | None = None):
        single = _is_scalar(value)
        if single:
            values = [as_int(value, "value", minimum=0)]
        else:
            try:
                values = [as_int(v, "value", minimum=0) for v in value]
            except TypeError:
                raise TypeError(
                    f"value must be a non-negative int or a non-empty sequence of them, got {value!r}"
                ) from None
        if not values:
            raise ValueError(f"value must be a non-negative int or a non-empty sequence of them, got {value!r}")
        if num_cats is None:
            num_cats = max(2, max(values) + 1)
        num_cats = as_int(num_cats, "num_cats", minimum=2)
        if num_cats <= max(values):
            raise ValueError(f"num_cats must be an int >= 2 greater than every value, got {num_cats!r}")
        self._value = values[0] if single else tuple(values)
        self._values = values
        self._num_cats = num_cats

    @property
    def num_cats(self) -> int:
        return self._num_cats

    @property
    def num_params(self) -> int:
        return 1  # the indicated value, stored as a (frozen) parameter so any subset of nodes keeps it

    def config(self):
        value = self._value if isinstance(self._value, int) else list(self._value)
        return {"value": value, "num_cats": self._num_cats}

    def signature(self):
        return ("Indicator", self._num_cats, tuple(self._values))  # [X = 1] is not [X = 2]: never tied together

    def fold_key(self):
        return ("Indicator", self._num_cats)  # values live in the parameters: all indicators fold together

    def check_num_nodes(self, num_nodes):
        if not isinstance(self._value, int) and len(self._values) != num_nodes:
            raise ValueError(f"Indicator: value has {len(self._values)} entries but the group has {num_nodes} nodes")

    def init_params(self, num_nodes, generator):
        values = self._values * num_nodes if len(self._values) == 1 and num_nodes > 1 else self._values
        return torch.tensor(values, dtype=torch.float64).unsqueeze(-1)

    def check_params(self, params, name="params"):
        """The stored indicated values must be integers in ``0..num_cats-1``."""
        _check_last_dim(params, 1, name, self)
        bad = ~torch.isfinite(params) | (params != params.round()) | (params < 0) | (params >= self._num_cats)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: Indicator values must be integers in 0..{self._num_cats - 1}, got {_first_bad(params, bad)}"
            )

    def log_table(self, params):
        cats = torch.arange(self._num_cats, device=params.device, dtype=params.dtype)
        hit = params.round() == cats  # [..., n, C]
        return torch.where(
            hit,
            torch.zeros((), dtype=params.dtype, device=params.device),
            torch.full((), -math.inf, dtype=params.dtype, device=params.device),
        )

    def em_update(self, params, stats, pseudocount, step_size):
        return params


def _is_scalar(value: object) -> bool:
    """Whether ``value`` is one value (an int-like scalar) rather than a sequence of them."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.ndim == 0
    return not isinstance(value, (Sequence, range)) and not hasattr(value, "__iter__")
