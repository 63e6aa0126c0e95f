"""Symbolic circuits: vectorized groups of input, product and sum nodes.

A circuit is a DAG of *node groups*. Every group holds ``num_nodes`` nodes of
one kind over one scope (a set of variables). Groups may be shared by several
parents, so circuits are DAGs, not only trees. Nothing here computes: a
circuit becomes tensor code through [`pcircuits.compile`][pcircuits.engine.circuit.compile].

Examples:
    >>> import pcircuits as pc
    >>> a = pc.inputs(0, 4, pc.Categorical(3))
    >>> b = pc.inputs(1, 4, pc.Bernoulli())
    >>> root = pc.summate(pc.multiply(a, b), num_nodes=1)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Iterator

import torch

from ._index import as_int
from .distributions.base import Distribution

__all__ = [
    "NodeGroup",
    "Scope",
    "InputGroup",
    "ProductGroup",
    "SumGroup",
    "inputs",
    "multiply",
    "summate",
    "topological_order",
]


class Scope:
    """An immutable set of variables, stored compactly.

    A contiguous scope ``{lo, ..., hi}`` is two integers (so the scopes of a
    chain such as an HMM cost O(1) each); any other scope is one Python int
    used as a bitmask (bit ``v`` set for variable ``v``). Sums share their
    first child's ``Scope`` object, so a group never copies its
    descendants' variables. Equal sets always have the same representation.
    """

    __slots__ = ("lo", "hi", "mask")

    def __init__(self, lo: int, hi: int, mask: int | None = None):
        self.lo = lo  # smallest variable
        self.hi = hi  # largest variable
        self.mask = mask  # None: every variable lo..hi; else the bitmask

    @staticmethod
    def single(var: int) -> "Scope":
        return Scope(var, var)

    @staticmethod
    def from_mask(mask: int) -> "Scope":
        """The scope of a non-zero bitmask, as an interval when contiguous."""
        lo = (mask & -mask).bit_length() - 1
        hi = mask.bit_length() - 1
        shifted = mask >> lo
        return Scope(lo, hi, None if shifted & (shifted + 1) == 0 else mask)

    def to_mask(self) -> int:
        """The scope as a bitmask (a temporary: O(hi) bits)."""
        if self.mask is not None:
            return self.mask
        return (1 << (self.hi + 1)) - (1 << self.lo)

    def __len__(self) -> int:
        return self.hi - self.lo + 1 if self.mask is None else self.mask.bit_count()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scope):
            return NotImplemented
        return self is other or (self.lo == other.lo and self.hi == other.hi and self.mask == other.mask)

    def __hash__(self) -> int:
        return hash((self.lo, self.hi, self.mask))

    def variables(self) -> list[int]:
        """The variables in increasing order."""
        if self.mask is None:
            return list(range(self.lo, self.hi + 1))
        return _bits(self.mask)

    @staticmethod
    def disjoint_union(scopes: Sequence["Scope"]) -> tuple["Scope", list[int]]:
        """The union of ``scopes`` and the variables shared by two of them (empty when disjoint).

        Intervals are checked in O(k log k) for ``k`` scopes; other scopes
        through bitmasks.
        """
        if all(s.mask is None for s in scopes):
            order = sorted(scopes, key=lambda s: s.lo)
            if all(a.hi < b.lo for a, b in itertools.pairwise(order)):
                if all(a.hi + 1 == b.lo for a, b in itertools.pairwise(order)):
                    return Scope(order[0].lo, order[-1].hi), []
                return Scope.from_mask(_or_masks(order)), []
        seen = 0
        for s in scopes:
            m = s.to_mask()
            overlap = seen & m
            if overlap:
                return Scope.from_mask(seen | m), _bits(overlap)
            seen |= m
        return Scope.from_mask(seen), []


def _or_masks(scopes: Sequence[Scope]) -> int:
    out = 0
    for s in scopes:
        out |= s.to_mask()
    return out


def _bits(mask: int) -> list[int]:
    """Set bits of ``mask`` in increasing order."""
    text = bin(mask)[:1:-1]  # least significant bit first
    return [i for i, b in enumerate(text) if b == "1"]


class NodeGroup:
    """A vector of ``num_nodes`` circuit nodes of the same kind and scope.

    Attributes:
        num_nodes: number of nodes in the group.
        children: child groups, in order.
        name: optional label used in error messages.
    """

    kind: str = "group"

    def __init__(self, num_nodes: int, children: Sequence["NodeGroup"], name: str | None):
        num_nodes = as_int(num_nodes, "num_nodes")
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be at least 1, got {num_nodes}")
        self.num_nodes = num_nodes
        self.children: tuple[NodeGroup, ...] = tuple(children)
        self.name = name

    @property
    def scope_set(self) -> Scope:
        """The compact [`Scope`][pcircuits.nodes.Scope] of the group (shared with children where equal; no copy)."""
        return self._scope

    @property
    def scope(self) -> frozenset[int]:
        """The variables the group's nodes are defined over (built on each access)."""
        return frozenset(self._scope.variables())

    @property
    def num_scope_vars(self) -> int:
        """Number of variables in the scope."""
        return len(self._scope)

    def same_scope(self, other: "NodeGroup") -> bool:
        """Whether ``other`` is over the same variables (without building either set)."""
        return self._scope == other._scope

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        s = self._scope
        if s.mask is None and len(s) > 8:
            shown = f"[{s.lo}..{s.hi}]"
        else:
            scope = s.variables() if len(s) <= 8 else _bits(s.mask)[:8] + ["..."]
            shown = str(scope)
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
        var = as_int(var, "var", minimum=0)
        if not isinstance(dist, Distribution):
            raise TypeError(
                f"dist must be a pcircuits distribution (e.g. pc.Categorical(3)), got {type(dist).__name__}"
            )
        super().__init__(num_nodes, (), name)
        num_nodes = self.num_nodes
        self._scope = Scope.single(var)
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
        scope, overlap = Scope.disjoint_union([c._scope for c in children])
        if overlap:
            holders = [c for c in children if c._scope.to_mask() >> overlap[0] & 1]
            culprit = holders[1] if len(holders) > 1 else holders[0]  # the same group twice: itself
            raise ValueError(
                f"multiply{' ' + repr(name) if name else ''}: product is not decomposable: children share "
                f"variables {overlap[:8]} (child {culprit!r})"
            )
        super().__init__(int(edges.shape[0]), children, name)
        self._scope = scope
        self.edges = edges


