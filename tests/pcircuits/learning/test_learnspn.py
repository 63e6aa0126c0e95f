"""LearnSPN: independence tests, normalisation, budgets."""

import itertools

import numpy as np
import pytest
import torch

from pcircuits.learning.learnspn import independent_components, learn_spn


def block_data(n=1500, seed=0):
    """Variables {0,1,2} and {3,4,5} are two independent blocks of strongly dependent variables."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    cols = [a ^ (rng.random(n) < 0.1) for _ in range(3)] + [b ^ (rng.random(n) < 0.1) for _ in range(3)]
    return np.stack(cols, 1).astype(np.int64)


def test_independent_components_finds_blocks():
    comps = independent_components(block_data(), [2] * 6)
    assert sorted(comps) == [[0, 1, 2], [3, 4, 5]]
    rng = np.random.default_rng(0)
    assert sorted(independent_components(rng.integers(0, 2, (500, 3)), [2] * 3, alpha=1e-6)) == [[0], [1], [2]]


def test_learn_spn_normalises_and_fits():
    train, test = block_data(), block_data(500, seed=1)
    res = learn_spn(train, min_instances=50, progress=False)
    assert res.info["sum"] >= 2 and res.info["product"] >= 1
    c = res.circuit.to(torch.float64)
    x = torch.tensor(list(itertools.product([0, 1], repeat=6)))
    assert abs(float(torch.logsumexp(c(x), 0))) < 1e-9
    p = (train.sum(0) + 1) / (len(train) + 2)
    indep = float((test * np.log(p) + (1 - test) * np.log(1 - p)).sum(1).mean())
    assert float(c(torch.from_numpy(test)).mean()) > indep + 0.5
    # the root is a product of the two independent blocks (wrapped in a one-child sum)
    root_prod = c.root.children[0]
    assert sorted(sorted(ch.scope) for ch in root_prod.children) == [[0, 1, 2], [3, 4, 5]]


def test_size_budget_gives_a_smaller_circuit():
    data = block_data()
    full = learn_spn(data, min_instances=20, progress=False)
    small = learn_spn(data, min_instances=20, max_nodes=10, progress=False)
    assert small.info["budget_hit"] and not full.info["budget_hit"]
    assert small.circuit.num_nodes < full.circuit.num_nodes
    c = small.circuit.to(torch.float64)
    x = torch.tensor(list(itertools.product([0, 1], repeat=6)))
    assert abs(float(torch.logsumexp(c(x), 0))) < 1e-9


def test_categorical_data_and_time_budget():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (300, 3))
    res = learn_spn(x, time_budget=1e-9, progress=False)
    assert res.info["budget_hit"]
    c = res.circuit.to(torch.float64)
    allx = torch.tensor(list(itertools.product(range(3), repeat=3)))
    assert abs(float(torch.logsumexp(c(allx), 0))) < 1e-9


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"min_instances": 0}, "min_instances"),
        ({"alpha": 1.5}, "alpha"),
        ({"num_clusters": 1}, "num_clusters"),
        ({"pseudocount": 0.0}, "pseudocount"),
        ({"max_nodes": 0}, "max_nodes"),
        ({"time_budget": 0.0}, "time_budget"),
    ],
)
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        learn_spn(block_data(50), **kwargs)
