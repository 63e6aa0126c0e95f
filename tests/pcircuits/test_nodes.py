"""Node groups: integer-like arguments, compact scopes and the structural checks."""

import tracemalloc

import numpy as np
import pytest
import torch

import pcircuits as pc
from pcircuits.nodes import Scope


@pytest.mark.parametrize("make", [np.int64, np.int32, np.uint8, torch.tensor, np.array])
def test_integer_like_scalars_are_accepted(make):
    a = pc.inputs(make(0), make(2), pc.Categorical(make(3)))
    b = pc.inputs(make(1), make(2), pc.Indicator(make(1), num_cats=make(3)))
    c = pc.inputs(make(1), make(2), pc.Indicator([make(0), make(2)], num_cats=make(3)))
    root = pc.summate(pc.multiply(a, b), pc.multiply(a, c), num_nodes=make(1))
    assert type(a.var) is int and type(a.num_nodes) is int and type(root.num_nodes) is int
    assert a.dist == pc.Categorical(3) and b.dist == pc.Indicator(1, num_cats=3)
    assert pc.compile(root).num_vars == 2
    assert pc.Indicator(np.array([0, 1])).config()["value"] == [0, 1]
    hmm = pc.structures.hmm(make(5), make(2), make(3))
    assert pc.compile(hmm).num_vars == 5
    assert (
        pc.compile(pc.structures.rat_spn(make(4), num_units=make(2), num_repetitions=make(1), leaf=make(3))).max_cats
        == 3
    )


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: pc.inputs(True, 2, pc.Bernoulli()), "var"),
        (lambda: pc.inputs(1.0, 2, pc.Bernoulli()), "var"),
        (lambda: pc.inputs(torch.tensor(True), 2, pc.Bernoulli()), "var"),
        (lambda: pc.inputs(torch.tensor([1]), 2, pc.Bernoulli()), "var"),
        (lambda: pc.inputs(0, 2.0, pc.Bernoulli()), "num_nodes"),
        (lambda: pc.inputs(0, np.bool_(True), pc.Bernoulli()), "num_nodes"),
        (lambda: pc.summate(pc.inputs(0, 2, pc.Bernoulli()), num_nodes=1.5), "num_nodes"),
        (lambda: pc.Categorical(True), "num_cats"),
        (lambda: pc.Categorical(3.0), "num_cats"),
        (lambda: pc.Categorical(torch.tensor(3.0)), "num_cats"),
        (lambda: pc.Indicator(True), "value"),
        (lambda: pc.Indicator(1.0), "value"),
        (lambda: pc.Indicator([0, 1.5]), "value"),
        (lambda: pc.Indicator(0, num_cats=2.0), "num_cats"),
        (lambda: pc.structures.hmm(10.0, 2, 3), "seq_len"),
        (lambda: pc.structures.hmm(10, True, 3), "num_latents"),
        (lambda: pc.structures.hmm(10, 2, 3.0), "num_cats"),
        (lambda: pc.structures.rat_spn(4.0), "num_vars"),
    ],
)
def test_bools_and_floats_are_refused_naming_the_argument(call, name):
    with pytest.raises(TypeError, match=name):
        call()


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: pc.inputs(np.int64(-1), 2, pc.Bernoulli()), "var"),
        (lambda: pc.inputs(0, np.int64(0), pc.Bernoulli()), "num_nodes"),
        (lambda: pc.Categorical(np.int64(1)), "num_cats"),
        (lambda: pc.Indicator(np.int64(3), num_cats=np.int64(2)), "num_cats"),
        (lambda: pc.structures.hmm(np.int64(0), 2, 3), "seq_len"),
    ],
)
def test_out_of_range_integers_are_refused_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_scopes_are_shared_and_compact():
    root = pc.structures.hmm(50, 2, 3)
    groups = list(root)
    for g in groups:
        if isinstance(g, pc.SumGroup):
            assert g.scope_set is g.children[0].scope_set  # no copy
        assert g.scope_set.mask is None  # every scope of a chain is an interval: two integers
    assert root.scope == frozenset(range(50)) and root.num_scope_vars == 50
    # non-contiguous scopes are bitmasks; equal sets compare equal whatever the construction order
    a, b, c = (pc.inputs(v, 1, pc.Bernoulli()) for v in (0, 2, 1))
    ab = pc.multiply(a, b)
    assert ab.scope_set.mask == 0b101 and ab.scope == frozenset({0, 2})
    abc = pc.multiply(ab, c)
    assert abc.scope_set == Scope(0, 2) and abc.scope_set.mask is None
    assert abc.same_scope(
        pc.multiply(pc.inputs(0, 1, pc.Bernoulli()), pc.inputs(1, 1, pc.Bernoulli()), pc.inputs(2, 1, pc.Bernoulli()))
    )
    assert "scope=[0, 2]" in repr(ab)


def test_structural_errors_name_the_variables():
    a, b = pc.inputs(0, 1, pc.Bernoulli()), pc.inputs(1, 1, pc.Bernoulli())
    ab = pc.multiply(a, b)
    with pytest.raises(ValueError, match=r"not decomposable: children share variables \[1\]"):
        pc.multiply(ab, pc.inputs(1, 1, pc.Bernoulli()))
    with pytest.raises(ValueError, match=r"not decomposable: children share variables \[0\]"):
        pc.multiply(a, a)
    with pytest.raises(ValueError, match=r"not smooth: .* differ on variables \[1, 5\]"):
        pc.summate(ab, pc.multiply(a, pc.inputs(5, 1, pc.Bernoulli())), num_nodes=1)
    far = pc.multiply(pc.inputs(0, 1, pc.Bernoulli()), pc.inputs(40_000, 1, pc.Bernoulli()))
    with pytest.raises(ValueError, match=r"variables \[1, 2, 3, 4, 5, 6, 7, 8\] are absent"):
        pc.compile(pc.summate(far, num_nodes=1))


def _build_bytes(steps: int) -> int:
    tracemalloc.start()
    root = pc.structures.hmm(steps, 2, 2)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del root
    return size


def test_building_memory_grows_linearly_with_length():
    small, large = _build_bytes(1000), _build_bytes(4000)
    assert large < 5 * small  # quadratic growth would be 16x
