"""The HCLT structure over a given tree: a latent variable per data variable.

:func:`hclt_from_tree` builds the node groups; the Chow-Liu learner
(:func:`pcircuits.learning.learn_hclt`) and the template
(:func:`pcircuits.structures.hclt`) both use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from ..distributions import Categorical
from ..nodes import InputGroup, SumGroup, inputs, multiply, summate
from ..region_graphs.constructors import tree_center

__all__ = ["HCLTGroups", "hclt_from_tree"]


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
