"""Leaf tables computed once per parameter change, checked against the parameters the test set.

`TensorCircuit.leaf_table` caches each discrete bank's normalised table (and,
for full soft evidence, its exponentiated form); every test compares with the
softmax of the raw parameters of the groups the test built, or with explicit
enumeration, in float64.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

import pcircuits as pc
import pcircuits.distributions.categorical as categorical_mod
from pcircuits.distributions import Categorical
from pcircuits.distributions.base import candidate_table
from pcircuits.structures import hmm

torch.set_num_threads(1)


def _check_tables(circuit: pc.TensorCircuit) -> None:
    """Every group's rows of its block's cached table equal the log-softmax of its parameters."""
    for blk in circuit.leaf_blocks():
        table = circuit.leaf_table(blk.index)
        for g, group in enumerate(blk.groups):
            ref = torch.log_softmax(circuit.group_parameters(group).detach(), -1)
            assert torch.allclose(table[int(blk.slots[g])], ref, atol=1e-12)


@pytest.mark.parametrize("homogeneous", [True, False])
@torch.no_grad()
def test_leaf_table_follows_every_in_place_parameter_change(homogeneous):
    circuit = pc.compile(hmm(3, 4, 6, homogeneous=homogeneous), seed=2).to(torch.float64)
    _check_tables(circuit)
    blk = circuit.leaf_blocks()[0]
    first = circuit.leaf_table(0)
    assert circuit.leaf_table(0) is first  # cached while the parameters are unchanged
    group = blk.groups[-1]
    circuit.set_group_parameters(group, torch.randn(4, 6, dtype=torch.float64))
    assert circuit.leaf_table(0) is not first
    _check_tables(circuit)
    circuit.params[blk.bank].mul_(2.0)  # an optimiser-like in-place step
    _check_tables(circuit)
    circuit.params[blk.bank].data.mul_(0.5)  # bypasses the version counter: stale until cleared
    circuit.clear_leaf_tables()
    _check_tables(circuit)


def test_leaf_table_is_not_cached_while_gradients_are_recorded():
    circuit = pc.compile(hmm(3, 4, 6), seed=0).to(torch.float64)
    a, b = circuit.leaf_table(0), circuit.leaf_table(0)
    assert a.requires_grad and a is not b
    a.sum().backward()  # the graph reaches the parameters
    assert circuit.params[circuit.leaf_blocks()[0].bank].grad is not None
    with torch.no_grad():
        assert circuit.leaf_table(0) is circuit.leaf_table(0)


def test_leaf_table_survives_dtype_moves_and_copies():
    circuit = pc.compile(hmm(3, 4, 6), seed=1)
    with torch.no_grad():
        circuit.leaf_table(0)
    circuit.double()
    assert circuit.leaf_table(0).dtype == torch.float64
    _check_tables(circuit)
    with torch.no_grad():
        circuit.leaf_table(0)
    clone = copy.deepcopy(circuit)
    assert "_table_cache" not in clone.__dict__
    with torch.no_grad():  # the copy's groups are copies too: compare with the original's parameters
        ref = torch.log_softmax(circuit.params[circuit.leaf_blocks()[0].bank], -1)
        assert torch.allclose(clone.leaf_table(0), ref, atol=1e-12)


def test_leaf_table_refuses_a_continuous_block():
    root = pc.summate(pc.inputs(0, 2, pc.distributions.Gaussian()), num_nodes=1)
    with pytest.raises(ValueError, match="not a discrete family"):
        pc.compile(root).leaf_table(0)


@pytest.mark.parametrize("homogeneous", [True, False])
def test_full_soft_evidence_with_cached_tables_matches_enumeration(homogeneous):
    T, H, C = 3, 3, 4
    circuit = pc.compile(hmm(T, H, C, homogeneous=homogeneous), seed=4).to(torch.float64)
    g = torch.Generator().manual_seed(0)
    soft = torch.randn(2, T, C, generator=g, dtype=torch.float64)
    x = torch.tensor([[1, 2, 0], [3, 0, 2]])
    missing = torch.tensor([[True, False, True], [False, True, False]])
    with torch.no_grad():
        got = circuit(x, missing, soft)
        again = circuit(x, missing, soft)  # served by the cached (exponentiated) table
    for b in range(2):
        terms = []
        for vals in itertools.product(range(C), repeat=int(missing[b].sum())):
            xx = x[b].clone()
            xx[missing[b]] = torch.tensor(vals)
            with torch.no_grad():
                lp = circuit(xx[None])[0]  # complete data: no soft evidence involved
            terms.append(lp + soft[b, torch.arange(T), xx].sum())
        ref = torch.logsumexp(torch.stack(terms), 0)
        assert abs(float(got[b] - ref)) < 1e-10
    assert torch.equal(got, again)


def test_candidate_table_reads_category_major_tables_like_row_major():
    g = torch.Generator().manual_seed(0)
    table = torch.log_softmax(torch.randn(1, 5, 9, generator=g, dtype=torch.float64), -1)
    table[0, 2, 4] = -math.inf
    cand = torch.randint(0, 11, (3, 4, 6), generator=g)  # ids 9 and 10 lie outside the leaf
    major = table.transpose(1, 2).contiguous().transpose(1, 2)
    assert major.stride(1) == 1
    ref = torch.full((3, 4, 5, 6), -math.inf, dtype=torch.float64)
    for b, gg, k in itertools.product(range(3), range(4), range(6)):
        if cand[b, gg, k] < 9:
            ref[b, gg, :, k] = table[0, :, cand[b, gg, k]]
    assert torch.equal(candidate_table(major, cand), ref)
    assert torch.equal(candidate_table(table, cand), ref)


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_categorical_init_params_into_draws_the_documented_values(monkeypatch, chunk):
    monkeypatch.setattr(categorical_mod, "_INIT_CHUNK", chunk)  # chunks of one row and of the whole table
    dist = Categorical(5)
    u = torch.rand(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = torch.log(-torch.log(u.clamp_min(1e-12)))  # softmax of it is Dirichlet(1)
    out = torch.empty(6, 5, dtype=torch.float32)
    dist.init_params_into(out, torch.Generator().manual_seed(3))
    assert torch.equal(out, ref.float())
    assert torch.equal(dist.init_params(6, torch.Generator().manual_seed(3)), ref)


def test_a_table_built_in_inference_mode_is_not_kept_for_later_gradients():
    circuit = pc.compile(hmm(3, 4, 6), seed=0).to(torch.float64)
    soft = torch.randn(1, 3, 6, dtype=torch.float64)
    x, missing = torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool)
    with torch.inference_mode():
        ref = circuit(x, missing, soft)
    for p in circuit.parameters():
        p.requires_grad_(False)
    w = soft.clone().requires_grad_()
    out = circuit(x, missing, w)  # gradients to the evidence only: a cached table would enter autograd
    out.sum().backward()
    assert torch.allclose(out.detach(), ref) and w.grad is not None
