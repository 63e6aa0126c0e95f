"""Plain-torch implementations of the per-layer computations (the reference backend).

Every function is exact in log-space, gives ``-inf`` (with zero gradient)
where all terms are ``-inf``, and is differentiable by autograd.
"""

from __future__ import annotations


import torch

from . import native

__all__ = [
    "dense_sum",
    "single_group_dense_sum",
    "single_group_max_plus",
    "max_plus",
    "broadcast_max_plus",
    "sparse_sum",
    "soft_evidence_lse",
    "soft_evidence_max",
    "table_exp",
]

#: Elements of one ``[b, G, k, n]`` block of [`max_plus`][pcircuits.kernels.torch_ops.max_plus] (about 1 MB in float32:
#: it stays in cache).
_MAX_PLUS_BLOCK = 1 << 18
#: From this many weights per group on (``n * k``), [`max_plus`][pcircuits.kernels.torch_ops.max_plus] reduces over
#: the innermost dimension (measured on one CPU thread: faster at 512 x 512, slower at 128 x 128).
_MAX_PLUS_INNER = 1 << 17


def _finite_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Maximum along ``dim`` (kept), with 0 where it is infinite; a constant for autograd."""
    return x.detach().amax(dim, keepdim=True).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


class _SafeLog(torch.autograd.Function):
    """``log s`` for ``s >= 0`` whose gradient is 0, not NaN, where ``s == 0``."""

    @staticmethod
    def forward(ctx, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(s)
        return torch.log(s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (s,) = ctx.saved_tensors
        return torch.where(s > 0, grad / s, torch.zeros((), dtype=grad.dtype, device=grad.device))


def _safe_log(s: torch.Tensor) -> torch.Tensor:
    """``log s`` for ``s >= 0``, whose gradient is 0 (not NaN) where ``s == 0``."""
    if not (s.requires_grad and torch.is_grad_enabled()):
        return torch.log(s)
    return _SafeLog.apply(s)


def dense_sum(
    children: torch.Tensor, log_weights: torch.Tensor, semiring: str = "sum", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum layer where every node of a group connects to the group's ``k`` children.

    Args:
        children: ``[B, G, k]`` child log-values.
        log_weights: ``[G, n, k]`` normalised log-weights.
        semiring: ``"sum"`` (log-sum-exp) or ``"max"`` (max-product).
        weights: ``exp(log_weights)`` when the caller already has it.

    Returns:
        ``[B, G, n]`` log-values.
    """
    if semiring == "max":
        return max_plus(children, log_weights)
    B, G, k = children.shape
    w = torch.exp(log_weights) if weights is None else weights
    if G == 1:
        return single_group_dense_sum(children.view(B, k), w[0].t()).unsqueeze(1)
    m = _finite_max(children, -1)  # [B, G, 1]
    e = (children - m).exp_()
    s = torch.matmul(e.transpose(0, 1), w.transpose(1, 2)).transpose(0, 1)  # [B, G, n]
    if not (s.requires_grad and torch.is_grad_enabled()):
        return torch.log(s).add_(m)
    return _safe_log(s) + m


def single_group_dense_sum(children: torch.Tensor, weights_t: torch.Tensor) -> torch.Tensor:
    """Dense sum of one group in the sum semiring, as plain 2-D operations.

    Args:
        children: ``[B, k]`` child log-values.
        weights_t: ``[k, n]`` transposed weights (probabilities, not logs).

    Returns:
        ``[B, n]`` log-values.
    """
    if torch.is_grad_enabled() and (children.requires_grad or weights_t.requires_grad):
        m = _finite_max(children, -1)  # [B, 1]
        return _safe_log((children - m).exp() @ weights_t) + m
    m = children.amax(-1, keepdim=True).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    s = torch.sub(children, m).exp_()
    return torch.mm(s, weights_t).log_().add_(m)


