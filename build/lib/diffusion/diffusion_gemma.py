"""Uniform-noise block diffusion with transformers' DiffusionGemma, driven by a loop of ours.

`transformers.DiffusionGemmaForBlockDiffusion` is an encoder-decoder diffusion
LM that shares its weights between two halves:

* the autoregressive **encoder** writes the prompt, then every finished
  canvas, into a KV cache (the *prompt cache*);
* the bidirectional **decoder** reads that cache (read-only) and a *canvas*
  of ``L = config.canvas_length`` tokens, plus the previous step's logits as
  *self-conditioning*, and returns ``[B, L, V]`` logits for the canvas.

`generate_block_diffusion` generates ``ceil(max_new_tokens / L)`` canvases
left to right. For each canvas:

1. the uncached tokens (the prompt, later the previous canvas) are encoded
   into the cache;
2. the canvas starts as **uniform noise**: every position an independent
   uniform token over ``[0, V)``;
3. for ``s = S, S - 1, ..., 1`` (``S = steps``):

   a. ``logits = decoder(canvas, cache, self-conditioning)``; the
      self-conditioning input is the previous step's tempered logits
      (none at the first step);
   b. tempering: ``z = logits / T(s)`` with the linear schedule
      ``T(s) = t_min + (t_max - t_min) * s / S``;
   c. **draw**: every position independently from ``softmax(z)``
      (`factorized_draw`), or, with a CoDD prior, jointly per window
      (`prior_draw`);
   d. **entropy-bound acceptance** (EB-Sampler, Ben-Hamu et al. 2025):
      positions sorted by the entropy ``H_i`` of ``softmax(z_i)``; the
      ``k`` lowest are accepted, ``k`` the largest with
      ``sum_{j <= k} H_(j) - H_(k) <= entropy_bound`` (`entropy_bound_accept`);
   e. the next canvas keeps the drawn tokens at accepted positions and
      takes fresh uniform noise everywhere else;
   f. **adaptive stop** (per row): a row stops when ``argmax z`` has not
      changed for ``stability_threshold`` steps and the mean entropy is
      below ``confidence_threshold``; a stopped row is frozen;

4. the canvas's tokens are ``argmax z`` of the row's last step; a row whose
   canvas holds an end-of-sequence id is finished (later tokens and later
   canvases become ``pad_token_id``).

With no prior and the default global random generator this is transformers'
own ``model.generate`` token for token (same draws in the same order:
``randint`` for the starting canvas, then ``multinomial`` and ``randint``
per step); the test suite checks it.

**CoDD in uniform-noise diffusion.** Unlike masked diffusion, nothing in the
canvas is ever final before the last step: every position is re-drawn at
every step, and the acceptance only decides which draws survive. So all
canvas positions are *masked* for the prior. The canvas is cut into tiles of
the prior's window ``W`` (positions ``[0, W), [W, 2W), ...``); in a last tile
that runs past the canvas the extra positions get zero logits (uniform soft
evidence), which marginalises them exactly. In each tile the draw is a joint
sample of ``p_hat(x) ∝ p_omega(x) prod_i softmax(z_i / tau)(x_i)``
(`diffusion.codd.CoDDPrior.sample`). The acceptance, the argmax output and
the self-conditioning still use the backbone's per-position ``z``: the prior
only changes which tokens the next decoder call sees.

Shapes: ``B`` batch, ``P`` prompt length, ``L`` canvas length, ``V``
vocabulary, ``W`` prior window, ``T`` tiles per canvas (``ceil(L / W)``),
``C`` canvases.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "DIFFUSION_GEMMA_DEFAULTS",
    "DiffusionGemmaOutput",
    "DiffusionGemmaLM",
    "generate_block_diffusion",
    "step_temperature",
    "token_entropy",
    "entropy_bound_accept",
    "uniform_canvas",
    "factorized_draw",
    "prior_draw",
    "is_diffusion_gemma_dir",
    "load_diffusion_gemma",
]

DIFFUSION_GEMMA_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 256,
    "steps": 48,
    "entropy_bound": 0.1,
    "t_min": 0.4,
    "t_max": 0.8,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
}
"""Settings used when neither the call nor the model's ``generation_config`` sets them
(the same defaults as transformers' ``DiffusionGemmaGenerationConfig``)."""

# our argument name -> attribute of transformers' DiffusionGemmaGenerationConfig
_CONFIG_NAMES = {
    "max_new_tokens": "max_new_tokens",
    "steps": "max_denoising_steps",
    "t_min": "t_min",
    "t_max": "t_max",
    "stability_threshold": "stability_threshold",
    "confidence_threshold": "confidence_threshold",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "pad_token_id",
}


@dataclass
class DiffusionGemmaOutput:
    """Result of `generate_block_diffusion`.

    Attributes:
        sequences: ``LongTensor[B, P + C * L]``: the prompt, then ``C`` canvases.
        decoder_calls: ``LongTensor[B]``: decoder passes each row needed (passes
            after the row stopped or finished are not counted).
        prior_windows: windows the CoDD prior drew (0 without a prior).
    """

    sequences: torch.Tensor
    decoder_calls: torch.Tensor
    prior_windows: int = 0

    def tokens_per_call(self, prompt_length: int, pad_token_id: int | None = None) -> torch.Tensor:
        """``FloatTensor[B]``: generated tokens (pads excluded) per decoder pass."""
        new = self.sequences[:, prompt_length:]
        count = (
            (new != pad_token_id).sum(-1)
            if pad_token_id is not None
            else torch.full_like(self.decoder_calls, new.shape[1])
        )
        return count / self.decoder_calls.clamp_min(1)


# ------------------------------------------------------------------ the draw, step by step
def step_temperature(
    step: int, steps: int, t_min: float, t_max: float, device: torch.device | None = None
) -> torch.Tensor:
    """The linear temperature schedule ``T(s) = t_min + (t_max - t_min) * s / S``.

    ``s`` counts the steps *left* (``S`` at the first step, 1 at the last). The
    ratio ``s / S`` is computed in float32 as transformers does, so that the
    tempered logits agree bit for bit.

    Returns:
        A float32 scalar tensor.
    """
    frac = torch.tensor(step, dtype=torch.int32, device=device) / steps
    return t_min + (t_max - t_min) * frac


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per position.

    Args:
        logits: ``FloatTensor[B, L, V]``.

    Returns:
        ``FloatTensor[B, L]`` (nats).
    """
    return torch.distributions.Categorical(logits=logits).entropy()


def entropy_bound_accept(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """Positions accepted by the entropy bound.

    With the entropies sorted ascending, ``H_(1) <= ... <= H_(L)``, position
    ``(k)`` is accepted when ``sum_{j <= k} H_(j) - H_(k) <= bound`` (the sum
    minus the largest entropy bounds the mutual information among the accepted
    tokens). The lowest-entropy position is always accepted.

    Args:
        entropy: ``FloatTensor[B, L]``.
        bound: the entropy bound (> 0).

    Returns:
        ``BoolTensor[B, L]``.
    """
    sorted_h, order = torch.sort(entropy, dim=-1, descending=False)
    keep_sorted = torch.cumsum(sorted_h, dim=-1) - sorted_h <= bound
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def uniform_canvas(
    batch: int, length: int, vocab_size: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``LongTensor[B, L]``: independent uniform tokens over ``[0, V)`` (the noise of uniform diffusion)."""
    return torch.randint(0, vocab_size, (batch, length), device=device, generator=generator)


def factorized_draw(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Every position independently from ``softmax(logits)`` (float32).

    Args:
        logits: ``FloatTensor[B, L, V]`` tempered logits.
        generator: random generator (``None``: torch's global one).

    Returns:
        ``LongTensor[B, L]``.
    """
    B, L, V = logits.shape
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    return torch.multinomial(probs.view(-1, V), num_samples=1, generator=generator).view(B, L)


def _tile_logits(logits: torch.Tensor, window: int) -> torch.Tensor:
    """Cuts ``[B, L, V]`` into ``[B * T, W, V]`` windows; positions past ``L`` get zero logits."""
    B, L, V = logits.shape
    T = math.ceil(L / window)
    padded = torch.zeros(B, T * window, V, dtype=logits.dtype, device=logits.device)
    padded[:, :L] = logits
    return padded.view(B * T, window, V)


def prior_draw(
    prior: Any,
    logits: torch.Tensor,
    pc_temperature: float = 1.0,
    sampler: str = "latent",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CoDD's joint draw of a whole canvas (every position masked; see the module docstring).

    Args:
        prior: a `diffusion.codd.CoDDPrior` over windows of ``W`` tokens with
            the backbone's vocabulary ``V``.
        logits: ``FloatTensor[B, L, V]`` tempered logits of the canvas.
        pc_temperature: ``tau > 0`` of ``p_hat ∝ p_omega * prod softmax(z / tau)``.
        sampler: the prior's sampler (``"latent"``, ``"exact"`` or ``"any_order"``).
        generator: random generator.

    Returns:
        ``LongTensor[B, L]`` on the logits' device.
    """
    B, L, _ = logits.shape
    W = prior.window
    tiles = _tile_logits(logits, W)  # [B*T, W, V]
    masked = torch.ones(tiles.shape[:2], dtype=torch.bool, device=tiles.device)
    x = torch.zeros(tiles.shape[:2], dtype=torch.long, device=tiles.device)
    drawn = prior.sample(x, tiles, masked, pc_temperature, sampler, generator)  # [B*T, W]
    return drawn.to(logits.device).view(B, -1)[:, :L]


class _StableAndConfident:
    """Per-row adaptive stop: ``argmax`` unchanged for ``stability`` steps and mean entropy below ``confidence``."""

    def __init__(self, stability: int, confidence: float):
        self.stability = stability
        self.confidence = confidence
        self.history: torch.Tensor | None = None  # [S, B, L] the last S argmax canvases

    def __call__(self, argmax: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``BoolTensor[B]`` rows that stop, from ``argmax [B, L]`` and tempered ``logits [B, L, V]``."""
        if self.stability == 0:
            stable = torch.ones(argmax.shape[0], dtype=torch.bool, device=argmax.device)
        else:
            if self.history is None:
                self.history = torch.full((self.stability, *argmax.shape), -1, dtype=argmax.dtype, device=argmax.device)
            stable = (self.history == argmax.unsqueeze(0)).all(dim=-1).all(dim=0)
            self.history = torch.cat([self.history[1:], argmax.unsqueeze(0)], dim=0)
        confident = token_entropy(logits).mean(dim=-1) < self.confidence
        return stable & confident


# ------------------------------------------------------------------ model calls
def _new_cache(model: nn.Module) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config.get_text_config(decoder=True))


def _encode(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> None:
    """Writes ``ids [B, n]`` into ``cache``.

    ``positions`` is ``[1, n]``; the 2-D ``mask`` covers everything cached so far plus ``ids``.
    """
    encoder = model.model.encoder
    dummy = torch.empty((ids.shape[0], ids.shape[1], 0), dtype=model.dtype, device=ids.device)
    masks = encoder.create_masks_for_generate(
        config=model.config, inputs_embeds=dummy, attention_mask=mask, cache=cache, position_ids=positions
    )
    encoder(input_ids=ids.contiguous(), attention_mask=masks, cache=cache, position_ids=positions)


def _decoder_masks(model: nn.Module, canvas: torch.Tensor, cache: Any, mask: torch.Tensor) -> dict:
    """Per-layer-type decoder attention masks for the canvas over ``cache`` (``mask [B, cached + L]``)."""
    return model.model.decoder.create_diffusion_decoder_attention_mask(
        config=model.config, inputs_embeds=canvas.unsqueeze(-1), cache=cache, decoder_attention_mask=mask
    )


def _decode(
    model: nn.Module,
    canvas: torch.Tensor,
    cache: Any,
    masks: dict,
    positions: torch.Tensor,
    sc_logits: torch.Tensor | None,
) -> torch.Tensor:
    """``FloatTensor[B, L, V]`` (float32, soft-capped) logits of ``canvas [B, L]``."""
    out = model(
        decoder_input_ids=canvas,
        cache=cache,
        self_conditioning_logits=sc_logits,
        decoder_attention_mask=masks,
        decoder_position_ids=positions,
    )
    return out.logits


# ------------------------------------------------------------------ one canvas
@dataclass
class _CanvasSettings:
    steps: int
    entropy_bound: float
    t_min: float
    t_max: float
    stop: _StableAndConfident | None
    prior: Any
    pc_temperature: float
    sampler: str
    generator: torch.Generator | None


def _denoise_canvas(
    model: nn.Module,
    cache: Any,
    masks: dict,
    positions: torch.Tensor,
    batch: int,
    finished: torch.Tensor,
    calls: torch.Tensor,
    cfg: _CanvasSettings,
) -> tuple[torch.Tensor, int]:
    """Runs the denoising steps of one canvas (step 3 of the module docstring).

    Args:
        positions: ``LongTensor[1, L]`` the canvas's positions.
        finished: ``BoolTensor[B]`` rows finished in earlier canvases (not counted in ``calls``).
        calls: ``LongTensor[B]`` decoder passes per row, updated in place.

    Returns:
        ``(argmax canvas [B, L], prior windows drawn)``.
    """
    L, V = model.config.canvas_length, model.config.text_config.vocab_size
    device = positions.device
    canvas = uniform_canvas(batch, L, V, device, cfg.generator)
    argmax = canvas
    sc_logits: torch.Tensor | None = None
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    embed_dtype = model.model.decoder.embed_tokens.weight.dtype
    windows = 0
    if cfg.stop is not None:
        cfg.stop.history = None
    for step in range(cfg.steps, 0, -1):
        calls += ~(stopped | finished)
        logits = _decode(model, canvas, cache, masks, positions, sc_logits)
        z = logits / step_temperature(step, cfg.steps, cfg.t_min, cfg.t_max, device)
        if cfg.prior is None:
            drawn = factorized_draw(z, cfg.generator)
        else:
            drawn = prior_draw(cfg.prior, z, cfg.pc_temperature, cfg.sampler, cfg.generator)
            windows += batch * math.ceil(L / cfg.prior.window)
        new_argmax = z.argmax(dim=-1)
        accept = entropy_bound_accept(token_entropy(z), cfg.entropy_bound)
        noise = uniform_canvas(batch, L, V, device, cfg.generator)
        new_canvas = torch.where(accept, drawn, noise)
        if cfg.stop is not None:
            if bool(stopped.any()):  # stopped rows keep their state
                new_argmax = torch.where(stopped[:, None], argmax, new_argmax)
                new_canvas = torch.where(stopped[:, None], canvas, new_canvas)
                z = torch.where(stopped[:, None, None], sc_logits, z)
            stopped = stopped | cfg.stop(new_argmax, z)
        canvas, argmax, sc_logits = new_canvas, new_argmax, z.to(embed_dtype)
        if bool(stopped.all()):
            break
    return argmax, windows


def _finish_rows(
    canvas: torch.Tensor, finished: torch.Tensor, eos: torch.Tensor | None, pad: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """End-of-sequence handling of a new canvas (step 4 of the module docstring).

    Args:
        canvas: ``LongTensor[B, L]`` the new canvas.
        finished: ``BoolTensor[B]`` rows finished before it.
        eos: ``LongTensor[E]`` end-of-sequence ids, or ``None``.
        pad: the pad id, or ``None`` (then nothing is replaced).

    Returns:
        ``(canvas [B, L], finished [B])``: rows finished before are all
        ``pad``; in rows with an end-of-sequence id the tokens after the first
        one are ``pad``.
    """
    canvas = canvas.clone()
    is_eos = torch.isin(canvas, eos) if eos is not None else torch.zeros_like(canvas, dtype=torch.bool)
    ends_here = is_eos.any(dim=-1)
    now = finished | ends_here
    if pad is not None and bool(now.any()):
        canvas[finished] = pad
        if bool(ends_here.any()):
            after_first = (is_eos.cumsum(dim=-1) > 0) & ~((is_eos.cumsum(dim=-1) == 1) & is_eos)
            canvas[after_first] = pad
    return canvas, now


# ------------------------------------------------------------------ validation
def _setting(model: nn.Module, name: str, value: Any) -> Any:
    """The call's value, else the model's ``generation_config``, else `DIFFUSION_GEMMA_DEFAULTS`."""
    if value is not None:
        return value
    gen = getattr(model, "generation_config", None)
    found = getattr(gen, _CONFIG_NAMES.get(name, name), None) if gen is not None else None
    if name == "entropy_bound" and gen is not None and getattr(gen, "sampler_config", None) is not None:
        found = gen.sampler_config.entropy_bound
    return found if found is not None else DIFFUSION_GEMMA_DEFAULTS.get(name)


def _check_model(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "diffusion_gemma" or not hasattr(model, "model"):
        raise TypeError(f"model: expected a transformers DiffusionGemmaForBlockDiffusion, got {type(model).__name__}")


def _check_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids: expected LongTensor[B, P], got {getattr(input_ids, 'shape', type(input_ids))}")
    if input_ids.shape[1] < 1 or input_ids.shape[0] < 1:
        raise ValueError(f"input_ids: expected at least one row and one token, got shape {tuple(input_ids.shape)}")
    if bool(((input_ids < 0) | (input_ids >= vocab_size)).any()):
        raise ValueError(f"input_ids: ids must lie in [0, {vocab_size})")
    if attention_mask is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        got = getattr(attention_mask, "shape", type(attention_mask))
        raise ValueError(f"attention_mask: expected a 2-D tensor of shape {tuple(input_ids.shape)}, got {got}")
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise ValueError("attention_mask: expected 0/1 (or bool) entries")
    return attention_mask.bool()


def _check_settings(s: dict[str, Any], vocab_size: int) -> None:
    """ValueError naming the first generation setting in ``s`` that is out of range."""
    _check_schedule(s)
    _check_thresholds(s)
    _check_special_ids(s, vocab_size)


def _check_schedule(s: dict[str, Any]) -> None:
    """Lengths, step count, entropy bound and the temperature range of the denoising schedule."""

    def positive_int(name: str) -> None:
        v = s[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")

    positive_int("max_new_tokens")
    positive_int("steps")
    eb = s["entropy_bound"]
    if isinstance(eb, bool) or not isinstance(eb, (int, float)) or not math.isfinite(eb) or eb <= 0:
        raise ValueError(f"entropy_bound: expected a finite number > 0, got {eb!r}")
    t_min, t_max = s["t_min"], s["t_max"]
    for name, v in (("t_min", t_min), ("t_max", t_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    if t_max <= t_min:
        raise ValueError(f"t_max: expected t_max > t_min, got t_max={t_max!r}, t_min={t_min!r}")


def _check_thresholds(s: dict[str, Any]) -> None:
    """The optional early-commit thresholds (stability in steps, confidence as a number)."""
    st, ct = s["stability_threshold"], s["confidence_threshold"]
    if st is not None and (isinstance(st, bool) or not isinstance(st, int) or st < 0):
        raise ValueError(f"stability_threshold: expected an int >= 0 or None, got {st!r}")
    if ct is not None and (isinstance(ct, bool) or not isinstance(ct, (int, float)) or ct <= 0):
        raise ValueError(f"confidence_threshold: expected a number > 0 or None, got {ct!r}")


def _check_special_ids(s: dict[str, Any], vocab_size: int) -> None:
    """The end-of-sequence id (or ids) and the padding id lie in the vocabulary."""
    eos = s["eos_token_id"]
    eos_list = [eos] if isinstance(eos, int) and not isinstance(eos, bool) else eos
    if eos_list is not None and (
        not isinstance(eos_list, (list, tuple))
        or not eos_list
        or any(isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < vocab_size for e in eos_list)
    ):
        raise ValueError(f"eos_token_id: expected an id or a list of ids in [0, {vocab_size}), got {eos!r}")
    pad = s["pad_token_id"]
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < vocab_size):
        raise ValueError(f"pad_token_id: expected an id in [0, {vocab_size}) or None, got {pad!r}")


def _check_prior(prior: Any, vocab_size: int, pc_temperature: float, sampler: str) -> None:
    from .codd.draw import check_codd_options
    from .codd.prior import CoDDPrior

    if not isinstance(prior, CoDDPrior):
        raise ValueError(f"prior: expected a CoDDPrior, got {type(prior).__name__}")
    if prior.vocab_size != vocab_size:
        raise ValueError(f"prior: vocabulary {prior.vocab_size} does not match the model's {vocab_size}")
    check_codd_options(1.0, pc_temperature, sampler)


# ------------------------------------------------------------------ generation
@torch.no_grad()
def generate_block_diffusion(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int | None = None,
    steps: int | None = None,
    entropy_bound: float | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    stability_threshold: int | None = None,
    confidence_threshold: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    adaptive_stop: bool = True,
    prior: Any = None,
    pc_temperature: float = 1.0,
    sampler: str = "latent",
    generator: torch.Generator | None = None,
) -> DiffusionGemmaOutput:
    """Generates with a DiffusionGemma model (the loop of the module docstring).

    Every setting left at ``None`` is read from ``model.generation_config``
    (``max_new_tokens``, ``max_denoising_steps``, ``sampler_config.entropy_bound``,
    ``t_min``, ``t_max``, ``stability_threshold``, ``confidence_threshold``,
    ``eos_token_id``, ``pad_token_id``), else from `DIFFUSION_GEMMA_DEFAULTS`.

    Args:
        model: a ``transformers.DiffusionGemmaForBlockDiffusion`` in eval mode.
        input_ids: ``LongTensor[B, P]`` prompts (left-padded when their lengths differ).
        attention_mask: ``[B, P]`` 1 for prompt tokens, 0 for padding (default: all 1).
        max_new_tokens: tokens to generate; ``ceil(max_new_tokens / L)`` canvases are made.
        steps: denoising steps per canvas ``S`` (at most; rows may stop early).
        entropy_bound: the acceptance's entropy bound (> 0).
        t_min: temperature at the last step.
        t_max: temperature at the first step (``> t_min``).
        stability_threshold: steps the argmax must stay unchanged to stop a row.
        confidence_threshold: mean entropy under which a stable row stops.
        eos_token_id: end-of-sequence id(s); a canvas holding one finishes its row.
        pad_token_id: id written after the end of a finished row.
        adaptive_stop: ``False`` runs all ``S`` steps for every row.
        prior: optional `diffusion.codd.CoDDPrior` (vocabulary ``V``): CoDD's
            joint draw replaces the per-position draw (see the module docstring).
        pc_temperature: ``tau > 0`` of the prior's soft evidence.
        sampler: the prior's sampler, ``"latent"``, ``"exact"`` or ``"any_order"``.
        generator: random generator for every draw (``None``: torch's global
            generator, as transformers' ``generate`` uses).

    Returns:
        `DiffusionGemmaOutput` with ``sequences [B, P + C * L]``.

    Raises:
        TypeError: ``model`` is not a DiffusionGemma model.
        ValueError: bad ids, mask or settings, or a prior whose vocabulary differs from the model's.
    """
    _check_model(model)
    L, V = model.config.canvas_length, model.config.text_config.vocab_size
    given = {
        "max_new_tokens": max_new_tokens, "steps": steps, "entropy_bound": entropy_bound, "t_min": t_min,
        "t_max": t_max, "stability_threshold": stability_threshold, "confidence_threshold": confidence_threshold,
        "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
    }
    s = {name: _setting(model, name, value) for name, value in given.items()}
    _check_settings(s, V)
    mask = _check_ids(input_ids, attention_mask, V)
    if prior is not None:
        _check_prior(prior, V, pc_temperature, sampler)
    use_stop = adaptive_stop and s["stability_threshold"] is not None and s["confidence_threshold"] is not None
    cfg = _CanvasSettings(
        steps=s["steps"], entropy_bound=float(s["entropy_bound"]), t_min=s["t_min"], t_max=s["t_max"],
        stop=_StableAndConfident(s["stability_threshold"], s["confidence_threshold"]) if use_stop else None,
        prior=prior, pc_temperature=pc_temperature, sampler=sampler, generator=generator,
    )
    eos = None if s["eos_token_id"] is None else torch.tensor(s["eos_token_id"], device=input_ids.device).flatten()
    return _generate_canvases(model, input_ids, mask, math.ceil(s["max_new_tokens"] / L), eos, s["pad_token_id"], cfg)


def _generate_canvases(
    model: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    num_canvases: int,
    eos: torch.Tensor | None,
    pad: int | None,
    cfg: _CanvasSettings,
) -> DiffusionGemmaOutput:
    """The outer, autoregressive loop over canvases (steps 1 and 4 of the module docstring)."""
    B, P = input_ids.shape
    L = model.config.canvas_length
    device = input_ids.device
    cache = _new_cache(model)
    sequences, pending = input_ids, input_ids  # pending: the tokens not yet in the cache
    enc_pos = torch.arange(0, P, dtype=torch.int32, device=device).unsqueeze(0)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    calls = torch.zeros(B, dtype=torch.long, device=device)
    windows = 0
    for c in range(num_canvases):
        _encode(model, pending, mask, enc_pos, cache)
        dec_mask = nn.functional.pad(mask, (0, L), value=True)
        dec_pos = torch.arange(P + c * L, P + (c + 1) * L, dtype=torch.int32, device=device).unsqueeze(0)
        canvas = torch.empty(B, L, dtype=torch.long, device=device)
        masks = _decoder_masks(model, canvas, cache, dec_mask)
        canvas, drawn = _denoise_canvas(model, cache, masks, dec_pos, B, finished, calls, cfg)
        windows += drawn
        canvas, finished = _finish_rows(canvas, finished, eos, pad)
        sequences = torch.cat([sequences, canvas], dim=-1)
        if bool(finished.all()):
            break
        pending, mask, enc_pos = canvas, dec_mask, dec_pos
    return DiffusionGemmaOutput(sequences=sequences, decoder_calls=calls, prior_windows=windows)


# ------------------------------------------------------------------ loading
def _read_config(path: Path) -> dict | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def is_diffusion_gemma_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory whose ``config.json`` names a DiffusionGemma model.

    Reads ``model_type`` (``"diffusion_gemma"``) and ``architectures`` (a name
    starting with ``DiffusionGemma``) only; runs no code, loads no weights.
    A missing directory or an unreadable ``config.json`` gives ``False``.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    config = _read_config(path)
    if config is None:
        return False
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        archs = []
    return config.get("model_type") == "diffusion_gemma" or any(
        isinstance(a, str) and a.startswith("DiffusionGemma") for a in archs
    )


class DiffusionGemmaLM(nn.Module):
    """A loaded DiffusionGemma model with its tokenizer, generating with `generate_block_diffusion`.

    Args:
        model: a ``transformers.DiffusionGemmaForBlockDiffusion``.
        tokenizer: its tokenizer (or ``None``).

    Attributes:
        model: the model (eval mode).
        tokenizer: the tokenizer or ``None``.
        vocab_size: ``V``.
        canvas_length: ``L``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None):
        super().__init__()
        _check_model(model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vocab_size = int(model.config.text_config.vocab_size)
        self.canvas_length = int(model.config.canvas_length)

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.model.parameters()).device

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> DiffusionGemmaOutput:
        """`generate_block_diffusion` on this model (same keyword arguments)."""
        return generate_block_diffusion(self.model, input_ids, **kwargs)


def load_diffusion_gemma(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> DiffusionGemmaLM:
    """Loads a DiffusionGemma directory (``save_pretrained`` output) from disk only.

    Args:
        path: the model directory (``config.json``, weights, optionally a tokenizer).
        device: device to place the model on.
        dtype: optional parameter dtype (e.g. ``torch.bfloat16``).

    Returns:
        The `DiffusionGemmaLM` (model in eval mode; tokenizer when the
        directory has one, else ``None``).

    Raises:
        FileNotFoundError: the directory or its ``config.json`` is missing.
        ValueError: the directory holds another kind of model.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"path: no such model directory: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"path: {path} has no config.json")
    if not is_diffusion_gemma_dir(path):
        raise ValueError(
            f"path: {path}/config.json does not name a DiffusionGemma model (model_type 'diffusion_gemma')"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import DiffusionGemmaForBlockDiffusion

    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(path), **kwargs).to(device)
    return DiffusionGemmaLM(model, _load_tokenizer(path))


def _load_tokenizer(path: Path) -> Any:
    """The directory's Hugging Face tokenizer, or ``None`` when it has no tokenizer files."""
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    if not any((path / n).is_file() for n in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
