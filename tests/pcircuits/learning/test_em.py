"""EM: monotone full-batch updates, mini-batch improvement on real data, statistics."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pcircuits as pc
from pcircuits.learning.em import expected_statistics
from tests.pcircuits.random_circuits import random_circuit, random_evidence

NLTCS = Path(pc.__file__).parent / "data" / "nltcs.train.data.gz"


def _nltcs(n=None):
    with gzip.open(NLTCS, "rt") as f:
        rows = [[int(v) for v in line.strip().split(",")] for line in f if line.strip()]
    data = torch.tensor(rows)
    return data if n is None else data[:n]


def _mixture(num_vars, k=8, seed=0):
    comps = [pc.multiply(*[pc.inputs(v, 1, pc.Bernoulli()) for v in range(num_vars)]) for _ in range(k)]
    return pc.summate(*comps, num_nodes=1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_full_batch_em_never_decreases(seed):
    root, kinds = random_circuit(seed)
    circuit = pc.compile(root, seed=seed).to(torch.float64)
    x, missing, _ = random_evidence(seed, kinds, batch=40, missing_rate=0.2)
    hist = pc.em(circuit, torch.from_numpy(x), epochs=6, missing=torch.from_numpy(missing), pseudocount=0.0, progress=False)
    hist.append(float(circuit(torch.from_numpy(x), torch.from_numpy(missing)).mean()))
    finite = [h for h in hist if np.isfinite(h)]
    assert all(b >= a - 1e-9 for a, b in zip(finite, finite[1:])), hist


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_full_batch_em_with_soft_evidence_never_decreases_its_objective(seed):
    root, kinds = random_circuit(seed)
    circuit = pc.compile(root, seed=seed).to(torch.float64)
    x, missing, soft = random_evidence(seed, kinds, batch=30, missing_rate=0.5, soft=True)
    x, missing, soft = torch.from_numpy(x), torch.from_numpy(missing), torch.from_numpy(soft)
    soft = soft[..., : circuit.max_cats]
    hist = pc.em(circuit, x, epochs=5, missing=missing, soft_evidence=soft, pseudocount=0.0, progress=False)
    hist.append(float(circuit(x, missing, soft).mean()))
    finite = [h for h in hist if np.isfinite(h)]
    assert all(b >= a - 1e-9 for a, b in zip(finite, finite[1:])), hist


def test_full_batch_em_on_nltcs_is_monotone_and_chunking_is_exact():
    data = _nltcs(3000)
    c1 = pc.compile(_mixture(16), seed=1).to(torch.float64)
    c2 = pc.compile(_mixture(16), seed=1).to(torch.float64)
    h1 = pc.em(c1, data, epochs=5, pseudocount=0.1, progress=False)
    h2 = pc.em(c2, data, epochs=5, pseudocount=0.1, chunk_size=700, progress=False)
    assert all(b >= a for a, b in zip(h1, h1[1:]))
    assert np.allclose(h1, h2, atol=1e-9)


def test_mini_batch_em_improves_on_real_data():
    data = _nltcs()
    circuit = pc.compile(_mixture(16, k=16), seed=0)
    before = float(circuit(data).mean())
    hist = pc.em(circuit, data, epochs=3, batch_size=512, step_size=0.1, pseudocount=0.1, progress=False)
    after = float(circuit(data).mean())
    assert after > before + 1.0
    assert hist[-1] > hist[0]


def test_flows_are_posterior_counts():
    # a single mixture: the sum-edge flow of component k is sum_b p(k | x_b)
    root = _mixture(3, k=2)
    circuit = pc.compile(root, seed=4).to(torch.float64)
    x = torch.randint(0, 2, (5, 3))
    ev = circuit.prepare(x)
    ll, (sum_flows, leaf_stats) = expected_statistics(circuit, ev)
    w = circuit.group_parameters(root)[0]
    comp = []
    for prod in root.children:  # log p(x | component) of a product of Bernoullis
        logits = torch.stack([circuit.group_parameters(g)[0, 0] for g in prod.children])  # [3]
        comp.append(torch.nn.functional.logsigmoid((2 * x - 1) * logits).sum(1))
    comp = torch.stack(comp, 1) + w.log()
    post = torch.softmax(comp, 1).sum(0)
    (flows,) = sum_flows.values()
    assert torch.allclose(flows.reshape(-1), post)
    # leaf counts: each leaf's counts sum to its component's posterior mass
    total = sum(s.sum() for s in leaf_stats.values())
    assert torch.isclose(total, torch.tensor(3 * 5.0, dtype=torch.float64))


def test_gaussian_em_recovers_two_clusters():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(400) * 0.5 - 3, torch.randn(600) * 0.5 + 2]).unsqueeze(1).double()
    root = pc.summate(pc.inputs(0, 2, pc.Gaussian()), num_nodes=1)
    circuit = pc.compile(root, seed=0).to(torch.float64)
    hist = pc.em(circuit, x, epochs=60, pseudocount=0.0, progress=False)
    params = circuit.group_parameters(root.children[0])
    means = sorted(params[:, 0].tolist())
    assert abs(means[0] + 3) < 0.1 and abs(means[1] - 2) < 0.1
    assert all(b >= a - 1e-9 for a, b in zip(hist, hist[1:]))


def test_em_rejects_bad_arguments():
    circuit = pc.compile(_mixture(3))
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="step_size"):
        pc.em(circuit, x, step_size=0)
    with pytest.raises(ValueError, match="epochs"):
        pc.em(circuit, x, epochs=0)
    with pytest.raises(ValueError, match="x must have shape"):
        pc.em(circuit, torch.zeros(4, 2))
