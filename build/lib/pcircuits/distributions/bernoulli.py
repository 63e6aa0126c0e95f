"""Bernoulli leaves over ``{0, 1}``: ``p(X = 1) = sigmoid(logit)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DiscreteDistribution, register

__all__ = ["Bernoulli"]


@register
class Bernoulli(DiscreteDistribution):
    """Bernoulli distribution; the raw parameter is one logit per node."""

    @property
    def num_cats(self) -> int:
        return 2

    @property
    def num_params(self) -> int:
        return 1

    def init_params(self, num_nodes, generator):
        p = torch.rand(num_nodes, 1, generator=generator, dtype=torch.float64) * 0.9 + 0.05
        return torch.log(p) - torch.log1p(-p)

    def log_table(self, params):
        logit = params[..., 0]
        return torch.stack([F.logsigmoid(-logit), F.logsigmoid(logit)], -1)

    def em_update(self, params, stats, pseudocount, step_size):
        total = stats.sum(-1) + pseudocount
        old = torch.sigmoid(params[..., 0])
        p_new = torch.where(total > 0, (stats[..., 1] + pseudocount / 2) / total.clamp_min(1e-300), old)
        p = (1 - step_size) * old + step_size * p_new
        p = p.clamp(1e-12, 1 - 1e-12)
        return (torch.log(p) - torch.log1p(-p)).unsqueeze(-1)
