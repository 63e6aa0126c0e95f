"""The two latent-path samplers against their documented distributions, enumerated in numpy.

A tiny homogeneous HMM prior gets known parameters through the public API
(`TensorCircuit.set_group_parameters`); the reference distributions are
computed in numpy by enumerating every hidden path and every completion
from those parameters alone, and compared with many draws by a chi-square
test (and a check that the test can tell the two samplers apart at tau != 1).

* ``latent``: ``P(z | x_obs, q^1)``, then ``x_i | z ∝ E_{z_i}(x_i) q_i^tau(x_i)``.
* ``latent_tempered`` (the official code): ``P(z | x_obs, q^tau)``, then at
  generation temperature ``T`` ``x_i | z ∝ (E_{z_i}(x_i) q_i^tau(x_i))^(1/T)``;
  at ``T = 1`` this is ``p_hat`` itself.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from diffusion import CoDDPrior, generate
from diffusion.backbones import MaskedLMBackbone
from diffusion.sampling import sample_tokens

from ..fixtures import TableModel

torch.set_num_threads(1)
W, H, V = 3, 3, 4


def _params(vocab: int = V, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sharp random HMM: root ``[H]`` over ``z_{W-1}``, transitions ``[H, H]`` (row ``z_t``, column ``z_{t-1}``),
    emissions ``[H, vocab]``."""
    rng = np.random.default_rng(seed)
    root = rng.dirichlet(np.ones(H))
    trans = rng.dirichlet(np.full(H, 0.4), size=H)
    emit = rng.dirichlet(np.full(vocab, 0.4), size=H)
    return root, trans, emit


def _prior(root: np.ndarray, trans: np.ndarray, emit: np.ndarray) -> CoDDPrior:
    prior = CoDDPrior.hmm(W, H, emit.shape[1], seed=3).to(torch.float64)
    c = prior.circuit
    by = {g.name: g for g in c.layout.groups if getattr(g, "name", None)}
    c.set_group_parameters(by["hmm_root"], root[None])
    c.set_group_parameters(by["trans1"], trans)
    c.set_group_parameters(by["emit0"], np.log(emit))
    return prior


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference(
    params, x: np.ndarray, logits: np.ndarray, masked: np.ndarray, tau_path: float, tau_leaf: float, T: float = 1.0
) -> dict[tuple[int, ...], float]:
    """``sum_z P(z | x_obs, q^tau_path) prod_{i masked} (E_{z_i} q_i^tau_leaf)^(1/T)(x_i)`` normalised per position."""
    root, trans, emit = params
    vocab = emit.shape[1]
    qp, ql = _softmax(logits / tau_path), _softmax(logits / tau_leaf)
    pos = [i for i in range(W) if masked[i]]
    out: dict[tuple[int, ...], float] = {}
    paths = list(itertools.product(range(H), repeat=W))
    weight = []
    for z in paths:
        p = root[z[-1]] * np.prod([trans[z[t], z[t - 1]] for t in range(1, W)])
        for t in range(W):
            p *= (emit[z[t]] * qp[t]).sum() if masked[t] else emit[z[t], x[t]]
        weight.append(p)
    weight = np.array(weight) / np.sum(weight)
    for z, wz in zip(paths, weight, strict=True):
        cond = {t: (emit[z[t]] * ql[t]) ** (1.0 / T) for t in pos}
        cond = {t: c / c.sum() for t, c in cond.items()}
        for vs in itertools.product(range(vocab), repeat=len(pos)):
            k = x.copy()
            pr = wz
            for t, v in zip(pos, vs, strict=True):
                k[t] = v
                pr *= cond[t][v]
            out[tuple(k.tolist())] = out.get(tuple(k.tolist()), 0.0) + pr
    return out


def _p_hat(params, x: np.ndarray, logits: np.ndarray, masked: np.ndarray, tau: float) -> dict[tuple[int, ...], float]:
    """``p_hat(x) ∝ p_omega(x) prod_{i masked} q_i^tau(x_i)`` by enumeration."""
    root, trans, emit = params
    q = _softmax(logits / tau)
    pos = [i for i in range(W) if masked[i]]
    out = {}
    for vs in itertools.product(range(emit.shape[1]), repeat=len(pos)):
        k = x.copy()
        for t, v in zip(pos, vs, strict=True):
            k[t] = v
        joint = sum(
            root[z[-1]]
            * np.prod([trans[z[t], z[t - 1]] for t in range(1, W)])
            * np.prod([emit[z[t], k[t]] for t in range(W)])
            for z in itertools.product(range(H), repeat=W)
        )
        out[tuple(k.tolist())] = joint * np.prod([q[t, k[t]] for t in pos])
    s = sum(out.values())
    return {k: v / s for k, v in out.items()}


def _check(samples: torch.Tensor, ref: dict, alt: dict | None = None) -> None:
    """Chi-square goodness of fit of ``samples [n, W]`` to ``ref``; ``alt`` must be far from ``ref`` (power)."""
    n = len(samples)
    keys = sorted(ref)
    cnt = Counter(tuple(r) for r in samples.tolist())
    assert set(cnt) <= set(keys), "a draw outside the support of the reference"
    obs = np.array([cnt.get(k, 0) for k in keys], dtype=float)
    exp = np.array([ref[k] for k in keys]) * n
    assert abs(exp.sum() - n) < 1e-6
    assert chisquare(obs, exp).pvalue > 1e-4
    if alt is not None:
        assert 0.5 * sum(abs(ref[k] - alt.get(k, 0.0)) for k in keys) > 0.05


