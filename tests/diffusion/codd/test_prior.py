"""CoDD prior against brute-force enumeration on tiny windows."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import diffusion.codd.prior as prior_mod
from diffusion import CoDDPrior
from tests.diffusion.fixtures import H, V, W
from tests.diffusion.fixtures import brute_posterior as _brute
from tests.diffusion.fixtures import random_case as _case
from tests.diffusion.fixtures import tiny_prior as _prior
from tests.diffusion.fixtures import total_variation as _tv

torch.set_num_threads(1)


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_log_prob_normalises_and_matches(tau):
    prior = _prior()
    x, logits, masked = _case(0)
    for b in range(len(x)):
        dist = _brute(prior, x[b], logits[b], masked[b], tau)
        xs = torch.tensor(list(dist))
        n = len(xs)
        lp = prior.log_prob(xs, logits[b : b + 1].expand(n, -1, -1), masked[b : b + 1].expand(n, -1), tau)
        assert abs(torch.logsumexp(lp, 0).item()) < 1e-9
        assert torch.allclose(lp.exp(), torch.tensor(list(dist.values()), dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_marginals_match_enumeration(tau):
    prior = _prior(window=4, vocab=5)
    x, logits, masked = _case(1, window=4, vocab=5)
    post = prior.marginals(x, logits, masked, tau)
    for b in range(len(x)):
        ref = torch.zeros(4, 5, dtype=torch.float64)
        for k, p in _brute(prior, x[b], logits[b], masked[b], tau).items():
            for i in range(4):
                ref[i, k[i]] += p
        assert (post[b] - ref).abs().max() < 1e-6
        assert torch.equal(post[b][~masked[b]].argmax(-1), x[b][~masked[b]])


@pytest.mark.parametrize("method", ["exact", "any_order"])
def test_exact_samplers_tv(method):
    prior = _prior()
    x, logits, masked = _case(2, batch=1)
    masked[0] = torch.tensor([True, False, True])
    tau = 0.8
    dist = _brute(prior, x[0], logits[0], masked[0], tau)
    n = 20000
    s = prior.sample(
        x.expand(n, -1), logits.expand(n, -1, -1), masked.expand(n, -1), tau, method, torch.Generator().manual_seed(0)
    )
    assert torch.equal(s[:, 1], x[:, 1].expand(n))
    assert _tv(s, dist) < 0.02


def _hmm_params(prior: CoDDPrior):
    c = prior.circuit
    by = {g.name: g for g in c.layout.groups if getattr(g, "name", None)}
    root = c.group_parameters(by["hmm_root"])[0]  # [H] over z_{T-1}
    trans = c.group_parameters(by["trans1"])  # [H, H]: row z_t, column z_{t-1}
    emit = torch.log_softmax(c.group_parameters(by["emit0"]), -1).exp()  # [H, V]
    return root, trans, emit


def _latent_reference(prior: CoDDPrior, x, logits, masked, tau: float) -> dict:
    """The documented latent-sampler distribution, by enumerating hidden paths."""
    with torch.no_grad():
        root, trans, emit = _hmm_params(prior)
    q1 = torch.softmax(logits, -1)
    qt = torch.softmax(logits / tau, -1)
    T = len(x)
    out: dict[tuple, float] = {}
    weights, leaf = [], []
    for z in itertools.product(range(H), repeat=T):
        p = root[z[-1]]
        for t in range(1, T):
            p = p * trans[z[t], z[t - 1]]
        for t in range(T):
            p = p * (emit[z[t], x[t]] if not masked[t] else (emit[z[t]] * q1[t]).sum())
        weights.append(p)
        leaf.append(z)
    total = sum(weights)
    weights = [float(w) for w in weights]
    total = float(total)
    for z, wz in zip(leaf, weights, strict=True):
        cond = [(emit[z[t]] * qt[t]) / (emit[z[t]] * qt[t]).sum() for t in range(T)]
        pos = [t for t in range(T) if masked[t]]
        for vs in itertools.product(range(prior.vocab_size), repeat=len(pos)):
            xx = x.clone()
            pr = wz / total
            for t, v in zip(pos, vs, strict=True):
                xx[t] = v
                pr = pr * cond[t][v]
            k = tuple(xx.tolist())
            out[k] = out.get(k, 0.0) + float(pr)
    return out


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_latent_sampler_matches_documented_distribution(tau):
    prior = _prior()
    with torch.no_grad():  # a sharper HMM, so that the latent and exact samplers differ at tau != 1
        for p in prior.circuit.parameters():
            p.mul_(3.0)
    x, logits, masked = _case(3, batch=1)
    masked[0] = torch.tensor([True, True, False])
    ref = _latent_reference(prior, x[0], logits[0], masked[0], tau)
    assert abs(sum(ref.values()) - 1) < 1e-9
    if tau == 1.0:  # equals p_hat
        exact = _brute(prior, x[0], logits[0], masked[0], 1.0)
        assert max(abs(ref[k] - exact[k]) for k in exact) < 1e-9
    else:  # and differs from p_hat at tau != 1 (the test would notice a tempered path)
        exact = _brute(prior, x[0], logits[0], masked[0], tau)
        assert 0.5 * sum(abs(ref[k] - exact[k]) for k in exact) > 0.1
    n = 20000
    s = prior.sample(
        x.expand(n, -1), logits.expand(n, -1, -1), masked.expand(n, -1), tau, "latent", torch.Generator().manual_seed(1)
    )
    assert _tv(s, ref) < 0.02


def test_topk_matches_full_with_masked_logits():
    k = 3
    full = _prior(window=4, vocab=5)
    topk = CoDDPrior(full.circuit, 4, 5, top_k=k)
    x, logits, masked = _case(4, window=4, vocab=5)
    thr = logits.topk(k, -1).values[..., -1:]
    cut = logits.masked_fill(logits < thr, -math.inf)
    assert torch.allclose(topk.marginals(x, logits, masked), full.marginals(x, cut, masked), atol=1e-9)
    x0 = torch.where(masked, cut.argmax(-1), x)
    assert torch.allclose(topk.log_prob(x0, logits, masked), full.log_prob(x0, cut, masked), atol=1e-9)
    s = topk.sample(x, logits, masked, method="exact", generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(cut.gather(-1, s.unsqueeze(-1))[..., 0][masked]).all())
    # outside the candidates: probability 0
    outside = torch.where(masked, logits.argmin(-1), x)
    assert bool((topk.log_prob(outside, logits, masked) == -math.inf).all())


def test_topk_sampler_tv():
    full = _prior()
    topk = CoDDPrior(full.circuit, W, V, top_k=2)
    x, logits, masked = _case(5, batch=1)
    thr = logits.topk(2, -1).values[..., -1:]
    cut = logits.masked_fill(logits < thr, -math.inf)
    dist = _brute(full, x[0], cut[0], masked[0])
    dist = {k: v for k, v in dist.items() if v > 0}
    n = 20000
    s = topk.sample(
        x.expand(n, -1),
        logits.expand(n, -1, -1),
        masked.expand(n, -1),
        method="exact",
        generator=torch.Generator().manual_seed(2),
    )
    assert _tv(s, dist) < 0.02


def test_matmul_leaf_path_matches(monkeypatch):
    prior = _prior(window=4, vocab=5)
    x, logits, masked = _case(6, window=4, vocab=5)
    ref_m, ref_l = prior.marginals(x, logits, masked), prior.log_prob(x, logits, masked)
    monkeypatch.setattr(prior_mod, "_DENSE_LIMIT", 0)
    assert torch.allclose(prior.marginals(x, logits, masked), ref_m, atol=1e-9)
    assert torch.allclose(prior.log_prob(x, logits, masked), ref_l, atol=1e-9)


def test_stable_with_huge_and_infinite_logits():
    prior = CoDDPrior.hmm(4, 3, 5, seed=0)  # float32
    x, logits, masked = _case(7, window=4, vocab=5)
    logits = (logits * 5e3).float()
    logits[:, :, 0] = -math.inf
    post = prior.marginals(x, logits, masked)
    assert bool(torch.isfinite(post).all())
    assert torch.allclose(post.sum(-1), torch.ones(3, 4), atol=1e-4)
    assert bool((post[..., 0][masked] == 0).all())
    x0 = torch.where(masked, logits.argmax(-1), x)
    lp = prior.log_prob(x0, logits, masked, temperature=0.3)
    assert bool(torch.isfinite(lp).all()) and bool((lp <= 1e-4).all())
    for method in ("latent", "exact", "any_order"):
        s = prior.sample(x, logits, masked, 0.5, method, torch.Generator().manual_seed(0))
        assert bool((s[masked] != 0).all())
    assert torch.equal(prior.mpe(x, logits, masked)[masked], x0[masked])  # 1e4 logits dominate


def _viterbi_reference(prior: CoDDPrior, x, logits, masked, tau: float) -> tuple[tuple, float]:
    """argmax over (tokens, hidden path) of p_omega(x, z) prod q^tau, and the margin to the runner-up."""
    with torch.no_grad():
        root, trans, emit = _hmm_params(prior)
    qt = torch.softmax(logits / tau, -1)
    T = len(x)
    pos = [t for t in range(T) if masked[t]]
    scores: dict[tuple, float] = {}
    for z in itertools.product(range(H), repeat=T):
        pz = float(root[z[-1]]) * math.prod(float(trans[z[t], z[t - 1]]) for t in range(1, T))
        for vs in itertools.product(range(prior.vocab_size), repeat=len(pos)):
            xx = x.clone()
            for t, v in zip(pos, vs, strict=True):
                xx[t] = v
            p = pz * math.prod(float(emit[z[t], xx[t]]) * (float(qt[t, xx[t]]) if masked[t] else 1.0) for t in range(T))
            k = tuple(xx.tolist())
            scores[k] = max(scores.get(k, 0.0), p)
    top = sorted(scores.values(), reverse=True)
    return max(scores, key=scores.get), top[0] / top[1]


def test_mpe_is_the_viterbi_completion():
    prior = _prior()
    checked = 0
    for seed in (8, 10, 11):
        x, logits, masked = _case(seed)
        best = prior.mpe(x, logits, masked, 0.9)
        for b in range(len(x)):
            ref, margin = _viterbi_reference(prior, x[b], logits[b], masked[b], 0.9)
            if margin > 1 + 1e-9:  # skip ties
                assert tuple(best[b].tolist()) == ref
                checked += 1
    assert checked >= 6


def test_value_errors():
    prior = _prior()
    x, logits, masked = _case(9)
    with pytest.raises(ValueError, match="window"):
        prior.marginals(x[:, :2], logits[:, :2], masked[:, :2])
    with pytest.raises(ValueError, match="vocabulary"):
        prior.marginals(x, logits[..., :3], masked)
    for tau in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            prior.sample(x, logits, masked, tau)
    with pytest.raises(ValueError, match="method"):
        prior.sample(x, logits, masked, method="gibbs")
    with pytest.raises(ValueError, match="window"):
        CoDDPrior(prior.circuit, W + 1, V)
    with pytest.raises(ValueError, match="vocab"):
        CoDDPrior(prior.circuit, W, V + 1)



def _soft_evidence(logits: torch.Tensor, masked: torch.Tensor, top_k: int | None):
    """``(w [B, W, K], cand [B, W, K] or None)``: log-softmax of the (top-k) logits, 0 at observed positions."""
    cand = None
    if top_k is not None:
        logits, cand = logits.topk(top_k, dim=-1)
    w = torch.log_softmax(logits, -1)
    return torch.where(masked.unsqueeze(-1), w, torch.zeros_like(w)), cand


def _weight(w: torch.Tensor, cand: torch.Tensor | None, token: int) -> torch.Tensor:
    """``log w(token)`` of one position (``w [K]``, ``cand [K]`` or None): ``-inf`` off the candidates."""
    if cand is None:
        return w[token]
    hit = (cand == token).nonzero()
    return w[hit[0, 0]] if len(hit) else torch.tensor(-math.inf, dtype=w.dtype)


@pytest.mark.parametrize("top_k", [None, 3])
@pytest.mark.parametrize("limit", [None, 0])
def test_engine_evidence_matches_enumeration_and_ignores_observed_weights(monkeypatch, top_k, limit):
    if limit is not None:
        monkeypatch.setattr(prior_mod, "_DENSE_LIMIT", limit)  # full soft evidence instead of all-V candidates
    prior = _prior(window=4, vocab=5, top_k=top_k)
    x, logits, masked = _case(8, window=4, vocab=5)
    w, cand = _soft_evidence(logits, masked, top_k)
    noisy = torch.where(masked.unsqueeze(-1), w, torch.randn(w.shape, dtype=w.dtype))
    roots = {}
    for semiring in ("sum", "max"):
        roots[semiring] = prior.circuit.upward(prior.engine_evidence(x, masked, w, cand), semiring)[-1][:, 0]
        out = prior.circuit.upward(prior.engine_evidence(x, masked, noisy, cand), semiring)[-1][:, 0]
        assert torch.equal(roots[semiring], out)
    for b in range(len(x)):  # log sum_x p_omega(x) prod_{i masked} w_i(x_i), by enumeration
        pos = [i for i in range(4) if masked[b, i]]
        terms = []
        for vs in itertools.product(range(5), repeat=len(pos)):
            xx = x[b].clone()
            xx[pos] = torch.tensor(vs, dtype=xx.dtype)
            lw = sum(_weight(w[b, i], None if cand is None else cand[b, i], int(xx[i])) for i in pos)
            terms.append(prior.circuit(xx[None])[0] + lw)
        assert torch.allclose(roots["sum"][b], torch.logsumexp(torch.stack(terms), 0), atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_partial_log_prob_marginalises_the_summed_out_positions_by_enumeration(seed):
    """``log p_hat(x0[scored] | observed)`` equals the enumerated sum over the summed-out positions' tokens."""
    prior = _prior(seed=seed)
    x, logits, masked = _case(seed, batch=1)
    pos = [i for i in range(W) if masked[0, i]]
    assert len(pos) >= 2
    summed = torch.zeros_like(masked)
    summed[0, pos[1:]] = True
    scored = masked & ~summed
    dist = _brute(prior, x[0], logits[0], masked[0])  # completions of the masked positions
    want = math.log(sum(p for comp, p in dist.items() if comp[0] == int(x[0, pos[0]])))
    got = float(prior.partial_log_prob(x, logits, scored, summed))
    assert abs(got - want) < 1e-9
    assert torch.allclose(prior.partial_log_prob(x, logits, masked, torch.zeros_like(masked)),
                          prior.log_prob(x, logits, masked), atol=1e-9)
    with pytest.raises(ValueError, match="summed_out"):
        prior.partial_log_prob(x, logits, masked, masked)


