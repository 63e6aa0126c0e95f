"""Region graph constructors: RAT-SPN trees, quad trees, Poon-Domingos, chains, Chow-Liu, factorised."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch

from .chow_liu_tree import chow_liu_tree
from .graph import RegionGraph

__all__ = [
    "tree_center",
    "random_binary_tree",
    "quad_tree",
    "poon_domingos",
    "linear_chain",
    "chow_liu",
    "fully_factorized",
    "tree_region_graph",
]


def _pos_int(value: object, name: str, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def random_binary_tree(num_vars: int, depth: int | None = None, num_repetitions: int = 1, seed: int = 0) -> RegionGraph:
    """Random binary trees with repetitions, the RAT-SPN region graph (Peharz et al., 2020).

    Each repetition shuffles the variables and splits the root region into
    two halves recursively, ``depth`` times (or down to single variables).
    All repetitions share the root region.

    Args:
        num_vars: number of variables ``V``.
        depth: number of binary splits along every path (``None``: full depth,
            ``ceil(log2 V)``); it is capped so that no region is empty.
        num_repetitions: number of random trees under the root.
        seed: seed of the variable permutations.

    Returns:
        A validated region graph.
    """
    V = _pos_int(num_vars, "num_vars")
    R = _pos_int(num_repetitions, "num_repetitions")
    full = int(np.ceil(np.log2(V))) if V > 1 else 0
    d = full if depth is None else min(_pos_int(depth, "depth", 0), full)
    rng = np.random.default_rng(seed)
    rg = RegionGraph()
    root = rg.add_region(range(V))

    def split(region: int, vars_: list[int], level: int) -> None:
        if level == d or len(vars_) < 2:
            return
        half = (len(vars_) + 1) // 2
        left, right = vars_[:half], vars_[half:]
        a, b = rg.add_region(left), rg.add_region(right)
        rg.add_partition(region, [a, b])
        split(a, left, level + 1)
        split(b, right, level + 1)

    if d == 0:
        if V > 1:
            rg.add_partition(root, [rg.add_region([v]) for v in range(V)])
    else:
        for _ in range(R):
            perm = [int(v) for v in rng.permutation(V)]
            half = (V + 1) // 2
            left, right = perm[:half], perm[half:]
            a, b = rg.add_region(left), rg.add_region(right)
            rg.add_partition(root, [a, b])
            split(a, left, 1)
            split(b, right, 1)
    rg.validate()
    return rg


def _rect_vars(r0: int, r1: int, c0: int, c1: int, width: int) -> list[int]:
    return [r * width + c for r in range(r0, r1) for c in range(c0, c1)]


def quad_tree(height: int, width: int, num_splits: int = 4) -> RegionGraph:
    """A quad tree over an image of ``height x width`` pixels (pixel ``(r, c)`` is variable ``r * width + c``).

    Every rectangle is cut at its middle row and column. With
    ``num_splits=4`` one partition has the (up to) four quadrants as
    children; with ``num_splits=2`` the rectangle is first cut into a top
    and bottom half, and each half into left and right, so every partition
    is binary. Recursion stops at single pixels.

    Args:
        height: image rows.
        width: image columns.
        num_splits: 4 or 2 children per level.

    Returns:
        A validated region graph.
    """
    H, W = _pos_int(height, "height"), _pos_int(width, "width")
    if num_splits not in (2, 4):
        raise ValueError(f"num_splits must be 2 or 4, got {num_splits!r}")
    rg = RegionGraph()
    cache: dict[tuple[int, int, int, int], int] = {}

    def region(r0: int, r1: int, c0: int, c1: int) -> int:
        key = (r0, r1, c0, c1)
        if key in cache:
            return cache[key]
        rid = rg.add_region(_rect_vars(r0, r1, c0, c1, W))
        cache[key] = rid
        rows = [(r0, (r0 + r1 + 1) // 2), ((r0 + r1 + 1) // 2, r1)] if r1 - r0 > 1 else [(r0, r1)]
        cols = [(c0, (c0 + c1 + 1) // 2), ((c0 + c1 + 1) // 2, c1)] if c1 - c0 > 1 else [(c0, c1)]
        if len(rows) * len(cols) == 1:
            return rid
        if num_splits == 4 or len(rows) == 1 or len(cols) == 1:
            rg.add_partition(rid, [region(a, b, c, d) for a, b in rows for c, d in cols])
        else:
            halves = []
            for a, b in rows:
                key2 = (a, b, c0, c1)
                if key2 in cache:
                    halves.append(cache[key2])
                    continue
                h = rg.add_region(_rect_vars(a, b, c0, c1, W))
                cache[key2] = h
                rg.add_partition(h, [region(a, b, c, d) for c, d in cols])
                halves.append(h)
            rg.add_partition(rid, halves)
        return rid

    region(0, H, 0, W)
    rg.validate()
    return rg


def poon_domingos(height: int, width: int, delta: int | Sequence[int] = 1, max_regions: int = 200_000) -> RegionGraph:
    """The Poon-Domingos region graph over an image (Poon & Domingos, 2011).

    Regions are the axis-aligned rectangles whose corners lie on a grid of
    step ``delta`` (plus the image border); every region is partitioned in
    every possible way into two rectangles by one horizontal or vertical
    cut on that grid. Rectangles too small to cut further are input regions
    over all their pixels. Several ``delta`` values (coarse to fine) give the
    union of their cut lines.

    Args:
        height: image rows.
        width: image columns.
        delta: cut step in pixels, or several steps.
        max_regions: refuse graphs with more regions than this.

    Returns:
        A validated region graph.
    """
    H, W = _pos_int(height, "height"), _pos_int(width, "width")
    deltas = [delta] if isinstance(delta, (int, np.integer)) else list(delta)
    if not deltas:
        raise ValueError("delta must be a positive int or a non-empty list of them")
    deltas = [_pos_int(d, "delta") for d in deltas]
    rows = sorted({0, H} | {r for d in deltas for r in range(0, H, d)})
    cols = sorted({0, W} | {c for d in deltas for c in range(0, W, d)})
    n_rect = (len(rows) * (len(rows) - 1) // 2) * (len(cols) * (len(cols) - 1) // 2)
    if n_rect > max_regions:
        raise ValueError(f"delta: gives {n_rect} regions, more than max_regions={max_regions}; use a larger delta")
    rg = RegionGraph()
    ids: dict[tuple[int, int, int, int], int] = {}
    # create regions from small to large so children exist first
    rects = [
        (a, b, c, d)
        for ai, a in enumerate(rows)
        for b in rows[ai + 1 :]
        for ci, c in enumerate(cols)
        for d in cols[ci + 1 :]
    ]
    rects.sort(key=lambda t: (t[1] - t[0]) * (t[3] - t[2]))
    for a, b, c, d in rects:
        ids[(a, b, c, d)] = rg.add_region(_rect_vars(a, b, c, d, W))
    for a, b, c, d in rects:
        rid = ids[(a, b, c, d)]
        for r in rows:
            if a < r < b:
                rg.add_partition(rid, [ids[(a, r, c, d)], ids[(r, b, c, d)]])
        for cc in cols:
            if c < cc < d:
                rg.add_partition(rid, [ids[(a, b, c, cc)], ids[(a, b, cc, d)]])
    rg.validate()
    return rg


def linear_chain(num_vars: int) -> RegionGraph:
    """The chain of an HMM: region ``{0..t}`` is split into ``{0..t-1}`` and ``{t}``.

    Args:
        num_vars: sequence length ``T``.

    Returns:
        A validated region graph with ``2T - 1`` regions.
    """
    T = _pos_int(num_vars, "num_vars")
    rg = RegionGraph()
    prefix = rg.add_region([0])
    for t in range(1, T):
        r = rg.add_region(range(t + 1))
        rg.add_partition(r, [prefix, rg.add_region([t])])
        prefix = r
    rg.validate()
    return rg


def tree_region_graph(tree: nx.Graph | Sequence[tuple[int, int]], root_var: int | None = None) -> RegionGraph:
    """The region graph of a tree over variables ``0..V-1`` (as in a hidden tree model).

    For tree node ``v`` the region over ``v``'s subtree is split into
    ``{v}`` and the subtree regions of ``v``'s children; leaves of the tree
    are single-variable regions.

    Args:
        tree: an undirected tree spanning ``0..V-1`` (networkx graph or edges).
        root_var: the root (``None``: a centre of the tree).

    Returns:
        A validated region graph.
    """
    g = nx.Graph(tree) if isinstance(tree, nx.Graph) else nx.Graph(list(tree))
    n = g.number_of_nodes()
    if n == 0 or sorted(g.nodes) != list(range(n)) or not nx.is_tree(g):
        raise ValueError(f"tree: must be a tree spanning variables 0..{max(n - 1, 0)}")
    root = tree_center(g) if root_var is None else root_var
    if root not in g:
        raise ValueError(f"root_var must be a variable of the tree, got {root_var!r}")
    directed = nx.bfs_tree(g, root)
    rg = RegionGraph()
    sub: dict[int, int] = {}
    for v in reversed(list(nx.topological_sort(directed))):
        kids = sorted(directed.successors(v))
        if not kids:
            sub[v] = rg.add_region([v])
            continue
        scope = {v}.union(*(rg.scope(sub[c]) for c in kids))
        r = rg.add_region(scope)
        rg.add_partition(r, [rg.add_region([v])] + [sub[c] for c in kids])
        sub[v] = r
    rg.validate()
    return rg


def chow_liu(
    data: np.ndarray | torch.Tensor,
    num_cats: int | Sequence[int] | None = None,
    pseudocount: float = 1.0,
    root_var: int | None = None,
) -> RegionGraph:
    """The region graph of the Chow-Liu tree of ``data`` (mutual information from counts, maximum spanning tree).

    Args:
        data: ``[N, V]`` discrete data.
        num_cats: categories per variable (``None``: inferred).
        pseudocount: smoothing of the pairwise counts.
        root_var: root of the tree (``None``: a centre).

    Returns:
        A validated region graph (see [`tree_region_graph`][pcircuits.region_graphs.constructors.tree_region_graph]).
    """
    return tree_region_graph(chow_liu_tree(data, num_cats, pseudocount), root_var)


def fully_factorized(num_vars: int) -> RegionGraph:
    """One root region with a single partition into all single-variable regions.

    Args:
        num_vars: number of variables ``V``.
    """
    V = _pos_int(num_vars, "num_vars")
    rg = RegionGraph()
    root = rg.add_region(range(V))
    if V > 1:
        rg.add_partition(root, [rg.add_region([v]) for v in range(V)])
    rg.validate()
    return rg


def tree_center(tree: nx.Graph) -> int:
    """A node of minimum eccentricity (the middle of a longest path), found with two BFS passes."""
    start = next(iter(tree.nodes))
    d1 = nx.single_source_shortest_path_length(tree, start)
    a = max(d1, key=d1.get)
    paths = nx.single_source_shortest_path(tree, a)
    b = max(paths, key=lambda n: len(paths[n]))
    path = paths[b]
    return int(path[len(path) // 2])
