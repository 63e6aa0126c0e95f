"""Categorical leaves: ``p(X = c) = softmax(logits)_c`` over ``num_cats`` values."""

from __future__ import annotations

import math

import torch

from .._index import as_int
from .base import DiscreteDistribution, _check_last_dim, _first_bad, register

__all__ = ["Categorical"]

_INIT_CHUNK = 1 << 20  # float64 values drawn and transformed at a time by init_params_into


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
        out = torch.empty(num_nodes, self._num_cats, dtype=torch.float64)
        self.init_params_into(out, generator)
        return out

    def init_params_into(self, out, generator):
        """``log(-log(u))`` of float64 uniforms (softmax of it is Dirichlet(1)), drawn and transformed a few rows
        at a time in float64 then written into ``out [n, C]``: the values of one whole draw, without its copies."""
        rows = max(1, _INIT_CHUNK // self._num_cats)
        buf = torch.empty(min(rows, out.shape[0]), self._num_cats, dtype=torch.float64)
        for start in range(0, out.shape[0], rows):
            u = buf[: min(rows, out.shape[0] - start)]
            u.uniform_(generator=generator)  # the same stream as one torch.rand of the whole table
            u.clamp_min_(1e-12).log_().neg_().log_()
            out[start : start + u.shape[0]].copy_(u)

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
