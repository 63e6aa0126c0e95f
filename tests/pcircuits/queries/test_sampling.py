"""Sampled frequencies against the enumerated (conditional) distribution."""

import math

import numpy as np
import pytest
import torch

import pcircuits as pc
from tests.pcircuits.queries.helpers import (
    cards_of,
    compile_with_reference,
    completions,
    evidence,
    make_possible,
    random_circuit,
    soft_weights,
)

N = 40_000


def _codes(samples: np.ndarray, cards: list[int]) -> np.ndarray:
    code = np.zeros(samples.shape[:-1], dtype=np.int64)
    for v, c in enumerate(cards):
        code = code * c + samples[..., v]
    return code


def _tv(samples: np.ndarray, a: np.ndarray, p: np.ndarray, cards: list[int]) -> float:
    """Total variation between the empirical distribution of ``samples [N, V]`` and ``p`` over completions ``a``."""
    size = int(np.prod(cards))
    emp = np.bincount(_codes(samples, cards), minlength=size) / len(samples)
    ref = np.zeros(size)
    np.add.at(ref, _codes(a.astype(np.int64), cards), p / p.sum())
    return 0.5 * np.abs(emp - ref).sum()


@pytest.mark.parametrize("seed", [1, 6, 12, 21])
def test_unconditional_samples_follow_the_circuit(seed):
    root, kinds = random_circuit(seed, num_vars=3, allow_gaussian=False)
    circuit, ref = compile_with_reference(root, seed)
    cards = cards_of(kinds)
    s = pc.sample(circuit, N, seed=seed)
    assert s.shape == (N, 3) and s.dtype == torch.long
    a, _ = completions(cards, np.zeros(3), np.ones(3, dtype=bool))
    assert _tv(s.numpy(), a, ref.root(a), cards) < 0.02


@pytest.mark.parametrize("seed,use_soft", [(3, False), (8, True), (14, True), (27, False)])
def test_conditional_samples_follow_the_posterior(seed, use_soft):
    root, kinds = random_circuit(seed, num_vars=4, allow_gaussian=False)
    circuit, ref = compile_with_reference(root, seed)
    cards = cards_of(kinds)
    x, miss, soft = evidence(seed, kinds, batch=3, soft=use_soft, missing_rate=0.6)
    miss[2] = True  # one row with every variable missing (under soft evidence: the tilted joint)
    miss = make_possible(ref, x, miss, soft)  # indicator leaves can make observed values impossible
    s = pc.sample(
        circuit, N, x=torch.from_numpy(x), missing=torch.from_numpy(miss),
        soft_evidence=None if soft is None else torch.from_numpy(soft), seed=seed,
    )
    assert s.shape == (N, 3, 4)
    for b in range(3):
        obs = ~miss[b]
        assert (s[:, b, torch.from_numpy(obs)] == torch.from_numpy(x[b][obs]).long()).all()
        a, _ = completions(cards, x[b], miss[b])
        p = ref.root(a) * soft_weights(cards, a, None if soft is None else soft[b])
        assert _tv(s[:, b].numpy(), a, p, cards) < 0.02


