"""Templates: every constructor yields a smooth, decomposable circuit that sums to one by enumeration."""

import itertools

import numpy as np
import pytest
import torch

import pcircuits as pc
from pcircuits import region_graphs as R
from pcircuits import structures as S
from pcircuits.nodes import InputGroup, ProductGroup, SumGroup, topological_order


def check_structure(root):
    """Smoothness and decomposability of every group, checked directly on the DAG."""
    for g in topological_order(root):
        if isinstance(g, SumGroup):
            assert all(c.scope == g.scope for c in g.children)
        elif isinstance(g, ProductGroup):
            assert sum(len(c.scope) for c in g.children) == len(g.scope)
        else:
            assert isinstance(g, InputGroup) and len(g.scope) == 1


def log_total(root, cards, seed=1):
    circuit = pc.compile(root, seed=seed).to(torch.float64)
    x = torch.tensor(list(itertools.product(*[range(c) for c in cards])))
    return float(torch.logsumexp(circuit(x), 0)), circuit


def binary_data(n=300, V=6, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, n)
    return (rng.random((n, V)) < np.where(z[:, None] == 1, 0.8, 0.2)).astype(np.int64)


REGION_GRAPHS = {
    "rat": lambda: R.random_binary_tree(6, None, 2, seed=2),
    "rat_shallow": lambda: R.random_binary_tree(5, 1, 2),
    "quad4": lambda: R.quad_tree(2, 3, 4),
    "quad2": lambda: R.quad_tree(3, 2, 2),
    "pd": lambda: R.poon_domingos(2, 3, 1),
    "chain": lambda: R.linear_chain(5),
    "chow_liu": lambda: R.chow_liu(binary_data()),
    "factorized": lambda: R.fully_factorized(4),
}


@pytest.mark.parametrize("layer", ["cp", "tucker"])
@pytest.mark.parametrize("name", sorted(REGION_GRAPHS))
def test_region_graph_circuits_normalise(name, layer):
    rg = REGION_GRAPHS[name]()
    root = S.from_region_graph(rg, num_units=3, leaf=2, layer=layer)
    check_structure(root)
    total, circuit = log_total(root, [2] * rg.num_vars)
    assert abs(total) < 1e-9
    assert circuit.num_vars == rg.num_vars


def test_categorical_leaves_and_callable_leaf():
    rg = R.quad_tree(2, 2, 4)
    root = S.from_region_graph(rg, 2, leaf=lambda v: pc.Categorical(2 + v % 2), layer="tucker", num_input_units=3)
    total, _ = log_total(root, [2, 3, 2, 3])
    assert abs(total) < 1e-9


def test_tucker_multiplies_all_pairs_and_cp_elementwise():
    rg = R.random_binary_tree(2, None, 1)
    cp = S.from_region_graph(rg, 4, layer="cp")
    tk = S.from_region_graph(rg, 4, layer="tucker")
    cp_prod = [g for g in topological_order(cp) if isinstance(g, ProductGroup)]
    tk_prod = [g for g in topological_order(tk) if isinstance(g, ProductGroup)]
    assert [g.num_nodes for g in cp_prod] == [4]
    assert [g.num_nodes for g in tk_prod] == [16]
    pairs = {tuple(r) for r in tk_prod[0].edges.tolist()}
    assert pairs == set(itertools.product(range(4), range(4)))


def test_named_templates_normalise():
    for root, cards in [
        (S.rat_spn(6, num_units=2, num_repetitions=3, seed=4), [2] * 6),
        (S.rat_spn(5, num_units=2, depth=1, layer="tucker", leaf=3), [3] * 5),
        (S.pd(2, 2, num_units=2, leaf=3), [3] * 4),
        (S.qt(2, 3, num_units=2, num_splits=2, leaf=2), [2] * 6),
        (S.hclt(binary_data(), num_latents=3), [2] * 6),
    ]:
        check_structure(root)
        total, _ = log_total(root, cards)
        assert abs(total) < 1e-9


