"""Triton kernels against the torch reference, op by op (run with TRITON_INTERPRET=1; see test_triton_backend.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.pcircuits.kernels.interp_common import assert_close, torch_ops, triton_ops

SHAPES = [(1, 1, 1, 1), (5, 3, 7, 4), (3, 2, 70, 19), (70, 1, 20, 3)]  # (B, G, K, n); last two cross tile edges


def _inputs(B, G, K, n, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    c = (torch.randn(B, G, K, generator=gen, dtype=torch.float64) * 3 - 5).to(dtype)
    w = torch.log_softmax(torch.randn(G, n, K, generator=gen, dtype=torch.float64) * 2, -1).to(dtype)
    dy = torch.randn(B, G, n, generator=gen, dtype=torch.float64).to(dtype)
    return c.requires_grad_(), w.requires_grad_(), dy


def _grads(fn, c, w, dy, semiring):
    y = fn(c, w, semiring)
    return (y, *torch.autograd.grad(y, (c, w), dy))


@pytest.mark.parametrize("semiring", ["sum", "max"])
@pytest.mark.parametrize("shape", SHAPES)
def test_dense_sum_forward_backward(shape, semiring):
    c, w, dy = _inputs(*shape, seed=sum(shape))
    got = _grads(triton_ops.dense_sum, c, w, dy, semiring)
    want = _grads(torch_ops.dense_sum, c, w, dy, semiring)
    for g, r in zip(got, want, strict=True):
        assert_close(g, r)


def test_dense_sum_float64():
    c, w, dy = _inputs(4, 2, 9, 5, seed=3, dtype=torch.float64)
    got = _grads(triton_ops.dense_sum, c, w, dy, "sum")
    want = _grads(torch_ops.dense_sum, c, w, dy, "sum")
    assert got[0].dtype == torch.float64
    for g, r in zip(got, want, strict=True):
        assert_close(g, r, rtol=1e-12)


@pytest.mark.parametrize("offset", [-1e4, 500.0])
def test_dense_sum_stable_at_large_magnitudes(offset):
    c, w, dy = _inputs(4, 2, 40, 6, seed=5)
    c = (c.detach() + offset).requires_grad_()  # exp would underflow / overflow without the max shift
    got = _grads(triton_ops.dense_sum, c, w, dy, "sum")
    want = _grads(torch_ops.dense_sum, c, w, dy, "sum")
    assert torch.isfinite(got[0]).all()
    for g, r in zip(got, want, strict=True):
        assert_close(g, r)


@pytest.mark.parametrize("semiring", ["sum", "max"])
def test_minus_inf_rows_give_minus_inf_and_zero_gradient(semiring):
    c, w, dy = _inputs(6, 3, 21, 5, seed=11)
    with torch.no_grad():
        c[0] = -math.inf  # every child of example 0
        c[1, :, :17] = -math.inf  # partly
        w[0, 1] = -math.inf  # every edge of node (0, 1)
        w[2, :, 3:] = -math.inf  # edges into children that are -inf for example 2 only
        c[2, 2, :3] = -math.inf
    got = _grads(triton_ops.dense_sum, c, w, dy, semiring)
    want = _grads(torch_ops.dense_sum, c, w, dy, semiring)
    y, dc, dw = got
    assert torch.isneginf(y[0]).all() and torch.isneginf(y[:, 0, 1]).all() and torch.isneginf(y[2, 2]).all()
    assert not any(torch.isnan(t).any() for t in got)
    assert (dc[0] == 0).all()
    assert (dc[2, 2] == 0).all()
    assert_close(y, want[0])
    if semiring == "sum":  # torch.max routes the gradient of an all -inf row to child 0; ours drops it
        assert_close(dc, want[1])
        assert_close(dw, want[2])
    else:
        live = torch.isfinite(want[0])
        d_live = dy * live
        ref = _grads(torch_ops.dense_sum, c, w, d_live, semiring)
        assert_close(dc, ref[1])
        assert_close(dw, ref[2])


def test_max_plus_returns_first_argmax():
    c, w, _ = _inputs(5, 2, 13, 4, seed=2)
    y, idx = triton_ops.max_plus_matmul(c.detach(), w.detach())
    full = c.detach().unsqueeze(2) + w.detach().unsqueeze(0)
    assert torch.equal(idx.long(), full.argmax(-1))
    assert torch.equal(y, full.amax(-1))


@pytest.mark.parametrize("shared", [False, True])
def test_soft_evidence_forward_backward(shared):
    gen = torch.Generator().manual_seed(7)
    B, G, n, C = 3, 2, 5, 300
    ev = (torch.randn(B, G, C, generator=gen) * 2).requires_grad_()
    table = torch.log_softmax(torch.randn(1 if shared else G, n, C, generator=gen) * 3, -1).requires_grad_()
    with torch.no_grad():
        ev[0, 1] = -math.inf  # impossible evidence
        ev[1, 0, 100:] = -math.inf
    dy = torch.randn(B, G, n, generator=gen)
    outs = []
    for f, t in ((triton_ops.soft_evidence_lse, table), (torch_ops.soft_evidence_lse, table.expand(G, -1, -1))):
        y = f(ev, t)
        outs.append((y, *torch.autograd.grad(y, (ev, table), dy)))
    for g, r in zip(*outs, strict=True):
        assert_close(g, r)
    assert torch.isneginf(outs[0][0][0, 1]).all()
    assert (outs[0][1][0, 1] == 0).all()


def test_soft_evidence_recomputes_underflowing_entries_exactly():
    gen = torch.Generator().manual_seed(9)
    B, G, n, C = 2, 1, 3, 50
    ev = torch.randn(B, G, C, generator=gen) * 1e4  # peaked evidence ...
    # ... that disagrees with the table
    table = torch.log_softmax(-ev[0:1].clone() + torch.randn(1, n, C, generator=gen), -1)
    got = triton_ops.soft_evidence_lse(ev, table)
    want = torch.logsumexp(ev.unsqueeze(2).double() + table.unsqueeze(0).double(), -1)
    assert torch.isfinite(got).all()
    assert_close(got, want.float())


@pytest.mark.parametrize("mode", ["tf32", "bf16"])
def test_mixed_precision_stays_close(mode):
    c, w, dy = _inputs(8, 2, 64, 6, seed=4)
    want = _grads(torch_ops.dense_sum, c, w, dy, "sum")
    with triton_ops.precision(mode):
        got = _grads(triton_ops.dense_sum, c, w, dy, "sum")
        ev = torch.randn(2, 3, 200)
        table = torch.log_softmax(torch.randn(3, 4, 200), -1)
        soft = triton_ops.soft_evidence_lse(ev, table)
    assert triton_ops.get_precision() == "ieee"
    assert (got[0] - want[0]).abs().max() < 2e-2  # bf16 inputs: ~3 significant digits per term
    assert_close(got[1], want[1], rtol=5e-2)
    assert_close(got[2], want[2], rtol=5e-2)
    assert (soft - torch_ops.soft_evidence_lse(ev, table)).abs().max() < 2e-2


def test_precision_rejects_unknown_mode():
    with pytest.raises(ValueError, match="precision"):
        triton_ops.set_precision("fp8")


def test_sparse_sum_falls_back_to_torch():
    gen = torch.Generator().manual_seed(1)
    c = torch.randn(4, 2, 3, 5, generator=gen)
    w = torch.log_softmax(torch.randn(2, 3, 5, generator=gen), -1)
    w[0, 1, 3:] = -math.inf
    for sr in ("sum", "max"):
        assert torch.equal(triton_ops.sparse_sum(c, w, sr), torch_ops.sparse_sum(c, w, sr))
