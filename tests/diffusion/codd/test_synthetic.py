"""The trained backbone of the synthetic CoDD task."""

import math

import torch

from diffusion.codd.synthetic import (
    make_teacher,
    sample_and_score,
    train_teacher_backbone,
)


def test_train_teacher_backbone_shapes_and_mask_column():
    torch.manual_seed(0)
    teacher = make_teacher(length=6, states=3, vocab=5, seed=0)
    bb, info = train_teacher_backbone(
        teacher, num_train=200, steps=30, batch_size=16, hidden_size=16, num_layers=1, num_heads=2,
        intermediate_size=32, warmup_steps=5, num_heldout=50,
    )
    assert bb.vocab_size == 6 and bb.mask_token_id == 5
    ids = torch.tensor([[0, 5, 1, 5, 2, 5, 3]])
    with torch.no_grad():
        lg = bb(ids)
    assert lg.shape == (1, 7, 6)
    assert torch.isinf(lg[..., 5]).all() and torch.isfinite(lg[..., :5]).all()
    assert math.isfinite(info["heldout_bound_nats_per_token"]) and info["steps"] == 30
    ll = sample_and_score(teacher, bb, 4, 2, seed=0)
    assert ll.shape == (4,) and torch.isfinite(ll).all()
