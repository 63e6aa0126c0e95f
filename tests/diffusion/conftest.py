"""Shared pytest fixtures of the diffusion tests (tiny models, CPU, seconds); helpers live in ``fixtures.py``."""

from __future__ import annotations

import pytest
import torch

from diffusion.backbones import MaskedLMBackbone
from tests.diffusion.fixtures import RandomModel

torch.set_num_threads(1)


@pytest.fixture
def random_backbone() -> MaskedLMBackbone:
    """Vocabulary 20, mask id 19."""
    return MaskedLMBackbone(RandomModel(20), mask_token_id=19, vocab_size=20)
