"""Our DiffusionGemma loop against transformers' own ``generate``, and CoDD's joint draw in it.

The models are tiny random ``DiffusionGemmaForBlockDiffusion`` built with
``_from_config`` (CPU, seconds). References: transformers' ``generate`` for
the loop, brute-force enumeration of the prior's joint for the draws.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
import torch

from diffusion import CoDDPrior
from diffusion.diffusion_gemma import (
    DiffusionGemmaLM,
    entropy_bound_accept,
    factorized_draw,
    generate_block_diffusion,
    is_diffusion_gemma_dir,
    load_diffusion_gemma,
    prior_draw,
    step_temperature,
)

transformers = pytest.importorskip("transformers")
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion  # noqa: E402
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig  # noqa: E402

torch.set_num_threads(1)
VOCAB, CANVAS, PROMPT = 64, 8, 5


def tiny_config(vocab: int = VOCAB, canvas: int = CANVAS, init: float = 0.5) -> DiffusionGemmaConfig:
    """A two-layer DiffusionGemma (one sliding, one full attention layer, two experts) with a one-layer vision tower."""
    text = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=16, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0, eos_token_id=1, bos_token_id=2,
        num_experts=2, top_k_experts=1, moe_intermediate_size=16,
    )
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8)
    # init 0.5 (not 0.02): the canvas and the self-conditioning then move the logits enough that an error in
    # either changes the generated tokens; with 0.02 the argmax settles, so the stability stop triggers
    return DiffusionGemmaConfig(text_config=dict(text, initializer_range=init), vision_config=vision,
                                canvas_length=canvas, initializer_range=init,
                                boi_token_id=vocab - 4, eoi_token_id=vocab - 3, image_token_id=vocab - 2)


def tiny_model(dtype: torch.dtype = torch.float32, seed: int = 0, init: float = 0.5) -> DiffusionGemmaForBlockDiffusion:
    torch.manual_seed(seed)
    # grouped_mm (the default experts kernel) has no float64 on CPU
    config = tiny_config(init=init)
    return DiffusionGemmaForBlockDiffusion._from_config(config, dtype=dtype, experts_implementation="eager").eval()


@pytest.fixture(scope="module")
def model32() -> DiffusionGemmaForBlockDiffusion:
    return tiny_model(torch.float32)


@pytest.fixture(scope="module")
def settling32() -> DiffusionGemmaForBlockDiffusion:
    """A model whose argmax settles within a few steps (small init), for the stability stop."""
    return tiny_model(torch.float32, init=0.02)


def prompts(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB - 4, (batch, PROMPT), generator=torch.Generator().manual_seed(seed))


def reference_and_ours(model, ids, seed: int, **kw):
    """transformers' ``generate`` and ours from the same global seed (our names: ``steps``, ``entropy_bound``)."""
    hf = dict(kw)
    hf["max_denoising_steps"] = hf.pop("steps")
    if "entropy_bound" in hf:
        hf["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=hf.pop("entropy_bound"))
    torch.manual_seed(seed)
    ref = model.generate(ids, **hf)
    torch.manual_seed(seed)
    ours = generate_block_diffusion(model, ids, **kw)
    return ref, ours


# ------------------------------------------------------------------ token for token
CASES = {
    "defaults": dict(max_new_tokens=16, steps=6),
    "eos_pad": dict(max_new_tokens=24, steps=8, eos_token_id=[1, 5, 7, 9, 11, 13, 15, 17], pad_token_id=0,
                    stability_threshold=1, confidence_threshold=2.0, entropy_bound=0.1),
    "confident_stop": dict(max_new_tokens=24, steps=5, stability_threshold=0, confidence_threshold=3.0),
    "stable_stop_per_row": dict(max_new_tokens=24, steps=8, stability_threshold=1, confidence_threshold=4.0,
                                t_min=0.01, t_max=0.05, entropy_bound=100.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers_generate_float32(model32, settling32, case):
    ids = prompts()
    model = settling32 if case == "stable_stop_per_row" else model32
    ref, ours = reference_and_ours(model, ids, seed=1, **CASES[case])
    assert torch.equal(ours.sequences, ref.sequences)
    pad = CASES[case].get("pad_token_id")
    assert torch.allclose(ours.tokens_per_call(PROMPT, pad), ref.tokens_per_forward)


def test_cases_exercise_early_stops(model32, settling32):
    """The stop cases really stop: fewer decoder calls than canvases x steps, and unequal across rows."""
    ids = prompts()
    _, eos = reference_and_ours(model32, ids, seed=1, **CASES["eos_pad"])
    assert eos.sequences.shape[1] < PROMPT + 24  # every row hit an end-of-sequence id before the last canvas
    assert bool((eos.sequences[:, PROMPT:] == 0).any())  # pads after the end
    assert len(set(eos.decoder_calls.tolist())) > 1  # finished rows stop counting decoder calls
    _, confident = reference_and_ours(model32, ids, seed=1, **CASES["confident_stop"])
    assert int(confident.decoder_calls.max()) < 3 * 5
    _, stable = reference_and_ours(settling32, ids, seed=1, **CASES["stable_stop_per_row"])
    assert int(stable.decoder_calls.max()) < 3 * 8
    assert len(set(stable.decoder_calls.tolist())) > 1


def test_matches_transformers_generate_float64_and_left_padding():
    model = tiny_model(torch.float64)
    ids = prompts(seed=3)
    ref, ours = reference_and_ours(model, ids, seed=4, max_new_tokens=24, steps=5)
    assert torch.equal(ours.sequences, ref.sequences)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    ref, ours = reference_and_ours(model, ids, seed=5, max_new_tokens=16, steps=4, attention_mask=mask)
    assert torch.equal(ours.sequences, ref.sequences)


def test_generation_config_supplies_unset_settings(model32):
    ids = prompts(batch=2)
    model32.generation_config.max_denoising_steps = 3
    model32.generation_config.max_new_tokens = 8
    try:
        torch.manual_seed(7)
        a = generate_block_diffusion(model32, ids)
        torch.manual_seed(7)
        b = generate_block_diffusion(model32, ids, steps=3, max_new_tokens=8)
    finally:
        model32.generation_config.max_denoising_steps = None
        model32.generation_config.max_new_tokens = None
    assert torch.equal(a.sequences, b.sequences)
    assert a.sequences.shape == (2, PROMPT + CANVAS)
    assert int(a.decoder_calls.max()) <= 3


# ------------------------------------------------------------------ pieces
def test_entropy_bound_accept_brute_force():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(4, 7, generator=g, dtype=torch.float64)
    for bound in (0.05, 0.5, 1.5, 10.0):
        got = entropy_bound_accept(h, bound)
        for b in range(4):
            vals = h[b].tolist()
            for i, hi in enumerate(vals):
                lower = [v for v in vals if v <= hi]  # positions sorted before i (no ties in random data)
                assert bool(got[b, i]) == (sum(lower) - hi <= bound)
        assert bool(got.any(-1).all())  # the lowest entropy is always accepted


def test_step_temperature_is_linear():
    for s in (1, 5, 10):
        assert step_temperature(s, 10, 0.4, 0.8).item() == pytest.approx(0.4 + 0.4 * s / 10, rel=1e-6)


# ------------------------------------------------------------------ CoDD
def _uniform(prior: CoDDPrior) -> CoDDPrior:
    """The same prior with every emission table uniform, so ``p_omega`` is uniform."""
    with torch.no_grad():
        for blk in prior.circuit.layout.leaf_blocks:
            prior.circuit.params[blk.bank].zero_()
    return prior


def _tv(samples: torch.Tensor, dist: dict) -> float:
    n = len(samples)
    cnt = Counter(tuple(r) for r in samples.tolist())
    return 0.5 * sum(abs(cnt.get(k, 0) / n - dist.get(k, 0.0)) for k in set(cnt) | set(dist))


def _product(logits: torch.Tensor, tau: float) -> dict:
    """``prod_i softmax(logits_i / tau)`` over all canvases, by enumeration (``logits [L, V]``)."""
    q = torch.softmax(logits.double() / tau, -1)
    L, V = q.shape
    return {
        k: float(torch.prod(torch.stack([q[i, k[i]] for i in range(L)]))) for k in itertools.product(range(V), repeat=L)
    }


def _coupled(prior: CoDDPrior, logits: torch.Tensor, tau: float) -> dict:
    """The tiled CoDD draw of a 3-position canvas with W = 2, by enumeration of ``p_omega``.

    Tile 1 = positions (0, 1): ``p_omega(a, b) q0(a) q1(b)``; tile 2 = (2, pad):
    ``sum_y p_omega(c, y) q2(c)``; the tiles are independent.
    """
    V = prior.vocab_size
    q = torch.softmax(logits.double() / tau, -1)
    pairs = torch.tensor(list(itertools.product(range(V), repeat=2)))
    joint = prior.circuit(pairs).double().exp().view(V, V)  # p_omega(x0, x1)
    t1 = joint * q[0][:, None] * q[1][None, :]
    t1 = t1 / t1.sum()
    t2 = joint.sum(1) * q[2]
    t2 = t2 / t2.sum()
    return {(a, b, c): float(t1[a, b] * t2[c]) for a, b, c in itertools.product(range(V), repeat=3)}


CANVAS_LOGITS = torch.tensor([[1.5, -0.5, 0.2], [0.0, 1.0, -1.0], [-0.7, 0.4, 0.9]])  # [L=3, V=3]


@pytest.mark.parametrize("sampler", ["exact", "latent"])
def test_prior_draw_with_zero_weight_or_uniform_prior_is_the_factorized_draw(sampler):
    n, tau = 20000, 0.7
    logits = CANVAS_LOGITS.expand(n, -1, -1)
    ref = _product(CANVAS_LOGITS, tau)
    zero = CoDDPrior.hmm(2, 3, 3, seed=1).to(torch.float64)
    zero.set_backoff([0.0])
    uniform = _uniform(CoDDPrior.hmm(2, 3, 3, seed=1).to(torch.float64))
    for i, prior in enumerate((zero, uniform)):
        s = prior_draw(prior, logits, tau, sampler, torch.Generator().manual_seed(i))
        assert s.shape == (n, 3)
        assert _tv(s, ref) < 0.03
    # the no-prior path at tau = 1 (multinomial) has the same law
    s = factorized_draw(logits, torch.Generator().manual_seed(9))
    assert _tv(s, _product(CANVAS_LOGITS, 1.0)) < 0.03


def test_prior_draw_couples_each_tile_and_marginalises_the_padding():
    n, tau = 20000, 0.8
    prior = CoDDPrior.hmm(2, 3, 3, seed=2).to(torch.float64)
    logits = CANVAS_LOGITS.expand(n, -1, -1)
    s = prior_draw(prior, logits, tau, "exact", torch.Generator().manual_seed(0))
    coupled = _coupled(prior, CANVAS_LOGITS, tau)
    assert _tv(s, coupled) < 0.03
    assert _tv(s, _product(CANVAS_LOGITS, tau)) > 0.05  # the prior does change the law


def test_codd_generation_runs_and_is_reproducible(model32):
    ids = prompts(batch=2)
    prior = CoDDPrior.hmm(3, 4, VOCAB, seed=0)  # W = 3: canvas of 8 -> tiles of 3, 3, 2 (+1 padded)
    kw = dict(max_new_tokens=16, steps=4, prior=prior, sampler="latent", adaptive_stop=False)
    a = generate_block_diffusion(model32, ids, generator=torch.Generator().manual_seed(0), **kw)
    b = generate_block_diffusion(model32, ids, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert a.sequences.shape == (2, PROMPT + 16)
    assert torch.equal(a.sequences[:, :PROMPT], ids)
    assert bool(((a.sequences >= 0) & (a.sequences < VOCAB)).all())
    assert a.prior_windows == 2 * 3 * 4 * 2  # rows x tiles x steps x canvases
    assert a.decoder_calls.tolist() == [8, 8]
    c = generate_block_diffusion(model32, ids, generator=torch.Generator().manual_seed(0), **{**kw, "sampler": "exact"})
    assert bool(((c.sequences >= 0) & (c.sequences < VOCAB)).all())


def test_value_errors(model32):
    ids = prompts(batch=1)
    with pytest.raises(TypeError, match="model"):
        generate_block_diffusion(torch.nn.Linear(2, 2), ids)
    with pytest.raises(ValueError, match="input_ids"):
        generate_block_diffusion(model32, ids + VOCAB, steps=1, max_new_tokens=8)
    with pytest.raises(ValueError, match="input_ids"):
        generate_block_diffusion(model32, ids.float(), steps=1, max_new_tokens=8)
    with pytest.raises(ValueError, match="attention_mask"):
        generate_block_diffusion(model32, ids, attention_mask=torch.ones(1, 2), steps=1, max_new_tokens=8)
    with pytest.raises(ValueError, match="steps"):
        generate_block_diffusion(model32, ids, steps=0)
    with pytest.raises(ValueError, match="t_max"):
        generate_block_diffusion(model32, ids, steps=1, t_min=0.5, t_max=0.5)
    with pytest.raises(ValueError, match="entropy_bound"):
        generate_block_diffusion(model32, ids, steps=1, entropy_bound=0.0)
    with pytest.raises(ValueError, match="eos_token_id"):
        generate_block_diffusion(model32, ids, steps=1, eos_token_id=VOCAB)
    with pytest.raises(ValueError, match="prior"):
        generate_block_diffusion(model32, ids, steps=1, prior=CoDDPrior.hmm(2, 2, VOCAB - 1))
    with pytest.raises(ValueError, match="sampler"):
        generate_block_diffusion(model32, ids, steps=1, prior=CoDDPrior.hmm(2, 2, VOCAB), sampler="nope")


# ------------------------------------------------------------------ loading
def test_directory_recognition_and_loading(model32, tmp_path):
    saved = tmp_path / "gemma"
    model32.save_pretrained(saved)
    assert is_diffusion_gemma_dir(saved)
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    assert not is_diffusion_gemma_dir(other)
    assert not is_diffusion_gemma_dir(tmp_path / "missing")
    by_arch = tmp_path / "arch"
    by_arch.mkdir()
    (by_arch / "config.json").write_text(json.dumps({"architectures": ["DiffusionGemmaForBlockDiffusion"]}))
    assert is_diffusion_gemma_dir(by_arch)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert not is_diffusion_gemma_dir(broken)

    lm = load_diffusion_gemma(saved)
    assert isinstance(lm, DiffusionGemmaLM)
    assert (lm.vocab_size, lm.canvas_length, lm.tokenizer) == (VOCAB, CANVAS, None)
    ids = prompts(batch=2)
    kw = dict(max_new_tokens=8, steps=3)
    torch.manual_seed(0)
    a = lm.generate(ids, **kw)
    torch.manual_seed(0)
    b = generate_block_diffusion(model32, ids, **kw)
    assert torch.equal(a.sequences, b.sequences)

    from diffusion import load_backbone

    via = load_backbone(saved)  # load_backbone recognises the directory
    assert isinstance(via, DiffusionGemmaLM)
    torch.manual_seed(0)
    assert torch.equal(via.generate(ids, **kw).sequences, b.sequences)

    with pytest.raises(FileNotFoundError, match="path"):
        load_diffusion_gemma(tmp_path / "missing")
    with pytest.raises(ValueError, match="DiffusionGemma"):
        load_diffusion_gemma(other)
