"""Top-k candidate soft evidence against brute-force enumeration of the user-built circuit.

Candidate evidence (ids ``[B, V, K]`` with log-weights ``[B, V, K]``) must mean
exactly the full soft evidence that is the log-sum of a category's candidate
weights and ``-inf`` off the candidates. Every test draws random candidates
(repeats included), writes down that full soft evidence in numpy, and checks
the engine's answer against enumeration over the DAG the test built
(``tests/pcircuits/random_circuits.py``), in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pcircuits as pc
from pcircuits.distributions import Bernoulli, Categorical, Indicator
from pcircuits.engine.downward import downward, fill_leaves, gumbel_argmax, selected_leaf_logits
from tests.pcircuits.queries.helpers import (
    brute_force_marginals,
    cards_of,
    compile_with_reference,
    completions,
    make_possible,
    max_cats,
    random_circuit,
    soft_weights,
)
from tests.pcircuits.random_circuits import brute_force_ll, random_evidence

N = 40_000


def candidate_evidence(seed: int, kinds: list[str], batch: int, K: int):
    """Random ``candidates [B, V, K]`` (some ids repeated), log-weights ``[B, V, K]`` and the full
    soft evidence ``[B, V, C]`` they mean."""
    rng = np.random.default_rng(seed + 1)
    cards = cards_of(kinds)
    C = max_cats(kinds)
    V = len(kinds)
    cand = np.zeros((batch, V, K), dtype=np.int64)
    w = np.zeros((batch, V, K))
    full = np.zeros((batch, V, C))
    for v, card in enumerate(cards):
        if card is None:
            continue  # continuous: ids ignored, weights 0
        cand[:, v] = rng.integers(0, card, (batch, K))
        w[:, v] = rng.normal(size=(batch, K)) * 2
        w[:, v][rng.random((batch, K)) < 0.15] = -np.inf
        for b in range(batch):
            for c in range(C):
                hit = w[b, v][cand[b, v] == c]
                full[b, v, c] = np.logaddexp.reduce(hit) if hit.size else -np.inf
    return cand, w, full


def _tensors(*arrays):
    return [None if a is None else torch.from_numpy(a) for a in arrays]


@pytest.mark.parametrize("seed", range(12))
def test_likelihood_equals_full_soft_evidence_by_enumeration(seed):
    root, kinds = random_circuit(seed, num_vars=3)
    circuit, ref = compile_with_reference(root, seed)
    if circuit.max_cats == 0:
        pytest.skip("no discrete variable")
    x, miss, _ = random_evidence(seed, kinds, batch=6, missing_rate=0.5)
    cand, w, full = candidate_evidence(seed, kinds, 6, K=3)
    with torch.no_grad():
        got = circuit(*_tensors(x, miss, w), candidates=torch.from_numpy(cand))
        same = circuit(*_tensors(x, miss, full))
    want = brute_force_ll(ref, x, miss, full)
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(got.numpy()), finite)
    assert np.allclose(got.numpy()[finite], want[finite], atol=1e-9)
    # and the same as the engine's full soft evidence
    assert torch.allclose(got, same, atol=1e-10)


@pytest.mark.parametrize("seed", range(8))
def test_marginals_are_the_enumerated_posterior_restricted_to_candidates(seed):
    root, kinds = random_circuit(seed, num_vars=3)
    circuit, ref = compile_with_reference(root, seed)
    if circuit.max_cats == 0:
        pytest.skip("no discrete variable")
    x, miss, _ = random_evidence(seed, kinds, batch=5, missing_rate=0.6)
    cand, w, full = candidate_evidence(seed, kinds, 5, K=2)
    miss = make_possible(ref, x, miss, full)
    got = pc.marginals(circuit, *_tensors(x, miss, w), candidates=torch.from_numpy(cand))
    want = brute_force_marginals(ref, cards_of(kinds), x, miss, full, circuit.max_cats)
    assert np.allclose(got.numpy(), want, atol=1e-9, equal_nan=True)
    # no mass off the candidates at missing discrete variables
    for b, v in zip(*np.nonzero(miss), strict=True):
        if cards_of(kinds)[v] is not None and np.isfinite(want[b, v]).all():
            off = np.ones(circuit.max_cats, dtype=bool)
            off[cand[b, v]] = False
            assert np.all(got.numpy()[b, v, off] == 0)


def _log_scores(ref, cards, a, soft_row, semiring):
    lw = np.zeros(a.shape[0])
    for v, c in enumerate(cards):
        if c is not None:
            lw = lw + soft_row[v, a[:, v].astype(int)]
    with np.errstate(divide="ignore"):
        return np.log(ref.root(a, semiring)) + lw


@pytest.mark.parametrize("seed", range(10))
def test_mpe_is_the_enumerated_max_product_under_candidates(seed):
    root, kinds = random_circuit(seed, num_vars=3, allow_gaussian=False)
    circuit, ref = compile_with_reference(root, seed)
    cards = cards_of(kinds)
    x, miss, _ = random_evidence(seed, kinds, batch=4, missing_rate=0.6)
    cand, w, full = candidate_evidence(seed, kinds, 4, K=2)
    got, logp = pc.mpe(circuit, *_tensors(x, miss, w), return_log_prob=True, candidates=torch.from_numpy(cand))
    for b in range(x.shape[0]):
        a, _ = completions(cards, x[b], miss[b])
        best = _log_scores(ref, cards, a, full[b], "max").max()
        if best == -math.inf:
            assert logp[b] == -math.inf
            continue
        assert abs(float(logp[b]) - best) < 1e-9
        mine = _log_scores(ref, cards, got[b : b + 1].double().numpy(), full[b], "max")[0]
        assert abs(mine - best) < 1e-9  # the completion attains it: every filled value is a candidate


def _tv(samples: np.ndarray, a: np.ndarray, p: np.ndarray, cards: list[int]) -> float:
    """Total variation between the empirical distribution of ``samples [N, V]`` and ``p`` over completions ``a``."""
    code = lambda s: np.ravel_multi_index(tuple(s[..., v].astype(np.int64) for v in range(len(cards))), cards)  # noqa: E731
    size = int(np.prod(cards))
    emp = np.bincount(code(samples), minlength=size) / len(samples)
    want = np.zeros(size)
    np.add.at(want, code(a), p / p.sum())
    return 0.5 * np.abs(emp - want).sum()


@pytest.mark.parametrize("seed", [2, 5, 9])
def test_samples_follow_the_enumerated_posterior_under_candidates(seed):
    root, kinds = random_circuit(seed, num_vars=3, allow_gaussian=False)
    circuit, ref = compile_with_reference(root, seed)
    cards = cards_of(kinds)
    x, miss, _ = random_evidence(seed, kinds, batch=3, missing_rate=0.7)
    cand, w, full = candidate_evidence(seed, kinds, 3, K=2)
    miss[2] = True
    miss = make_possible(ref, x, miss, full)
    keep = np.isfinite(brute_force_ll(ref, x, miss, full))  # all-missing rows may still have no candidate path
    assert keep.any()
    x, miss, w, cand, full = x[keep], miss[keep], w[keep], cand[keep], full[keep]
    s = pc.sample(circuit, N, *_tensors(x, miss, w), seed=seed, candidates=torch.from_numpy(cand))
    for b in range(len(x)):
        a, _ = completions(cards, x[b], miss[b])
        p = ref.root(a) * soft_weights(cards, a, full[b])
        assert _tv(s[:, b].numpy(), a, p, cards) < 0.02
        for v in np.nonzero(miss[b])[0]:  # only candidates are drawn
            assert np.isin(s[:, b, v].numpy(), cand[b, v]).all()


def test_repeated_candidates_add_their_weights():
    root = pc.summate(*[pc.inputs(0, 3, Categorical(4)) for _ in range(2)], num_nodes=1)
    circuit = pc.compile(root, seed=0).double()
    x = torch.zeros(1, 1, dtype=torch.long)
    miss = torch.ones(1, 1, dtype=torch.bool)
    cand = torch.tensor([[[2, 0, 2]]])
    w = torch.tensor([[[0.3, -1.0, -0.4]]], dtype=torch.float64)
    merged = torch.tensor([[[math.log(math.exp(0.3) + math.exp(-0.4)), -1.0]]], dtype=torch.float64)
    ev = circuit.prepare(x, miss, w, cand)
    assert torch.equal(ev.candidates, cand)
    assert torch.allclose(ev.soft_evidence, torch.tensor([[[merged[0, 0, 0], -1.0, -math.inf]]], dtype=torch.float64))
    with torch.no_grad():
        once = circuit(x, miss, merged, candidates=torch.tensor([[[2, 0]]]))
        assert torch.allclose(circuit(x, miss, w, candidates=cand), once)
    # MPE picks the id with the largest merged weight (2), not the largest single entry
    assert int(pc.mpe(circuit, x, miss, w, candidates=cand)[0, 0]) in (0, 2)


@pytest.mark.parametrize("dist", [Categorical(5), Bernoulli(), Indicator([1, 0, 3], num_cats=4)])
def test_discrete_leaf_contract_with_candidates_matches_full_soft_evidence(dist):
    gen = torch.Generator().manual_seed(0)
    C, n, G, B, K = dist.num_cats, 3, 2, 4, 2
    params = torch.stack([dist.init_params(n, gen) for _ in range(G)]).double()  # [G, n, P]
    cand = torch.randint(0, C, (B, G, K), generator=gen)
    cand[..., 1] = (cand[..., 0] + 1) % C  # distinct ids
    w = torch.randn(B, G, K, generator=gen, dtype=torch.float64)
    full = torch.full((B, G, C), -math.inf, dtype=torch.float64).scatter(2, cand, w)
    x = torch.randint(0, C, (B, G), generator=gen)
    miss = torch.rand(B, G, generator=gen) < 0.5
    got = dist.log_prob(params, x, miss, w, candidates=cand)
    assert torch.allclose(got, dist.log_prob(params, x, miss, full), atol=1e-12)
    assert torch.allclose(dist.max_log_prob(params, w, candidates=cand), dist.max_log_prob(params, full))
    sel = params[0]  # [n, P]: S = n selected nodes, one evidence row each
    mode = dist.mode(sel, w[0, :1].expand(n, K), candidates=cand[0, :1].expand(n, K))
    assert torch.equal(mode, dist.mode(sel, full[0, :1].expand(n, C)))
    top = dist.log_table(sel).argmax(-1)  # every node gets one candidate of positive probability
    cs = torch.stack([(top + 1) % C, top], -1)  # [n, 2]
    draws = torch.stack([dist.sample(sel, w[0, :1].expand(n, K), 1.0, gen, candidates=cs) for _ in range(2000)])
    assert ((draws == cs[:, 0]) | (draws == cs[:, 1])).all()
    probs = torch.softmax(dist.log_table(sel).gather(-1, cs) + w[0, :1], -1)[:, 0]  # [n] of the first candidate
    assert torch.allclose((draws == cs[:, 0]).double().mean(0), probs, atol=0.05)


def test_selected_leaf_logits_give_the_mode_that_fill_leaves_writes():
    root, kinds = random_circuit(4, num_vars=3, allow_gaussian=False)
    circuit, _ = compile_with_reference(root, 4)
    x, miss, _ = random_evidence(4, kinds, batch=5, missing_rate=0.7)
    cand, w, _ = candidate_evidence(4, kinds, 5, K=2)
    ev = circuit.prepare(*_tensors(x, miss, w), torch.from_numpy(cand))
    rows = torch.arange(5)
    outs = circuit.upward(ev, semiring="max")
    sel = downward(circuit, outs, rows, "max")
    filled = fill_leaves(circuit, sel, ev, rows, ev.x_discrete.clone(), "max")
    cond = selected_leaf_logits(circuit, sel, ev, rows)  # [R, V, K]
    pick = ev.candidates.gather(2, cond.argmax(-1, keepdim=True)).squeeze(-1)
    finite = torch.isfinite(outs[-1][:, 0])
    m = torch.from_numpy(miss) & finite.unsqueeze(1)
    assert torch.equal(pick[m], filled[m])
    assert torch.all(cond[~torch.from_numpy(miss)] == 0)
    assert gumbel_argmax(cond, torch.Generator().manual_seed(0)).shape == (5, 3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"candidates": torch.zeros(2, 2, 2, dtype=torch.long)}, ValueError, "candidates need soft_evidence"),
        ({"soft_evidence": torch.zeros(2, 2, 2), "candidates": torch.zeros(2, 2, 2)}, TypeError, "must be an integer"),
        ({"soft_evidence": torch.zeros(2, 2, 2), "candidates": torch.zeros(2, 3, 2).long()}, ValueError, "candidates"),
        ({"soft_evidence": torch.zeros(2, 2, 3), "candidates": torch.zeros(2, 2, 2).long()}, ValueError, "soft_evid"),
        ({"soft_evidence": torch.zeros(2, 2, 1), "candidates": torch.full((2, 2, 1), 3)}, ValueError, "has id 3"),
    ],
)
def test_bad_candidates_are_refused(kwargs, error, match):
    root = pc.multiply(pc.inputs(0, 1, Categorical(3)), pc.inputs(1, 1, Categorical(3)))
    circuit = pc.compile(root)
    with pytest.raises(error, match=match):
        circuit.prepare(torch.zeros(2, 2, dtype=torch.long), None, **kwargs)


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_em_statistics_under_candidates_equal_those_under_full_soft_evidence(seed):
    from pcircuits.learning.em import expected_statistics

    root, kinds = random_circuit(seed, num_vars=3)
    circuit, _ = compile_with_reference(root, seed)
    if circuit.max_cats == 0:
        pytest.skip("no discrete variable")
    x, miss, _ = random_evidence(seed, kinds, batch=6, missing_rate=0.5)
    cand, w, full = candidate_evidence(seed, kinds, 6, K=2)
    ev_cand = circuit.prepare(*_tensors(x, miss, w), torch.from_numpy(cand))
    ll_c, (sums_c, leaves_c) = expected_statistics(circuit, ev_cand)
    ll_f, (sums_f, leaves_f) = expected_statistics(circuit, circuit.prepare(*_tensors(x, miss, full)))
    assert torch.allclose(ll_c, ll_f, atol=1e-10)
    for a, b in ((sums_c, sums_f), (leaves_c, leaves_f)):
        assert a.keys() == b.keys()
        assert all(torch.allclose(a[k], b[k], atol=1e-10) for k in a)
