"""Compiled circuits on the triton backend against the torch backend.

Run with TRITON_INTERPRET=1; see test_triton_backend.py.
"""

from __future__ import annotations

import pytest
import torch

import pcircuits as pc
from pcircuits.learning.em import expected_statistics
from tests.pcircuits.kernels.interp_common import assert_close
from tests.pcircuits.random_circuits import random_circuit, random_evidence


def _pair(root, seed):
    a = pc.compile(root, seed=seed, backend="torch")
    b = pc.compile(root, seed=seed, backend="triton")
    return a, b


@pytest.mark.parametrize("seed", range(6))
def test_likelihood_em_statistics_gradients_and_mpe_match_torch(seed):
    root, kinds = random_circuit(seed, max_nodes=4)
    a, b = _pair(root, seed)
    assert b.resolve_backend() == "triton" and a.resolve_backend() == "torch"
    soft_ok = all(k != "gaussian" for k in kinds)
    x, missing, soft = random_evidence(seed, kinds, batch=7, soft=soft_ok)
    x, missing = torch.from_numpy(x), torch.from_numpy(missing)
    soft = None if soft is None else torch.from_numpy(soft).float()
    ea, eb = a.prepare(x, missing, soft), b.prepare(x, missing, soft)
    # log-likelihood and EM statistics (autograd flows through the kernels' backward)
    ll_a, (flows_a, leaves_a) = expected_statistics(a, ea)
    ll_b, (flows_b, leaves_b) = expected_statistics(b, eb)
    assert_close(ll_b, ll_a)
    for k in flows_a:
        assert_close(flows_b[k], flows_a[k], atol=1e-7)
    for k in leaves_a:
        assert_close(leaves_b[k], leaves_a[k], atol=1e-7)
    # gradient training: d(-mean ll)/d(raw parameters), leaves under soft evidence included
    grads = []
    for c, ev in ((a, ea), (b, eb)):
        c.zero_grad()
        ll = c.upward(ev)[-1][:, 0]
        (-ll[torch.isfinite(ll)].mean()).backward()
        grads.append({n: p.grad for n, p in c.params.items() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert_close(grads[1][n], grads[0][n], atol=1e-7)
    # max-product (MPE) pass and its gradient (the arg-max routing)
    outs = []
    for c, ev in ((a, ea), (b, eb)):
        lw = {k: v.detach().requires_grad_() for k, v in c.sum_log_weights().items()}
        top = c.upward(ev, semiring="max", log_weights=lw)[-1][:, 0]
        fin = torch.isfinite(top)
        g = torch.autograd.grad(top[fin].sum(), list(lw.values()), allow_unused=True) if fin.any() else [None] * len(lw)
        outs.append((top, g))
    assert_close(outs[1][0], outs[0][0])
    for ga, gb in zip(outs[0][1], outs[1][1], strict=True):
        if ga is not None and gb is not None:
            assert_close(gb, ga, atol=1e-7)


def test_many_category_soft_evidence_leaf_matches_torch():
    """An HMM-like chain whose emission leaves have many categories and are tied across positions."""
    C, n, T = 700, 4, 3
    emit = pc.inputs(0, n, pc.Categorical(C))
    layer = pc.summate(emit, num_nodes=n)
    for t in range(1, T):
        leaf = pc.inputs(t, n, pc.Categorical(C), tie_with=emit)
        layer = pc.summate(pc.multiply(layer, leaf), num_nodes=n)
    root = pc.summate(layer, num_nodes=1)
    a, b = _pair(root, 0)
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(2, T, dtype=torch.long)
    missing = torch.ones(2, T, dtype=torch.bool)
    soft = torch.randn(2, T, C, generator=gen) * 3
    soft[1, 1, :650] = -float("inf")
    la, lb = a(x, missing, soft), b(x, missing, soft)
    assert_close(lb, la)
    la.sum().backward()
    lb.sum().backward()
    for name, p in a.params.items():
        assert_close(b.params[name].grad, p.grad)