@pytest.mark.parametrize("homogeneous", [True, False])
def test_hmm_is_normalised_with_one_sum_group_per_step(homogeneous):
    T, H, C = 4, 3, 3
    root = S.hmm(T, H, C, homogeneous=homogeneous)
    sums = [g for g in topological_order(root) if isinstance(g, SumGroup)]
    assert len(sums) == T  # T-1 transitions and the root
    total, circuit = log_total(root, [C] * T)
    assert abs(total) < 1e-9
    if homogeneous:
        assert circuit.num_parameters == H * H + H * C + H
    else:
        assert circuit.num_parameters == (T - 1) * H * H + T * H * C + H


def test_hmm_matches_forward_algorithm():
    T, H, C = 5, 3, 4
    root = S.hmm(T, H, C)
    circuit = pc.compile(root, seed=5).to(torch.float64)
    groups = topological_order(root)
    emit = next(g for g in groups if g.name == "emit0")
    trans = next(g for g in groups if g.name == "trans1")
    E = torch.softmax(circuit.group_parameters(emit), -1)  # [H, C]
    A = circuit.group_parameters(trans)  # [H (node), H (child)]
    pi = circuit.group_parameters(root)[0]  # [H]
    x = torch.randint(0, C, (7, T))
    want = []
    for seq in x:
        alpha = E[:, seq[0]]
        for t in range(1, T):
            alpha = (A @ alpha) * E[:, seq[t]]
        want.append(torch.log(pi @ alpha))
    assert torch.allclose(circuit(x), torch.stack(want), atol=1e-10)


def test_hclt_structure():
    data = binary_data(V=7)
    groups = S.hclt_from_tree(pc.learning.chow_liu_tree(data), num_latents=5, num_cats=2)
    assert sorted(groups.leaves) == list(range(7))
    assert all(g.num_nodes == 5 for g in groups.leaves.values())
    assert len(groups.sums) == 6 and groups.root_var not in groups.sums
    for v, s in groups.sums.items():
        prod = s.children[0]
        assert prod.children[0] is groups.leaves[v]
        assert {id(c) for c in prod.children[1:]} == {id(groups.sums[c]) for c in groups.tree.successors(v)}
    assert groups.root.num_nodes == 1


def test_mixture_and_mixture_circuit():
    data = binary_data(V=5)
    a = pc.compile(S.hclt(data, 3), seed=1).to(torch.float64)
    b = pc.compile(S.rat_spn(5, 2, num_repetitions=2), seed=2).to(torch.float64)
    m = S.mixture_circuit(a, b, weights=[0.25, 0.75])
    x = torch.from_numpy(data[:20])
    want = torch.logsumexp(torch.stack([a(x) + np.log(0.25), b(x) + np.log(0.75)]), 0)
    assert torch.allclose(m(x), want, atol=1e-9)
    total, _ = log_total(S.mixture(a.root, b.root), [2] * 5)
    assert abs(total) < 1e-9
    with pytest.raises(ValueError, match="roots"):
        S.mixture()
    with pytest.raises(ValueError, match="roots"):
        S.mixture(a.root, S.hclt(binary_data(V=4), 2))
    with pytest.raises(ValueError, match="weights"):
        S.mixture_circuit(a, b, weights=[1.0])


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda: S.from_region_graph(R.linear_chain(3), 0), "num_units"),
        (lambda: S.from_region_graph(R.linear_chain(3), 2, layer="dense"), "layer"),
        (lambda: S.from_region_graph(R.linear_chain(3), 2, num_input_units=3), "num_input_units"),
        (lambda: S.from_region_graph("graph", 2), "rg"),
        (lambda: S.from_region_graph(R.linear_chain(3), 2, leaf=1), "leaf"),
        (lambda: S.hmm(0, 2, 2), "seq_len"),
        (lambda: S.hmm(3, 2, 1), "num_cats"),
        (lambda: S.hclt_from_tree([(0, 1), (1, 2)], 0), "num_latents"),
        (lambda: S.hclt_from_tree([(0, 1), (2, 3)], 2), "tree"),
    ],
)
def test_bad_arguments_name_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()
