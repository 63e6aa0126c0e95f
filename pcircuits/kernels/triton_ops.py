"""Triton kernels for the per-layer computations (the ``"triton"`` backend).

Same contract as [`pcircuits.kernels.torch_ops`][pcircuits.kernels.torch_ops]: exact in log-space up
to float32 rounding, ``-inf`` (with zero gradient) where all terms are
``-inf``, differentiable by autograd.

What runs as a Triton kernel:

- [`dense_sum`][pcircuits.kernels.triton_ops.dense_sum] with ``semiring="sum"``: ``log sum_k exp(c[b,k] + w[n,k])``
  as a tiled matrix product. Each program owns a ``[BLOCK_B, BLOCK_N]`` output
  tile and walks over ``k``; it keeps a running maximum per batch row (over
  the children) and per node (over the log-weights), rescales its
  accumulator when a maximum grows, exponentiates the shifted tiles and
  multiplies them with ``tl.dot``; the result is ``log(acc) + max_c + max_w``.
  The backward pass is two kernels, one for the children and one for the
  weights; the weight kernel loops over the batch inside the program, so the
  per-example edge flows are never stored.
- [`dense_sum`][pcircuits.kernels.triton_ops.dense_sum] with ``semiring="max"`` (MPE): a tiled max-plus product
  that also records the arg-max child; the backward pass routes each output
  gradient to its arg-max child and edge (like ``torch.max``).
- [`soft_evidence_lse`][pcircuits.kernels.triton_ops.soft_evidence_lse]: the categorical leaf under soft evidence, the
  same tiled log-matmul-exp over ``C`` (up to ~150,000 categories). A table
  shared by all groups (``[1, n, C]``) is read once for the whole batch.

[`sparse_sum`][pcircuits.kernels.triton_ops.sparse_sum] falls back to
[`pcircuits.kernels.torch_ops.sparse_sum`][pcircuits.kernels.torch_ops.sparse_sum]
(its children are already gathered per edge, so a kernel would only fuse
element-wise work).

Mixed precision (off by default): [`set_precision`][pcircuits.kernels.triton_ops.set_precision] or the
[`precision`][pcircuits.kernels.triton_ops.precision] context manager (or the environment variable
``PCIRCUITS_TRITON_PRECISION``) selects how the exponentiated tiles enter the
matrix products: ``"ieee"`` (exact float32), ``"tf32"`` or ``"bf16"``. The
accumulation, the maxima and the logarithms stay in float32 in every mode.

On CPU tensors the kernels run through Triton's interpreter, which needs
``TRITON_INTERPRET=1`` in the environment before `triton` is imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from typing import Iterator

import torch
import triton
import triton.language as tl

from . import torch_ops

__all__ = [
    "PRECISIONS",
    "dense_sum",
    "sparse_sum",
    "soft_evidence_lse",
    "log_matmul_exp",
    "max_plus_matmul",
    "set_precision",
    "get_precision",
    "precision",
    "interpreted",
]

#: Accepted values of [`set_precision`][pcircuits.kernels.triton_ops.set_precision].
PRECISIONS = ("ieee", "tf32", "bf16")

_env_precision = os.environ.get("PCIRCUITS_TRITON_PRECISION", "ieee")
if _env_precision not in PRECISIONS:
    raise ValueError(f"PCIRCUITS_TRITON_PRECISION must be one of {PRECISIONS}, got {_env_precision!r}")
_PRECISION: contextvars.ContextVar[str] = contextvars.ContextVar("pcircuits_triton_precision", default=_env_precision)


def _interpret_mode() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_INTERPRETED = _interpret_mode()


def interpreted() -> bool:
    """Whether the kernels of this module were built for Triton's CPU interpreter."""
    return _INTERPRETED


