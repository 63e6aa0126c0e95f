"""The backoff mixture lambda(r) p_hat + (1 - lambda(r)) prod q against enumeration."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion import CoDDPrior, fit_prior
from tests.diffusion.fixtures import V, W
from tests.diffusion.fixtures import brute_posterior as _brute
from tests.diffusion.fixtures import random_case as _case
from tests.diffusion.fixtures import tiny_prior as _prior
from tests.diffusion.fixtures import total_variation as _tv


def _mixture(prior: CoDDPrior, x, logits, masked, tau: float) -> dict[tuple[int, ...], float]:
    """The mixture over the completions of one row, by enumeration."""
    lam = float(prior.mix_weight(masked[None])[0])
    w = torch.log_softmax(logits / tau, -1)
    out = {}
    for k, p in _brute(prior, x, logits, masked, tau).items():
        q = math.exp(sum(float(w[i, k[i]]) for i in range(len(k)) if masked[i]))
        out[k] = lam * p + (1 - lam) * q
    return out


def _backed(weights) -> CoDDPrior:
    prior = _prior()
    prior.set_backoff(weights)
    return prior


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_log_prob_and_marginals_of_the_mixture(tau):
    prior = _backed([0.2, 0.5, 0.9])  # W = 3: windows with 1, 2, 3 masked positions use bins 1, 2, 2
    x, logits, masked = _case(0)
    post = prior.marginals(x, logits, masked, tau)
    for b in range(len(x)):
        dist = _mixture(prior, x[b], logits[b], masked[b], tau)
        xs = torch.tensor(list(dist))
        n = len(xs)
        lp = prior.log_prob(xs, logits[b : b + 1].expand(n, -1, -1), masked[b : b + 1].expand(n, -1), tau)
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
        assert torch.allclose(lp.exp(), torch.tensor(list(dist.values()), dtype=torch.float64), atol=1e-9)
        ref = torch.zeros(W, V, dtype=torch.float64)
        for k, p in dist.items():
            for i in range(W):
                ref[i, k[i]] += p
        assert (post[b] - ref).abs().max() < 1e-6


@pytest.mark.parametrize("method", ["exact", "any_order"])
def test_mixture_samplers_tv(method):
    prior = _backed([0.4])
    x, logits, masked = _case(2, batch=1)
    masked[0] = torch.tensor([True, False, True])
    dist = _mixture(prior, x[0], logits[0], masked[0], 0.8)
    n = 20000
    s = prior.sample(x.expand(n, -1), logits.expand(n, -1, -1), masked.expand(n, -1), 0.8, method,
                     torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(s[:, 1], x[:, 1].expand(n))
    assert _tv(s, dist) < 0.02


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_mpe_is_the_better_of_the_two_candidates(lam):
    x, logits, masked = _case(8)
    plain = _prior().mpe(x, logits, masked, 0.9)
    fact = torch.where(masked, logits.argmax(-1), x)
    prior = _backed([lam])
    best = prior.mpe(x, logits, masked, 0.9)
    for b in range(len(x)):
        dist = _mixture(prior, x[b], logits[b], masked[b], 0.9)
        cands = [tuple(plain[b].tolist()), tuple(fact[b].tolist())]
        assert dist[tuple(best[b].tolist())] == max(dist[c] for c in cands)
    if lam == 0.0:
        assert torch.equal(best, fact)


def test_fit_backoff_maximises_the_mixture_likelihood():
    prior = _prior()
    g = torch.Generator().manual_seed(3)
    M = 200
    x = torch.randint(V, (M, W), generator=g)
    logits = torch.randn(M, W, V, generator=g, dtype=torch.float64) * 2
    masked = torch.rand(M, W, generator=g) < 0.5
    masked[:, 0] = True
    lam = prior.fit_backoff(x, logits, masked, bins=2)
    assert len(lam) == 2 and torch.equal(prior.backoff, torch.tensor(lam, dtype=torch.float64))
    total = prior.log_prob(x, logits, masked).sum()
    for other in ([0.0, 0.0], [1.0, 1.0], [min(lam[0] + 0.05, 1.0), lam[1]], [lam[0], max(lam[1] - 0.05, 0.0)]):
        prior.set_backoff(other)
        assert prior.log_prob(x, logits, masked).sum() <= total + 1e-9


def test_backoff_saved_and_loaded(tmp_path):
    prior = _backed([0.25, 0.75])
    prior.save(tmp_path / "p.npz")
    assert torch.equal(CoDDPrior.load(tmp_path / "p.npz").backoff, prior.backoff)
    prior.set_backoff(None)
    prior.save(tmp_path / "p.npz")
    assert CoDDPrior.load(tmp_path / "p.npz").backoff is None


def test_backoff_errors():
    prior = _prior()
    x, logits, masked = _case(9)
    with pytest.raises(ValueError, match="weights"):
        prior.set_backoff([0.5, 1.5])
    with pytest.raises(ValueError, match="weights"):
        prior.set_backoff([])
    with pytest.raises(TypeError, match="weights"):
        prior.set_backoff("high")
    with pytest.raises(ValueError, match="bins"):
        prior.fit_backoff(x, logits, masked, bins=0)
    prior.set_backoff([0.5])
    with pytest.raises(ValueError, match="backoff"):
        fit_prior(prior, x, masked, logits, epochs=1)
