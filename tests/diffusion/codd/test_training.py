"""fit_prior's window weightings and the metric it reports."""

from __future__ import annotations

import pytest
import torch

from diffusion import CoDDPrior
from diffusion.codd.training import conditional_nll, fit_prior

torch.set_num_threads(1)


def _windows(n: int = 24, window: int = 4, vocab: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(vocab, (n, window), generator=g)
    ratio = torch.rand(n, 1, generator=g)
    masked = torch.rand(n, window, generator=g) < ratio
    masked[:, 0] = True  # every window scores something; the counts differ from window to window
    logits = torch.randn(n, window, vocab, generator=g, dtype=torch.float64) * 2
    return x0, masked, logits


@pytest.mark.parametrize("weighting", ["token", "window"])
def test_reported_nll_follows_the_weighting(weighting):
    x0, masked, logits = _windows()
    prior = CoDDPrior.hmm(4, 3, 5, seed=0).to(torch.float64)
    hist = fit_prior(prior, x0, masked, logits, epochs=1, lr=0.0, valid_frac=0.0, progress=False, weighting=weighting)
    nll = conditional_nll(prior, x0, masked, logits)
    n = masked.sum(1)
    want = (nll / n).mean() if weighting == "window" else nll.sum() / n.sum()
    assert hist[0] == pytest.approx(float(want), rel=1e-9)
    assert float((nll / n).mean()) != pytest.approx(float(nll.sum() / n.sum()), rel=1e-3)  # the two differ here


@pytest.mark.parametrize("weighting", ["token", "window"])
def test_training_lowers_its_objective(weighting):
    x0, masked, logits = _windows(n=64, seed=1)
    prior = CoDDPrior.hmm(4, 3, 5, seed=0).to(torch.float64)
    before = fit_prior(prior, x0, masked, logits, epochs=1, lr=0.0, valid_frac=0.0, progress=False, weighting=weighting)
    hist = fit_prior(prior, x0, masked, logits, epochs=5, lr=0.1, batch_size=16, valid_frac=0.0, progress=False,
                     weighting=weighting)
    assert min(hist) < before[0] - 0.01


def test_unknown_weighting_raises():
    x0, masked, logits = _windows()
    with pytest.raises(ValueError, match="weighting"):
        fit_prior(CoDDPrior.hmm(4, 3, 5), x0, masked, logits.float(), epochs=1, progress=False, weighting="ratio")