def _case(vocab: int = V, seed: int = 4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(W, vocab)) * 1.5
    x = np.array([0, 2, 0])
    masked = np.array([True, False, True])
    return x, logits, masked


def test_numpy_reference_is_the_circuit():
    params = _params()
    prior = _prior(*params)
    root, trans, emit = params
    xs = np.array(list(itertools.product(range(V), repeat=W)))
    ref = [
        sum(
            root[z[-1]]
            * np.prod([trans[z[t], z[t - 1]] for t in range(1, W)])
            * np.prod([emit[z[t], x[t]] for t in range(W)])
            for z in itertools.product(range(H), repeat=W)
        )
        for x in xs
    ]
    with torch.no_grad():
        got = prior.circuit(torch.tensor(xs)).exp().numpy()
    assert np.allclose(got, ref, atol=1e-12)


def _draws(prior, x, logits, masked, n):
    return (torch.tensor(x).expand(n, -1), torch.tensor(logits).expand(n, -1, -1), torch.tensor(masked).expand(n, -1))


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_latent_sampler_matches_its_documented_distribution(tau):
    params = _params()
    prior = _prior(*params)
    x, logits, masked = _case()
    ref = _reference(params, x, logits, masked, tau_path=1.0, tau_leaf=tau)
    s = prior.sample(*_draws(prior, x, logits, masked, 20000), tau, "latent", torch.Generator().manual_seed(0))
    _check(s, ref, alt=_p_hat(params, x, logits, masked, tau))


@pytest.mark.parametrize("tau", [0.5, 2.0])
def test_latent_tempered_sample_is_p_hat(tau):
    params = _params()
    prior = _prior(*params)
    x, logits, masked = _case()
    ref = _reference(params, x, logits, masked, tau_path=tau, tau_leaf=tau)
    exact = _p_hat(params, x, logits, masked, tau)
    assert max(abs(ref[k] - exact[k]) for k in exact) < 1e-12  # the documented identity
    s = prior.sample(*_draws(prior, x, logits, masked, 20000), tau, "latent_tempered", torch.Generator().manual_seed(1))
    _check(s, ref, alt=_reference(params, x, logits, masked, tau_path=1.0, tau_leaf=tau))


def test_path_conditionals_are_a_leaf_times_tempered_evidence():
    params = _params()
    _, _, emit = params
    prior = _prior(*params)
    x, logits, masked = _case()
    tau = 0.5
    cond = prior.path_conditionals(*_draws(prior, x, logits, masked, 50), tau, torch.Generator().manual_seed(2)).numpy()
    qt = _softmax(logits / tau)
    for row in cond:
        for t in range(W):
            if masked[t]:
                p = np.exp(row[t])
                assert min(np.abs(p - (emit[h] * qt[t]) / (emit[h] * qt[t]).sum()).max() for h in range(H)) < 1e-9
            else:
                assert row[t, x[t]] == 0.0 and np.isneginf(np.delete(row[t], x[t])).all()


@pytest.mark.parametrize("T", [1.0, 0.5])
def test_path_conditionals_at_generation_temperature(T):
    params = _params()
    prior = _prior(*params)
    x, logits, masked = _case()
    tau = 0.5
    n = 20000
    g = torch.Generator().manual_seed(3)
    cond = prior.path_conditionals(*_draws(prior, x, logits, masked, n), tau, g)
    tok = sample_tokens(cond, T, 1.0, g)
    s = torch.where(torch.tensor(masked), tok, torch.tensor(x))
    ref = _reference(params, x, logits, masked, tau_path=tau, tau_leaf=tau, T=T)
    _check(s, ref, alt=_reference(params, x, logits, masked, tau_path=1.0, tau_leaf=tau, T=T))


@pytest.mark.parametrize(("sampler", "T"), [("latent", 1.0), ("latent_tempered", 1.0), ("latent_tempered", 0.5)])
def test_generate_one_step_draws_the_documented_distribution(sampler, T):
    """One step commits the whole window: ``generate``'s output is one draw of the sampler."""
    vocab = V + 1  # the backbone's mask id is V; its logit is -inf, so q gives it no mass
    params = _params(vocab=vocab)
    prior = _prior(*params)
    _, logits, _ = _case(vocab=vocab)
    logits[:, V] = -np.inf
    table = torch.zeros(1 + W, vocab, dtype=torch.float64)
    table[1:] = torch.tensor(logits)
    bb = MaskedLMBackbone(TableModel(table), mask_token_id=V, vocab_size=vocab)
    n, tau = 20000, 0.5
    out = generate(
        bb,
        torch.zeros(n, 1, dtype=torch.long),
        gen_length=W,
        steps=1,
        block_length=W,
        temperature=T,
        prior=prior,
        pc_temperature=tau,
        sampler=sampler,
        generator=torch.Generator().manual_seed(5),
    )
    s = out[:, 1:]
    x, masked = np.zeros(W, dtype=int), np.ones(W, dtype=bool)
    tau_path = 1.0 if sampler == "latent" else tau
    ref = _reference(params, x, logits, masked, tau_path=tau_path, tau_leaf=tau, T=1.0 if sampler == "latent" else T)
    ref = {k: v for k, v in ref.items() if v > 0}
    other = _reference(params, x, logits, masked, tau_path=tau if sampler == "latent" else 1.0, tau_leaf=tau, T=T)
    _check(s, ref, alt=other)
