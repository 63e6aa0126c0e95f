"""CoDD inside `diffusion.generate`, training and the synthetic helpers."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion import CoDDPrior, generate
from diffusion.codd import fit_prior, topk_with_target
from diffusion.codd.draw import CoDDDraw
from diffusion.codd.synthetic import make_teacher, oracle_backbone, teacher_windows

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher_and_backbone():
    teacher = make_teacher(length=8, states=4, vocab=6, seed=0)
    return teacher, oracle_backbone(teacher)


@pytest.mark.parametrize("sampler", ["latent", "exact", "any_order"])
@pytest.mark.parametrize("block", [8, 4])
def test_generate_with_prior_fills_every_position(teacher_and_backbone, sampler, block):
    teacher, bb = teacher_and_backbone
    prior = CoDDPrior.hmm(4, 3, bb.vocab_size, seed=0)  # window 4: one window per block, or dynamic windows
    prompt = torch.zeros(3, 1, dtype=torch.long)
    out = generate(bb, prompt, gen_length=8, steps=2, block_length=block, temperature=1.0, prior=prior,
                   sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 9)
    assert bool((out != bb.mask_token_id).all())
    assert bool(torch.isfinite(teacher(out[:, 1:])).all())


def test_gamma_zero_is_factorized(teacher_and_backbone):
    _, bb = teacher_and_backbone
    prior = CoDDPrior.hmm(8, 3, bb.vocab_size, seed=0)
    prompt = torch.zeros(4, 1, dtype=torch.long)
    kw = dict(gen_length=8, steps=2, block_length=8, temperature=1.0)
    a = generate(bb, prompt, generator=torch.Generator().manual_seed(3), **kw)
    b = generate(bb, prompt, generator=torch.Generator().manual_seed(3), prior=prior, pc_frac=0.0, **kw)
    assert torch.equal(a, b)


def test_backoff_zero_decodes_as_the_factorized_backbone(teacher_and_backbone):
    _, bb = teacher_and_backbone
    prior = CoDDPrior.hmm(8, 3, bb.vocab_size, seed=0).to(torch.float64)
    prior.set_backoff([0.0])  # lambda = 0 everywhere: the mixture is the factorized backbone
    prompt = torch.zeros(4, 1, dtype=torch.long)
    kw = dict(gen_length=8, steps=4, block_length=8, temperature=0.0)
    a = generate(bb, prompt, **kw)
    b = generate(bb, prompt, prior=prior, **kw)
    assert torch.equal(a, b)


def test_prior_active_changes_the_draw_and_greedy_is_mpe(teacher_and_backbone):
    _, bb = teacher_and_backbone
    prior = CoDDPrior.hmm(8, 3, bb.vocab_size, seed=0)
    prompt = torch.zeros(1, 1, dtype=torch.long)
    draw = CoDDDraw(prior, bb.vocab_size, 1.0, 1.0, "exact", temperature=0.0)
    x = torch.cat([prompt, torch.full((1, 8), bb.mask_token_id)], 1)
    logits = bb(x).float()
    logits[..., bb.mask_token_id] = -math.inf
    in_block = torch.ones(1, 8, dtype=torch.bool)
    prop, score = draw.rescore(
        x, logits, 1, 9, in_block, torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8), bb.mask_token_id
    )
    masked = torch.ones(1, 8, dtype=torch.bool)
    assert torch.equal(prop, prior.mpe(torch.zeros(1, 8, dtype=torch.long), logits[:, 1:], masked))
    post = prior.marginals(torch.zeros(1, 8, dtype=torch.long), logits[:, 1:], masked)
    assert torch.allclose(score, torch.log(post.gather(-1, prop[..., None])[..., 0]), atol=1e-5)


def test_generate_value_errors(teacher_and_backbone):
    _, bb = teacher_and_backbone
    prompt = torch.zeros(1, 1, dtype=torch.long)
    prior = CoDDPrior.hmm(8, 3, bb.vocab_size)
    for kw in (
        {"pc_frac": 1.5},
        {"pc_frac": -0.1},
        {"pc_temperature": 0.0},
        {"pc_temperature": -1.0},
        {"sampler": "gibbs"},
    ):
        with pytest.raises(ValueError):
            generate(bb, prompt, gen_length=8, steps=2, block_length=8, prior=prior, **kw)
    with pytest.raises(ValueError, match="vocabulary"):
        generate(bb, prompt, gen_length=8, steps=2, block_length=8, prior=CoDDPrior.hmm(8, 3, bb.vocab_size + 1))


def test_fit_lowers_conditional_nll_and_checkpoints(teacher_and_backbone, tmp_path):
    teacher, bb = teacher_and_backbone
    x0, masked, logits = teacher_windows(teacher, bb, 160, seed=0)
    uniform = torch.zeros_like(logits)  # with uninformative logits the prior must learn the joint itself
    prior = CoDDPrior.hmm(8, 4, bb.vocab_size, seed=0)
    ckpt = tmp_path / "prior.npz"
    hist = fit_prior(
        prior, x0, masked, uniform, epochs=3, batch_size=32, lr=0.1, valid_frac=0.25, checkpoint=ckpt, progress=False
    )
    assert len(hist) == 3 and hist[-1] < hist[0] - 0.1
    loaded = CoDDPrior.load(ckpt)
    assert loaded.window == 8 and loaded.vocab_size == bb.vocab_size
    # top-k caches: the target is always a candidate
    vals, cand = topk_with_target(logits, x0, 2)
    assert bool((cand == x0[..., None]).any(-1).all())
    prior_k = CoDDPrior.hmm(8, 4, bb.vocab_size, seed=0)
    h2 = fit_prior(prior_k, x0, masked, vals, candidates=cand, epochs=1, batch_size=64, valid_frac=0.0, progress=False)
    assert math.isfinite(h2[0])
