"""Compile a symbolic node-group DAG into layers and index tensors.

The layout is pure structure (no parameters, no torch modules): the leaf
layer, then one layer per (depth, kind), each occupying a contiguous range
of node ids. A layer reads its children through a [`Gather`][pcircuits.engine.layout.Gather] that picks
the needed columns of earlier layers' outputs, so a forward pass is a few
batched tensor operations per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..distributions.base import Distribution
from ..nodes import InputGroup, NodeGroup, ProductGroup, SumGroup, topological_order

__all__ = ["Gather", "LeafBlock", "ProductLayer", "SumBlock", "SumLayer", "Layout", "build_layout"]


@dataclass
class Gather:
    """How a layer collects its ``R`` child references from earlier layers.

    ``sources[i]`` is a layer index and ``indices[i]`` the columns read from
    it; the selected columns (and a zero column when ``pad``) are
    concatenated, then reordered by ``perm``. With one source, no pad and no
    permutation the read is a single ``index_select`` (or none when
    ``identity``).
    """

    sources: list[int]
    indices: list[torch.Tensor]
    perm: torch.Tensor | None
    pad: bool
    identity: bool = False
    #: per source, the first column when ``indices[i]`` is a contiguous range (read as a view)
    starts: list[int | None] = field(default_factory=list)
    #: per source, the number of columns read
    lengths: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.starts = [_range_start(ix) for ix in self.indices]
        self.lengths = [ix.numel() for ix in self.indices]


#: index tensors up to this size are inspected as Python lists (cheaper than tensor operations)
_SMALL = 256


def _range_start(ix: torch.Tensor) -> int | None:
    """The first entry of ``ix`` when it is the contiguous range ``start, start+1, ...``, else ``None``."""
    n = ix.numel()
    if n == 0:
        return None
    if n <= _SMALL:
        values = ix.tolist()
        start = values[0]
        return start if values == list(range(start, start + n)) else None
    start = int(ix[0])
    return start if torch.equal(ix, torch.arange(start, start + n)) else None


@dataclass
class LeafBlock:
    """Input groups with equal distribution fold key
    ([`Distribution.fold_key`][pcircuits.distributions.base.Distribution.fold_key]) and size, computed together."""

    dist: Distribution
    num_nodes: int  # n, nodes per group
    groups: list[InputGroup]
    vars: torch.Tensor  # [G] variable of each group
    bank: str  # name of the parameter bank
    slots: torch.Tensor  # [G] row of each group in its bank
    offset: int  # first column in the leaf layer


@dataclass
class ProductLayer:
    """Product nodes with fan-in padded to ``k`` (pads read a zero column).

    ``gather`` reads all ``N * k`` child references node-major (used by
    downward passes); ``terms[j]`` reads the ``N`` references of child slot
    ``j``, so the upward pass is a sum of ``k`` gathers.
    """

    gather: Gather
    num_nodes: int
    k: int
    groups: list[ProductGroup]
    terms: list[Gather]


@dataclass
class SumBlock:
    """Sum groups of one layer with equal shape.

    Dense blocks read ``[G, k]`` children (the same for all ``n`` nodes of a
    group); sparse blocks read ``[G, n, k]`` children padded per node.
    """

    dense: bool
    num_groups: int
    num_nodes: int
    k: int
    bank: str
    slots: torch.Tensor  # [G]
    ref_offset: int  # first child reference of the block in the layer's gather
    groups: list[SumGroup]
    #: first slot when ``slots`` is a contiguous range (the weights are then a view)
    slot_start: int | None = None

    def __post_init__(self) -> None:
        self.slot_start = _range_start(self.slots)


@dataclass
class SumLayer:
    gather: Gather
    blocks: list[SumBlock]
    num_nodes: int


@dataclass
class BankSpec:
    """A parameter bank: ``slots`` parameter rows of shape ``shape`` each."""

    kind: str  # "sum" or "leaf"
    shape: tuple[int, ...]
    slots: int = 0
    dist: Distribution | None = None  # the family shared by all slots (each slot's values: its group's dist)
    groups: list[NodeGroup] = field(default_factory=list)  # the group owning each slot
    masks: list[torch.Tensor] = field(default_factory=list)  # sparse sums: [n, k] bool per slot
    child_index: list[torch.Tensor] = field(default_factory=list)  # sparse sums: [n, k] child per slot


@dataclass
class Layout:
    root: NodeGroup
    groups: list[NodeGroup]  # topological order
    num_vars: int
    var_cats: list[int | None]  # categories per variable (None: continuous)
    leaf_blocks: list[LeafBlock]
    layers: list[ProductLayer | SumLayer]  # inner layers; layer i+1 in the output list
    layer_sizes: list[int]  # nodes per layer, leaf layer first
    banks: dict[str, BankSpec]
    #: id(group owning parameters) -> (bank, slot); keyed by the identity of this layout's own groups, so it is
    #: rebuilt by `rekey` whenever the groups are copied with the layout (deepcopy, unpickling)
    param_slot: dict[int, tuple[str, int]]
    #: layer -> (chunk sizes, {(start, length): chunk}) for outputs read as several column ranges
    splits: dict[int, tuple[list[int], dict[tuple[int, int], int]]] = field(default_factory=dict)
    #: layer -> index of the last layer reading its output (lets a forward pass free it early)
    last_use: dict[int, int] = field(default_factory=dict)

    def rekey(self) -> None:
        """Rebuilds `param_slot` from the parameter owners of the banks (after the groups were copied).

        A copied layout holds copies of its groups, whose identities differ
        from the keys it was built with: without this, a lookup by one of its
        own groups would fail, and a lookup by an unrelated object that
        happened to reuse a freed identity could return another group's slot.
        """
        self.param_slot = {
            id(owner): (bank, slot) for bank, spec in self.banks.items() for slot, owner in enumerate(spec.groups)
        }


def _check_scope(root: NodeGroup, groups: list[NodeGroup]) -> tuple[int, list[int | None]]:
    scope = root.scope_set
    num_vars = len(scope)
    if scope.lo != 0 or scope.mask is not None:  # not exactly 0..num_vars-1
        present = set(scope.variables())
        missing = [v for v in range(scope.hi + 1) if v not in present][:8]
        raise ValueError(
            f"root: the circuit's variables must be 0..num_vars-1; variables {missing} are absent from {root!r}"
        )
    cats: list[int | None] = [None] * num_vars
    kinds: list[bool | None] = [None] * num_vars
    for g in groups:
        if isinstance(g, InputGroup):
            if kinds[g.var] is not None and kinds[g.var] != g.dist.discrete:
                raise ValueError(f"variable {g.var} has both discrete and continuous leaves ({g!r})")
            kinds[g.var] = g.dist.discrete
            if g.dist.discrete:
                # the variable's domain is its widest leaf's; a narrower leaf gives probability 0
                # outside its own categories (see DiscreteDistribution.log_prob)
                cats[g.var] = max(cats[g.var] or 0, g.dist.num_cats)
    return num_vars, cats


def _gather(lay: torch.Tensor, col: torch.Tensor, layer_sizes: list[int]) -> Gather:
    """Reference ``r`` reads column ``col[r]`` of layer ``lay[r]``, or the zero pad where ``lay[r] == -1``."""
    present = set(lay.tolist()) if lay.numel() <= _SMALL else set(lay.unique().tolist())
    sources = sorted(present - {-1})
    pad = -1 in present
    if len(sources) == 1 and not pad:
        s = sources[0]
        identity = col.numel() == layer_sizes[s] and _range_start(col) == 0
        return Gather([s], [col], None, False, identity)
    indices, order = [], []
    for s in sources:
        pos = (lay == s).nonzero(as_tuple=True)[0]
        indices.append(col[pos])
        order.append(pos)
    pad_pos = (lay == -1).nonzero(as_tuple=True)[0]
    staged = torch.cat(order) if order else torch.empty(0, dtype=torch.long)
    perm = torch.empty(lay.numel(), dtype=torch.long)
    perm[staged] = torch.arange(staged.numel())
    perm[pad_pos] = staged.numel()  # the zero column appended after the sources
    return Gather(sources, indices, perm, pad)


def build_layout(root: NodeGroup) -> Layout:
    """Checks ``root`` and lays its DAG out in layers: the leaf layer, then product and sum layers by depth.

    Raises:
        ValueError: the root has more than one node, or the variables are not
            ``0..num_vars-1``, or a variable mixes discrete and continuous leaves.
    """
    if not isinstance(root, NodeGroup):
        raise TypeError(f"root must be a node group, got {type(root).__name__}")
    if root.num_nodes != 1:
        raise ValueError(f"root: the root group must have exactly one node, {root!r} has {root.num_nodes}")
    groups = topological_order(root)
    num_vars, var_cats = _check_scope(root, groups)
    banks = _BankBuilder()
    location: dict[int, tuple[int, int]] = {}  # id(group) -> (layer, first column)
    leaf_blocks = _leaf_layer(groups, banks, location)
    layer_sizes = [sum(b.num_nodes * len(b.groups) for b in leaf_blocks)]
    layers: list[ProductLayer | SumLayer] = []
    for kind, members in _inner_layer_groups(groups):
        li = len(layers) + 1
        if kind == "product":
            layer = _product_layer(members, li, location, layer_sizes)
        else:
            layer = _sum_layer(members, li, banks, location, layer_sizes)
        layers.append(layer)
        layer_sizes.append(layer.num_nodes)
    layout = Layout(root, groups, num_vars, var_cats, leaf_blocks, layers, layer_sizes, banks.banks, banks.slot_of)
    layout.splits = _split_plan(layers, layer_sizes)
    layout.last_use = _last_use(layers)
    return layout


class _BankBuilder:
    """Parameter banks as the layers claim them: one slot per parameter owner (tied groups share their owner's)."""

    def __init__(self) -> None:
        self.banks: dict[str, BankSpec] = {}
        self.slot_of: dict[int, tuple[str, int]] = {}

    def slot(self, g: NodeGroup, bank: str, spec: BankSpec) -> int:
        """The slot of ``g``'s parameters in ``bank`` (created as ``spec`` on first use), allocated on first call."""
        owner = getattr(g, "tied_to", None) or g
        if id(owner) in self.slot_of:
            return self.slot_of[id(owner)][1]
        b = self.banks.setdefault(bank, spec)
        idx = b.slots
        b.slots += 1
        b.groups.append(owner)
        self.slot_of[id(owner)] = (bank, idx)
        if isinstance(owner, SumGroup) and owner.edges is not None:
            mask, child = _sparse_rows(owner)
            b.masks.append(mask)
            b.child_index.append(child)
        return idx


def _leaf_layer(groups: list[NodeGroup], banks: _BankBuilder, location: dict) -> list[LeafBlock]:
    """The leaf blocks (input groups of equal signature and size), in order of first appearance."""
    block_of: dict[tuple, list[InputGroup]] = {}
    for g in groups:
        if isinstance(g, InputGroup):
            block_of.setdefault((g.dist.fold_key(), g.num_nodes), []).append(g)
    leaf_blocks: list[LeafBlock] = []
    offset = 0
    for i, ((_, n), members) in enumerate(block_of.items()):
        dist = members[0].dist
        bank = f"leaf{i}"
        spec = BankSpec("leaf", (n, dist.num_params), dist=dist)
        slots = [banks.slot(g, bank, spec) for g in members]
        # tied groups of other blocks cannot exist: ties need equal signature (hence fold key) and size
        for j, g in enumerate(members):
            location[id(g)] = (0, offset + j * n)
        leaf_blocks.append(
            LeafBlock(dist, n, members, torch.tensor([g.var for g in members]), bank, torch.tensor(slots), offset)
        )
        offset += n * len(members)
    return leaf_blocks


def _inner_layer_groups(groups: list[NodeGroup]) -> list[tuple[str, list[NodeGroup]]]:
    """``(kind, groups)`` of every inner layer, bottom up: one layer per (depth, kind), products first."""
    depth: dict[int, int] = {}
    for g in groups:
        depth[id(g)] = 0 if not g.children else 1 + max(depth[id(c)] for c in g.children)
    by_depth: dict[tuple[int, str], list[NodeGroup]] = {}
    for g in groups:
        if g.children:
            by_depth.setdefault((depth[id(g)], g.kind), []).append(g)
    return [(key[1], by_depth[key]) for key in sorted(by_depth, key=lambda t: (t[0], t[1] != "product"))]


def _product_layer(members: list[ProductGroup], li: int, location: dict, layer_sizes: list[int]) -> ProductLayer:
    """Product layer ``li``: fan-in padded to ``k``, one gather of all references and one per child slot."""
    k = max(len(g.children) for g in members)
    lays, cols = [], []
    col = 0
    for g in members:
        location[id(g)] = (li, col)
        col += g.num_nodes
        lay = torch.full((g.num_nodes, k), -1, dtype=torch.long)
        cc = torch.zeros((g.num_nodes, k), dtype=torch.long)
        for j, c in enumerate(g.children):
            lay[:, j], off = location[id(c)]
            cc[:, j] = off + g.edges[:, j]
        lays.append(lay.reshape(-1))
        cols.append(cc.reshape(-1))
    lay_all, col_all = torch.cat(lays), torch.cat(cols)
    terms = [_gather(lay_all.view(-1, k)[:, j], col_all.view(-1, k)[:, j], layer_sizes) for j in range(k)]
    return ProductLayer(_gather(lay_all, col_all, layer_sizes), col, k, members, terms)


def _sum_layer(
    members: list[SumGroup], li: int, banks: _BankBuilder, location: dict, layer_sizes: list[int]
) -> SumLayer:
    """Sum layer ``li``: its groups folded into blocks of equal shape, each block's weights from one bank."""
    shapes: dict[tuple, list[SumGroup]] = {}
    for g in members:
        k = g.num_child_nodes if g.is_dense else int(torch.bincount(g.edges[0]).max())
        shapes.setdefault((g.is_dense, g.num_nodes, k, g.num_child_nodes), []).append(g)
    lays, cols = [], []
    num_refs = 0
    blocks: list[SumBlock] = []
    col = 0
    for (dense, n, k, total), bgroups in shapes.items():
        bank = f"sum_{'dense' if dense else 'sparse'}_{n}x{k}x{total}"
        spec = BankSpec("sum", (n, k))
        slots = [banks.slot(g, bank, spec) for g in bgroups]
        blocks.append(SumBlock(dense, len(bgroups), n, k, bank, torch.tensor(slots), num_refs, bgroups))
        for g, s in zip(bgroups, slots, strict=True):
            location[id(g)] = (li, col)
            col += n
            lay, cc = _sum_group_refs(g, location, None if dense else banks.banks[bank], s)
            lays.append(lay.reshape(-1))
            cols.append(cc.reshape(-1))
            num_refs += lay.numel()
    return SumLayer(_gather(torch.cat(lays), torch.cat(cols), layer_sizes), blocks, col)


def _sum_group_refs(
    g: SumGroup, location: dict, sparse: BankSpec | None, slot: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(layer, column)`` of every child reference of sum group ``g``: ``[num_child_nodes]`` for a dense
    group, ``[n, k]`` padded (layer ``-1``) for a sparse one (its ``sparse`` bank's row ``slot``)."""
    lay = torch.cat([torch.full((c.num_nodes,), location[id(c)][0]) for c in g.children])
    cc = torch.cat([location[id(c)][1] + torch.arange(c.num_nodes) for c in g.children])
    if sparse is None:
        return lay, cc
    mask, child = sparse.masks[slot], sparse.child_index[slot]
    lay = torch.where(mask, lay[child], torch.full_like(child, -1))
    return lay, torch.where(mask, cc[child], torch.zeros_like(child))


def _last_use(layers: list) -> dict[int, int]:
    """For every layer output, the index (in the output list) of the last layer that reads it."""
    last: dict[int, int] = {}
    for li, layer in enumerate(layers):
        gathers = [layer.gather] + (layer.terms if isinstance(layer, ProductLayer) else [])
        for g in gathers:
            for src in g.sources:
                last[src] = li + 1
    return last


def _split_plan(layers: list, layer_sizes: list[int]) -> dict[int, tuple[list[int], dict[tuple[int, int], int]]]:
    """Chunks for layer outputs that several gathers read as column ranges.

    Reading ranges of one tensor as views makes autograd build a full-size
    zero gradient per view; splitting the output once into chunks lets the
    backward pass concatenate the chunk gradients in one operation instead.
    """
    ranges: dict[int, set[tuple[int, int]]] = {}
    for layer in layers:
        gathers = layer.terms if isinstance(layer, ProductLayer) else [layer.gather]
        for g in gathers:
            if g.identity:
                continue
            for src, start, ix in zip(g.sources, g.starts, g.indices, strict=True):
                if start is not None:
                    ranges.setdefault(src, set()).add((start, ix.numel()))
    plan = {}
    for src, rs in ranges.items():
        if len(rs) < 2:
            continue
        cuts = sorted({0, layer_sizes[src]} | {a for a, _ in rs} | {a + n for a, n in rs})
        sizes = [b - a for a, b in zip(cuts, cuts[1:], strict=False)]
        index = {(a, b - a): i for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))}
        plan[src] = (sizes, {r: index[r] for r in rs if r in index})
    return plan


def _sparse_rows(g: SumGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-node child lists of a sparse sum group, padded: (mask ``[n, k]``, child ``[n, k]``)."""
    parents, children = g.edges
    fan_in = torch.bincount(parents, minlength=g.num_nodes)
    k = int(fan_in.max())
    start = torch.cumsum(fan_in, 0) - fan_in
    pos = torch.arange(parents.numel()) - start[parents]  # edges are sorted by parent
    mask = torch.zeros(g.num_nodes, k, dtype=torch.bool)
    child = torch.zeros(g.num_nodes, k, dtype=torch.long)
    mask[parents, pos] = True
    child[parents, pos] = children
    return mask, child
