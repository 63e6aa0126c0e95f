"""Indicator leaves and variables whose leaves disagree on the category count, against hand-computed answers.

Every expected value here is written out from the circuit's definition (the
indicator values and the parameters set by the test), never read from the
compiled module.
"""

import itertools
import math

import numpy as np
import torch

import pcircuits as pc
from pcircuits.learning.em import expected_statistics

N = 40_000


def _ind(var: int, value: int, cats: int = 2) -> pc.InputGroup:
    return pc.inputs(var, 1, pc.Indicator(value, num_cats=cats))


def _xor() -> tuple[pc.SumGroup, pc.TensorCircuit]:
    root = pc.summate(pc.multiply(_ind(0, 0), _ind(1, 1)), pc.multiply(_ind(0, 1), _ind(1, 0)), num_nodes=1)
    circuit = pc.compile(root).to(torch.float64)
    circuit.set_group_parameters(root, torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    return root, circuit


def test_xor_likelihood_marginals_mpe_and_sampling():
    _, circuit = _xor()
    x = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert torch.allclose(circuit(x).exp(), torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64))
    # marginals: X1 given X0 = 0 is 1; with nothing observed both are uniform
    miss = torch.tensor([[False, True], [True, True]])
    got = pc.marginals(circuit, torch.zeros(2, 2, dtype=torch.long), miss)
    assert torch.allclose(got[0, 1], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(got[1], torch.full((2, 2), 0.5, dtype=torch.float64))
    # MPE completes X1 = not X0
    miss = torch.tensor([[False, True], [False, True]])
    got, logp = pc.mpe(circuit, torch.tensor([[0, 0], [1, 0]]), miss, return_log_prob=True)
    assert torch.equal(got, torch.tensor([[0, 1], [1, 0]]))
    assert torch.allclose(logp, torch.full((2,), math.log(0.5), dtype=torch.float64))
    # samples: only 01 and 10, half each
    s = pc.sample(circuit, N, seed=0)
    code = s[:, 0] * 2 + s[:, 1]
    freq = torch.bincount(code, minlength=4).double() / N
    assert freq[0] == 0 and freq[3] == 0 and abs(float(freq[1]) - 0.5) < 0.01


def _decision_tree() -> tuple[pc.TensorCircuit, dict]:
    """X0 in {0,1,2} picks the branch: X0=0 -> X1 = 1; X0=1 -> X1 ~ Bernoulli(0.8); X0=2 -> X1 = 0.

    Every branch is ``[X0 = c] * leaf(X1)``: five indicator groups of one node over
    two variables (they fold into banks by size and category count).
    """
    bern = pc.inputs(1, 1, pc.Bernoulli())
    branches = [
        pc.multiply(_ind(0, 0, 3), _ind(1, 1)),
        pc.multiply(_ind(0, 1, 3), bern),
        pc.multiply(_ind(0, 2, 3), _ind(1, 0)),
    ]
    root = pc.summate(*branches, num_nodes=1)
    circuit = pc.compile(root).to(torch.float64)
    circuit.set_group_parameters(root, torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64))
    circuit.set_group_parameters(bern, torch.tensor([[math.log(0.8 / 0.2)]], dtype=torch.float64))
    p = {(0, 0): 0.0, (0, 1): 0.2, (1, 0): 0.5 * 0.2, (1, 1): 0.5 * 0.8, (2, 0): 0.3, (2, 1): 0.0}
    return circuit, p


def test_decision_tree_against_its_definition():
    circuit, p = _decision_tree()
    x = torch.tensor(list(itertools.product(range(3), range(2))))
    want = torch.tensor([p[tuple(r)] for r in x.tolist()], dtype=torch.float64)
    assert torch.allclose(circuit(x).exp(), want)
    # marginal of X1 given X0 = 1, and of X0 given X1 = 0
    got = pc.marginals(circuit, torch.tensor([[1, 0], [0, 0]]), torch.tensor([[False, True], [True, False]]))
    assert torch.allclose(got[0, 1, :2], torch.tensor([0.2, 0.8], dtype=torch.float64))
    z = p[(0, 0)] + p[(1, 0)] + p[(2, 0)]
    assert torch.allclose(got[1, 0], torch.tensor([0.0, p[(1, 0)] / z, p[(2, 0)] / z], dtype=torch.float64))
    # MPE (the circuit is deterministic): the most probable pair is (X0=1, X1=1)
    got = pc.mpe(circuit, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))
    assert got.tolist() == [[1, 1]]
    got = pc.mpe(circuit, torch.tensor([[0, 0]]), torch.tensor([[True, False]]))
    assert got.tolist() == [[2, 0]]
    # sampling follows the table
    s = pc.sample(circuit, N, seed=1)
    freq = torch.bincount(s[:, 0] * 2 + s[:, 1], minlength=6).double() / N
    assert (freq - want).abs().max() < 0.01


def _mixed() -> tuple[list[pc.InputGroup], pc.TensorCircuit, dict]:
    """X0 has a Categorical(2) leaf in one component and a Categorical(3) leaf in the other."""
    c2 = pc.inputs(0, 1, pc.Categorical(2))
    c3 = pc.inputs(0, 1, pc.Categorical(3))
    b1 = pc.inputs(1, 1, pc.Bernoulli())
    b2 = pc.inputs(1, 1, pc.Indicator(1, num_cats=2))
    root = pc.summate(pc.multiply(c2, b1), pc.multiply(c3, b2), num_nodes=1)
    circuit = pc.compile(root).to(torch.float64)
    p2, p3, q = np.array([0.3, 0.7]), np.array([0.1, 0.2, 0.7]), 0.6
    circuit.set_group_parameters(c2, torch.from_numpy(np.log(p2))[None])
    circuit.set_group_parameters(c3, torch.from_numpy(np.log(p3))[None])
    circuit.set_group_parameters(b1, torch.tensor([[math.log(q / (1 - q))]], dtype=torch.float64))
    circuit.set_group_parameters(root, torch.tensor([[0.4, 0.6]], dtype=torch.float64))
    joint = {}
    for a, b in itertools.product(range(3), range(2)):
        first = 0.4 * (p2[a] if a < 2 else 0.0) * (q if b == 1 else 1 - q)
        second = 0.6 * p3[a] * (1.0 if b == 1 else 0.0)
        joint[(a, b)] = first + second
    return [c2, c3, b1, b2], circuit, joint


