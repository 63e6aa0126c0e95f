"""MPE against brute-force enumeration: exact on deterministic circuits, max-product on others."""

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pcircuits as pc
from tests.pcircuits.queries.helpers import (
    cards_of,
    compile_with_reference,
    completions,
    evidence,
    random_circuit,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _log_scores(ref, cards, a, soft_row, semiring):
    """log of (value * soft weights) of completions ``a``, the soft weights unscaled."""
    lw = np.zeros(a.shape[0])
    if soft_row is not None:
        for v, c in enumerate(cards):
            if c is not None:
                lw = lw + soft_row[v, a[:, v].astype(int)]
    with np.errstate(divide="ignore"):
        return np.log(ref.root(a, semiring)) + lw


@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_mpe_is_the_enumerated_argmax_on_deterministic_circuits(seed):
    root, kinds = random_circuit(seed, deterministic=True)
    circuit, ref = compile_with_reference(root, seed)
    cards = cards_of(kinds)
    x, miss, soft = evidence(seed, kinds, batch=4, soft=seed % 2 == 0, missing_rate=0.6)
    xt = torch.from_numpy(x).long()
    got, logp = pc.mpe(
        circuit, xt, torch.from_numpy(miss), None if soft is None else torch.from_numpy(soft), return_log_prob=True
    )
    assert got.dtype == torch.long and got.shape == xt.shape
    assert torch.equal(got[torch.from_numpy(~miss)], xt[torch.from_numpy(~miss)])
    for b in range(x.shape[0]):
        a, _ = completions(cards, x[b], miss[b])
        scores = _log_scores(ref, cards, a, None if soft is None else soft[b], "sum")
        best = scores.max()
        if best == -math.inf:
            assert logp[b] == -math.inf
            continue
        # the returned value is the true log-probability (times soft weights) of the returned completion ...
        mine = _log_scores(ref, cards, got[b : b + 1].double().numpy(), None if soft is None else soft[b], "sum")[0]
        assert abs(float(logp[b]) - best) < 1e-9
        assert abs(mine - best) < 1e-9
        # ... and the completion itself is the argmax when that is unique
        order = np.sort(scores)
        if len(order) == 1 or order[-1] - order[-2] > 1e-9:
            assert np.array_equal(got[b].numpy(), a[int(np.argmax(scores))].astype(np.int64))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1))
def test_mpe_is_max_product_on_any_circuit(seed):
    """On non-deterministic circuits (Gaussians included) MPE maximises the joint with the latent choices."""
    root, kinds = random_circuit(seed)
    circuit, ref = compile_with_reference(root, seed)
    cards = cards_of(kinds)
    x, miss, soft = evidence(seed, kinds, batch=3, soft=seed % 2 == 0, missing_rate=0.5)
    got, logp = pc.mpe(
        circuit,
        torch.from_numpy(x),
        torch.from_numpy(miss),
        None if soft is None else torch.from_numpy(soft),
        return_log_prob=True,
    )
    for b in range(x.shape[0]):
        a, _ = completions(cards, x[b], miss[b])  # missing Gaussians stay NaN: maxed out
        best = _log_scores(ref, cards, a, None if soft is None else soft[b], "max").max()
        if best == -math.inf:
            assert logp[b] == -math.inf
            continue
        assert abs(float(logp[b]) - best) < 1e-8
        # the returned completion (Gaussians at their selected means) attains it
        mine = _log_scores(ref, cards, got[b : b + 1].double().numpy(), None if soft is None else soft[b], "max")[0]
        assert abs(mine - best) < 1e-8
        obs = ~miss[b]
        assert np.allclose(got[b].double().numpy()[obs], x[b][obs])


def test_mpe_gaussian_mixture_returns_the_selected_mean():
    g = pc.inputs(0, 2, pc.Gaussian())
    bern = pc.inputs(1, 2, pc.Bernoulli())
    root = pc.summate(pc.multiply(g, bern), num_nodes=1)
    circuit = pc.compile(root).to(torch.float64)
    circuit.set_group_parameters(g, torch.tensor([[-3.0, 0.0], [4.0, math.log(0.5)]], dtype=torch.float64))
    circuit.set_group_parameters(bern, torch.tensor([[2.0], [-2.0]], dtype=torch.float64))
    circuit.set_group_parameters(root, torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    x = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    miss = torch.tensor([[True, False], [True, False], [False, True]])
    got = pc.mpe(circuit, x, miss)
    # bern=1 favours component 0 (p=0.88 vs 0.12 / density 0.40 vs 0.80): 0.5*0.88*0.399 > 0.5*0.12*0.798
    assert got[0, 0] == -3.0 and got[0, 1] == 1.0
    assert got[1, 0] == 4.0
    assert got[2, 0] == 1.0 and got[2, 1] in (0.0, 1.0)


def test_mpe_without_missing_returns_x_and_its_max_product_value():
    root = random_circuit(3, num_vars=3, deterministic=True)[0]
    circuit, _ = compile_with_reference(root, 3)
    x = torch.tensor([[0, 1, 0], [1, 0, 1]])
    got, logp = pc.mpe(circuit, x, return_log_prob=True)
    assert torch.equal(got, x)
    assert torch.allclose(logp, circuit(x))  # deterministic: max-product value is the likelihood
