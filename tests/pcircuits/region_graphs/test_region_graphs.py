"""Region graphs: validity of every constructor, validation errors, JSON round trips, Chow-Liu trees."""

import itertools

import networkx as nx
import numpy as np
import pytest

from pcircuits import region_graphs as R
from pcircuits.region_graphs.chow_liu_tree import chow_liu_tree, mutual_information


def chain_data(n=4000, V=5, flip=0.1, seed=0):
    """Samples of a Markov chain x0 -> x1 -> ... with copy-with-noise transitions."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, V), dtype=np.int64)
    x[:, 0] = rng.integers(0, 2, n)
    for v in range(1, V):
        x[:, v] = x[:, v - 1] ^ (rng.random(n) < flip)
    return x


CONSTRUCTORS = {
    "rat_full": lambda: R.random_binary_tree(7, None, 3, seed=1),
    "rat_depth1": lambda: R.random_binary_tree(5, 1, 2),
    "rat_depth0": lambda: R.random_binary_tree(4, 0),
    "quad4": lambda: R.quad_tree(3, 3, 4),
    "quad2": lambda: R.quad_tree(2, 4, 2),
    "pd": lambda: R.poon_domingos(2, 3, 1),
    "pd_multi": lambda: R.poon_domingos(4, 2, [2, 1]),
    "chain": lambda: R.linear_chain(5),
    "chow_liu": lambda: R.chow_liu(chain_data(500, 6)),
    "factorized": lambda: R.fully_factorized(5),
    "single": lambda: R.fully_factorized(1),
}


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_constructors_are_smooth_and_decomposable(name):
    rg = CONSTRUCTORS[name]()
    rg.validate()
    assert rg.is_smooth() and rg.is_decomposable()
    assert rg.scope(rg.root) == frozenset(range(rg.num_vars))
    for p in rg.partitions:
        kids = rg.partition_children(p)
        scopes = [rg.scope(c) for c in kids]
        assert sum(len(s) for s in scopes) == len(frozenset().union(*scopes))
    # every variable is covered by some input region
    covered = frozenset().union(*(rg.scope(r) for r in rg.input_regions))
    assert covered == rg.scope(rg.root)


def test_rat_spn_has_repetitions_and_depth():
    rg = R.random_binary_tree(16, depth=2, num_repetitions=3, seed=0)
    assert len(rg.region_partitions(rg.root)) == 3
    assert all(len(rg.scope(r)) == 4 for r in rg.input_regions)
    assert len(rg.input_regions) == 3 * 4
    other = R.random_binary_tree(16, depth=2, num_repetitions=3, seed=1)
    assert sorted(map(sorted, (rg.scope(r) for r in rg.input_regions))) != sorted(
        map(sorted, (other.scope(r) for r in other.input_regions))
    )


def test_quad_tree_shapes():
    rg4 = R.quad_tree(4, 4, 4)
    assert len(rg4.partition_children(rg4.region_partitions(rg4.root)[0])) == 4
    assert sorted(len(rg4.scope(r)) for r in rg4.input_regions) == [1] * 16
    rg2 = R.quad_tree(4, 4, 2)
    assert all(len(rg2.partition_children(p)) == 2 for p in rg2.partitions)
    # top half of a 4x4 image is pixels 0..7
    top = rg2.partition_children(rg2.region_partitions(rg2.root)[0])[0]
    assert rg2.scope(top) == frozenset(range(8))


def test_poon_domingos_enumerates_all_cuts():
    rg = R.poon_domingos(2, 2, 1)
    # rectangles of a 2x2 grid: 3 row spans x 3 column spans
    assert len(rg.regions) == 9
    # the full image has one horizontal and one vertical cut
    assert len(rg.region_partitions(rg.root)) == 2
    with pytest.raises(ValueError, match="delta"):
        R.poon_domingos(8, 8, 0)
    with pytest.raises(ValueError, match="delta"):
        R.poon_domingos(64, 64, 1, max_regions=1000)


def test_linear_chain_structure():
    rg = R.linear_chain(4)
    assert len(rg.regions) == 7 and len(rg.partitions) == 3
    p = rg.region_partitions(rg.root)[0]
    assert [rg.scope(c) for c in rg.partition_children(p)] == [frozenset({0, 1, 2}), frozenset({3})]


def test_validation_catches_bad_graphs():
    rg = R.RegionGraph()
    root = rg.add_region({0, 1, 2})
    a, b = rg.add_region({0, 1}), rg.add_region({1, 2})
    rg.add_partition(root, [a, b])
    assert not rg.is_decomposable()
    with pytest.raises(ValueError, match="not decomposable"):
        rg.validate()

    rg = R.RegionGraph()
    root = rg.add_region({0, 1, 2})
    rg.add_partition(root, [rg.add_region({0}), rg.add_region({1})])
    assert rg.is_decomposable() and not rg.is_smooth()
    with pytest.raises(ValueError, match="not smooth"):
        rg.validate()

    rg = R.RegionGraph()
    rg.add_region({0})
    rg.add_region({1})
    with pytest.raises(ValueError, match="root"):
        rg.validate()

    rg = R.RegionGraph()
    root = rg.add_region({1, 2})
    rg.add_partition(root, [rg.add_region({1}), rg.add_region({2})])
    with pytest.raises(ValueError, match="0..1"):
        rg.validate()

    with pytest.raises(ValueError, match="scope"):
        R.RegionGraph().add_region([])
    rg = R.RegionGraph()
    with pytest.raises(ValueError, match="region"):
        rg.add_partition(5, [])


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda: R.random_binary_tree(0), "num_vars"),
        (lambda: R.random_binary_tree(4, num_repetitions=0), "num_repetitions"),
        (lambda: R.quad_tree(4, 4, 3), "num_splits"),
        (lambda: R.quad_tree(0, 4), "height"),
        (lambda: R.linear_chain(-1), "num_vars"),
        (lambda: R.tree_region_graph([(0, 1), (1, 2), (2, 0)]), "tree"),
        (lambda: R.chow_liu(np.array([[0.5, 1.0]])), "data"),
    ],
)
def test_bad_arguments_name_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


@pytest.mark.parametrize("name", ["rat_full", "quad2", "pd", "chow_liu"])
def test_json_round_trip(name, tmp_path):
    rg = CONSTRUCTORS[name]()
    path = tmp_path / "rg.json"
    rg.save(path)
    back = R.RegionGraph.load(path)
    back.validate()
    assert {r: back.scope(r) for r in back.regions} == {r: rg.scope(r) for r in rg.regions}
    assert {p: back.partition_children(p) for p in back.partitions} == {
        p: rg.partition_children(p) for p in rg.partitions
    }
    assert back.root == rg.root
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="path"):
        R.RegionGraph.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="path"):
        R.RegionGraph.load(tmp_path / "missing.json")


def test_mutual_information_matches_direct_formula():
    rng = np.random.default_rng(3)
    x = np.stack([rng.integers(0, 3, 300), rng.integers(0, 2, 300)], 1)
    x[:, 1] = np.where(rng.random(300) < 0.7, x[:, 0] % 2, x[:, 1])
    mi = mutual_information(x, pseudocount=0.0)
    joint = np.zeros((3, 2))
    for a, b in x:
        joint[a, b] += 1
    joint /= joint.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    want = sum(
        joint[a, b] * np.log(joint[a, b] / (pa[a] * pb[b]))
        for a, b in itertools.product(range(3), range(2))
        if joint[a, b] > 0
    )
    assert mi[0, 1] == pytest.approx(want, abs=1e-12)
    assert mi[0, 0] == 0 and mi[1, 0] == mi[0, 1]


def test_chow_liu_recovers_a_chain():
    x = chain_data(5000, 6)
    perm = np.array([3, 0, 5, 1, 4, 2])  # hide the order: column j holds chain position perm[j]
    tree = chow_liu_tree(x[:, perm])
    inv = np.argsort(perm)
    want = {frozenset((int(inv[i]), int(inv[i + 1]))) for i in range(5)}
    assert {frozenset(e) for e in tree.edges} == want
    rg = R.chow_liu(x[:, perm])
    assert nx.is_tree(tree) and rg.num_vars == 6
