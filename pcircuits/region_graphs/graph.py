"""The [`RegionGraph`][pcircuits.region_graphs.graph.RegionGraph] type: regions (variable scopes) and their
partitions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import networkx as nx

from ..atomic import atomic_write

__all__ = ["RegionGraph"]

_FORMAT = "pcircuits-region-graph"


class RegionGraph:
    """A DAG of regions and partitions, backed by a ``networkx.DiGraph``.

    A *region* is a set of variables (its scope). A *partition* splits a
    region into child regions. Edges go from a region to its partitions and
    from a partition to its child regions. Regions without partitions are
    *input regions* (they get leaves). A valid region graph has one root
    region over variables ``0..V-1``; every partition's children have
    pairwise disjoint scopes (decomposability) whose union is the parent's
    scope (smoothness of the sums over partitions).

    Node ids are ints; node attributes are ``kind`` (``"region"`` or
    ``"partition"``) and, for regions, ``scope`` (a ``frozenset``).

    Examples:
        >>> rg = RegionGraph()
        >>> root = rg.add_region({0, 1})
        >>> rg.add_partition(root, [rg.add_region({0}), rg.add_region({1})])
        3
        >>> rg.validate()
    """

    def __init__(self) -> None:
        self.graph = nx.DiGraph()
        self._next = 0

    # ------------------------------------------------------------ building
    def add_region(self, scope: Iterable[int]) -> int:
        """Adds a region over ``scope`` and returns its id.

        Raises:
            ValueError: ``scope`` is empty or holds something other than non-negative ints.
        """
        s = frozenset(scope)
        if not s:
            raise ValueError("scope: a region needs at least one variable")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in s):
            raise ValueError(f"scope: variables must be non-negative ints, got {sorted(s, key=repr)[:8]}")
        rid = self._next
        self._next += 1
        self.graph.add_node(rid, kind="region", scope=s)
        return rid

    def add_partition(self, region: int, children: Sequence[int]) -> int:
        """Adds a partition of ``region`` into the regions ``children``; returns its id.

        Raises:
            ValueError: ``region`` or a child is not a region of this graph, or
                ``children`` is empty.
        """
        self._check_region(region, "region")
        children = list(children)
        if not children:
            raise ValueError("children: a partition needs at least one child region")
        for c in children:
            self._check_region(c, "children")
        pid = self._next
        self._next += 1
        self.graph.add_node(pid, kind="partition")
        self.graph.add_edge(region, pid)
        for c in children:
            self.graph.add_edge(pid, c)
        return pid

    def _check_region(self, r: int, arg: str) -> None:
        if r not in self.graph or self.graph.nodes[r]["kind"] != "region":
            raise ValueError(f"{arg}: {r!r} is not a region of this graph")

    # ------------------------------------------------------------ queries
    @property
    def regions(self) -> list[int]:
        """All region ids."""
        return [n for n, k in self.graph.nodes(data="kind") if k == "region"]

    @property
    def partitions(self) -> list[int]:
        """All partition ids."""
        return [n for n, k in self.graph.nodes(data="kind") if k == "partition"]

    @property
    def input_regions(self) -> list[int]:
        """Regions without partitions (they hold the leaves)."""
        return [r for r in self.regions if self.graph.out_degree(r) == 0]

    @property
    def root(self) -> int:
        """The region without parents.

        Raises:
            ValueError: there is not exactly one such region.
        """
        roots = [r for r in self.regions if self.graph.in_degree(r) == 0]
        if len(roots) != 1:
            raise ValueError(f"region graph has {len(roots)} root regions, expected exactly 1")
        return roots[0]

    @property
    def num_vars(self) -> int:
        """Number of variables of the root region."""
        return len(self.scope(self.root))

    def scope(self, region: int) -> frozenset[int]:
        """The variables of ``region``."""
        self._check_region(region, "region")
        return self.graph.nodes[region]["scope"]

    def region_partitions(self, region: int) -> list[int]:
        """The partitions of ``region`` (in insertion order)."""
        self._check_region(region, "region")
        return list(self.graph.successors(region))

    def partition_children(self, partition: int) -> list[int]:
        """The child regions of ``partition`` (in insertion order)."""
        if partition not in self.graph or self.graph.nodes[partition]["kind"] != "partition":
            raise ValueError(f"partition: {partition!r} is not a partition of this graph")
        return list(self.graph.successors(partition))

    def topological_regions(self) -> list[int]:
        """Regions ordered children first (input regions before the root)."""
        return [n for n in reversed(list(nx.topological_sort(self.graph))) if self.graph.nodes[n]["kind"] == "region"]

    def __repr__(self) -> str:
        return f"RegionGraph(regions={len(self.regions)}, partitions={len(self.partitions)})"

    # ------------------------------------------------------------ validity
    def is_smooth(self) -> bool:
        """Every partition's children cover exactly its region's scope."""
        return self._problem(check_decomposable=False, check_smooth=True) is None

    def is_decomposable(self) -> bool:
        """Every partition's children have pairwise disjoint scopes."""
        return self._problem(check_decomposable=True, check_smooth=False) is None

    def _problem(self, check_decomposable: bool = True, check_smooth: bool = True) -> str | None:
        for p in self.partitions:
            parents = list(self.graph.predecessors(p))
            if len(parents) != 1:
                return f"partition {p} has {len(parents)} parent regions, expected 1"
            kids = self.partition_children(p)
            if not kids:
                return f"partition {p} has no child regions"
            seen: set[int] = set()
            for c in kids:
                s = self.scope(c)
                if check_decomposable and seen & s:
                    return f"partition {p} is not decomposable: its children share variables {sorted(seen & s)[:8]}"
                seen |= s
            if check_smooth and seen != self.scope(parents[0]):
                return (
                    f"partition {p} of region {parents[0]} is not smooth: its children cover {sorted(seen)[:8]}..., "
                    f"the region's scope is {sorted(self.scope(parents[0]))[:8]}..."
                )
        return None

    def validate(self) -> None:
        """Checks the graph is a valid, smooth and decomposable region graph.

        Raises:
            ValueError: a cycle, not exactly one root, a root scope other than
                ``0..V-1``, a region/partition edge of the wrong kind, or a
                partition that is not smooth or not decomposable.
        """
        if self.graph.number_of_nodes() == 0:
            raise ValueError("region graph is empty")
        if not nx.is_directed_acyclic_graph(self.graph):
            raise ValueError("region graph has a cycle")
        for u, v in self.graph.edges:
            ku, kv = self.graph.nodes[u]["kind"], self.graph.nodes[v]["kind"]
            if ku == kv:
                raise ValueError(
                    f"edge {u}->{v} connects two {ku}s; edges must alternate region -> partition -> region"
                )
        root = self.root
        scope = self.scope(root)
        if scope != frozenset(range(len(scope))):
            raise ValueError(f"root region's scope must be 0..{len(scope) - 1}, got {sorted(scope)[:8]}...")
        problem = self._problem()
        if problem:
            raise ValueError(problem)

    # ------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable description (regions with scopes, partitions with parent and children)."""
        regions = [{"id": r, "scope": sorted(self.scope(r))} for r in self.regions]
        parts = [
            {"id": p, "region": next(iter(self.graph.predecessors(p))), "children": self.partition_children(p)}
            for p in self.partitions
        ]
        return {"format": _FORMAT, "version": 1, "regions": regions, "partitions": parts}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RegionGraph":
        """Rebuilds a graph written by [`to_json`][pcircuits.region_graphs.graph.RegionGraph.to_json] (ids are kept).

        Raises:
            ValueError: ``data`` is not a region-graph description.
        """
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("data: not a pcircuits region graph description")
        rg = cls()
        try:
            for r in data["regions"]:
                s = frozenset(int(v) for v in r["scope"])
                rg.graph.add_node(int(r["id"]), kind="region", scope=s)
            for p in data["partitions"]:
                pid = int(p["id"])
                if pid in rg.graph:
                    raise ValueError(f"data: id {pid} used twice")
                rg.graph.add_node(pid, kind="partition")
                rg.graph.add_edge(int(p["region"]), pid)
                for c in p["children"]:
                    rg.graph.add_edge(pid, int(c))
        except (KeyError, TypeError) as e:
            raise ValueError(f"data: malformed region graph description ({e})") from None
        if any("kind" not in d for _, d in rg.graph.nodes(data=True)):
            raise ValueError("data: a partition refers to an unknown region")
        rg._next = max(rg.graph.nodes, default=-1) + 1
        return rg

    def save(self, path: str | os.PathLike) -> None:
        """Writes the graph to ``path`` as JSON (atomically: a failed save leaves a previous file intact)."""
        text = json.dumps(self.to_json())
        with atomic_write(path, "w") as f:
            f.write(text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RegionGraph":
        """Reads a graph written by [`save`][pcircuits.region_graphs.graph.RegionGraph.save].

        Raises:
            ValueError: the file is missing or not a region-graph JSON file.
        """
        if not os.path.isfile(path):
            raise ValueError(f"path: no such file {os.fspath(path)!r}")
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"path: {os.fspath(path)!r} is not a region graph JSON file ({e})") from None
        return cls.from_json(data)