def _brute_marginals(prior: CoDDPrior, x, logits, masked, tau: float) -> torch.Tensor:
    """``[B, W, V]`` marginals of p_hat by enumerating each row's completions."""
    out = torch.zeros(len(x), prior.window, prior.vocab_size, dtype=torch.float64)
    for b in range(len(x)):
        for k, p in _brute(prior, x[b], logits[b], masked[b], tau).items():
            for i in range(prior.window):
                out[b, i, k[i]] += p
    return out


@pytest.mark.parametrize("top_k", [None, 3])
@pytest.mark.parametrize(
    ("method", "tau"), [("exact", 0.6), ("latent", 1.0), ("latent_tempered", 0.6), ("latent", 0.6)]
)
def test_marginals_and_sample_equal_the_two_calls_and_enumeration(method, tau, top_k):
    prior = _prior(window=3, vocab=5, top_k=top_k)
    x, logits, masked = _case(11, window=3, vocab=5)
    if top_k is not None:  # p_hat of a top-k prior is that of the full prior on logits cut to the top k
        cut = logits.masked_fill(logits < logits.topk(top_k, -1).values[..., -1:], -math.inf)
    else:
        cut = logits
    post, tok = prior.marginals_and_sample(x, logits, masked, tau, method, torch.Generator().manual_seed(5))
    assert (post - _brute_marginals(CoDDPrior(prior.circuit, 3, 5), x, cut, masked, tau)).abs().max() < 1e-9
    ref = prior.sample(x, logits, masked, tau, method, torch.Generator().manual_seed(5))
    assert torch.equal(tok, ref)  # the same random numbers, drawn in the same order
    assert torch.equal(tok[~masked], x[~masked])


