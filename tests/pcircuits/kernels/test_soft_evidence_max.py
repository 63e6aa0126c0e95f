"""`soft_evidence_max` equals the broadcast maximum exactly, for both table layouts and both node regimes."""

from __future__ import annotations

import pytest
import torch

from pcircuits.kernels import native, torch_ops
from pcircuits.kernels.torch_ops import soft_evidence_max


@pytest.mark.parametrize("n", [3, 40])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("category_major", [False, True])
@pytest.mark.parametrize("compiled", [False, True])
def test_equals_the_broadcast_maximum(monkeypatch, n, groups, category_major, compiled):
    native._reset()
    monkeypatch.setenv("PCIRCUITS_NATIVE", "1" if compiled else "0")
    if compiled and not native.available():
        pytest.skip(native.status())
    monkeypatch.setattr(torch_ops, "_MAX_EVIDENCE_BLOCK", 97)  # many blocks, ragged last one
    g = torch.Generator().manual_seed(n * 10 + groups)
    B, G, C = 2, 3, 50
    ev = torch.randn(B, G, C, generator=g, dtype=torch.float64)
    ev[0, 1, :7] = -torch.inf
    ev[1, 2] = -torch.inf  # a row with no allowed category
    table = torch.randn(groups, n, C, generator=g, dtype=torch.float64).log_softmax(-1)
    table[..., 4] = -torch.inf
    if category_major:
        table = table.transpose(1, 2).contiguous().transpose(1, 2)
    want = (table.unsqueeze(0) + ev.unsqueeze(2)).amax(-1)
    assert torch.equal(soft_evidence_max(ev, table), want)
