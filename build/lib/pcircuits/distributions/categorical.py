"""Categorical leaves: ``p(X = c) = softmax(logits)_c`` over ``num_cats`` values."""

from __future__ import annotations

import math

import torch

from .._index import as_int
from .base import DiscreteDistribution, _check_last_dim, _first_bad, register

__all__ = ["Categorical"]


@register
class Categorical(DiscreteDistribution):
    """Categorical distribution over ``0..num_cats-1``; raw parameters are ``num_cats`` logits."""

    def __init__(self, num_cats: int):
        self._num_cats = as_int(num_cats, "num_cats", minimum=2)

    @property
    def num_cats(self) -> int:
        return self._num_cats

    @property
    def num_params(self) -> int:
        return self._num_cats

    def config(self):
        return {"num_cats": self._num_cats}

    def init_params(self, num_nodes, generator):
        u = torch.rand(num_nodes, self._num_cats, generator=generator, dtype=torch.float64)
        return torch.log(-torch.log(u.clamp_min(1e-12)))  # softmax of this is Dirichlet(1)

    def log_table(self, params):
        return torch.log_softmax(params, -1)

    def check_params(self, params, name="params"):
        """Logits may be ``-inf`` (a category of probability 0), never NaN or ``+inf``.

        Each node needs one finite logit.
        """
        _check_last_dim(params, self._num_cats, name, self)
        bad = torch.isnan(params) | (params == math.inf)
        if bool(bad.any()):
            raise ValueError(f"{name}: {self!r} logits must be finite or -inf, got {_first_bad(params, bad)}")
        dead = ~torch.isfinite(params).any(-1)
        if bool(dead.any()):
            idx = tuple(int(i) for i in dead.nonzero()[0])
            raise ValueError(
                f"{name}: {self!r} node at index {idx} has every logit -inf (no category has probability > 0)"
            )

    def em_update(self, params, stats, pseudocount, step_size):
        old = torch.softmax(params, -1)
        new = stats + pseudocount / self._num_cats
        total = new.sum(-1, keepdim=True)
        new = torch.where(total > 0, new / total.clamp_min(1e-300), old)  # nodes never reached keep theirs
        probs = (1 - step_size) * old + step_size * new
        return torch.log(probs)
