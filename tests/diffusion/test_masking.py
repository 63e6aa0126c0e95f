"""The forward process and the 1/t-weighted objective."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffusion.masking import mask_exact_ratio, mask_tokens, masked_diffusion_loss, sample_times


def test_prompt_never_masked_and_rate_matches_t():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 50, (4, 4000), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :1000] = False  # prompt
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    noisy, masked = mask_tokens(ids, t, mask_token_id=1, maskable=maskable, generator=g)
    assert not masked[:, :1000].any()
    assert torch.equal(noisy[:, :1000], ids[:, :1000])
    assert torch.equal(noisy[masked], torch.ones(int(masked.sum()), dtype=torch.long))
    assert torch.equal(noisy[~masked], ids[~masked])
    rate = masked[:, 1000:].float().mean(1)
    assert torch.allclose(rate, t, atol=0.03)
    assert masked[3, 1000:].all()  # t = 1 masks every maskable token


def test_sample_times_range_and_strata():
    t = sample_times(64, eps=1e-3, generator=torch.Generator().manual_seed(1))
    assert t.shape == (64,)
    assert (t >= 1e-3).all() and (t < 1).all()
    # stratified: exactly one time per stratum of width 1/64
    strata = torch.floor((t - 1e-3) / (1 - 1e-3) * 64).long()
    assert sorted(strata.tolist()) == list(range(64))


def test_loss_is_inverse_t_weighted_masked_ce():
    torch.manual_seed(0)
    v = 11
    ids = torch.randint(2, v, (3, 9))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, :2] = False
    fixed_logits = torch.randn(3, 9, v)
    t = torch.tensor([0.25, 0.5, 1.0])
    seen = {}

    def logits_fn(noisy):
        seen["noisy"] = noisy.clone()
        return fixed_logits

    out = masked_diffusion_loss(
        logits_fn, ids, mask_token_id=1, maskable=maskable, t=t, generator=torch.Generator().manual_seed(3)
    )
    masked = seen["noisy"] == 1
    assert not masked[:, :2].any()
    ce = F.cross_entropy(fixed_logits.reshape(-1, v), ids.reshape(-1), reduction="none").reshape(3, 9)
    expected = ((ce * masked) / t[:, None]).sum() / maskable.sum()
    assert math.isclose(float(out.loss), float(expected), rel_tol=1e-5)
    assert out.num_masked == int(masked.sum())
    assert out.num_tokens == int(maskable.sum())
    # the weight is 1/t, not 1: rescaling t changes the loss accordingly
    unweighted = (ce * masked).sum() / maskable.sum()
    assert not math.isclose(float(out.loss), float(unweighted), rel_tol=1e-3)


def test_loss_unbiased_for_uniform_model():
    # for uniform logits every masked token costs log V; E[sum masked CE / t] = T log V
    v = 7
    ids = torch.randint(0, v, (256, 32), generator=torch.Generator().manual_seed(0))
    vals = [
        float(
            masked_diffusion_loss(
                lambda x: torch.zeros(*x.shape, v), ids, 0, generator=torch.Generator().manual_seed(s)
            ).loss
        )
        for s in range(4)
    ]
    assert abs(sum(vals) / len(vals) - math.log(v)) < 0.05 * math.log(v)


def test_loss_backpropagates():
    emb = torch.nn.Embedding(10, 10)
    ids = torch.randint(2, 10, (2, 6))
    out = masked_diffusion_loss(lambda x: emb(x), ids, 1, t=torch.tensor([1.0, 1.0]))
    out.loss.backward()
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0


def test_bad_t_shape():
    with pytest.raises(ValueError, match="t"):
        mask_tokens(torch.zeros(2, 3, dtype=torch.long), torch.ones(3), 1)


def test_mask_exact_ratio_masks_a_fixed_count_of_maskable_positions():
    g = torch.Generator().manual_seed(0)
    maskable = torch.rand(50, 30, generator=g) < 0.7
    maskable[:, 0] = True
    ratio = torch.rand(50, generator=g)
    m = mask_exact_ratio(maskable, ratio, g)
    assert not bool((m & ~maskable).any())
    expected = (ratio * maskable.sum(1)).round().clamp(min=1).long()
    assert torch.equal(m.sum(1), expected)
    # positions are chosen uniformly: over many draws each maskable position of a row is hit about equally often
    row = maskable[0].clone()
    hits = sum(mask_exact_ratio(row[None], torch.tensor([0.5]), g)[0].long() for _ in range(4000))
    freq = hits[row].double() / 4000
    assert (freq - freq.mean()).abs().max() < 0.05
