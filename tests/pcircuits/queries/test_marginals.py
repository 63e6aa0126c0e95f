"""Posterior marginals against brute-force enumeration on random DAG circuits."""

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pcircuits as pc
from tests.pcircuits.queries.helpers import (
    Reference,
    brute_force_marginals,
    cards_of,
    compile_with_reference,
    draw_parameters,
    evidence,
    max_cats,
    random_circuit,
    set_parameters,
)


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1))
def test_marginals_match_enumeration(seed):
    root, kinds = random_circuit(seed)
    circuit, ref = compile_with_reference(root, seed)
    C = max_cats(kinds)
    x, miss, soft = evidence(seed, kinds, batch=4, soft=seed % 3 != 0)
    got = pc.marginals(
        circuit, torch.from_numpy(x), torch.from_numpy(miss), None if soft is None else torch.from_numpy(soft)
    )
    assert got.shape == (4, len(kinds), C)
    want = brute_force_marginals(ref, cards_of(kinds), x, miss, soft, C)
    got = got.numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.abs(got[ok] - want[ok]).max(initial=0) < 1e-10  # float64


def test_marginals_sum_to_one_and_pads_are_zero():
    root, kinds = random_circuit(4, num_vars=4, kinds=["categorical", "bernoulli", "gaussian", "indicator"])
    circuit = pc.compile(root).to(torch.float64)
    x, miss, _ = evidence(1, kinds, batch=16, soft=False)
    miss[:, 3] = True  # indicator variable always missing: avoids impossible evidence
    got = pc.marginals(circuit, torch.from_numpy(x), torch.from_numpy(miss))
    assert torch.allclose(got[:, [0, 1, 3]].sum(-1), torch.ones(16, 3, dtype=torch.float64))
    assert (got[:, 1, 2] == 0).all()  # Bernoulli: padding category
    assert (got[:, 2] == 0).all()  # Gaussian: zeros


def test_impossible_evidence_gives_nan_only_there():
    # X0 is an indicator of 0: observing 1 has probability 0
    root = pc.summate(
        pc.multiply(pc.inputs(0, 2, pc.Indicator(0, num_cats=2)), pc.inputs(1, 2, pc.Categorical(3))), num_nodes=1
    )
    circuit = pc.compile(root)
    x = torch.tensor([[1, 0], [0, 0]])
    miss = torch.tensor([[False, True], [False, True]])
    got = pc.marginals(circuit, x, miss)
    assert torch.isnan(got[0, 1]).all()
    assert torch.equal(got[0, 0], torch.tensor([0.0, 1.0, 0.0]))  # observed: one-hot, pad 0
    assert torch.isfinite(got[1]).all() and abs(float(got[1, 1].sum()) - 1) < 1e-6
    # -inf soft evidence on every value of a missing variable: also impossible, no NaN elsewhere
    ev = torch.zeros(2, 2, 3)
    ev[1, 1] = -math.inf
    got = pc.marginals(circuit, x * 0, miss, ev)
    assert torch.isnan(got[1, 1]).all() and torch.isfinite(got[0]).all()


def test_marginals_float32_and_huge_soft_evidence_are_stable():
    root, kinds = random_circuit(9, num_vars=4, allow_gaussian=False)
    params = draw_parameters(root, 2)
    c32 = pc.compile(root, seed=2)
    set_parameters(c32, params)
    x = torch.zeros(8, 4, dtype=torch.long)
    miss = torch.ones(8, 4, dtype=torch.bool)
    miss[:, 0] = False
    ev = torch.randn(8, 4, c32.max_cats, dtype=torch.float64) * 1e3
    ev[:, :, 2:] = torch.where(torch.tensor([c == 2 for c in cards_of(kinds)]).view(1, 4, 1), -math.inf, ev[:, :, 2:])
    ev[:, 0] = 0.0
    ref = Reference(root, params)
    want = brute_force_marginals(ref, cards_of(kinds), x.double().numpy(), miss.numpy(), ev.numpy(), c32.max_cats)
    got32 = pc.marginals(c32, x, miss, ev.float())
    ok = ~np.isnan(want)
    assert torch.isfinite(got32[torch.from_numpy(ok)]).all()
    assert np.abs(got32.double().numpy()[ok] - want[ok]).max() < 1e-3


def test_marginals_do_not_touch_parameter_gradients():
    root, kinds = random_circuit(2, num_vars=3, allow_gaussian=False)
    circuit = pc.compile(root)
    x, miss, _ = evidence(0, kinds, 4, soft=False)
    with torch.no_grad():  # also works under no_grad
        pc.marginals(circuit, torch.from_numpy(x), torch.from_numpy(miss))
    assert all(p.grad is None for p in circuit.parameters())
