"""The public interface of the compiled circuit, checked against the groups the test built."""

from __future__ import annotations

import pytest
import torch

import pcircuits as pc
from pcircuits.distributions import Categorical, Gaussian
from pcircuits.nodes import InputGroup, SumGroup, topological_order


def _circuit():
    """Two variables: a Categorical(3) and a Gaussian, mixed by a dense and a sparse sum."""
    a = [pc.inputs(0, 2, Categorical(3)) for _ in range(2)]
    b = [pc.inputs(1, 2, Gaussian()) for _ in range(2)]
    prods = [pc.multiply(x, y) for x, y in zip(a, b, strict=True)]
    dense = pc.summate(*prods, num_nodes=2)
    sparse = pc.summate(*prods, num_nodes=2, edges=torch.tensor([[0, 0, 1], [0, 3, 2]]))
    root = pc.summate(dense, sparse, num_nodes=1)
    return root, pc.compile(root, seed=0)


def test_domain_is_the_variables_of_the_built_leaves():
    _, circuit = _circuit()
    assert circuit.var_cats.tolist() == [3, 0]
    assert circuit.continuous.tolist() == [False, True]
    assert circuit.domain.num_vars == 2 and circuit.domain.max_cats == 3


def test_leaf_blocks_cover_every_input_group_once():
    root, circuit = _circuit()
    inputs = [g for g in topological_order(root) if isinstance(g, InputGroup)]
    drawn = {}
    for i, g in enumerate(inputs):  # distinct values written through the public API
        value = torch.full((g.num_nodes, g.dist.num_params), float(i)) + torch.arange(g.dist.num_params) * 0.1
        circuit.set_group_parameters(g, value)
        drawn[id(g)] = value
    seen = []
    columns = set()
    for blk in circuit.leaf_blocks():
        assert blk.bank in circuit.params
        assert tuple(circuit.params[blk.bank].shape[1:]) == (blk.num_nodes, blk.dist.num_params)
        assert blk.vars.tolist() == [g.var for g in blk.groups]
        assert blk.slots.shape == (blk.num_groups,)
        for g, slot in zip(blk.groups, blk.slots.tolist(), strict=True):
            assert torch.allclose(circuit.params[blk.bank][slot].detach(), drawn[id(g)])
        cols = set(range(blk.columns.start, blk.columns.stop))
        assert not cols & columns
        columns |= cols
        seen += blk.groups
    assert sorted(map(id, seen)) == sorted(map(id, inputs))
    assert columns == set(range(len(columns)))


def test_sum_blocks_and_banks_describe_every_sum_group():
    root, circuit = _circuit()
    sums = [g for g in topological_order(root) if isinstance(g, SumGroup)]
    blocks = circuit.sum_blocks()
    assert sorted(id(g) for b in blocks for g in b.groups) == sorted(map(id, sums))
    banks = circuit.banks()
    for blk in blocks:
        info = banks[blk.bank]
        assert info.kind == "sum" and info.dist is None
        assert tuple(circuit.params[blk.bank].shape) == (info.num_slots, *info.shape)
        for g, slot in zip(blk.groups, blk.slots.tolist(), strict=True):
            weights = circuit.group_parameters(g)  # [n, num_child_nodes]
            if g.edges is None:
                assert blk.dense and info.mask is None
                continue
            # the mask and child index name exactly the group's edges
            assert not blk.dense
            mask, child = info.mask[slot], info.child_index[slot]
            rows = torch.arange(g.num_nodes).unsqueeze(1).expand_as(child)
            got = sorted(zip(rows[mask].tolist(), child[mask].tolist(), strict=True))
            assert got == sorted(zip(*g.edges.tolist(), strict=True))
            assert torch.all(weights[rows[mask], child[mask]] > 0)
    leaf_banks = {b.bank for b in circuit.leaf_blocks()}
    assert {n for n, b in banks.items() if b.kind == "leaf"} == leaf_banks


def test_records_follow_the_circuit_to_another_dtype():
    _, circuit = _circuit()
    before = circuit.leaf_blocks()
    circuit.double()
    after = circuit.leaf_blocks()
    assert after is not before  # rebuilt with the moved buffers
    assert [b.vars.tolist() for b in after] == [b.vars.tolist() for b in before]


def test_block_evidence_reads_each_group_at_its_variable():
    _, circuit = _circuit()
    x = torch.tensor([[2.0, 0.5], [1.0, -1.0]])
    miss = torch.tensor([[False, True], [True, False]])
    soft = torch.randn(2, 2, 3)
    soft[:, 1] = 0
    ev = circuit.prepare(x, miss, soft)
    for blk in circuit.leaf_blocks():
        be = circuit.block_evidence(ev, blk.index)
        v = blk.vars
        assert torch.equal(be.missing, miss[:, v])
        if blk.dist.discrete:
            assert torch.equal(be.x, torch.where(miss, 0, x.long())[:, v])
            assert torch.equal(be.soft_evidence, soft[:, v, : blk.dist.num_cats])
        else:
            assert be.soft_evidence is None and be.candidates is None


def test_a_copied_or_unpickled_circuit_looks_up_its_own_groups():
    """Group lookups after deepcopy/pickle use the copy's groups; the originals are refused, never mistaken."""
    import copy
    import pickle

    root = pc.structures.hmm(5, 4, 3)
    circuit = pc.compile(root, seed=0)
    trans, emit = root.children[0].children
    for clone in (copy.deepcopy(circuit), pickle.loads(pickle.dumps(circuit))):
        c_trans, c_emit = clone.root.children[0].children
        assert torch.equal(clone.group_parameters(c_trans), circuit.group_parameters(trans))
        assert torch.equal(clone.group_parameters(c_emit), circuit.group_parameters(emit))
        with pytest.raises(ValueError, match="has no parameters in this circuit"):
            clone.group_parameters(trans)  # a group of the original circuit, not of the copy
        clone.set_group_parameters(c_emit, torch.zeros_like(clone.group_parameters(c_emit)))
        assert not torch.equal(clone.group_parameters(c_emit), circuit.group_parameters(emit))  # independent
    x = torch.randint(0, 3, (4, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(copy.deepcopy(circuit)(x), circuit(x))