def set_precision(name: str) -> None:
    """Sets the default matrix-product precision of the kernels.

    Args:
        name: ``"ieee"`` (exact float32, the default), ``"tf32"`` (TensorFloat-32
            inputs, float32 accumulation) or ``"bf16"`` (bfloat16 inputs,
            float32 accumulation). Only float32 tensors are affected.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    _PRECISION.set(name)


def get_precision() -> str:
    """The matrix-product precision in effect (see [`set_precision`][pcircuits.kernels.triton_ops.set_precision])."""
    return _PRECISION.get()


@contextlib.contextmanager
def precision(name: str) -> Iterator[None]:
    """Selects the matrix-product precision inside a ``with`` block (see
    [`set_precision`][pcircuits.kernels.triton_ops.set_precision])."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    token = _PRECISION.set(name)
    try:
        yield
    finally:
        _PRECISION.reset(token)


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _mm(a, b, acc, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``acc + a @ b`` with the selected input precision (float32 accumulation)."""
    if PRECISION == "bf16":
        if EMULATE_BF16:  # the interpreter has no bf16 matmul: round the inputs, multiply in fp32
            acc = tl.dot(
                a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), acc, input_precision="ieee"
            )
        else:
            acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    elif PRECISION == "tf32":
        acc = tl.dot(a, b, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _lme_fwd_kernel(
    c_ptr, w_ptr, y_ptr, s_ptr, m_ptr, mw_ptr,
    B, N, K,
    s_cb, s_cg, s_ck,
    s_wg, s_wn, s_wk,
    s_yb, s_yg, s_yn,
    s_mb, s_mg,
    s_mwg, s_mwn,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    STORE_SUM: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """y[b,g,n] = log sum_k exp(c[b,g,k] + w[g,n,k]) for one [BLOCK_B, BLOCK_N] tile, online max shifts."""
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_b = offs_b < B
    mask_n = offs_n < N
    c_rows = c_ptr + g * s_cg + offs_b.to(tl.int64)[:, None] * s_cb
    w_cols = w_ptr + g * s_wg + offs_n.to(tl.int64)[None, :] * s_wn
    dt = c_ptr.dtype.element_ty
    m = tl.full([BLOCK_B], float("-inf"), dt)
    mw = tl.full([BLOCK_N], float("-inf"), dt)
    acc = tl.zeros([BLOCK_B, BLOCK_N], dt)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < K
        c = tl.load(c_rows + ks[None, :] * s_ck, mask=mask_b[:, None] & mask_k[None, :], other=float("-inf"))
        w = tl.load(w_cols + ks[:, None] * s_wk, mask=mask_k[:, None] & mask_n[None, :], other=float("-inf"))
        m_new = tl.maximum(m, tl.max(c, 1))
        mw_new = tl.maximum(mw, tl.max(w, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        mw_safe = tl.where(mw_new == float("-inf"), 0.0, mw_new)
        alpha = tl.where(m == float("-inf"), 0.0, tl.exp(m - m_safe))
        beta = tl.where(mw == float("-inf"), 0.0, tl.exp(mw - mw_safe))
        acc = acc * alpha[:, None] * beta[None, :]
        ec = tl.exp(c - m_safe[:, None])
        ew = tl.exp(w - mw_safe[None, :])
        acc = _mm(ec, ew, acc, PRECISION, EMULATE_BF16)
        m = m_new
        mw = mw_new
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    mw_safe = tl.where(mw == float("-inf"), 0.0, mw)
    pos = acc > 0
    y = tl.where(pos, tl.log(tl.where(pos, acc, 1.0)) + m_safe[:, None] + mw_safe[None, :], float("-inf"))
    out_mask = mask_b[:, None] & mask_n[None, :]
    y_off = g * s_yg + offs_b.to(tl.int64)[:, None] * s_yb + offs_n.to(tl.int64)[None, :] * s_yn
    tl.store(y_ptr + y_off, y, mask=out_mask)
    if STORE_SUM:
        tl.store(s_ptr + y_off, acc, mask=out_mask)
    if pid_n == 0:
        tl.store(m_ptr + g * s_mg + offs_b * s_mb, m_safe, mask=mask_b)
    if pid_b == 0:
        tl.store(mw_ptr + g * s_mwg + offs_n * s_mwn, mw_safe, mask=mask_n)


@triton.jit
def _lme_bwd_children_kernel(
    c_ptr, w_ptr, s_ptr, dy_ptr, m_ptr, mw_ptr, dc_ptr,
    B, N, K,
    s_cb, s_cg, s_ck,
    s_wg, s_wn, s_wk,
    s_yb, s_yg, s_yn,
    s_db, s_dg, s_dn,
    s_mb, s_mg,
    s_mwg, s_mwn,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """dc[b,g,k] = exp(c - m_b) * sum_n q[b,n] exp(w[n,k] - mw_n), q = dy / s (s: the forward's shifted sum)."""
    pid_b = tl.program_id(0)
    pid_k = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    mask_b = offs_b < B
    mask_k = offs_k < K
    dt = c_ptr.dtype.element_ty
    m = tl.load(m_ptr + g * s_mg + offs_b * s_mb, mask=mask_b, other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_K], dt)
    ob = offs_b.to(tl.int64)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + offs_n
        mask_n = ns < N
        tile = mask_b[:, None] & mask_n[None, :]
        s = tl.load(s_ptr + g * s_yg + ob[:, None] * s_yb + ns[None, :] * s_yn, mask=tile, other=0.0)
        dy = tl.load(dy_ptr + g * s_dg + ob[:, None] * s_db + ns[None, :] * s_dn, mask=tile, other=0.0)
        mw = tl.load(mw_ptr + g * s_mwg + ns * s_mwn, mask=mask_n, other=0.0)
        live = (s > 0) & (dy != 0)
        q = tl.where(live, dy / tl.where(live, s, 1.0), 0.0)
        w = tl.load(
            w_ptr + g * s_wg + ns[:, None] * s_wn + offs_k[None, :] * s_wk,
            mask=mask_n[:, None] & mask_k[None, :],
            other=float("-inf"),
        )
        ew = tl.exp(w - mw[:, None])
        acc = _mm(q, ew, acc, PRECISION, EMULATE_BF16)
    c = tl.load(
        c_ptr + g * s_cg + ob[:, None] * s_cb + offs_k[None, :] * s_ck,
        mask=mask_b[:, None] & mask_k[None, :],
        other=float("-inf"),
    )
    dc = tl.exp(c - m[:, None]) * acc
    tl.store(
        dc_ptr + g * s_cg + ob[:, None] * s_cb + offs_k[None, :] * s_ck, dc, mask=mask_b[:, None] & mask_k[None, :]
    )


@triton.jit
def _lme_bwd_weights_kernel(
    c_ptr, w_ptr, s_ptr, dy_ptr, m_ptr, mw_ptr, dw_ptr,
    B, N, K,
    s_cb, s_cg, s_ck,
    s_wg, s_wn, s_wk,
    s_yb, s_yg, s_yn,
    s_db, s_dg, s_dn,
    s_mb, s_mg,
    s_mwg, s_mwn,
    s_og, s_on, s_ok,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """dw[g,n,k] = exp(w - mw_n) * sum_b q[b,n] exp(c[b,k] - m_b), accumulated over the batch in the program."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_b = tl.arange(0, BLOCK_B)
    mask_n = offs_n < N
    mask_k = offs_k < K
    dt = c_ptr.dtype.element_ty
    mw = tl.load(mw_ptr + g * s_mwg + offs_n * s_mwn, mask=mask_n, other=0.0)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dt)
    on = offs_n.to(tl.int64)
    for b0 in range(0, B, BLOCK_B):
        bs = b0 + offs_b
        mask_b = bs < B
        bl = bs.to(tl.int64)
        tile = mask_n[:, None] & mask_b[None, :]  # [BLOCK_N, BLOCK_B]
        s = tl.load(s_ptr + g * s_yg + bl[None, :] * s_yb + on[:, None] * s_yn, mask=tile, other=0.0)
        dy = tl.load(dy_ptr + g * s_dg + bl[None, :] * s_db + on[:, None] * s_dn, mask=tile, other=0.0)
        m = tl.load(m_ptr + g * s_mg + bs * s_mb, mask=mask_b, other=0.0)
        live = (s > 0) & (dy != 0)
        qt = tl.where(live, dy / tl.where(live, s, 1.0), 0.0)
        c = tl.load(
            c_ptr + g * s_cg + bl[:, None] * s_cb + offs_k[None, :] * s_ck,
            mask=mask_b[:, None] & mask_k[None, :],
            other=float("-inf"),
        )
        ec = tl.exp(c - m[:, None])
        acc = _mm(qt, ec, acc, PRECISION, EMULATE_BF16)
    w = tl.load(
        w_ptr + g * s_wg + on[:, None] * s_wn + offs_k[None, :] * s_wk,
        mask=mask_n[:, None] & mask_k[None, :],
        other=float("-inf"),
    )
    dw = tl.exp(w - mw[:, None]) * acc
    tl.store(
        dw_ptr + g * s_og + on[:, None] * s_on + offs_k[None, :] * s_ok, dw, mask=mask_n[:, None] & mask_k[None, :]
    )


@triton.jit
def _max_fwd_kernel(
    c_ptr, w_ptr, y_ptr, i_ptr,
    B, N, K,
    s_cb, s_cg, s_ck,
    s_wg, s_wn, s_wk,
    s_yb, s_yg, s_yn,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """y[b,g,n] = max_k c[b,g,k] + w[g,n,k] and its first arg-max, for one [BLOCK_B, BLOCK_N] tile."""
    pid_b = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_b = offs_b < B
    mask_n = offs_n < N
    c_rows = c_ptr + g * s_cg + offs_b.to(tl.int64)[:, None] * s_cb
    w_cols = w_ptr + g * s_wg + offs_n.to(tl.int64)[None, :] * s_wn
    best = tl.full([BLOCK_B, BLOCK_N], float("-inf"), c_ptr.dtype.element_ty)
    arg = tl.zeros([BLOCK_B, BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < K
        c = tl.load(c_rows + ks[None, :] * s_ck, mask=mask_b[:, None] & mask_k[None, :], other=float("-inf"))
        w = tl.load(w_cols + ks[:, None] * s_wk, mask=mask_k[:, None] & mask_n[None, :], other=float("-inf"))
        v = c[:, :, None] + w[None, :, :]  # [BLOCK_B, BLOCK_K, BLOCK_N]
        tile_max = tl.max(v, 1)
        tile_arg = tl.argmax(v, 1).to(tl.int32) + k0
        better = tile_max > best  # strict: the first maximiser wins
        best = tl.where(better, tile_max, best)
        arg = tl.where(better, tile_arg, arg)
    out_mask = mask_b[:, None] & mask_n[None, :]
    y_off = g * s_yg + offs_b.to(tl.int64)[:, None] * s_yb + offs_n.to(tl.int64)[None, :] * s_yn
    tl.store(y_ptr + y_off, best, mask=out_mask)
    tl.store(i_ptr + y_off, arg, mask=out_mask)


# ----------------------------------------------------------------------------- launch helpers
def _block(size: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(size, 1))))


def _check_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.device.type == "cpu" and not _INTERPRETED:
            raise RuntimeError(
                "the triton backend got CPU tensors, but the kernels were not built for Triton's interpreter: "
                "set TRITON_INTERPRET=1 before importing triton, or use backend='torch' on CPU"
            )


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _mm_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float64 else _PRECISION.get()


def _fwd_blocks(B: int, N: int, K: int) -> tuple[int, int, int]:
    return _block(B, 16, 64), _block(N, 16, 64), _block(K, 16, 64)


def _lme_forward(
    c: torch.Tensor, w: torch.Tensor, store_sum: bool, prec: str
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    B, G, K = c.shape
    N = w.shape[1]
    y = torch.empty(B, G, N, dtype=c.dtype, device=c.device)
    s = torch.empty_like(y) if store_sum else y
    m = torch.empty(B, G, dtype=c.dtype, device=c.device)
    mw = torch.empty(G, N, dtype=c.dtype, device=c.device)
    BB, BN, BK = _fwd_blocks(B, N, K)
    grid = (triton.cdiv(B, BB), triton.cdiv(N, BN), G)
    _lme_fwd_kernel[grid](
        c, w, y, s, m, mw, B, N, K,
        *c.stride(), *w.stride(), *y.stride(), *m.stride(), *mw.stride(),
        BLOCK_B=BB, BLOCK_N=BN, BLOCK_K=BK, STORE_SUM=store_sum, PRECISION=prec, EMULATE_BF16=_INTERPRETED,
    )  # fmt: skip
    return y, (s if store_sum else None), m, mw


class _LogMatmulExp(torch.autograd.Function):
    """``y[b,g,n] = log sum_k exp(c[b,g,k] + w[g,n,k])`` with Triton forward and backward kernels."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, w: torch.Tensor, return_sum: bool, prec: str):  # type: ignore[override]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        y, s, m, mw = _lme_forward(c, w, return_sum or need_grad, prec)
        if need_grad:  # the backward divides by the shifted sum itself: exact, unlike exp(max - y) at large |y|
            ctx.save_for_backward(c, w, s, m, mw)
        ctx.prec = prec
        if return_sum:
            ctx.mark_non_differentiable(s)
            return y, s
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor, *unused: torch.Tensor):  # type: ignore[override]
        c, w, s, m, mw = ctx.saved_tensors
        B, G, K = c.shape
        N = w.shape[1]
        dy = dy.contiguous()
        dc = dw = None
        common = dict(PRECISION=ctx.prec, EMULATE_BF16=_INTERPRETED)
        if ctx.needs_input_grad[0]:
            dc = torch.empty(B, G, K, dtype=c.dtype, device=c.device)
            cc = c.contiguous()
            BB, BN, BK = _block(B, 16, 64), _block(N, 16, 32), _block(K, 16, 64)
            grid = (triton.cdiv(B, BB), triton.cdiv(K, BK), G)
            _lme_bwd_children_kernel[grid](
                cc, w, s, dy, m, mw, dc, B, N, K,
                *cc.stride(), *w.stride(), *s.stride(), *dy.stride(), *m.stride(), *mw.stride(),
                BLOCK_B=BB, BLOCK_N=BN, BLOCK_K=BK, **common,
            )  # fmt: skip
        if ctx.needs_input_grad[1]:
            dw = torch.empty(G, N, K, dtype=w.dtype, device=w.device)
            BB, BN, BK = _block(B, 16, 32), _block(N, 16, 64), _block(K, 16, 64)
            grid = (triton.cdiv(N, BN), triton.cdiv(K, BK), G)
            _lme_bwd_weights_kernel[grid](
                c, w, s, dy, m, mw, dw, B, N, K,
                *c.stride(), *w.stride(), *s.stride(), *dy.stride(), *m.stride(), *mw.stride(), *dw.stride(),
                BLOCK_B=BB, BLOCK_N=BN, BLOCK_K=BK, **common,
            )  # fmt: skip
        return dc, dw, None, None


def log_matmul_exp(
    children: torch.Tensor, log_weights: torch.Tensor, return_sum: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``log sum_k exp(children[b, g, k] + log_weights[g, n, k])`` with Triton kernels.

    Differentiable with respect to both inputs (Triton backward kernels).

    Args:
        children: ``[B, G, K]`` log-values.
        log_weights: ``[G, n, K]`` (or ``[1, n, K]``, shared by all groups) log-values.
        return_sum: also return the shifted sum ``[B, G, n]``,
            ``sum_k exp(children - max_k children) exp(log_weights - max_k log_weights)``
            (not differentiable), to detect results lost to underflow.

    Returns:
        ``[B, G, n]`` log-values (and the shifted sum when ``return_sum``).
    """
    _check_device(children, log_weights)
    dtype = _compute_dtype(children, log_weights)
    c, w = children.to(dtype), log_weights.to(dtype)
    B, G, K = c.shape
    if w.dim() != 3 or w.shape[2] != K or w.shape[0] not in (1, G):
        raise ValueError(f"log_weights must have shape [{G} or 1, n, {K}], got {list(log_weights.shape)}")
    c = c if c.stride(-1) == 1 else c.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    flatten = w.shape[0] == 1 and G > 1
    if flatten:  # one table for every group: fold the groups into the batch, read the table once
        c = c.reshape(B * G, 1, K)
    prec = _mm_precision(dtype)
    res = _LogMatmulExp.apply(c, w, return_sum, prec)
    y, s = (res if return_sum else (res, None))
    if flatten:
        y = y.reshape(B, G, -1)
        s = None if s is None else s.reshape(B, G, -1)
    out_dtype = children.dtype if children.dtype.is_floating_point else dtype
    y = y.to(out_dtype)
    if return_sum:
        return y, s
    return y


class _MaxPlusMatmul(torch.autograd.Function):
    """``y[b,g,n] = max_k c[b,g,k] + w[g,n,k]``; the gradient goes to the arg-max child and edge."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, w: torch.Tensor):  # type: ignore[override]
        B, G, K = c.shape
        N = w.shape[1]
        y = torch.empty(B, G, N, dtype=c.dtype, device=c.device)
        idx = torch.empty(B, G, N, dtype=torch.int32, device=c.device)
        BB, BN, BK = _block(B, 16, 32), _block(N, 16, 32), _block(K, 1, 8)
        grid = (triton.cdiv(B, BB), triton.cdiv(N, BN), G)
        _max_fwd_kernel[grid](
            c, w, y, idx, B, N, K, *c.stride(), *w.stride(), *y.stride(),
            BLOCK_B=BB, BLOCK_N=BN, BLOCK_K=BK,
        )  # fmt: skip
        ctx.save_for_backward(y, idx)
        ctx.shapes = (tuple(c.shape), tuple(w.shape))
        ctx.mark_non_differentiable(idx)
        return y, idx

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _didx: torch.Tensor | None):  # type: ignore[override]
        y, idx = ctx.saved_tensors
        c_shape, w_shape = ctx.shapes
        dy = torch.where(y == -math.inf, torch.zeros_like(dy), dy)  # all -inf: no gradient
        idx = idx.long()
        dc = dw = None
        if ctx.needs_input_grad[0]:
            dc = dy.new_zeros(c_shape).scatter_add_(2, idx, dy)
        if ctx.needs_input_grad[1]:
            dw = dy.new_zeros(w_shape).scatter_add_(2, idx.permute(1, 2, 0), dy.permute(1, 2, 0))
        return dc, dw


def max_plus_matmul(children: torch.Tensor, log_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_k children[b, g, k] + log_weights[g, n, k]`` and its arg-max, with a Triton kernel.

    Args:
        children: ``[B, G, K]`` log-values.
        log_weights: ``[G, n, K]`` log-weights.

    Returns:
        ``([B, G, n]`` values, ``[B, G, n]`` int32 arg-max ``k``; the first maximiser, 0 where all are ``-inf``).
        The values are differentiable: the gradient goes to the arg-max child and edge
        (none where the value is ``-inf``).
    """
    _check_device(children, log_weights)
    dtype = _compute_dtype(children, log_weights)
    c, w = children.to(dtype), log_weights.to(dtype)
    if w.dim() != 3 or w.shape[0] != c.shape[1] or w.shape[2] != c.shape[2]:
        raise ValueError(f"log_weights must have shape [{c.shape[1]}, n, {c.shape[2]}], got {list(log_weights.shape)}")
    y, idx = _MaxPlusMatmul.apply(c, w)
    return y.to(children.dtype), idx


# ----------------------------------------------------------------------------- backend API
def dense_sum(
    children: torch.Tensor, log_weights: torch.Tensor, semiring: str = "sum", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum layer where every node of a group connects to the group's ``k`` children.

    Args:
        children: ``[B, G, k]`` child log-values.
        log_weights: ``[G, n, k]`` normalised log-weights.
        semiring: ``"sum"`` (log-sum-exp, a tiled log-matmul-exp kernel) or
            ``"max"`` (max-product, a tiled max-plus kernel).
        weights: ignored (the kernels read the log-weights); accepted for the
            dispatch signature.

    Returns:
        ``[B, G, n]`` log-values.
    """
    if semiring == "max":
        return max_plus_matmul(children, log_weights)[0]
    if semiring != "sum":
        raise ValueError(f"semiring must be 'sum' or 'max', got {semiring!r}")
    return log_matmul_exp(children, log_weights)


def sparse_sum(children: torch.Tensor, log_weights: torch.Tensor, semiring: str = "sum") -> torch.Tensor:
    """Sum layer with padded child lists: the torch implementation (see
    [`pcircuits.kernels.torch_ops.sparse_sum`][pcircuits.kernels.torch_ops.sparse_sum]).

    Args:
        children: ``[B, G, n, k]`` child log-values.
        log_weights: ``[G, n, k]`` normalised log-weights, ``-inf`` at pads.
        semiring: ``"sum"`` or ``"max"``.

    Returns:
        ``[B, G, n]`` log-values.
    """
    return torch_ops.sparse_sum(children, log_weights, semiring)


def soft_evidence_lse(evidence: torch.Tensor, table: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """``log sum_c exp(evidence[b, g, c] + table[g, n, c])``: a categorical leaf under soft evidence.

    One tiled log-matmul-exp kernel over ``C``. A table of shape ``[1, n, C]``
    is shared by all groups and read once for the whole batch. Entries whose
    shifted sum is too small to be trusted (terms lost to underflow) are
    recomputed exactly, as in
    [`pcircuits.kernels.torch_ops.soft_evidence_lse`][pcircuits.kernels.torch_ops.soft_evidence_lse].

    Args:
        evidence: ``[B, G, C]`` log-weights.
        table: ``[G, n, C]`` (or ``[1, n, C]``) log-probabilities.
        chunk: entries recomputed exactly per step.

    Returns:
        ``[B, G, n]``.
    """
    y, s = log_matmul_exp(evidence, table, return_sum=True)
    C = evidence.shape[-1]
    info = torch.finfo(s.dtype)
    bad = s < C * info.tiny / info.eps
    if bool(bad.any()):
        b, g, n = bad.nonzero(as_tuple=True)
        gt = g if table.shape[0] > 1 else torch.zeros_like(g)
        exact = []
        for i in range(0, b.numel(), chunk):
            sl = slice(i, i + chunk)
            terms = evidence[b[sl], g[sl]] + table[gt[sl], n[sl]]  # [m, C]
            mm = torch_ops._finite_max(terms, -1)
            exact.append((torch_ops._safe_log(torch.exp(terms - mm).sum(-1, keepdim=True)) + mm).squeeze(-1))
        y = y.index_put((b, g, n), torch.cat(exact).to(y.dtype))
    return y
