"""Categorical leaves: ``p(X = c) = softmax(logits)_c`` over ``num_cats`` values."""

from __future__ import annotations

import torch

from .._index import as_int
from .base import DiscreteDistribution, register

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

    def em_update(self, params, stats, pseudocount, step_size):
        old = torch.softmax(params, -1)
        new = stats + pseudocount / self._num_cats
        total = new.sum(-1, keepdim=True)
        new = torch.where(total > 0, new / total.clamp_min(1e-300), old)  # nodes never reached keep theirs
        probs = (1 - step_size) * old + step_size * new
        return torch.log(probs)
