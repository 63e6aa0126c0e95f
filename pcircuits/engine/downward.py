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
import torch

from ..distributions.base import DiscreteDistribution
from .circuit import Evidence, TensorCircuit
from .layout import ProductLayer, SumBlock

__all__ = ["Selection", "downward", "gather_sources", "fill_leaves", "empty_assignment", "leaf_flows"]


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


def gather_sources(circuit: TensorCircuit, li: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where every child reference of inner layer ``li`` reads from.

    Returns:
        ``(layer [R], column [R])``: the layer index (``-1`` for the zero pad)
        and column of each of the layer's ``R`` child references.
    """
    cache = circuit.__dict__.setdefault("_buffer_cache", {})  # cleared when the buffers move
    key = ("gather_sources", li)
    if key not in cache:
        cache[key] = _gather_sources(circuit, li)
    return cache[key]


def _gather_sources(circuit: TensorCircuit, li: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gather_sources`, uncached."""
    g = circuit.layout.layers[li].gather
    dev = circuit.device
    if g.identity or g.perm is None:
        col = circuit._get(f"l{li}_src0")
        return torch.full_like(col, g.sources[0]), col
    idx = [circuit._get(f"l{li}_src{si}") for si in range(len(g.sources))]
    lay = [torch.full_like(ix, s) for s, ix in zip(g.sources, idx)]
    if g.pad:
        lay.append(torch.full((1,), -1, dtype=torch.long, device=dev))
        idx.append(torch.zeros(1, dtype=torch.long, device=dev))
    perm = circuit._get(f"l{li}_perm")
    return torch.cat(lay)[perm], torch.cat(idx)[perm]


def _gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``[M]`` draws from ``softmax(logits [M, k])`` by the Gumbel-max trick."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    u = u.clamp_min_(torch.finfo(logits.dtype).tiny)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def downward(
    circuit: TensorCircuit,
    outs: list[torch.Tensor],
    row_source: torch.Tensor,
    mode: str,
    generator: torch.Generator | None = None,
    log_weights: dict[str, torch.Tensor] | None = None,
    record_choices: bool = False,
) -> Selection:
    """Selects the sub-circuit of each row, from the root to the leaves.

    Args:
        circuit: the compiled circuit.
        outs: the layer outputs ``[B, N_l]`` of :meth:`TensorCircuit.upward`
            (``semiring="max"`` for ``mode="argmax"``, ``"sum"`` for ``"sample"``).
        row_source: ``[R]`` long, the row of ``outs`` that each of the ``R``
            rows of the pass reads (several rows may share one evidence row,
            e.g. many samples of one conditional).
        mode: ``"argmax"`` (backtracking) or ``"sample"``.
        generator: random generator for ``mode="sample"``.
        log_weights: normalised sum log-weights (default: the circuit's).
        record_choices: also return the child chosen by every active sum node.

    Returns:
        The selected leaves (exactly one per variable and row when the row's
        root value is finite) and, on request, the sum-node choices.
    """
    if mode not in ("argmax", "sample"):
        raise ValueError(f"mode must be 'argmax' or 'sample', got {mode!r}")
    lay = circuit.layout
    dev = row_source.device
    lw = log_weights if log_weights is not None else circuit.sum_log_weights()
    num_layers = len(lay.layers) + 1
    R = row_source.numel()
    pending: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(num_layers)]
    pending[-1].append((torch.arange(R, device=dev), torch.zeros(R, dtype=torch.long, device=dev)))
    choices: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    for li in range(len(lay.layers) - 1, -1, -1):
        layer = lay.layers[li]
        parts = pending[li + 1]
        pending[li + 1] = []
        if not parts:
            continue
        rows = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        cols = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        ref_layer, ref_col = gather_sources(circuit, li)
        if isinstance(layer, ProductLayer) and _one_source_per_term(layer):
            # child slot j reads source layer j alone: no per-reference source masks (same order as below)
            for j, term in enumerate(layer.terms):
                pending[term.sources[0]].append((rows, ref_col[cols * layer.k + j]))
            continue
        if isinstance(layer, ProductLayer):
            k = layer.k
            ref = (cols.unsqueeze(1) * k + torch.arange(k, device=dev)).reshape(-1)
            ref_rows = rows.unsqueeze(1).expand(-1, k).reshape(-1)
        else:
            ch = circuit._gather(li, layer.gather, outs)  # [B, refs]
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
                chosen = _choose(circuit, li, bi, blk, ch, lw, row_source[r], node, mode, generator)
                if record_choices:
                    choices[(li, bi)] = (r, node, chosen)
                if blk.dense and blk.num_groups == 1:
                    ref_parts.append(chosen + blk.ref_offset)
                else:
                    g = torch.div(node, blk.num_nodes, rounding_mode="floor")
                    base = g * blk.k if blk.dense else node * blk.k
                    ref_parts.append(blk.ref_offset + base + chosen)
                row_parts.append(r)
            if not ref_parts:
                continue
            ref = torch.cat(ref_parts) if len(ref_parts) > 1 else ref_parts[0]
            ref_rows = torch.cat(row_parts) if len(row_parts) > 1 else row_parts[0]
        col = ref_col[ref]
        if len(layer.gather.sources) == 1 and not layer.gather.pad:  # no reference to the zero pad
            pending[layer.gather.sources[0]].append((ref_rows, col))
            continue
        src = ref_layer[ref]
        for s in layer.gather.sources:
            sel = src == s
            pending[s].append((ref_rows[sel], col[sel]))

    parts = pending[0]
    if parts:
        leaf_rows = torch.cat([p[0] for p in parts])
        leaf_cols = torch.cat([p[1] for p in parts])
    else:
        leaf_rows = leaf_cols = torch.zeros(0, dtype=torch.long, device=dev)
    return Selection(leaf_rows, leaf_cols, choices)