def test_marginals_and_sample_draws_p_hat_and_mixes_the_backoff():
    prior = _prior()
    x, logits, masked = _case(12, batch=1)
    masked[0] = torch.tensor([True, False, True])
    tau, n = 0.8, 20000
    xs, ls, ms = x.expand(n, -1), logits.expand(n, -1, -1), masked.expand(n, -1)
    post, s = prior.marginals_and_sample(xs, ls, ms, tau, "exact", torch.Generator().manual_seed(0))
    assert _tv(s, _brute(prior, x[0], logits[0], masked[0], tau)) < 0.02
    assert torch.allclose(post[0], _brute_marginals(prior, x, logits, masked, tau)[0], atol=1e-9)
    prior.set_backoff([0.3, 0.6])
    post, s = prior.marginals_and_sample(x, logits, masked, tau, "exact", torch.Generator().manual_seed(3))
    assert torch.allclose(post, prior.marginals(x, logits, masked, tau), atol=1e-12)
    assert torch.equal(s, prior.sample(x, logits, masked, tau, "exact", torch.Generator().manual_seed(3)))


def test_marginals_and_sample_refuses_impossible_evidence_and_bad_options():
    prior = _prior()
    x, logits, masked = _case(13, batch=1)
    with pytest.raises(ValueError, match="method"):
        prior.marginals_and_sample(x, logits, masked, 1.0, "nope")
    with pytest.raises(ValueError, match="order"):
        prior.marginals_and_sample(x, logits, masked, 1.0, "exact", order="nope")
    with torch.no_grad():  # observed token 0 at position 1 impossible under every hidden state
        for blk in prior.circuit.leaf_blocks():
            prior.circuit.params[blk.bank][..., 0] = -math.inf
    masked[0] = torch.tensor([True, False, True])
    x[0, 1] = 0
    with pytest.raises(ValueError, match="probability 0"):
        prior.marginals_and_sample(x, logits, masked, 1.0, "exact")