def test_soft_evidence_alone_samples_the_tilted_joint():
    root, kinds = random_circuit(5, num_vars=3, kinds=["categorical", "bernoulli", "categorical"])
    circuit, ref = compile_with_reference(root, 5)
    cards = cards_of(kinds)
    soft = torch.randn(1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    soft[0, 1, 2] = -math.inf
    soft[0, 0, 1] = -math.inf  # X0 = 1 excluded
    s = pc.sample(circuit, N, soft_evidence=soft, seed=0)
    assert s.shape == (N, 1, 3) and (s[:, 0, 0] != 1).all()
    a, _ = completions(cards, np.zeros(3), np.ones(3, dtype=bool))
    p = ref.root(a) * soft_weights(cards, a, soft[0].numpy())
    assert _tv(s[:, 0].numpy(), a, p, cards) < 0.02


def test_gaussian_samples_have_the_mixture_moments():
    g = pc.inputs(0, 2, pc.Gaussian())
    bern = pc.inputs(1, 2, pc.Bernoulli())
    root = pc.summate(pc.multiply(g, bern), num_nodes=1)
    circuit = pc.compile(root).to(torch.float64)
    circuit.set_group_parameters(g, torch.tensor([[-3.0, 0.0], [4.0, math.log(0.5)]], dtype=torch.float64))
    circuit.set_group_parameters(bern, torch.tensor([[2.0], [-2.0]], dtype=torch.float64))
    circuit.set_group_parameters(root, torch.tensor([[0.3, 0.7]], dtype=torch.float64))
    s = pc.sample(circuit, N, seed=1)
    assert s.dtype == torch.float64
    mean = 0.3 * -3.0 + 0.7 * 4.0
    assert abs(float(s[:, 0].mean()) - mean) < 0.05
    # given X1 = 1 the component posterior is proportional to w_k * sigmoid(logit_k)
    post = torch.tensor([0.3 * torch.sigmoid(torch.tensor(2.0)), 0.7 * torch.sigmoid(torch.tensor(-2.0))])
    post = post / post.sum()
    s = pc.sample(circuit, N, x=torch.tensor([[0.0, 1.0]]), missing=torch.tensor([[True, False]]), seed=2)
    assert abs(float(s[:, 0, 0].mean()) - float(post[0] * -3.0 + post[1] * 4.0)) < 0.05
    assert (s[:, 0, 1] == 1.0).all()


def test_latent_path_follows_the_posterior_choice():
    root, kinds = random_circuit(12, num_vars=3, allow_gaussian=False)
    root = pc.summate(root, random_circuit(13, num_vars=3, kinds=kinds)[0], num_nodes=1)  # root with 2 children
    circuit, ref = compile_with_reference(root, 0)
    w = torch.from_numpy(ref.weights[id(root)][0])
    path = pc.sample(circuit, N, seed=3, latent_path=True)
    assert set(path) >= {root} and all(isinstance(g, pc.SumGroup) for g in path)
    assert path[root].shape == (N, 1)
    freq = torch.bincount(path[root][:, 0], minlength=2).double() / N
    assert torch.allclose(freq, w, atol=0.01)
    for g, p in path.items():  # choices index the group's child nodes; -1 off the path
        assert ((p >= -1) & (p < g.num_child_nodes)).all()
        assert ((p >= 0).sum(-1) <= g.num_nodes).all()
    # conditionally: p(child k | x) = w_k v_k(x) / v(x)
    x = torch.tensor([[1, 0, 0]])
    miss = torch.tensor([[False, True, True]])
    a = np.array([[1.0, np.nan, np.nan]])
    vals = ref.values(a)
    kids = np.concatenate([vals[id(c)] for c in root.children], 1)[0]
    post = w.numpy() * kids / (w.numpy() * kids).sum()
    path = pc.sample(circuit, N, x=x, missing=miss, seed=4, latent_path=True)
    assert path[root].shape == (N, 1, 1)
    freq = torch.bincount(path[root][:, 0, 0], minlength=2).double().numpy() / N
    assert np.abs(freq - post).max() < 0.01


def test_temperature_tempers_the_leaves():
    root = pc.summate(pc.inputs(0, 1, pc.Categorical(3)), num_nodes=1)
    circuit = pc.compile(root, seed=0).to(torch.float64)
    p = torch.softmax(circuit.group_parameters(root.children[0])[0], -1)
    for t in (0.5, 2.0):
        s = pc.sample(circuit, N, temperature=t, seed=0)[:, 0]
        want = p ** (1 / t) / (p ** (1 / t)).sum()
        assert torch.allclose(torch.bincount(s, minlength=3).double() / N, want, atol=0.01)


def test_generator_and_seed_make_samples_reproducible():
    root, _ = random_circuit(2, num_vars=4)
    circuit = pc.compile(root)
    a = pc.sample(circuit, 50, seed=7)
    b = pc.sample(circuit, 50, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, pc.sample(circuit, 50, seed=8))


def test_impossible_evidence_raises():
    root = pc.summate(
        pc.multiply(pc.inputs(0, 2, pc.Indicator(0, num_cats=2)), pc.inputs(1, 2, pc.Bernoulli())), num_nodes=1
    )
    circuit = pc.compile(root)
    with pytest.raises(ValueError, match="probability 0"):
        pc.sample(circuit, 3, x=torch.tensor([[1, 0]]), missing=torch.tensor([[False, True]]))