def _one_source_per_term(layer: ProductLayer) -> bool:
    """Whether every child slot of ``layer`` reads one source layer (no pad), each slot a different one."""
    sources = [t.sources[0] for t in layer.terms if len(t.sources) == 1 and not t.pad]
    return len(sources) == len(layer.terms) and len(set(sources)) == len(sources)


def _choose(
    circuit: TensorCircuit,
    li: int,
    bi: int,
    blk: SumBlock,
    ch: torch.Tensor,
    lw: dict[str, torch.Tensor],
    src_rows: torch.Tensor,
    node: torch.Tensor,
    mode: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Child slot ``[A]`` chosen by the active nodes ``node [A]`` of one sum block."""
    n, k = blk.num_nodes, blk.k
    if blk.dense and blk.num_groups == 1:  # one group (a chain's layer): contiguous reads
        slot = blk.slot_start if blk.slot_start is not None else int(blk.slots[0])
        child = ch[:, blk.ref_offset : blk.ref_offset + k].index_select(0, src_rows)  # [A, k]
        w = lw[blk.bank][slot].index_select(0, node)  # [A, k]
        logits = child + w.to(child.dtype)
        return logits.argmax(-1) if mode == "argmax" else _gumbel_argmax(logits, generator)
    g = torch.div(node, n, rounding_mode="floor")
    j = node - g * n
    ar = torch.arange(k, device=node.device)
    base = g * k if blk.dense else node * k
    refs = blk.ref_offset + base.unsqueeze(1) + ar  # [A, k]
    child = ch[src_rows.unsqueeze(1), refs]  # [A, k]
    slots = circuit._get(f"l{li}b{bi}_slots")
    w = lw[blk.bank][slots[g], j]  # [A, k]
    logits = child + w.to(child.dtype)
    if mode == "argmax":
        return logits.argmax(-1)
    return _gumbel_argmax(logits, generator)


def fill_leaves(
    circuit: TensorCircuit,
    selection: Selection,
    ev: Evidence,
    row_source: torch.Tensor,
    out: torch.Tensor,
    mode: str,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Writes a value for every missing variable from its selected leaf.

    Discrete leaves are evaluated through their block's log-probability table
    (so families whose table depends on the node's position, such as
    indicators with one value per node, are handled), then weighted by the
    soft evidence: ``mode="mode"`` takes ``argmax_v p(v) w(v)``,
    ``mode="sample"`` draws from ``p(v)^(1/temperature) w(v)``. Other
    families use their :meth:`~pcircuits.distributions.base.Distribution.mode`
    and :meth:`~pcircuits.distributions.base.Distribution.sample`.

    Args:
        circuit: the compiled circuit.
        selection: the result of :func:`downward`.
        ev: the evidence of the upward pass (``B`` rows).
        row_source: ``[R]`` evidence row of each pass row.
        out: ``[R, V]`` values to fill in place (observed entries are kept).
        mode: ``"mode"`` or ``"sample"``.
        temperature: leaf temperature for ``mode="sample"``.
        generator: random generator for ``mode="sample"``.

    Returns:
        ``out``.
    """
    if mode not in ("mode", "sample"):
        raise ValueError(f"mode must be 'mode' or 'sample', got {mode!r}")
    if ev.missing is None:
        return out  # nothing to fill in
    rows, cols = selection.leaf_rows, selection.leaf_cols
    for i, blk in enumerate(circuit.layout.leaf_blocks):
        size = len(blk.groups) * blk.num_nodes
        sel = (cols >= blk.offset) & (cols < blk.offset + size)
        r, loc = rows[sel], cols[sel] - blk.offset
        g = torch.div(loc, blk.num_nodes, rounding_mode="floor")
        j = loc - g * blk.num_nodes
        var = circuit._get(f"leaf{i}_vars")[g]
        er = row_source[r]
        keep = ev.missing[er, var]
        r, g, j, var, er = r[keep], g[keep], j[keep], var[keep], er[keep]
        if r.numel() == 0:
            continue
        block_params = circuit.leaf_block_params(i, circuit.params[blk.bank].detach())  # [G or 1, n, P]
        if block_params.shape[0] == 1:
            g = torch.zeros_like(g)  # every group reads the one shared slot
        soft = None
        if ev.soft_evidence is not None and blk.dist.discrete:
            soft = ev.soft_evidence[er, var, : blk.dist.num_cats]
        if isinstance(blk.dist, DiscreteDistribution) and mode == "mode" and soft is None:
            # the same mode for every row that selects a leaf: one argmax per leaf node, then a lookup
            values = blk.dist.log_table(block_params).argmax(-1)[g, j]
        elif isinstance(blk.dist, DiscreteDistribution):
            logits = blk.dist.log_table(block_params)[g, j]  # [M, C]
            if mode == "sample" and temperature != 1.0:
                logits = logits / temperature
            if soft is not None:
                logits = logits + soft.to(logits.dtype)
            values = logits.argmax(-1) if mode == "mode" else _gumbel_argmax(logits, generator)
        elif mode == "mode":
            values = blk.dist.mode(block_params[g, j], soft)
        else:
            values = blk.dist.sample(block_params[g, j], soft, temperature, generator)
        out[r, var] = values.to(out.dtype)
    return out


def empty_assignment(circuit: TensorCircuit, ev: Evidence, row_source: torch.Tensor) -> torch.Tensor:
    """``[R, V]`` copy of the evidence values of each pass row (long, or float with continuous variables)."""
    xd = ev.x_discrete.index_select(0, row_source)
    if ev.x_continuous is None:
        return xd.clone()
    xc = ev.x_continuous.index_select(0, row_source)
    return torch.where(circuit._continuous.unsqueeze(0), xc, xd.to(xc.dtype))


def _finite_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    m = x.amax(dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def leaf_flows(
    circuit: TensorCircuit, outs: list[torch.Tensor], log_weights: dict[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """Flows of the leaves: the probability that each leaf is on the active path, ``[B, N_0]``.

    An explicit top-down pass over the outputs of a sum-product
    :meth:`TensorCircuit.upward` pass (no autograd): the root has flow 1 (0
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
    B = outs[0].shape[0]
    root = outs[-1]
    flows: list[torch.Tensor | None] = [None] * (len(lay.layers) + 1)
    flows[-1] = torch.isfinite(root).to(root.dtype)
    for li in range(len(lay.layers) - 1, -1, -1):
        layer = lay.layers[li]
        F = flows[li + 1]
        flows[li + 1] = None
        if F is None:
            continue
        if isinstance(layer, ProductLayer):
            # every child reference of product node i receives its flow: read F at i = ref // k
            ref_layer, ref_col = gather_sources(circuit, li)
            for s in layer.gather.sources:
                pos = (ref_layer == s).nonzero(as_tuple=True)[0]
                node = torch.div(pos, layer.k, rounding_mode="floor")
                if flows[s] is None:
                    flows[s] = torch.zeros(B, lay.layer_sizes[s], dtype=F.dtype, device=F.device)
                flows[s].index_add_(1, ref_col[pos], F.index_select(1, node))
            continue
        else:
            P = outs[li + 1]
            ch = circuit._gather(li, layer.gather, outs)
            parts = []
            start = 0
            for bi, blk in enumerate(layer.blocks):
                G, n, k = blk.num_groups, blk.num_nodes, blk.k
                Fb = F[:, start : start + G * n].view(B, G, n)
                Pb = P[:, start : start + G * n].view(B, G, n)
                start += G * n
                live = Fb > 0  # a node with positive flow has a finite value
                w = lw[blk.bank].index_select(0, circuit._get(f"l{li}b{bi}_slots")).to(F.dtype)  # [G, n, k]
                if blk.dense:
                    c = ch[:, blk.ref_offset : blk.ref_offset + G * k].view(B, G, k)
                    m = _finite_max(c, -1)  # [B, G, 1]
                    a = torch.where(live, Fb * torch.exp(m - Pb), torch.zeros((), dtype=F.dtype, device=F.device))
                    s = torch.matmul(a.transpose(0, 1), w.exp()).transpose(0, 1)  # [B, G, k]
                    f = torch.exp(c - m) * s
                else:
                    c = ch[:, blk.ref_offset : blk.ref_offset + G * n * k].view(B, G, n, k)
                    # dead nodes (flow 0) divide by +inf: their children get exactly 0, never 0 * inf
                    Pb = torch.where(live, Pb, torch.full((), math.inf, dtype=F.dtype, device=F.device))
                    f = Fb.unsqueeze(-1) * torch.exp(c + w.unsqueeze(0) - Pb.unsqueeze(-1))
                parts.append(f.reshape(B, -1))
            ref_flow = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        g = layer.gather
        if g.identity:
            s = g.sources[0]
            flows[s] = ref_flow.clone() if flows[s] is None else flows[s].add_(ref_flow)
            continue
        ref_layer, ref_col = gather_sources(circuit, li)
        for s in g.sources:
            if flows[s] is None:
                flows[s] = torch.zeros(B, lay.layer_sizes[s], dtype=F.dtype, device=F.device)
            if g.perm is None:
                flows[s].index_add_(1, ref_col, ref_flow)
            else:
                pos = (ref_layer == s).nonzero(as_tuple=True)[0]
                flows[s].index_add_(1, ref_col[pos], ref_flow.index_select(1, pos))
    if flows[0] is None:  # the root is a leaf
        return torch.isfinite(root).to(root.dtype)
    return flows[0]
