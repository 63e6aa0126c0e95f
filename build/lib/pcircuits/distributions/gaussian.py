"""Univariate Gaussian leaves over real values."""

from __future__ import annotations

import math

import torch

from .base import Distribution, _check_last_dim, _first_bad, register

__all__ = ["Gaussian"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@register
class Gaussian(Distribution):
    """Normal distribution ``N(mean, std^2)``; raw parameters are ``(mean, log std)``.

    Args:
        min_std: lower bound on the standard deviation kept by EM.
    """

    discrete = False

    def __init__(self, min_std: float = 1e-3):
        if not (isinstance(min_std, (int, float)) and min_std > 0):
            raise ValueError(f"min_std must be a positive number, got {min_std!r}")
        self.min_std = float(min_std)

    @property
    def num_params(self) -> int:
        return 2

    def config(self):
        return {"min_std": self.min_std}

    def init_params(self, num_nodes, generator):
        mean = torch.randn(num_nodes, generator=generator, dtype=torch.float64)
        log_std = torch.zeros(num_nodes, dtype=torch.float64)
        return torch.stack([mean, log_std], -1)

    def check_params(self, params, name="params"):
        """Mean and log std must be finite, and the std and its inverse positive and finite in ``params``' dtype."""
        _check_last_dim(params, 2, name, self)
        for j, what in enumerate(("mean", "log std")):
            col = params[..., j]
            bad = ~torch.isfinite(col)
            if bool(bad.any()):
                raise ValueError(f"{name}: Gaussian {what} must be finite, got {_first_bad(col, bad)}")
        log_std = params[..., 1]
        std, inv = torch.exp(log_std), torch.exp(-log_std)
        bad = ~torch.isfinite(std) | ~torch.isfinite(inv) | (std == 0) | (inv == 0)
        if bool(bad.any()):
            raise ValueError(
                f"{name}: Gaussian log std {_first_bad(log_std, bad)} makes the std underflow or overflow in "
                f"{params.dtype}; the std must be positive and finite"
            )

    def log_prob(self, params, x, missing, soft_evidence, slots=None):
        if slots is not None:
            params = params.index_select(0, slots)
        mean, log_std = params[..., 0], params[..., 1]  # [G, n]
        z = (x.unsqueeze(-1) - mean) * torch.exp(-log_std)  # [B, G, n]
        out = -0.5 * z * z - log_std - _LOG_SQRT_2PI
        if missing is not None:
            out = torch.where(missing.unsqueeze(-1), torch.zeros_like(out), out)
        return out

    def max_log_prob(self, params, soft_evidence):
        return (-params[..., 1] - _LOG_SQRT_2PI).unsqueeze(0)

    def sample(self, params, soft_evidence, temperature, generator):
        eps = torch.randn(params.shape[0], generator=generator, dtype=params.dtype, device=params.device)
        return params[:, 0] + math.sqrt(temperature) * torch.exp(params[:, 1]) * eps

    def mode(self, params, soft_evidence):
        return params[:, 0]

    @property
    def num_stats(self) -> int:
        return 3

    def em_statistics(self, params, x, missing, soft_evidence, flows):
        mean, var = params[..., 0], torch.exp(2 * params[..., 1])  # [G, n]
        xv = x.unsqueeze(-1).to(flows.dtype)  # [B, G, 1]
        if missing is None:
            s1 = (flows * xv).sum(0)
            s2 = (flows * xv * xv).sum(0)
            return torch.stack([flows.sum(0), s1, s2], -1)
        miss = missing.unsqueeze(-1)
        xv = torch.where(miss, torch.zeros_like(xv), xv)
        obs_f = torch.where(miss, torch.zeros_like(flows), flows)
        miss_f = (flows - obs_f).sum(0)
        s0 = flows.sum(0)
        s1 = (obs_f * xv).sum(0) + miss_f * mean
        s2 = (obs_f * xv * xv).sum(0) + miss_f * (var + mean * mean)
        return torch.stack([s0, s1, s2], -1)

    def em_update(self, params, stats, pseudocount, step_size):
        mean_old, var_old = params[..., 0], torch.exp(2 * params[..., 1])
        s0 = stats[..., 0] + pseudocount
        live = s0 > 0  # nodes never reached keep their parameters
        s0 = torch.where(live, s0, torch.ones_like(s0))
        m1 = torch.where(live, (stats[..., 1] + pseudocount * mean_old) / s0, mean_old)
        m2 = torch.where(live, (stats[..., 2] + pseudocount * (var_old + mean_old**2)) / s0, var_old + mean_old**2)
        m1 = (1 - step_size) * mean_old + step_size * m1
        m2 = (1 - step_size) * (var_old + mean_old**2) + step_size * m2
        var = (m2 - m1 * m1).clamp_min(self.min_std**2)
        return torch.stack([m1, 0.5 * torch.log(var)], -1)
