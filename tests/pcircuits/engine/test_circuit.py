"""The compiled forward pass against brute-force enumeration on random DAG circuits."""

import itertools
import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pcircuits as pc
from tests.pcircuits.random_circuits import (
    KINDS,
    brute_force_ll,
    compile_with_reference,
    random_circuit,
    random_evidence,
)

SETTINGS = settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _max_cats(kinds):
    cards = [dict(KINDS)[k] for k in kinds if dict(KINDS)[k] is not None]
    return max(cards) if cards else 0


@SETTINGS
@given(st.integers(0, 2**31 - 1))
def test_log_likelihood_matches_enumeration(seed):
    root, kinds = random_circuit(seed)
    circuit, ref = compile_with_reference(root, seed)
    use_soft = _max_cats(kinds) == 3 and seed % 2 == 0
    x, missing, soft = random_evidence(seed, kinds, batch=6, soft=use_soft)
    got = circuit(torch.from_numpy(x), torch.from_numpy(missing), None if soft is None else torch.from_numpy(soft))
    want = brute_force_ll(ref, x, missing, soft)
    finite = np.isfinite(want)
    assert np.array_equal(finite, torch.isfinite(got).numpy())
    assert np.abs(got.detach().numpy()[finite] - want[finite]).max(initial=0) < 1e-10  # float64


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_complete_assignments_sum_to_one(seed):
    root, kinds = random_circuit(seed, allow_gaussian=False)
    circuit, _ = compile_with_reference(root, seed)
    cards = [dict(KINDS)[k] for k in kinds]
    x = torch.tensor(list(itertools.product(*[range(c) for c in cards])), dtype=torch.float64)
    total = torch.logsumexp(circuit(x), 0)
    assert abs(float(total)) < 1e-9
    # and marginalising everything gives log 1
    assert abs(float(circuit(x[:1], torch.ones_like(x[:1], dtype=torch.bool)))) < 1e-9


def test_gaussian_integrates_to_one():
    root, kinds = random_circuit(7, num_vars=2, kinds=["gaussian", "bernoulli"])
    circuit = pc.compile(root).to(torch.float64)
    grid = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    total = 0.0
    for b in (0, 1):
        x = torch.stack([grid, torch.full_like(grid, b)], 1)
        total += torch.trapezoid(circuit(x).exp(), grid).item()
    assert abs(total - 1) < 1e-6


def _hmm(T=4, H=3, C=5, homogeneous=True):
    """A hidden Markov model built with the public API (tied transitions and emissions)."""
    emit0 = pc.inputs(0, H, pc.Categorical(C))
    alpha = emit0
    trans = None
    for t in range(1, T):
        emit = pc.inputs(t, H, pc.Categorical(C), tie_with=emit0 if homogeneous else None)
        s = pc.summate(alpha, num_nodes=H, tie_with=trans if homogeneous else None)
        trans = trans or s
        alpha = pc.multiply(s, emit)
    return pc.summate(alpha, num_nodes=1)


def test_tied_hmm_matches_forward_algorithm():
    circuit = pc.compile(_hmm(), seed=3).to(torch.float64)
    assert len([n for n in circuit.params if n.startswith("sum")]) == 2  # transition bank + root
    x = torch.randint(0, 5, (10, 4))
    # forward algorithm from the circuit's own tied parameters
    root = circuit.root
    prod = root.children[0]
    trans_group = prod.children[0]
    A = circuit.group_parameters(trans_group)  # [H, H]: next <- previous
    E = torch.softmax(circuit.group_parameters(prod.children[1]), -1)  # [H, C]
    pi_w = circuit.group_parameters(root)[0]
    a = E[:, x[:, 0]].T  # [B, H]
    for t in range(1, 4):
        a = (a @ A.T) * E[:, x[:, t]].T
    want = torch.log(a @ pi_w)
    assert torch.allclose(circuit(x), want, atol=1e-10)


def test_shared_subcircuit_and_element_wise_products():
    a = pc.inputs(0, 2, pc.Bernoulli())
    b = pc.inputs(1, 2, pc.Bernoulli())
    shared = pc.multiply(a, b)
    root = pc.summate(pc.summate(shared, num_nodes=2), shared, num_nodes=1)
    circuit = pc.compile(root).to(torch.float64)
    x = torch.tensor(list(itertools.product(range(2), range(2))))
    assert abs(float(torch.logsumexp(circuit(x), 0))) < 1e-12


def test_float64_and_state_dict_round_trip():
    root, _ = random_circuit(11, num_vars=3, allow_gaussian=False)
    c1 = pc.compile(root, seed=1)
    c2 = pc.compile(root, seed=2)
    x = torch.zeros(2, 3)
    assert not torch.allclose(c1(x), c2(x))  # seeds give different random parameters
    c2.load_state_dict(c1.state_dict())
    assert torch.equal(c1(x), c2(x))
    assert c1.to(torch.float64)(x).dtype == torch.float64


def test_soft_evidence_is_stable_with_huge_logits():
    circuit = pc.compile(_hmm(T=3, H=4, C=6), seed=0)
    ev = torch.randn(4, 3, 6) * 1e4
    x = torch.zeros(4, 3, dtype=torch.long)
    miss = torch.ones(4, 3, dtype=torch.bool)
    got = circuit(x, miss, ev)
    ref = pc.compile(_hmm(T=3, H=4, C=6), seed=0).to(torch.float64)(x, miss, ev.double())
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), ref, rtol=1e-6)
    # -inf evidence everywhere on one variable gives -inf, without NaN gradients
    ev2 = torch.zeros(2, 3, 6)
    ev2[0, 1] = -math.inf
    evp = ev2.clone().requires_grad_()
    ll = circuit(x[:2], miss[:2], evp)
    assert ll[0] == -math.inf and torch.isfinite(ll[1])
    ll[1].backward()
    assert torch.isfinite(evp.grad).all()


def test_gradients_reach_every_parameter_and_soft_evidence():
    root, kinds = random_circuit(5, num_vars=3, kinds=["categorical", "bernoulli", "gaussian"])
    circuit = pc.compile(root).to(torch.float64)
    x, missing, _ = random_evidence(0, kinds, 8)
    ev = torch.zeros(8, 3, 3, dtype=torch.float64)
    ev[:, 1, 2] = -math.inf
    ev.requires_grad_()
    circuit(torch.from_numpy(x), torch.from_numpy(missing), ev).sum().backward()
    assert ev.grad is not None and torch.isfinite(ev.grad).all()
    for name, p in circuit.params.items():
        if p.requires_grad:
            assert p.grad is not None, name
    # gradient w.r.t. soft evidence of a categorical missing variable is its posterior marginal
    assert torch.allclose(ev.grad[:, 0].sum(-1)[torch.from_numpy(missing[:, 0])], torch.ones(1, dtype=torch.float64))


def test_adam_training_increases_likelihood():
    data = torch.randint(0, 3, (200, 4))
    data[:, 1] = data[:, 0]
    root = pc.summate(
        *[pc.multiply(*[pc.inputs(v, 4, pc.Categorical(3)) for v in range(4)]) for _ in range(2)], num_nodes=1
    )
    circuit = pc.compile(root)
    opt = torch.optim.Adam(circuit.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = -circuit(data).mean()
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.3