def _smooth_scope(children: tuple, name: str | None) -> Scope:
    """The common scope of a sum's (non-empty) child groups; ValueError when they differ."""
    scope = children[0]._scope
    for c in children[1:]:
        if c._scope != scope:
            diff = _bits(scope.to_mask() ^ c._scope.to_mask())[:8]
            raise ValueError(
                f"summate{' ' + repr(name) if name else ''}: sum is not smooth: child {c!r} has a different "
                f"scope than {children[0]!r} (they differ on variables {diff})"
            )
    return scope


def _sum_edges(edges: torch.Tensor | None, num_nodes: int, total: int) -> torch.Tensor | None:
    """Checked sum edges ``[2, E]`` sorted by (sum node, child node); None for the complete pattern.

    ``num_nodes`` sum nodes over ``total`` child nodes; every sum node needs an edge, none repeats.
    """
    if edges is None:
        return None
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
    edges = edges[:, torch.argsort(key)]
    return None if edges.shape[1] == num_nodes * total else edges  # complete: same as the default


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
        num_nodes = as_int(num_nodes, "num_nodes")
        scope = _smooth_scope(children, name)
        super().__init__(num_nodes, children, name)
        self._scope = scope  # the first child's object: no copy
        total = sum(c.num_nodes for c in children)
        edges = _sum_edges(edges, num_nodes, total)
        self.edges = edges
        self.num_child_nodes = total
        self.tied_to: SumGroup | None = self._tie_target(tie_with)

    def _tie_target(self, tie_with: "SumGroup | None") -> "SumGroup | None":
        """The group whose weights this one shares (the root of ``tie_with``'s ties), after checking they fit."""
        if tie_with is None:
            return None
        if not isinstance(tie_with, SumGroup):
            raise TypeError(f"tie_with must be a SumGroup, got {type(tie_with).__name__}")
        edges = self.edges
        same_edges = (tie_with.edges is None and edges is None) or (
            tie_with.edges is not None and edges is not None and torch.equal(tie_with.edges, edges)
        )
        if tie_with.num_nodes != self.num_nodes or tie_with.num_child_nodes != self.num_child_nodes or not same_edges:
            raise ValueError(
                f"tie_with: {tie_with!r} has a different shape or edge pattern than this group; "
                "tied sum groups need the same number of nodes, child nodes and edges"
            )
        return tie_with.tied_to or tie_with

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
