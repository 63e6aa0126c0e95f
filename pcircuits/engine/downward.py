"""Top-down (downward) pass: select one child per active sum node, layer by layer.

Given the layer outputs of an upward pass, the downward pass walks the layers
from the root to the leaves. Every *active* node is a pair ``(row, node)``:
the root is active in every row; an active product node activates all its
children; an active sum node activates one child, chosen either as the
maximiser of ``log w_k + value_k`` (backtracking for MPE, on a max-product
upward pass) or by sampling ``k`` with probability
``w_k * value_k / value_parent`` (on a sum-product upward pass; Gumbel-max).

Active nodes are kept as flat lists of ``(row, column)`` pairs per layer, so
memory and time are linear in the number of nodes on the selected sub-circuits
(at most the circuit size times the number of rows) and the only Python loop
is over layers and sum blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import kernels
from ..distributions.base import DiscreteDistribution, gather_categories
from .blocks import LeafBlockInfo
from .circuit import Evidence, TensorCircuit
from .layout import ProductLayer, SumBlock

__all__ = [
    "Selection",
    "downward",
    "gather_sources",
    "gumbel_argmax",
    "fill_leaves",
    "selected_leaf_logits",
    "empty_assignment",
    "leaf_flows",
]


@dataclass
class Selection:
    """The result of a downward pass.

    Attributes:
        leaf_rows: ``[M]`` row of each selected leaf.
        leaf_cols: ``[M]`` column of each selected leaf in the leaf layer.
        choices: per sum layer (in layer order, as ``(layer index, block index)``
            keys), the tuple ``(rows [A], nodes [A], choice [A])``: for each
            active node of the block (``nodes`` is the node's position inside
            the block, ``group * n + j``) the selected child slot ``0..k-1``.
            Empty unless the pass was asked to record choices.
    """

    leaf_rows: torch.Tensor
    leaf_cols: torch.Tensor
    choices: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _cached(circuit: TensorCircuit, key: tuple, build: Callable[[], Any]) -> Any:
    """``build()``, computed once and kept with the circuit's buffers (cleared when they move)."""
    cache = circuit.__dict__.setdefault("_buffer_cache", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _is_every_row(rows: torch.Tensor, count: int) -> bool:
    """Whether ``rows`` is ``0..count-1`` in order."""
    return rows.numel() == count and bool(torch.equal(rows, torch.arange(count, device=rows.device)))


def gather_sources(circuit: TensorCircuit, li: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where every child reference of inner layer ``li`` reads from.

    Returns:
        ``(layer [R], column [R])``: the layer index (``-1`` for the zero pad)
        and column of each of the layer's ``R`` child references.
    """
    return _cached(circuit, ("gather_sources", li), lambda: _gather_sources(circuit, li))


def _gather_sources(circuit: TensorCircuit, li: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[`gather_sources`][pcircuits.engine.downward.gather_sources], uncached."""
    g = circuit.layout.layers[li].gather
    dev = circuit.device
    if g.identity or g.perm is None:
        col = circuit._get(f"l{li}_src0")
        return torch.full_like(col, g.sources[0]), col
    idx = [circuit._get(f"l{li}_src{si}") for si in range(len(g.sources))]
    lay = [torch.full_like(ix, s) for s, ix in zip(g.sources, idx, strict=True)]
    if g.pad:
        lay.append(torch.full((1,), -1, dtype=torch.long, device=dev))
        idx.append(torch.zeros(1, dtype=torch.long, device=dev))
    perm = circuit._get(f"l{li}_perm")
    return torch.cat(lay)[perm], torch.cat(idx)[perm]


def gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Draws from ``softmax(logits)`` along the last dimension by the Gumbel-max trick.

    Args:
        logits: ``[..., k]`` unnormalised log-probabilities (``-inf`` never drawn
            unless a whole row is ``-inf``).
        generator: random generator (on ``logits``' device) or ``None``.

    Returns:
        ``[...]`` long indices into the last dimension.
    """
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    u = u.clamp_min_(torch.finfo(logits.dtype).tiny)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def _cat_pairs(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows [A], cols [A])`` of several pending lists of active nodes, concatenated."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def downward(
    circuit: TensorCircuit,
    outs: list[torch.Tensor],
    row_source: torch.Tensor,
    semiring: str,
    generator: torch.Generator | None = None,
    log_weights: dict[str, torch.Tensor] | None = None,
    record_choices: bool = False,
) -> Selection:
    """Selects the sub-circuit of each row, from the root to the leaves.

    Args:
        circuit: the compiled circuit.
        outs: the layer outputs ``[B, N_l]`` of [`TensorCircuit.upward`][pcircuits.engine.circuit.TensorCircuit.upward]
            (``semiring="max"``: a max-product pass; ``"sum"``: a sum-product pass).
        row_source: ``[R]`` long, the row of ``outs`` that each of the ``R``
            rows of the pass reads (several rows may share one evidence row,
            e.g. many samples of one conditional).
        semiring: ``"max"`` (backtracking: each selected sum node follows its
            maximising child) or ``"sum"`` (sampling: each draws a child from its posterior).
        generator: random generator for ``semiring="sum"``.
        log_weights: normalised sum log-weights (default: the circuit's).
        record_choices: also return the child chosen by every active sum node.

    Returns:
        The selected leaves (exactly one per variable and row when the row's
        root value is finite) and, on request, the sum-node choices.
    """
    if semiring not in ("sum", "max"):
        raise ValueError(f"semiring must be 'sum' or 'max', got {semiring!r}")
    lay = circuit.layout
    dev = row_source.device
    walk = _Walk(circuit, outs, row_source, semiring, generator, log_weights, record_choices)
    R = row_source.numel()
    pending: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(len(lay.layers) + 1)]
    pending[-1].append((walk.all_rows, torch.zeros(R, dtype=torch.long, device=dev)))
    for li in range(len(lay.layers) - 1, -1, -1):
        parts, pending[li + 1] = pending[li + 1], []
        if parts:
            walk.layer(li, *_cat_pairs(parts), pending)
    if pending[0]:
        leaf_rows, leaf_cols = _cat_pairs(pending[0])
    else:
        leaf_rows = leaf_cols = torch.zeros(0, dtype=torch.long, device=dev)
    return Selection(leaf_rows, leaf_cols, walk.choices)


class _Walk:
    """One downward pass: what its layers share, and the step from a layer's active nodes to its children."""

    def __init__(
        self,
        circuit: TensorCircuit,
        outs: list[torch.Tensor],
        row_source: torch.Tensor,
        semiring: str,
        generator: torch.Generator | None,
        log_weights: dict[str, torch.Tensor] | None,
        record_choices: bool,
    ):
        self.circuit, self.outs, self.row_source = circuit, outs, row_source
        self.semiring, self.generator, self.record = semiring, generator, record_choices
        self.lw = log_weights if log_weights is not None else circuit.sum_log_weights()
        self.choices: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # every pass row, in order: the root's active rows, passed on unchanged wherever a layer keeps one
        # active node per row in row order (a chain); where the pass rows are the evidence rows themselves
        # (MPE), such a layer reads the upward outputs by slicing instead of gathering rows
        self.all_rows = torch.arange(row_source.numel(), device=row_source.device)
        self.rows_are_evidence_rows = _is_every_row(row_source, outs[-1].shape[0])

    def layer(self, li: int, rows: torch.Tensor, cols: torch.Tensor, pending: list) -> None:
        """Activates the children of layer ``li``'s active nodes ``(rows [A], cols [A])`` in ``pending``."""
        layer = self.circuit.layout.layers[li]
        if isinstance(layer, ProductLayer):
            term_cols = _term_columns(self.circuit, li)
            if term_cols is not None:
                # child slot j reads source layer j alone: no per-reference source masks (same order as below)
                for term, col_of_node in zip(layer.terms, term_cols, strict=True):
                    pending[term.sources[0]].append((rows, col_of_node.index_select(0, cols)))
                return
        ref_layer, ref_col = gather_sources(self.circuit, li)
        if isinstance(layer, ProductLayer):
            k = layer.k
            ref = (cols.unsqueeze(1) * k + torch.arange(k, device=cols.device)).reshape(-1)
            ref_rows = rows.unsqueeze(1).expand(-1, k).reshape(-1)
        else:
            picked = self.sum_refs(li, layer, rows, cols)
            if picked is None:
                return
            ref_rows, ref = picked
        if len(layer.gather.sources) == 1 and not layer.gather.pad:  # no reference to the zero pad
            # an identity gather reads column r of its source for reference r
            pending[layer.gather.sources[0]].append((ref_rows, ref if layer.gather.identity else ref_col[ref]))
            return
        col = ref_col[ref]
        src = ref_layer[ref]
        for s in layer.gather.sources:
            sel = src == s
            pending[s].append((ref_rows[sel], col[sel]))

    def sum_refs(
        self, li: int, layer, rows: torch.Tensor, cols: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(rows [A], child reference [A])`` chosen by the active nodes of sum layer ``li`` (``None``: none)."""
        ch = self.circuit._gather(li, layer.gather, self.outs)  # [B, refs]
        ref_parts, row_parts = [], []
        start = 0
        for bi, blk in enumerate(layer.blocks):
            size = blk.num_groups * blk.num_nodes
            if len(layer.blocks) == 1:  # every active node is in the one block
                r, node = rows, cols
            else:
                sel = (cols >= start) & (cols < start + size)
                r, node = rows[sel], cols[sel] - start
            start += size
            if r.numel() == 0:
                continue
            whole = self.rows_are_evidence_rows and r is self.all_rows  # row i of the pass reads row i of ch
            src_rows = r if self.rows_are_evidence_rows else self.row_source[r]
            chosen = _choose(
                self.circuit, li, bi, blk, ch, self.lw, src_rows, node, self.semiring, self.generator, whole
            )
            if self.record:
                self.choices[(li, bi)] = (r, node, chosen)
            ref_parts.append(_chosen_ref(blk, node, chosen))
            row_parts.append(r)
        if not ref_parts:
            return None
        return _cat_pairs(list(zip(row_parts, ref_parts, strict=True)))


def _chosen_ref(blk: SumBlock, node: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``[A]`` child reference (in the layer's gather) of child slot ``chosen`` of the block's nodes ``node``."""
    if blk.dense and blk.num_groups == 1:
        return chosen + blk.ref_offset if blk.ref_offset else chosen
    g = torch.div(node, blk.num_nodes, rounding_mode="floor")
    base = g * blk.k if blk.dense else node * blk.k
    return blk.ref_offset + base + chosen


def _one_source_per_term(layer: ProductLayer) -> bool:
    """Whether every child slot of ``layer`` reads one source layer (no pad), each slot a different one."""
    sources = [t.sources[0] for t in layer.terms if len(t.sources) == 1 and not t.pad]
    return len(sources) == len(layer.terms) and len(set(sources)) == len(sources)


def _term_columns(circuit: TensorCircuit, li: int) -> list[torch.Tensor] | None:
    """Per child slot ``j`` of product layer ``li``, ``[N]`` the source column of each node's ``j``-th child.

    ``None`` unless every slot reads one source layer (see `_one_source_per_term`). Cached with the buffers.
    """
    def build() -> list[torch.Tensor] | None:
        layer = circuit.layout.layers[li]
        if not _one_source_per_term(layer):
            return None
        ref_col = gather_sources(circuit, li)[1].view(-1, layer.k)  # [N, k]
        return [ref_col[:, j].contiguous() for j in range(layer.k)]

    return _cached(circuit, ("term_columns", li), build)


def _choose(
    circuit: TensorCircuit,
    li: int,
    bi: int,
    blk: SumBlock,
    ch: torch.Tensor,
    lw: dict[str, torch.Tensor],
    src_rows: torch.Tensor,
    node: torch.Tensor,
    semiring: str,
    generator: torch.Generator | None,
    whole: bool = False,
) -> torch.Tensor:
    """Child slot ``[A]`` chosen by the active nodes ``node [A]`` of one sum block.

    ``whole``: ``src_rows`` is ``0..B-1`` in order (every row of ``ch``), so no rows are gathered.
    """
    n, k = blk.num_nodes, blk.k
    if blk.dense and blk.num_groups == 1:  # one group (a chain's layer): contiguous reads
        slot = blk.slot_start if blk.slot_start is not None else int(blk.slots[0])
        child = ch[:, blk.ref_offset : blk.ref_offset + k]
        if semiring == "max":  # fused gather, add and arg-max where the compiled CPU kernel runs
            chosen = kernels.argmax_plus(child, None if whole else src_rows, lw[blk.bank][slot], node)
            if chosen is not None:
                return chosen
        if not whole:
            child = child.index_select(0, src_rows)  # [A, k]
        w = lw[blk.bank][slot].index_select(0, node)  # [A, k]
        logits = child + w.to(child.dtype)
        return logits.argmax(-1) if semiring == "max" else gumbel_argmax(logits, generator)
    g = torch.div(node, n, rounding_mode="floor")
    j = node - g * n
    ar = torch.arange(k, device=node.device)
    base = g * k if blk.dense else node * k
    refs = blk.ref_offset + base.unsqueeze(1) + ar  # [A, k]
    child = ch[src_rows.unsqueeze(1), refs]  # [A, k]
    slots = circuit._get(f"l{li}b{bi}_slots")
    w = lw[blk.bank][slots[g], j]  # [A, k]
    logits = child + w.to(child.dtype)
    if semiring == "max":
        return logits.argmax(-1)
    return gumbel_argmax(logits, generator)


@dataclass
class _Picked:
    """The selected leaves of one block that fill a missing variable (``M`` of them).

    Attributes:
        rows: ``[M]`` pass row; ``ev_rows``: ``[M]`` its evidence row.
        groups: ``[M]`` group in the block; ``nodes``: ``[M]`` node in the group; ``vars``: ``[M]`` variable.
    """

    rows: torch.Tensor
    ev_rows: torch.Tensor
    groups: torch.Tensor
    nodes: torch.Tensor
    vars: torch.Tensor


def _leaf_context(circuit: TensorCircuit, ev: Evidence, row_source: torch.Tensor) -> tuple[int, bool]:
    """``(leaf layer size, whether row_source is 0..B-1)``: what `_picked_leaves` needs beyond one block."""
    size = sum(b.num_groups * b.num_nodes for b in circuit.leaf_blocks())
    return size, _is_every_row(row_source, ev.batch_size)


def _picked_leaves(
    blk: LeafBlockInfo,
    selection: Selection,
    ev: Evidence,
    row_source: torch.Tensor,
    leaf_layer_size: int,
    rows_are_evidence_rows: bool,
) -> _Picked | None:
    """The selected leaves of block ``blk`` whose variable is missing in their evidence row (``None``: none).

    ``leaf_layer_size``: the number of leaf nodes; ``rows_are_evidence_rows``: ``row_source`` is ``0..R-1``.
    """
    rows, cols = selection.leaf_rows, selection.leaf_cols
    end = blk.offset + blk.num_groups * blk.num_nodes
    if blk.offset == 0 and end == leaf_layer_size:  # the only leaf block: every selected leaf is in it
        r, loc = rows, cols
    else:
        sel = ((cols >= blk.offset) & (cols < end)).nonzero().squeeze(1)
        r, loc = rows.index_select(0, sel), cols.index_select(0, sel) - blk.offset
    g = torch.div(loc, blk.num_nodes, rounding_mode="floor")
    var = blk.vars[g]
    er = r if rows_are_evidence_rows else row_source[r]
    keep = ev.missing[er, var].nonzero().squeeze(1)
    if keep.numel() == 0:
        return None
    g, r, loc = g.index_select(0, keep), r.index_select(0, keep), loc.index_select(0, keep)
    er = r if rows_are_evidence_rows else er.index_select(0, keep)
    return _Picked(r, er, g, loc - g * blk.num_nodes, var.index_select(0, keep))


def fill_leaves(
    circuit: TensorCircuit,
    selection: Selection,
    ev: Evidence,
    row_source: torch.Tensor,
    out: torch.Tensor,
    semiring: str,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Writes a value for every missing variable from its selected leaf.

    Discrete leaves are evaluated through their block's log-probability table
    (so families whose table depends on the node's position, such as
    indicators with one value per node, are handled), then weighted by the
    soft evidence: ``semiring="max"`` takes ``argmax_v p(v) w(v)``,
    ``semiring="sum"`` draws from ``p(v)^(1/temperature) w(v)``. With
    candidate evidence ``v`` ranges over each entry's candidates. Other
    families use their [`mode`][pcircuits.distributions.base.Distribution.mode]
    and [`sample`][pcircuits.distributions.base.Distribution.sample].

    Args:
        circuit: the compiled circuit.
        selection: the result of [`downward`][pcircuits.engine.downward.downward].
        ev: the evidence of the upward pass (``B`` rows).
        row_source: ``[R]`` evidence row of each pass row.
        out: ``[R, V]`` values to fill in place (observed entries are kept).
        semiring: ``"max"`` (the mode) or ``"sum"`` (a draw).
        temperature: leaf temperature for ``semiring="sum"``.
        generator: random generator for ``semiring="sum"``.

    Returns:
        ``out``.
    """
    if semiring not in ("sum", "max"):
        raise ValueError(f"semiring must be 'sum' or 'max', got {semiring!r}")
    if ev.missing is None:
        return out  # nothing to fill in
    context = _leaf_context(circuit, ev, row_source)
    for blk in circuit.leaf_blocks():
        picked = _picked_leaves(blk, selection, ev, row_source, *context)
        if picked is None:
            continue
        block_params = circuit.leaf_block_params(blk.index, circuit.params[blk.bank].detach())  # [G or 1, n, P]
        g = torch.zeros_like(picked.groups) if block_params.shape[0] == 1 else picked.groups  # one shared slot
        soft = cand = None
        if ev.soft_evidence is not None and blk.dist.discrete:
            soft = ev.soft_evidence[picked.ev_rows, picked.vars]
            if ev.candidates is None:
                soft = soft[:, : blk.dist.num_cats]
            else:
                cand = ev.candidates[picked.ev_rows, picked.vars]  # [M, K]
        table = None
        if isinstance(blk.dist, DiscreteDistribution):  # [G or 1, n, C], rows of the cached table
            table = circuit.leaf_block_params(blk.index, circuit.leaf_table(blk.index))
        values = _leaf_values(blk, block_params, g, picked.nodes, soft, cand, semiring, temperature, generator, table)
        out[picked.rows, picked.vars] = values.to(out.dtype)
    return out


def _leaf_values(
    blk: LeafBlockInfo,
    block_params: torch.Tensor,
    g: torch.Tensor,
    j: torch.Tensor,
    soft: torch.Tensor | None,
    cand: torch.Tensor | None,
    semiring: str,
    temperature: float,
    generator: torch.Generator | None,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[M]`` mode or draw of one block's selected leaves ``(g [M], j [M])`` under soft evidence ``[M, C or K]``.

    ``table`` is the block's ``log_table(block_params)`` ``[G or 1, n, C]`` (discrete families; computed if None).
    """
    dist = blk.dist
    if not isinstance(dist, DiscreteDistribution):
        if semiring == "max":
            return dist.mode(block_params[g, j], soft)
        return dist.sample(block_params[g, j], soft, temperature, generator)
    if table is None:
        table = dist.log_table(block_params)
    if semiring == "max" and soft is None:
        # the same mode for every row that selects a leaf: one argmax per leaf node, then a lookup
        return table.argmax(-1)[g, j]
    logits = table[g, j]  # [M, C]
    if cand is not None:
        logits = gather_categories(logits, cand)  # [M, K]
    if semiring == "sum" and temperature != 1.0:
        logits = logits / temperature
    if soft is not None:
        logits = logits + soft.to(logits.dtype)
    pick = logits.argmax(-1) if semiring == "max" else gumbel_argmax(logits, generator)
    return pick if cand is None else cand.gather(1, pick.unsqueeze(1)).squeeze(1)


def selected_leaf_logits(
    circuit: TensorCircuit, selection: Selection, ev: Evidence, row_source: torch.Tensor
) -> torch.Tensor:
    """Each missing variable's unnormalised log-weights given its selected leaf, ``[R, V, C]`` or ``[R, V, K]``.

    Entry ``(r, v, c)`` is ``log p_leaf(c) + log w_v(c)``, with ``p_leaf`` the
    table of the discrete leaf that [`downward`][pcircuits.engine.downward.downward] selected for variable
    ``v`` in pass row ``r`` and ``w`` the soft evidence of ``ev`` (which may
    differ from the evidence of the upward pass, e.g. another temperature).
    With candidates the last dimension runs over them (``c`` = ``candidates[.., k]``).
    Drawing (or taking the argmax of) every row's softmax fills the missing
    variables as [`fill_leaves`][pcircuits.engine.downward.fill_leaves] does, given the path.

    Args:
        circuit: the compiled circuit.
        selection: the result of [`downward`][pcircuits.engine.downward.downward].
        ev: evidence over the ``B`` rows that ``row_source`` points into.
        row_source: ``[R]`` evidence row of each pass row.

    Returns:
        ``[R, V, C]`` (``C`` = `TensorCircuit.max_cats`; ``-inf`` at
        categories a leaf lacks) or ``[R, V, K]`` with candidates, in the
        circuit's dtype (the soft evidence's with soft evidence); 0 at
        observed and continuous variables.
    """
    R, V = row_source.numel(), circuit.num_vars
    width = circuit.max_cats if ev.candidates is None else ev.candidates.shape[-1]
    dtype = circuit.dtype if ev.soft_evidence is None else ev.soft_evidence.dtype
    cond = torch.zeros(R, V, width, dtype=dtype, device=row_source.device)
    if ev.missing is None:
        return cond
    context = _leaf_context(circuit, ev, row_source)
    for blk in circuit.leaf_blocks():
        if not isinstance(blk.dist, DiscreteDistribution):
            continue
        picked = _picked_leaves(blk, selection, ev, row_source, *context)
        if picked is None:
            continue
        slot = blk.slots[picked.groups]
        if ev.candidates is not None:
            table = circuit.leaf_table(blk.index)  # [Q, n, C_leaf], cached per parameter change
            cand = ev.candidates[picked.ev_rows, picked.vars]  # [M, K]
            lg = table[slot.unsqueeze(1), picked.nodes.unsqueeze(1), cand.clamp_max(table.shape[-1] - 1)]
            lg = lg.masked_fill(cand >= table.shape[-1], -math.inf)  # ids the leaf lacks
        else:  # whole rows: each selected node's table from its own (contiguous) parameter row
            lg = blk.dist.log_table(circuit.params[blk.bank].detach()[slot, picked.nodes])  # [M, C_leaf]
            if lg.shape[-1] < width:
                lg = torch.cat([lg, lg.new_full((lg.shape[0], width - lg.shape[-1]), -math.inf)], -1)
        if ev.soft_evidence is not None:
            lg = lg + ev.soft_evidence[picked.ev_rows, picked.vars]
        cond[picked.rows, picked.vars] = lg.to(cond.dtype)
    return cond


def empty_assignment(circuit: TensorCircuit, ev: Evidence, row_source: torch.Tensor) -> torch.Tensor:
    """``[R, V]`` copy of the evidence values of each pass row (long, or float with continuous variables)."""
    xd = ev.x_discrete.index_select(0, row_source)
    if ev.x_continuous is None:
        return xd.clone()
    xc = ev.x_continuous.index_select(0, row_source)
    return torch.where(circuit.continuous.unsqueeze(0), xc, xd.to(xc.dtype))


def leaf_flows(
    circuit: TensorCircuit, outs: list[torch.Tensor], log_weights: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Flows of the leaves: the probability that each leaf is on the active path, ``[B, N_0]``.

    An explicit top-down pass over the outputs of a sum-product
    [`TensorCircuit.upward`][pcircuits.engine.circuit.TensorCircuit.upward] pass (no autograd): the root has flow 1 (0
    where its value is ``-inf``), a product passes its flow to every child,
    and a sum node passes ``flow * w_k v_k / v_parent`` to child ``k``;
    flows arriving at a node from several parents add up. The result equals
    ``d log Z / d log v_leaf``, the gradient that autograd would give, at the
    cost of about one more forward pass. Every exponent is ``<= 0`` (a
    child's share of its parent), so the pass is stable in linear space.

    Args:
        circuit: the compiled circuit.
        outs: ``[B, N_l]`` layer outputs of a sum-product upward pass.
        log_weights: the normalised sum log-weights that pass used (default: the circuit's).

    Returns:
        ``[B, N_0]`` flows of the leaf layer (columns as in ``outs[0]``).
    """
    lay = circuit.layout
    lw = log_weights if log_weights is not None else circuit.sum_log_weights()
    root = outs[-1]
    flows: list[torch.Tensor | None] = [None] * (len(lay.layers) + 1)
    flows[-1] = torch.isfinite(root).to(root.dtype)
    probs: dict[str, torch.Tensor] = {}
    for li in range(len(lay.layers) - 1, -1, -1):
        F, flows[li + 1] = flows[li + 1], None
        if F is None:
            continue
        layer = lay.layers[li]
        if isinstance(layer, ProductLayer):
            _product_flows(circuit, li, layer, F, flows)
        else:
            ref_flow = _sum_ref_flows(circuit, li, layer, F, outs, lw, probs)
            _add_ref_flows(circuit, li, layer.gather, ref_flow, flows)
    if flows[0] is None:  # the root is a leaf
        return torch.isfinite(root).to(root.dtype)
    return flows[0]


def _zero_flows(circuit: TensorCircuit, s: int, like: torch.Tensor) -> torch.Tensor:
    """``[B, N_s]`` zero flows of layer ``s``."""
    return torch.zeros(like.shape[0], circuit.layout.layer_sizes[s], dtype=like.dtype, device=like.device)


def _product_flow_routes(circuit: TensorCircuit, li: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Per source layer ``s`` of product layer ``li``: ``(s, node [R_s], column [R_s])``, the node of each of its
    references into ``s`` and the column it reads there. Cached with the buffers."""
    def build() -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        layer = circuit.layout.layers[li]
        ref_layer, ref_col = gather_sources(circuit, li)
        routes = []
        for s in layer.gather.sources:
            pos = (ref_layer == s).nonzero(as_tuple=True)[0]
            node = torch.div(pos, layer.k, rounding_mode="floor")  # reference pos belongs to node pos // k
            routes.append((s, node, ref_col[pos]))
        return routes

    return _cached(circuit, ("product_flow_routes", li), build)


def _product_flows(circuit: TensorCircuit, li: int, layer: ProductLayer, F: torch.Tensor, flows: list) -> None:
    """Adds the flows ``F [B, N]`` of product layer ``li`` to its children (each reference gets its node's flow)."""
    for s, node, col in _product_flow_routes(circuit, li):
        if flows[s] is None:
            flows[s] = _zero_flows(circuit, s, F)
        flows[s].index_add_(1, col, F.index_select(1, node))


def _sum_ref_flows(
    circuit: TensorCircuit,
    li: int,
    layer,
    F: torch.Tensor,
    outs: list[torch.Tensor],
    lw: dict[str, torch.Tensor],
    probs: dict[str, torch.Tensor],
) -> torch.Tensor:
    """``[B, refs]`` flow through every child reference of sum layer ``li``: ``flow * w_k v_k / v_parent``.

    ``probs``: the pass's cache of ``exp(lw[bank])``, filled on first use.
    """
    B = F.shape[0]
    P = outs[li + 1]
    ch = circuit._gather(li, layer.gather, outs)
    parts = []
    start = 0
    for bi, blk in enumerate(layer.blocks):
        G, n, k = blk.num_groups, blk.num_nodes, blk.k
        Fb = F[:, start : start + G * n].view(B, G, n)
        Pb = P[:, start : start + G * n].view(B, G, n)
        start += G * n
        if blk.dense:
            c = ch[:, blk.ref_offset : blk.ref_offset + G * k].view(B, G, k)
            m = c.amax(-1, keepdim=True).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # [B, G, 1] finite shift
            # a node with positive flow has a finite value P >= m, so exp(m - P) <= 1; a node with flow 0
            # (value -inf) gives 0 * inf = NaN here, which is its flow to pass on: 0
            a = torch.sub(m, Pb).exp_().mul_(Fb).nan_to_num_(nan=0.0)
            s = torch.matmul(a.transpose(0, 1), _block_weights(circuit, li, bi, blk, probs, lw, F.dtype))
            f = torch.sub(c, m).exp_().mul_(s.transpose(0, 1))  # [B, G, k]
        else:
            live = Fb > 0  # a node with positive flow has a finite value
            w = lw[blk.bank].index_select(0, circuit._get(f"l{li}b{bi}_slots")).to(F.dtype)  # [G, n, k]
            c = ch[:, blk.ref_offset : blk.ref_offset + G * n * k].view(B, G, n, k)
            # dead nodes (flow 0) divide by +inf: their children get exactly 0, never 0 * inf
            Pb = torch.where(live, Pb, torch.full((), math.inf, dtype=F.dtype, device=F.device))
            f = Fb.unsqueeze(-1) * torch.exp(c + w.unsqueeze(0) - Pb.unsqueeze(-1))
        parts.append(f.reshape(B, -1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _block_weights(
    circuit: TensorCircuit,
    li: int,
    bi: int,
    blk: SumBlock,
    probs: dict[str, torch.Tensor],
    lw: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> torch.Tensor:
    """``[G, n, k]`` weights (probabilities) of dense block ``bi`` of sum layer ``li``, exponentiated once per pass."""
    p = probs.get(blk.bank)
    if p is None:
        p = probs[blk.bank] = lw[blk.bank].to(dtype).exp()
    if blk.slot_start is not None:  # contiguous slots: a view
        return p[blk.slot_start : blk.slot_start + blk.num_groups]
    return p.index_select(0, circuit._get(f"l{li}b{bi}_slots"))


def _sum_flow_route(circuit: TensorCircuit, li: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(position [R_s], column [R_s])`` of sum layer ``li``'s references into source layer ``s``. Cached."""
    def build() -> tuple[torch.Tensor, torch.Tensor]:
        ref_layer, ref_col = gather_sources(circuit, li)
        pos = (ref_layer == s).nonzero(as_tuple=True)[0]
        return pos, ref_col[pos]

    return _cached(circuit, ("sum_flow_route", li, s), build)


def _add_ref_flows(circuit: TensorCircuit, li: int, g, ref_flow: torch.Tensor, flows: list) -> None:
    """Adds the flows ``ref_flow [B, refs]`` of layer ``li``'s child references to the layers they read."""
    if g.identity:
        s = g.sources[0]
        flows[s] = ref_flow.clone() if flows[s] is None else flows[s].add_(ref_flow)
        return
    ref_layer, ref_col = gather_sources(circuit, li)
    for s in g.sources:
        if flows[s] is None:
            flows[s] = _zero_flows(circuit, s, ref_flow)
        if g.perm is None:
            flows[s].index_add_(1, ref_col, ref_flow)
        else:
            pos, col = _sum_flow_route(circuit, li, s)
            flows[s].index_add_(1, col, ref_flow.index_select(1, pos))