def test_mixed_category_counts_have_probability_zero_outside_each_leaf():
    _, circuit, joint = _mixed()
    assert circuit.max_cats == 3
    x = torch.tensor(list(itertools.product(range(3), range(2))))
    want = torch.tensor([joint[tuple(r)] for r in x.tolist()], dtype=torch.float64)
    got = circuit(x).exp()
    assert torch.allclose(got, want) and abs(float(got.sum()) - 1) < 1e-12
    # one row at a time (the largest-table gather path) gives the same
    for i in range(len(x)):
        assert torch.allclose(circuit(x[i : i + 1]).exp(), want[i : i + 1])
    # missing X1, soft evidence of width 3 on X0
    ev = torch.log(torch.tensor([[[0.5, 2.0, 3.0], [1.0, 1.0, 1.0]]], dtype=torch.float64))
    got = circuit(torch.tensor([[2, 0]]), torch.tensor([[False, True]]), ev)
    assert torch.allclose(got.exp(), torch.tensor([3.0 * (joint[(2, 0)] + joint[(2, 1)])], dtype=torch.float64))
    got = circuit(torch.tensor([[0, 0]]), torch.tensor([[True, True]]), ev)
    total = sum(w * (joint[(a, 0)] + joint[(a, 1)]) for a, w in enumerate([0.5, 2.0, 3.0]))
    assert torch.allclose(got.exp(), torch.tensor([total], dtype=torch.float64))


def test_mixed_category_counts_in_marginals_mpe_and_sampling():
    _, circuit, joint = _mixed()
    got = pc.marginals(circuit, torch.tensor([[0, 0], [0, 0]]), torch.tensor([[True, True], [True, False]]))
    m0 = [joint[(a, 0)] + joint[(a, 1)] for a in range(3)]
    assert torch.allclose(got[0, 0], torch.tensor(m0, dtype=torch.float64))
    z = sum(joint[(a, 0)] for a in range(3))
    assert torch.allclose(got[1, 0], torch.tensor([joint[(a, 0)] / z for a in range(3)], dtype=torch.float64))
    # MPE given X1 = 0: only the Categorical(2) component is possible, whose mode is 1
    got = pc.mpe(circuit, torch.tensor([[0, 0]]), torch.tensor([[True, False]]))
    assert got.tolist() == [[1, 0]]
    # soft evidence that favours X0 = 2 strongly: the Categorical(3) component wins
    ev = torch.zeros(1, 2, 3, dtype=torch.float64)
    ev[0, 0, 2] = 5.0
    got = pc.mpe(circuit, torch.tensor([[0, 0]]), torch.tensor([[True, True]]), ev)
    assert got.tolist() == [[2, 1]]
    s = pc.sample(circuit, N, seed=2)
    freq = torch.bincount(s[:, 0] * 2 + s[:, 1], minlength=6).double() / N
    want = torch.tensor([joint[(a, b)] for a, b in itertools.product(range(3), range(2))], dtype=torch.float64)
    assert (freq - want).abs().max() < 0.01


def test_mixed_category_counts_em_statistics():
    """Rows with X0 = 2 add nothing to the Categorical(2) leaf's counts and their whole weight to the other."""
    (c2, c3, _, _), circuit, joint = _mixed()
    x = torch.tensor([[0, 1], [1, 1], [2, 1], [2, 1], [1, 0]])
    ev = circuit.prepare(x)
    _, (_, leaf_stats) = expected_statistics(circuit, ev)
    # posterior of the first component per row: joint of component 1 / joint
    def first(a, b):
        p2 = [0.3, 0.7][a] if a < 2 else 0.0
        return 0.4 * p2 * (0.6 if b == 1 else 0.4) / joint[(a, b)]

    want2, want3 = np.zeros(2), np.zeros(3)
    for a, b in x.tolist():
        r = first(a, b)
        if a < 2:
            want2[a] += r
        want3[a] += 1 - r
    for group, want in ((c2, want2), (c3, want3)):
        bank, slot = circuit.layout.param_slot[id(group)]
        assert np.allclose(leaf_stats[bank][slot, 0].numpy(), want)


def test_indicators_with_different_category_counts_on_one_variable():
    """[X0 = 1] with 2 categories and [X0 = 2] with 3: each is 0 outside its own domain."""
    root = pc.summate(
        pc.multiply(_ind(0, 1, 2), pc.inputs(1, 1, pc.Bernoulli())),
        pc.multiply(_ind(0, 2, 3), pc.inputs(1, 1, pc.Bernoulli())),
        pc.multiply(_ind(0, 0, 2), pc.inputs(1, 1, pc.Bernoulli())),
        num_nodes=1,
    )
    circuit = pc.compile(root).to(torch.float64)
    circuit.set_group_parameters(root, torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64))
    x = torch.tensor([[0, 0], [1, 0], [2, 0]])
    miss = torch.tensor([[False, True]] * 3)
    assert torch.allclose(circuit(x, miss).exp(), torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64))
    got = pc.marginals(circuit, x[:1], torch.tensor([[True, True]]))
    assert torch.allclose(got[0, 0], torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64))
