"""Clear errors for bad arguments to the queries."""

import numpy as np
import pytest
import torch

import pcircuits as pc
from tests.pcircuits.queries.helpers import random_circuit


@pytest.fixture(scope="module")
def circuit():
    root, _ = random_circuit(5, num_vars=3, kinds=["categorical", "bernoulli", "gaussian"])
    return pc.compile(root)


QUERIES = [
    lambda c, *a, **k: pc.marginals(c, *a, **k),
    lambda c, *a, **k: pc.mpe(c, *a, **k),
    lambda c, x, missing=None, soft_evidence=None: pc.sample(c, 2, x=x, missing=missing, soft_evidence=soft_evidence),
]


@pytest.mark.parametrize("query", QUERIES)
def test_evidence_is_checked(circuit, query):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="shape"):
        query(circuit, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        query(circuit, x, torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        query(circuit, x, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="Tensor or numpy"):
        query(circuit, [[0, 0, 0]])
    with pytest.raises(ValueError, match="shape"):
        query(circuit, x, None, torch.zeros(2, 3, 2))
    soft = torch.zeros(2, 3, 3)
    soft[0, 2, 1] = 1.0  # variable 2 is Gaussian
    with pytest.raises(ValueError, match="continuous"):
        query(circuit, x, None, soft)
    with pytest.raises(ValueError, match="outside"):
        query(circuit, torch.tensor([[5.0, 0.0, 0.0]]))
    query(circuit, np.zeros((2, 3)), np.zeros((2, 3), dtype=bool))  # numpy is fine


def test_sample_arguments(circuit):
    with pytest.raises(ValueError, match="num_samples"):
        pc.sample(circuit, 0)
    with pytest.raises(ValueError, match="num_samples"):
        pc.sample(circuit, -3)
    with pytest.raises(TypeError, match="num_samples"):
        pc.sample(circuit, 2.5)
    with pytest.raises(ValueError, match="temperature"):
        pc.sample(circuit, 2, temperature=0.0)
    with pytest.raises(ValueError, match="either"):
        pc.sample(circuit, 2, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="missing needs x"):
        pc.sample(circuit, 2, missing=torch.ones(1, 3, dtype=torch.bool))


@pytest.mark.parametrize("query", [pc.marginals, pc.mpe])
def test_circuit_type(query):
    with pytest.raises(TypeError, match="TensorCircuit"):
        query(object(), torch.zeros(1, 1))
    with pytest.raises(TypeError, match="TensorCircuit"):
        pc.sample(object(), 1)


def test_observed_rows_and_shapes_without_missing(circuit):
    x = torch.tensor([[1.0, 0.0, 0.3], [2.0, 1.0, -1.0]])
    m = pc.marginals(circuit, x)
    assert torch.equal(m[:, 0].argmax(-1), torch.tensor([1, 2])) and (m[:, 2] == 0).all()
    assert torch.equal(pc.mpe(circuit, x), x)
    s = pc.sample(circuit, 4, x=x, seed=0)
    assert s.shape == (4, 2, 3) and torch.equal(s, x.expand(4, 2, 3))
