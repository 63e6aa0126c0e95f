"""Hidden Chow-Liu trees (HCLT): a Chow-Liu tree with a latent variable per data variable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from ..distributions import Categorical
from ..nodes import InputGroup, SumGroup, inputs, multiply, summate

__all__ = ["HCLTGroups", "hclt", "hclt_from_tree"]


@dataclass
class HCLTGroups:
    """The groups of an HCLT, for initialising their parameters.

    Attributes:
        root: the root sum group (one node).
        leaves: ``{variable: input group}`` with ``num_latents`` leaves each.
        sums: ``{variable: sum group}`` for every non-root tree node;
            node ``i`` of the group is the parent's latent state ``i``, its
            child node ``j`` the variable's own latent state ``j``.
        tree: the directed tree (edges from parent to child).
        root_var: the tree's root variable.
    """

    root: SumGroup
    leaves: dict[int, InputGroup]
    sums: dict[int, SumGroup]
    tree: nx.DiGraph
    root_var: int


def _check_latents(num_latents: int) -> None:
    if not isinstance(num_latents, int) or isinstance(num_latents, bool) or num_latents < 1:
        raise ValueError(f"num_latents must be a positive int, got {num_latents!r}")


def tree_center(tree: nx.Graph) -> int:
    """A node of minimum eccentricity (the middle of a longest path), found with two BFS passes."""
    start = next(iter(tree.nodes))
    d1 = nx.single_source_shortest_path_length(tree, start)
    a = max(d1, key=d1.get)
    paths = nx.single_source_shortest_path(tree, a)
    b = max(paths, key=lambda n: len(paths[n]))
    path = paths[b]
    return int(path[len(path) // 2])


def hclt_from_tree(
    tree: nx.Graph | Sequence[tuple[int, int]],
    num_latents: int,
    num_cats: int | Sequence[int] = 2,
    root_var: int | None = None,
) -> HCLTGroups:
    """Builds an HCLT over a given tree of variables ``0..V-1``.

    Per variable ``v`` there is a leaf group of ``num_latents`` categorical
    leaves (``p(x_v | z_v)``); per non-root tree node a sum group of
    ``num_latents`` nodes over the element-wise product of its leaf group
    with its children's sum groups (``p(x_subtree | z_parent)``); the root
    variable's product feeds a one-node root sum.

    Args:
        tree: an undirected tree (networkx graph or edge list) spanning ``0..V-1``.
        num_latents: latent states per variable.
        num_cats: categories of every variable, or one number per variable.
        root_var: the root of the tree (``None``: a centre of the tree, which
            gives the fewest layers).

    Returns:
        The groups of the circuit; ``.root`` is the circuit's root.

    Raises:
        ValueError: ``tree`` is not a spanning tree of ``0..V-1``, or bad
            ``num_latents``, ``num_cats`` or ``root_var``.
    """
    _check_latents(num_latents)
    g = nx.Graph(tree) if isinstance(tree, nx.Graph) else nx.Graph(list(tree))
    if g.number_of_nodes() == 0:
        raise ValueError("tree: has no nodes")
    n = g.number_of_nodes()
    if sorted(g.nodes) != list(range(n)) or not nx.is_tree(g):
        raise ValueError(f"tree: must be a tree spanning variables 0..{n - 1}")
    cats = [num_cats] * n if isinstance(num_cats, (int, np.integer)) else list(num_cats)
    if len(cats) != n or any(int(c) < 2 for c in cats):
        raise ValueError(f"num_cats must be an int >= 2 or {n} such ints, got {num_cats!r}")
    if root_var is None:
        root_var = tree_center(g)
    if root_var not in g:
        raise ValueError(f"root_var must be a variable of the tree, got {root_var!r}")
    directed = nx.bfs_tree(g, root_var)
    leaves = {v: inputs(v, num_latents, Categorical(int(cats[v])), name=f"hclt_leaf{v}") for v in range(n)}
    sums: dict[int, SumGroup] = {}
    root = None
    for v in reversed(list(nx.topological_sort(directed))):
        kids = sorted(directed.successors(v))
        prod = multiply(leaves[v], *[sums[c] for c in kids], name=f"hclt_prod{v}")
        if v == root_var:
            root = summate(prod, num_nodes=1, name="hclt_root")
        else:
            sums[v] = summate(prod, num_nodes=num_latents, name=f"hclt_sum{v}")
    assert root is not None
    return HCLTGroups(root, leaves, sums, directed, int(root_var))


def hclt(
    data: np.ndarray | torch.Tensor,
    num_latents: int,
    num_cats: int | Sequence[int] | None = None,
    pseudocount: float = 1.0,
    root_var: int | None = None,
) -> SumGroup:
    """An HCLT whose tree is the Chow-Liu tree of ``data``.

    Args:
        data: ``[N, V]`` discrete training data (category indices).
        num_latents: latent states per variable.
        num_cats: categories per variable (``None``: ``max(data) + 1`` per
            column, at least 2).
        pseudocount: smoothing of the pairwise counts behind the mutual information.
        root_var: root of the tree (``None``: a centre).

    Returns:
        The root group (compile it with :func:`pcircuits.compile`; for a
        clustering-based initialisation and training use
        :func:`pcircuits.learning.learn_hclt`).
    """
    from ..learning.chow_liu import chow_liu_tree, infer_num_cats

    arr = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    cats = infer_num_cats(arr) if num_cats is None else num_cats
    tree = chow_liu_tree(arr, num_cats=cats, pseudocount=pseudocount)
    return hclt_from_tree(tree, num_latents, cats, root_var=root_var).root