def max_plus(children: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Dense sum layer in the max-product semiring: ``max_k children[b, g, k] + log_weights[g, n, k]``.

    Computed over blocks of rows (about ``2**18`` sums each, so a block stays
    in cache) and no ``[B, G, n, k]`` tensor is ever materialised; for
    ``n * k < 2**17`` the weights are transposed to ``[G, k, n]`` so each
    block reduces over a non-innermost dimension (vectorised along ``n``). The result
    equals ``(children.unsqueeze(2) + log_weights.unsqueeze(0)).amax(-1)``
    exactly: the same float additions, then a maximum. On the CPU the
    compiled kernel of [`pcircuits.kernels.native`][pcircuits.kernels.native] computes the same
    values about 5x faster where it is available. Under autograd the
    broadcast form with ``max`` is used (the gradient goes to one maximiser).

    Args:
        children: ``[B, G, k]`` child log-values.
        log_weights: ``[G, n, k]`` normalised log-weights.

    Returns:
        ``[B, G, n]`` log-values.
    """
    if torch.is_grad_enabled() and (children.requires_grad or log_weights.requires_grad):
        return (children.unsqueeze(2) + log_weights.unsqueeze(0)).max(-1).values
    out = native.max_plus(children, log_weights.transpose(1, 2))
    if out is not None:
        return out
    return broadcast_max_plus(children, log_weights)


def broadcast_max_plus(children: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """[`max_plus`][pcircuits.kernels.torch_ops.max_plus] by torch alone (no gradient): blocks of rows of the
    broadcast sum, each reduced with ``amax``.

    Args:
        children: ``[B, G, k]`` child log-values.
        log_weights: ``[G, n, k]`` normalised log-weights.

    Returns:
        ``[B, G, n]`` log-values.
    """
    G, n, k = log_weights.shape
    if n * k >= _MAX_PLUS_INNER:  # one row's block no longer fits in cache: reduce the innermost dimension
        return _blocked_max_plus(children.unsqueeze(2), log_weights, -1)
    return _blocked_max_plus(children.unsqueeze(-1), log_weights.transpose(1, 2).contiguous(), 2)


def single_group_max_plus(children: torch.Tensor, log_weights_t: torch.Tensor) -> torch.Tensor:
    """Dense sum of one group in the max-product semiring, on transposed log-weights a caller keeps.

    Args:
        children: ``[B, k]`` child log-values.
        log_weights_t: ``[k, n]`` normalised log-weights, transposed (contiguous for speed).

    Returns:
        ``[B, n]`` log-values, equal to ``max_plus(children[:, None], log_weights_t.t()[None])[:, 0]``.
    """
    return max_plus(children.unsqueeze(1), log_weights_t.t().unsqueeze(0))[:, 0]  # the kernel reads log_weights_t


def _blocked_max_plus(children: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """``amax(children + weights, dim)`` over blocks of rows, without the whole ``[B, G, n, k]`` sum.

    Args:
        children: ``[B, G, 1, k]`` (``dim=-1``) or ``[B, G, k, 1]`` (``dim=2``).
        weights: ``[G, n, k]`` (``dim=-1``) or ``[G, k, n]`` (``dim=2``).
        dim: the dimension of ``k`` in the broadcast sum.

    Returns:
        ``[B, G, n]``.
    """
    B, G = children.shape[:2]
    n = weights.shape[1] if dim == -1 else weights.shape[2]
    out = torch.empty(B, G, n, dtype=torch.result_type(children, weights), device=children.device)
    step = max(1, _MAX_PLUS_BLOCK // max(1, weights.numel()))
    if step >= B:
        return torch.amax(children + weights, dim, out=out)
    for i in range(0, B, step):
        torch.amax(children[i : i + step] + weights, dim, out=out[i : i + step])
    return out


def sparse_sum(children: torch.Tensor, log_weights: torch.Tensor, semiring: str = "sum") -> torch.Tensor:
    """Sum layer with per-node child lists padded to ``k`` (pads carry weight ``-inf``).

    Args:
        children: ``[B, G, n, k]`` child log-values.
        log_weights: ``[G, n, k]`` normalised log-weights, ``-inf`` at pads.
        semiring: ``"sum"`` or ``"max"``.

    Returns:
        ``[B, G, n]`` log-values.
    """
    x = children + log_weights.unsqueeze(0)
    if semiring == "max":
        return x.max(-1).values
    m = _finite_max(x, -1)
    return _safe_log(torch.exp(x - m).sum(-1, keepdim=True)).squeeze(-1) + m.squeeze(-1)


def table_exp(table: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exp(table - m), m)`` for a log-table ``[G, n, C]``: ``m [G, n, 1]`` its finite row maxima (0 where none).

    Without gradients the exponentiated table is written to ``out`` (which
    may be ``table`` itself), or to a new contiguous tensor (rows of ``C``,
    the layout the ``[B, C] x [C, n]`` product reads fastest).
    """
    m = _finite_max(table, -1)
    if torch.is_grad_enabled() and table.requires_grad:
        return torch.exp(table - m), m
    e = torch.empty(table.shape, dtype=table.dtype, device=table.device) if out is None else out
    torch.sub(table, m, out=e)
    return e.exp_(), m


_MAX_EVIDENCE_BLOCK = 1 << 21
"""Entries of one block of `soft_evidence_max`'s broadcast sum (16 MB in float64)."""


def soft_evidence_max(ev: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``max_c ev[b, g, c] + table[g, n, c]`` without the whole ``[B, G, n, C]`` sum.

    ``ev [B, G, C]``, ``table [G or 1, n, C]`` -> ``[B, G, n]``. The categories
    are taken in blocks, each reduced over a non-innermost dimension of the
    category-major table (vectorised along ``n``; a cached table of
    `TensorCircuit.leaf_table` is already category-major, another one is
    transposed once), with a running maximum; with fewer than 32 nodes the
    blocks are reduced over the innermost category dimension instead. The result equals
    ``(table.unsqueeze(0) + ev.unsqueeze(2)).amax(-1)`` exactly: the same
    float additions, then maxima. On the CPU the compiled kernel of
    [`pcircuits.kernels.native`][pcircuits.kernels.native] computes the same values where it is available.
    """
    B, G, C = ev.shape
    n = table.shape[1]
    if table.shape[0] == 1 and G > 1:  # one table for every group: the groups are rows of one product
        out = native.max_plus(ev.reshape(B * G, 1, C), table.transpose(1, 2))
        if out is not None:
            return out.view(B, G, n)
    else:
        out = native.max_plus(ev, table.transpose(1, 2))
        if out is not None:
            return out
    step = max(1, _MAX_EVIDENCE_BLOCK // max(1, B * G * n))
    out = None
    if n < 32:  # few nodes: reduce over the innermost (category) dimension of a category-minor table
        t = table if table.stride(-1) == 1 else table.contiguous()  # [Q, n, C]
        for c0 in range(0, C, step):
            part = (ev[:, :, None, c0 : c0 + step] + t[:, :, c0 : c0 + step].unsqueeze(0)).amax(-1)
            out = part if out is None else torch.maximum(out, part, out=out)
        return out
    t = table.transpose(1, 2)  # [Q, C, n]
    if t.stride(-1) != 1:
        t = t.contiguous()
    for c0 in range(0, C, step):
        part = (ev[:, :, c0 : c0 + step].unsqueeze(-1) + t[:, c0 : c0 + step].unsqueeze(0)).amax(2)  # [B, G, n]
        out = part if out is None else torch.maximum(out, part, out=out)
    return out


def soft_evidence_lse(
    evidence: torch.Tensor,
    table: torch.Tensor,
    chunk: int = 1 << 16,
    shifted: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``log sum_c exp(evidence[b, g, c] + table[g, n, c])``, as a batched matrix product.

    Both sides are shifted by their row maxima and exponentiated, so the cost
    is one ``[B, C] x [C, n]`` product per group. Where the product is too
    small to be trusted (terms lost to underflow, e.g. logits of magnitude
    1e4 that disagree with the table), the entry is recomputed exactly.

    Args:
        evidence: ``[B, G, C]`` log-weights.
        table: ``[G, n, C]`` log-probabilities, or ``[1, n, C]`` shared by all groups.
        chunk: entries recomputed exactly per step.
        shifted: ``(exp(table - m2), m2)`` with ``m2 [G or 1, n, 1]`` the
            finite row maxima of ``table``, when the caller keeps them (a
            cached table); computed here otherwise.

    Returns:
        ``[B, G, n]``.
    """
    B, G, C = evidence.shape
    m1 = _finite_max(evidence, -1)  # [B, G, 1]
    e1 = torch.exp(evidence - m1)
    e2, m2 = shifted if shifted is not None else table_exp(table)
    if table.shape[0] == 1:  # one table for all groups: a single [B*G, C] x [C, n] product
        s = (e1.reshape(B * G, C) @ e2[0].transpose(0, 1)).view(B, G, -1)
    else:
        s = torch.matmul(e1.transpose(0, 1), e2.transpose(1, 2)).transpose(0, 1)  # [B, G, n]
    info = torch.finfo(s.dtype)
    threshold = C * info.tiny / info.eps
    bad = s < threshold
    out = torch.log(torch.where(bad, torch.ones_like(s), s)) + m1 + m2.squeeze(-1).unsqueeze(0)
    if bool(bad.any()):
        b, g, n = bad.nonzero(as_tuple=True)
        exact = []
        for i in range(0, b.numel(), chunk):
            sl = slice(i, i + chunk)
            tg = g[sl] if table.shape[0] > 1 else torch.zeros_like(g[sl])
            terms = evidence[b[sl], g[sl]] + table[tg, n[sl]]  # [m, C]
            mm = _finite_max(terms, -1)
            exact.append((_safe_log(torch.exp(terms - mm).sum(-1, keepdim=True)) + mm).squeeze(-1))
        out = out.index_put((b, g, n), torch.cat(exact))
    return out
