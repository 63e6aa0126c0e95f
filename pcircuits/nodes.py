"""Symbolic circuits: vectorized groups of input, product and sum nodes.

A circuit is a DAG of *node groups*. Every group holds ``num_nodes`` nodes of
one kind over one scope (a set of variables). Groups may be shared by several
parents, so circuits are DAGs, not only trees. Nothing here computes: a
circuit becomes tensor code through :func:`pcircuits.compile`.

Example:
    >>> import pcircuits as pc
    >>> a = pc.inputs(0, 4, pc.Categorical(3))
    >>> b = pc.inputs(1, 4, pc.Bernoulli())
    >>> root = pc.summate(pc.multiply(a, b), num_nodes=1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Iterator

import torch

from .distributions.base import Distribution

__all__ = [
    "NodeGroup",
    "InputGroup",
    "ProductGroup",
    "SumGroup",
    "inputs",
    "multiply",
    "summate",
    "topological_order",
]


class NodeGroup:
    """A vector of ``num_nodes`` circuit nodes of the same kind and scope.

    Attributes:
        num_nodes: number of nodes in the group.
        children: child groups, in order.
        scope: the variables the group's nodes are defined over.
        name: optional label used in error messages.
    """

    kind: str = "group"

    def __init__(self, num_nodes: int, children: Sequence["NodeGroup"], scope: frozenset[int], name: str | None):
        if not isinstance(num_nodes, int) or isinstance(num_nodes, bool):
            raise TypeError(f"num_nodes must be an int, got {type(num_nodes).__name__}")
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
        self.num_nodes = num_nodes
        self.children: tuple[NodeGroup, ...] = tuple(children)
        self.scope = scope
        self.name = name

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        scope = sorted(self.scope)
        shown = scope if len(scope) <= 8 else scope[:8] + ["..."]
        return f"{type(self).__name__}{label}(num_nodes={self.num_nodes}, scope={shown})"

    def __iter__(self) -> Iterator["NodeGroup"]:
        """Iterates over all groups of the sub-circuit rooted here, children first."""
        return iter(topological_order(self))


class InputGroup(NodeGroup):
    """``num_nodes`` leaves over one variable, all with the same distribution family.

    Every node has its own parameters (``dist`` describes the family and its
    hyperparameters). With ``tie_with`` the group shares the parameters of
    another input group of the same family and size.
    """

    kind = "input"

    def __init__(
        self,
        var: int,
        num_nodes: int,
        dist: Distribution,
        tie_with: "InputGroup | None" = None,
        name: str | None = None,
    ):
        if not isinstance(var, int) or isinstance(var, bool) or var < 0:
            raise ValueError(f"var must be a non-negative int, got {var!r}")
        if not isinstance(dist, Distribution):
            raise TypeError(f"dist must be a pcircuits distribution (e.g. pc.Categorical(3)), got {type(dist).__name__}")
        super().__init__(num_nodes, (), frozenset({var}), name)
        dist.check_num_nodes(num_nodes)
        self.var = var
        self.dist = dist
        if tie_with is not None:
            if not isinstance(tie_with, InputGroup):
                raise TypeError(f"tie_with must be an InputGroup, got {type(tie_with).__name__}")
            if tie_with.dist.signature() != dist.signature() or tie_with.num_nodes != num_nodes:
                raise ValueError(
                    f"tie_with: {tie_with!r} has distribution {tie_with.dist!r}, this group {dist!r} with "
                    f"{num_nodes} nodes; tied groups need the same distribution and number of nodes"
                )
            tie_with = tie_with.tied_to or tie_with
        self.tied_to: InputGroup | None = tie_with


class ProductGroup(NodeGroup):
    """Products of one node from each child group.

    ``edges[i, j]`` is the node of child group ``j`` that product node ``i``
    multiplies. The default pairs nodes element-wise, which needs all child
    groups to have the same size.
    """

    kind = "product"

    def __init__(self, children: Sequence[NodeGroup], edges: torch.Tensor | None = None, name: str | None = None):
        children = tuple(children)
        if len(children) == 0:
            raise ValueError("multiply: needs at least one child group")
        for c in children:
            if not isinstance(c, NodeGroup):
                raise TypeError(f"multiply: children must be node groups, got {type(c).__name__}")
        if edges is None:
            sizes = {c.num_nodes for c in children}
            if len(sizes) != 1:
                raise ValueError(
                    "multiply: element-wise products need child groups of equal size, got sizes "
                    f"{[c.num_nodes for c in children]}; pass edges=[num_nodes, num_children] for other patterns"
                )
            n = children[0].num_nodes
            edges = torch.arange(n).unsqueeze(1).expand(n, len(children)).clone()
        else:
            edges = torch.as_tensor(edges)
            if edges.dtype.is_floating_point or edges.dim() != 2 or edges.shape[1] != len(children):
                raise ValueError(
                    f"multiply: edges must be an integer tensor of shape [num_nodes, {len(children)}], "
                    f"got {tuple(edges.shape)} of {edges.dtype}"
                )
            edges = edges.long()
            for j, c in enumerate(children):
                col = edges[:, j]
                if col.numel() and (col.min() < 0 or col.max() >= c.num_nodes):
                    raise ValueError(f"multiply: edges[:, {j}] must index nodes of {c!r} (0..{c.num_nodes - 1})")
        scope: frozenset[int] = frozenset()
        seen: set[int] = set()
        for c in children:
            overlap = seen & c.scope
            if overlap:
                raise ValueError(
                    f"multiply{' ' + repr(name) if name else ''}: product is not decomposable: children share "
                    f"variables {sorted(overlap)[:8]} (child {c!r})"
                )
            seen |= c.scope
        scope = frozenset(seen)
        super().__init__(int(edges.shape[0]), children, scope, name)
        self.edges = edges


class SumGroup(NodeGroup):
    """Weighted sums (mixtures) over the nodes of the child groups.

    The child groups' nodes are numbered consecutively in order of the
    children. ``edges`` is ``[2, E]``: ``edges[0]`` the sum node, ``edges[1]``
    the child node it connects to. The default connects every sum node to
    every child node. With ``tie_with`` the group shares the weights of another
    sum group with the same edges.
    """

    kind = "sum"

    def __init__(
        self,
        children: Sequence[NodeGroup],
        num_nodes: int,
        edges: torch.Tensor | None = None,
        tie_with: "SumGroup | None" = None,
        name: str | None = None,
    ):
        children = tuple(children)
        if len(children) == 0:
            raise ValueError("summate: needs at least one child group")
        for c in children:
            if not isinstance(c, NodeGroup):
                raise TypeError(f"summate: children must be node groups, got {type(c).__name__}")
        scope = children[0].scope
        for c in children[1:]:
            if c.scope != scope:
                diff = sorted(scope ^ c.scope)[:8]
                raise ValueError(
                    f"summate{' ' + repr(name) if name else ''}: sum is not smooth: child {c!r} has a different "
                    f"scope than {children[0]!r} (they differ on variables {diff})"
                )
        super().__init__(num_nodes, children, scope, name)
        total = sum(c.num_nodes for c in children)
        if edges is not None:
            edges = torch.as_tensor(edges)
            if edges.dtype.is_floating_point or edges.dim() != 2 or edges.shape[0] != 2:
                raise ValueError(f"summate: edges must be an integer tensor of shape [2, E], got {tuple(edges.shape)}")
            edges = edges.long()
            if edges.numel() == 0:
                raise ValueError("summate: edges is empty")
            if edges[0].min() < 0 or edges[0].max() >= num_nodes:
                raise ValueError(f"summate: edges[0] must index sum nodes 0..{num_nodes - 1}")
            if edges[1].min() < 0 or edges[1].max() >= total:
                raise ValueError(f"summate: edges[1] must index child nodes 0..{total - 1}")
            fan_in = torch.bincount(edges[0], minlength=num_nodes)
            if (fan_in == 0).any():
                raise ValueError(f"summate: sum node {int((fan_in == 0).nonzero()[0])} has no edge")
            key = edges[0] * total + edges[1]
            if key.unique().numel() != key.numel():
                raise ValueError("summate: edges contains a duplicate edge")
            order = torch.argsort(key)
            edges = edges[:, order]
            if edges.shape[1] == num_nodes * total:
                edges = None  # complete: same as the default
        self.edges = edges
        self.num_child_nodes = total
        if tie_with is not None:
            if not isinstance(tie_with, SumGroup):
                raise TypeError(f"tie_with must be a SumGroup, got {type(tie_with).__name__}")
            same_edges = (tie_with.edges is None and edges is None) or (
                tie_with.edges is not None and edges is not None and torch.equal(tie_with.edges, edges)
            )
            if tie_with.num_nodes != num_nodes or tie_with.num_child_nodes != total or not same_edges:
                raise ValueError(
                    f"tie_with: {tie_with!r} has a different shape or edge pattern than this group; "
                    "tied sum groups need the same number of nodes, child nodes and edges"
                )
            tie_with = tie_with.tied_to or tie_with
        self.tied_to: SumGroup | None = tie_with

    @property
    def is_dense(self) -> bool:
        """True when every sum node connects to every child node."""
        return self.edges is None


def inputs(
    var: int, num_nodes: int, dist: Distribution, tie_with: InputGroup | None = None, name: str | None = None
) -> InputGroup:
    """Creates ``num_nodes`` input nodes over variable ``var`` with distribution family ``dist``."""
    return InputGroup(var, num_nodes, dist, tie_with=tie_with, name=name)


def multiply(*groups: NodeGroup, edges: torch.Tensor | None = None, name: str | None = None) -> ProductGroup:
    """Creates product nodes over child groups with disjoint scopes (element-wise unless ``edges``)."""
    return ProductGroup(groups, edges=edges, name=name)


def summate(
    *groups: NodeGroup,
    num_nodes: int,
    edges: torch.Tensor | None = None,
    tie_with: SumGroup | None = None,
    name: str | None = None,
) -> SumGroup:
    """Creates ``num_nodes`` sum nodes over child groups with the same scope (dense unless ``edges``)."""
    return SumGroup(groups, num_nodes, edges=edges, tie_with=tie_with, name=name)


def topological_order(root: NodeGroup) -> list[NodeGroup]:
    """All groups reachable from ``root``, each once, children before parents."""
    order: list[NodeGroup] = []
    seen: set[int] = set()
    stack: list[tuple[NodeGroup, int]] = [(root, 0)]
    on_stack: set[int] = set()
    while stack:
        g, i = stack.pop()
        if i == 0:
            if id(g) in seen:
                continue
            on_stack.add(id(g))
        if i < len(g.children):
            stack.append((g, i + 1))
            c = g.children[i]
            if id(c) not in seen and id(c) not in on_stack:
                stack.append((c, 0))
        else:
            on_stack.discard(id(g))
            seen.add(id(g))
            order.append(g)
    return order
