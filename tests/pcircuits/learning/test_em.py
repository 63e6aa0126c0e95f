"""EM: monotone full-batch updates, mini-batch improvement on real data, statistics."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pcircuits as pc
from pcircuits.learning.em import apply_statistics, expected_statistics
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
    hist = pc.em(
        circuit, torch.from_numpy(x), epochs=6, missing=torch.from_numpy(missing), pseudocount=0.0, progress=False
    )
    hist.append(float(circuit(torch.from_numpy(x), torch.from_numpy(missing)).mean()))
    finite = [h for h in hist if np.isfinite(h)]
    assert all(b >= a - 1e-9 for a, b in zip(finite, finite[1:], strict=False)), hist


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
    assert all(b >= a - 1e-9 for a, b in zip(finite, finite[1:], strict=False)), hist


def test_full_batch_em_on_nltcs_is_monotone_and_chunking_is_exact():
    data = _nltcs(3000)
    c1 = pc.compile(_mixture(16), seed=1).to(torch.float64)
    c2 = pc.compile(_mixture(16), seed=1).to(torch.float64)
    h1 = pc.em(c1, data, epochs=5, pseudocount=0.1, progress=False)
    h2 = pc.em(c2, data, epochs=5, pseudocount=0.1, chunk_size=700, progress=False)
    assert all(b >= a for a, b in zip(h1, h1[1:], strict=False))
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
    assert all(b >= a - 1e-9 for a, b in zip(hist, hist[1:], strict=False))


def test_em_rejects_bad_arguments():
    circuit = pc.compile(_mixture(3))
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="step_size"):
        pc.em(circuit, x, step_size=0)
    with pytest.raises(ValueError, match="epochs"):
        pc.em(circuit, x, epochs=0)
    with pytest.raises(ValueError, match="x must have shape"):
        pc.em(circuit, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="pseudocount"):
        pc.em(circuit, x, pseudocount=float("nan"))
    with pytest.raises(ValueError, match="pseudocount"):
        pc.em(circuit, x, pseudocount=float("inf"))
    with pytest.raises(TypeError, match="batch_size"):
        pc.em(circuit, x, batch_size=1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        pc.em(circuit, x, chunk_size=0)


def _params(circuit):
    return {k: v.detach().clone() for k, v in circuit.params.items()}


def _assert_same(before, circuit):
    for k, v in before.items():
        assert torch.equal(v, circuit.params[k].detach()), k


def _gaussian_mixture():
    leaf = pc.inputs(0, 2, pc.Gaussian())
    return pc.compile(pc.summate(leaf, num_nodes=1), seed=0), leaf


def test_em_update_that_would_overflow_is_refused_and_writes_nothing():
    circuit, _ = _gaussian_mixture()
    before = _params(circuit)
    x = torch.full((3, 1), 1.5e19)  # finite log-likelihoods, but the sum of squares overflows float32
    assert torch.isfinite(circuit(x)).all()
    with pytest.raises(ValueError, match="left unchanged: the statistics of leaf bank .* hold inf"):
        pc.em(circuit, x, progress=False)
    _assert_same(before, circuit)


def test_failed_mini_batch_em_restores_the_circuit():
    circuit, leaf = _gaussian_mixture()
    before = _params(circuit)
    start = circuit.group_parameters(leaf).detach().clone()
    x = torch.tensor([[0.0], [1.0], [2.0], [1.5e19], [1.5e19], [1.5e19]])
    with pytest.raises(ValueError, match="left unchanged"):  # the first batch updates, the second overflows
        pc.em(circuit, x, batch_size=3, shuffle=False, progress=False)
    _assert_same(before, circuit)
    pc.em(circuit, x[:3], batch_size=3, shuffle=False, progress=False)  # the first batch alone is fine
    assert not torch.equal(start, circuit.group_parameters(leaf).detach())


def test_bad_rows_anywhere_in_the_data_are_refused_before_any_update():
    circuit, _ = _gaussian_mixture()
    before = _params(circuit)
    x = torch.zeros(10, 1)
    x[7, 0] = float("inf")
    with pytest.raises(
        ValueError, match=r"data \(rows 6\.\.8; row numbers below count from 6\): x has inf .*row 1, variable 0"
    ):
        pc.em(circuit, x, batch_size=2, chunk_size=3, progress=False)
    _assert_same(before, circuit)


def test_apply_statistics_with_nan_statistics_writes_nothing():
    circuit = pc.compile(_mixture(3), seed=0)
    before = _params(circuit)
    _, (sum_flows, leaf_stats) = expected_statistics(circuit, circuit.prepare(torch.zeros(4, 3)))
    for name in list(sum_flows)[:1]:
        sum_flows[name] = torch.full_like(sum_flows[name], float("nan"))
    with pytest.raises(ValueError, match="sum bank"):
        apply_statistics(circuit, (sum_flows, leaf_stats), 0.1, 1.0)
    _assert_same(before, circuit)


def test_em_without_smoothing_writes_minus_inf_only_where_probabilities_are_zero():
    leaf = pc.inputs(0, 2, pc.Categorical(3))
    circuit = pc.compile(pc.summate(leaf, num_nodes=1), seed=0)
    pc.em(circuit, torch.zeros(5, 1), pseudocount=0.0, progress=False)  # only category 0 seen
    logits = circuit.group_parameters(leaf).detach()
    assert torch.isinf(logits[:, 1:]).all() and torch.isfinite(logits[:, 0]).all()
    assert float(circuit(torch.zeros(1, 1))) == pytest.approx(0.0, abs=1e-6)
