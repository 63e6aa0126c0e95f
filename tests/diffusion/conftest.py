"""Shared fixtures of the diffusion tests (tiny models, CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from diffusion.backbones import MaskedLMBackbone

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"


class TableModel(nn.Module):
    """Logits that depend on the position only: ``table[N, V]`` broadcast over the batch."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, n = input_ids.shape
        return self.table[:n].unsqueeze(0).expand(b, -1, -1).clone()


class RandomModel(nn.Module):
    """A tiny bidirectional mixer: logits depend on all ids (so steps interact)."""

    def __init__(self, vocab_size: int, dim: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(vocab_size, dim, generator=g))
        self.pos = nn.Parameter(torch.randn(512, dim, generator=g))
        self.out = nn.Parameter(torch.randn(dim, vocab_size, generator=g))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb[input_ids] + self.pos[: input_ids.shape[1]]
        h = h + h.mean(dim=1, keepdim=True)
        return torch.tanh(h) @ self.out * 3.0


@pytest.fixture
def random_backbone() -> MaskedLMBackbone:
    """Vocabulary 20, mask id 19."""
    return MaskedLMBackbone(RandomModel(20), mask_token_id=19, vocab_size=20)


def table_backbone(table: torch.Tensor, mask_token_id: int) -> MaskedLMBackbone:
    """Wrap a position-only logit table ``[N, V]``."""
    return MaskedLMBackbone(TableModel(table), mask_token_id=mask_token_id, vocab_size=table.shape[1])
