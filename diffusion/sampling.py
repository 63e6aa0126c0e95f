"""Samplers for masked diffusion language models.

`generate` fills ``gen_length`` masked positions after a batch of
prompts by iterative unmasking:

* **Block diffusion (LLaDA)**: the generation window is split into blocks of
  ``block_length`` columns, decoded left to right (semi-autoregressively); each
  block gets ``steps / num_blocks`` steps and the schedule fixes how many
  tokens are committed per step.
* **Full-sequence diffusion (Dream)**: ``block_length=None`` (one block over the
  whole window), usually with ``schedule="dream"``, Dream's time-based per-step
  budget ``n_masked * (1 - s / t)`` on ``t = linspace(1, eps, steps + 1)``.

At every step the backbone's logits give a proposal token for each masked
position of the active window (greedy, or temperature / top-p sampling); a
*remasking rule* scores the proposals (``low_confidence``: probability of the
proposed token; ``margin``: top-1 minus top-2 probability; ``entropy``:
negative entropy; ``random``: uniform noise) and the best-scored positions are
committed, the rest stay masked.

Entropy-bounded unmasking (EB-Sampler, Ben-Hamu et al. 2025, arXiv
2505.24857; the acceptance rule of DiffusionGemma): with
``entropy_bound=gamma`` the number of tokens committed at a step is not
fixed by the schedule. The masked positions of the active block are sorted
by the remasking score (best first) and the step commits the longest
prefix ``U`` with ``sum_{i in U} H_i - max_{i in U} H_i <= gamma``, where
``H_i`` is the entropy of position ``i``'s distribution (`token_entropy`;
with a CoDD prior, of ``p_hat``'s exact marginal in the windows where the
prior is active). The left side bounds the mutual information that a
factorized draw of ``U`` ignores; a one-token prefix always satisfies it,
so every step commits at least one token. ``steps`` then caps the calls
per block (the block's last allowed step commits everything left).

Joint draws (hook for a CoDD circuit prior): the proposals above are a
*factorized* draw, each position independent given the current ids. A
`JointDraw` passed as ``joint_draw=`` is called, once per step and after
the positions to commit have been chosen, with ``(ids, logits, window,
commit)`` and returns the tokens (and confidences) to write at the committed
positions, so a joint output layer can replace the per-position draw for the
positions committed together. `FactorizedDraw` is the default
behaviour written as a ``JointDraw``.

Batches of prompts: prompts of different lengths are left-padded to a common
length ``P`` and described by ``attention_mask`` (``BoolTensor[B, P]``, True
on real tokens; `left_padding_mask` builds it for the project's tokenizer).
The generation window is right-aligned (columns ``P .. P + L - 1`` in every
row), the backbone hides padded keys and counts positions from each row's
first real token, every row keeps its own step schedule, and CoDD prior
windows never reach into the padding, so a row's greedy output does not
depend on the other rows. The only batch dependence left is floating-point
rounding (reductions over a different number of keys or rows can differ in
the last bit, which can flip an argmax between two exactly tied logits) and
the shared random stream of sampled decoding and ``remasking="random"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from .backbones import Backbone, check_attention_mask, check_token_ids

__all__ = [
    "REMASKING_RULES",
    "SCHEDULES",
    "JointDraw",
    "FactorizedDraw",
    "num_transfer_tokens",
    "token_entropy",
    "entropy_bounded_count",
    "dream_transfer_count",
    "sample_tokens",
    "confidence_scores",
    "generate",
    "left_padding_mask",
    "GenerationTrace",
    "logits_problem",
]

REMASKING_RULES: tuple[str, ...] = ("low_confidence", "margin", "entropy", "random")
"""Accepted values of ``remasking``."""
SCHEDULES: tuple[str, ...] = ("uniform", "dream")
"""Accepted values of ``schedule``."""


@runtime_checkable
class JointDraw(Protocol):
    """A draw of the committed tokens at one denoising step.

    Implementations may sample the committed positions jointly (e.g. from a
    probabilistic-circuit prior conditioned on the backbone's logits) instead
    of independently. Future options of `generate` such as ``prior=``,
    ``pc_frac=``, ``pc_temperature=`` or ``sampler="latent" | "exact" |
    "any_order"`` are meant to build such an object.
    """

    def __call__(
        self, ids: torch.Tensor, logits: torch.Tensor, window: torch.Tensor, commit: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw tokens for the positions being committed.

        Args:
            ids: ``LongTensor[B, N]`` current ids (masked positions hold the mask id).
            logits: ``FloatTensor[B, N, V]`` backbone logits for the current ids
                (the mask token already excluded, i.e. set to ``-inf``).
            window: ``BoolTensor[B, N]`` masked positions of the active block.
            commit: ``BoolTensor[B, N]`` subset of ``window`` committed at this step.

        Returns:
            ``(tokens, confidence)``: ``LongTensor[B, N]`` tokens (only entries
            at ``commit`` are used; they must not be the mask id) and
            ``FloatTensor[B, N]`` log-confidences of those tokens.
        """
        ...


def logits_problem(logits: torch.Tensor, rows: torch.Tensor | None = None) -> tuple[str, tuple[int, ...]] | None:
    """The first bad row of ``logits``: one with a NaN or ``+inf``, or with every logit ``-inf``.

    ``-inf`` entries are allowed (a forbidden token), as long as each checked
    row keeps one token possible.

    Args:
        logits: ``FloatTensor[..., V]``.
        rows: ``BoolTensor[...]`` rows to check (``None``: all of them).

    Returns:
        ``None`` when every checked row is fine, else ``(problem, index)``:
        a phrase (``"NaN in the logits"``, ...) and the row's leading indices.
    """
    top = logits.amax(-1)  # NaN if the row has a NaN, +inf if it has +inf, -inf if all are -inf
    bad = torch.isnan(top) | (top == math.inf)
    dead = top == -math.inf
    if rows is not None:
        bad, dead = bad & rows, dead & rows
    if bool(bad.any()):
        idx = tuple(bad.nonzero()[0].tolist())
        what = "NaN" if bool(torch.isnan(logits[idx]).any()) else "+inf"
        return f"{what} in the logits (they must be finite or -inf)", idx
    if bool(dead.any()):
        return "every logit -inf (no token possible)", tuple(dead.nonzero()[0].tolist())
    return None


def sample_tokens(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Independent per-position draw from logits.

    Args:
        logits: ``FloatTensor[..., V]``.
        temperature: 0 for greedy (argmax), otherwise the softmax temperature.
        top_p: nucleus size (1.0 disables nucleus filtering).
        generator: optional random generator (on the logits' device).

    Returns:
        ``LongTensor[...]`` token ids.
    """
    if temperature == 0.0:
        return logits.argmax(-1)
    scaled = logits.float() / temperature
    if top_p < 1.0:
        sorted_logits, idx = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        cum = probs.cumsum(-1)
        remove = cum - probs > top_p  # keep the smallest prefix with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = scaled.softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def confidence_scores(
    logp: torch.Tensor, tokens: torch.Tensor, rule: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Score proposals for the remasking rule (higher = commit first).

    Args:
        logp: ``FloatTensor[..., V]`` log-probabilities.
        tokens: ``LongTensor[...]`` proposed tokens.
        rule: one of `REMASKING_RULES`.
        generator: random generator for ``random``.

    Returns:
        ``FloatTensor[...]`` scores: ``log p(token)`` (low_confidence),
        ``p1 - p2`` (margin), ``-entropy`` (entropy) or ``U(0, 1)`` (random).

    Raises:
        ValueError: for an unknown rule.
    """
    if rule == "low_confidence":
        return logp.gather(-1, tokens[..., None])[..., 0]
    if rule == "margin":
        top2 = logp.topk(2, dim=-1).values.exp()
        return top2[..., 0] - top2[..., 1]
    if rule == "entropy":
        p = logp.exp()
        return (p * logp.clamp_min(-1e30)).nan_to_num(0.0).sum(-1)
    if rule == "random":
        return torch.rand(tokens.shape, generator=generator, device="cpu" if generator is None else generator.device).to(logp.device)
    raise ValueError(f"remasking: unknown rule {rule!r}; expected one of {', '.join(REMASKING_RULES)}")


@dataclass
class FactorizedDraw:
    """The default draw as a `JointDraw`: every position independently.

    Args:
        temperature: 0 for greedy, otherwise the sampling temperature.
        top_p: nucleus size.
        generator: optional random generator.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    def __call__(
        self, ids: torch.Tensor, logits: torch.Tensor, window: torch.Tensor, commit: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw each committed position from its own marginal.

        Args:
            ids: ``LongTensor[B, N]`` current ids.
            logits: ``FloatTensor[B, N, V]`` logits.
            window: ``BoolTensor[B, N]`` masked positions of the active block.
            commit: ``BoolTensor[B, N]`` positions committed at this step.

        Returns:
            ``(tokens, confidence)``, ``LongTensor[B, N]`` and ``FloatTensor[B, N]``
            (``log p`` of each drawn token).
        """
        tokens = sample_tokens(logits, self.temperature, self.top_p, self.generator)
        conf = F.log_softmax(logits.float(), -1).gather(-1, tokens[..., None])[..., 0]
        return torch.where(commit, tokens, ids), conf


def token_entropy(logits: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` per position (of ``softmax(logits / temperature)`` when ``temperature > 0``).

    Args:
        logits: ``FloatTensor[..., V]`` (``-inf`` entries allowed).
        temperature: 0 (greedy decoding: the untempered distribution) or the sampling temperature.

    Returns:
        ``FloatTensor[...]``.
    """
    z = logits.float() if logits.dtype != torch.float64 else logits
    if temperature > 0.0:
        z = z / temperature
    logp = F.log_softmax(z, -1)
    return -(logp.exp() * logp.clamp_min(-1e30)).nan_to_num(0.0).sum(-1)


def entropy_bounded_count(
    score: torch.Tensor, entropy: torch.Tensor, candidates: torch.Tensor, bound: float
) -> torch.Tensor:
    """EB-Sampler's per-row count: the longest score-ordered prefix whose entropy sum minus its max is ``<= bound``.

    Args:
        score: ``FloatTensor[B, L]`` remasking scores (higher = commit first).
        entropy: ``FloatTensor[B, L]`` per-position entropies.
        candidates: ``BoolTensor[B, L]`` positions that may be committed (the block's masked ones).
        bound: gamma ``>= 0``.

    Returns:
        ``LongTensor[B]``: tokens to commit per row, at least 1 where a row has
        a candidate (0 where it has none).
    """
    s = score.masked_fill(~candidates, float("-inf"))
    order = s.argsort(dim=1, descending=True, stable=True)
    valid = candidates.gather(1, order)  # [B, L] candidates first
    h = entropy.gather(1, order).double()
    total = torch.where(valid, h, torch.zeros_like(h)).cumsum(1)
    top = torch.where(valid, h, torch.full_like(h, -math.inf)).cummax(1).values
    ok = valid & (total - top <= bound)  # sum - max never decreases along the prefix, so ok is a prefix
    return ok.sum(1).clamp_min(1) * candidates.any(1)


def num_transfer_tokens(mask_count: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's uniform schedule: split each row's masked count over ``steps``.

    Args:
        mask_count: ``LongTensor[B]`` masked tokens in the block at its start.
        steps: steps for the block.

    Returns:
        ``LongTensor[B, steps]`` tokens to commit per step (row sums equal
        ``mask_count``; earlier steps get the remainder).
    """
    base = mask_count // steps
    rem = mask_count % steps
    out = base[:, None].expand(-1, steps).clone()
    out += (torch.arange(steps, device=mask_count.device)[None, :] < rem[:, None]).long()
    return out


def dream_transfer_count(n_masked: torch.Tensor, step: int, steps: int, eps: float = 1e-3) -> torch.Tensor:
    """Dream's time-based per-step budget.

    With ``t = linspace(1, eps, steps + 1)``, step ``i`` commits
    ``floor(n_masked * (1 - t[i+1] / t[i]))`` tokens, and the last step commits
    everything left.

    Args:
        n_masked: ``LongTensor[B]`` tokens still masked in the window.
        step: step index ``i``.
        steps: total steps.
        eps: final time.

    Returns:
        ``LongTensor[B]`` tokens to commit at this step.
    """
    if step == steps - 1:
        return n_masked.clone()
    t = 1.0 - (1.0 - eps) * step / steps
    s = 1.0 - (1.0 - eps) * (step + 1) / steps
    return torch.floor(n_masked.double() * (1.0 - s / t)).long()


def left_padding_mask(prompt_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Attention mask of left-padded prompts whose real part never starts with ``pad_id``.

    For prompts from `diffusion.data.encode_prompts` (``[PAD]... [BOS] ...``).

    Args:
        prompt_ids: ``LongTensor[B, P]`` left-padded prompts.
        pad_id: the padding id.

    Returns:
        ``BoolTensor[B, P]``: True from each row's first id that is not ``pad_id``.

    Raises:
        ValueError: if a row holds only padding.
    """
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2 or prompt_ids.is_floating_point():
        raise ValueError("prompt_ids: expected an integer tensor of shape [B, P]")
    mask = (prompt_ids != pad_id).long().cumsum(1) > 0
    if mask.shape[1] and not bool(mask[:, -1].all()):
        raise ValueError(f"prompt_ids: row {int((~mask[:, -1]).nonzero()[0, 0])} holds only padding (pad_id={pad_id})")
    return mask


def _step_logits(backbone: Backbone, x: torch.Tensor, attention_mask: torch.Tensor | None, mask_id: int) -> torch.Tensor:
    """Backbone logits of the current ids, where logits enter the sampler.

    Args:
        backbone: the denoiser.
        x: ``LongTensor[B, N]`` current ids.
        attention_mask: ``BoolTensor[B, N]`` (True on real tokens) or None.
        mask_id: the mask id, excluded from every proposal.

    Returns:
        ``FloatTensor[B, N, V]`` (float32, or float64 for a float64
        backbone) with the mask id at ``-inf``.
    """
    logits = backbone(x) if attention_mask is None else backbone(x, attention_mask)
    if logits.dtype != torch.float64:
        logits = logits.float()
    logits[..., mask_id] = float("-inf")
    return logits


@dataclass
class GenerationTrace:
    """Optional record of a `generate` run.

    Attributes:
        commit_step: ``LongTensor[B, gen_length]`` global step at which each
            generated position was committed.
        forward_passes: number of backbone calls.
    """

    commit_step: torch.Tensor
    forward_passes: int


def _validate(
    backbone: Backbone,
    prompt_ids: torch.Tensor,
    gen_length: int,
    steps: int,
    block_length: int | None,
    remasking: str,
    temperature: float,
    top_p: float,
    schedule: str,
    entropy_bound: float | None = None,
) -> tuple[int, int, int]:
    check_token_ids(prompt_ids, backbone.vocab_size, "prompt_ids")
    if (prompt_ids == backbone.mask_token_id).any():
        raise ValueError("prompt_ids: the prompt contains the mask token id")
    if not isinstance(gen_length, int) or gen_length < 1:
        raise ValueError(f"gen_length: expected a positive int, got {gen_length!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if block_length is None:
        block_length = gen_length
    if not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f"block_length: expected a positive int, got {block_length!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length: {gen_length} is not a multiple of block_length={block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(
            f"steps: {steps} is not a multiple of the number of blocks ({num_blocks} = gen_length / block_length)"
        )
    if remasking not in REMASKING_RULES:
        raise ValueError(f"remasking: unknown rule {remasking!r}; expected one of {', '.join(REMASKING_RULES)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if not temperature >= 0.0 or math.isinf(temperature):
        raise ValueError(f"temperature: expected a finite value >= 0, got {temperature!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p: expected 0 < top_p <= 1, got {top_p!r}")
    if entropy_bound is not None and (
        isinstance(entropy_bound, bool) or not isinstance(entropy_bound, (int, float)) or not entropy_bound >= 0.0
    ):
        raise ValueError(f"entropy_bound: expected None or a number >= 0 (nats), got {entropy_bound!r}")
    return block_length, num_blocks, steps // num_blocks


@torch.no_grad()
def generate(
    backbone: Backbone,
    prompt_ids: torch.Tensor,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int | None = 32,
    remasking: str = "low_confidence",
    temperature: float = 0.0,
    top_p: float = 1.0,
    schedule: str = "uniform",
    joint_draw: JointDraw | None = None,
    generator: torch.Generator | None = None,
    return_trace: bool = False,
    prior: object | None = None,
    pc_frac: float = 1.0,
    pc_temperature: float = 1.0,
    sampler: str = "latent",
    attention_mask: torch.Tensor | None = None,
    entropy_bound: float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, GenerationTrace]:
    """Generate ``gen_length`` tokens after each prompt by masked diffusion.

    Args:
        backbone: the denoiser (``ids [B, N] -> logits [B, N, V]``).
        prompt_ids: ``LongTensor[B, P]`` prompts (left-padded when their
            lengths differ, with ``attention_mask``); never changed.
        gen_length: tokens to generate ``L``.
        steps: total denoising steps (backbone calls); ``L / steps`` tokens are
            committed per step on average. Must be a multiple of the number of
            blocks. With ``entropy_bound`` it is the cap on the calls (a block
            whose share of the steps is spent commits all it has left; pass
            ``steps=gen_length`` for an uncapped EB-Sampler).
        block_length: block length (must divide ``gen_length``); ``None`` for
            one block over the whole window (Dream-style full-sequence diffusion).
        remasking: which proposals to commit first: ``"low_confidence"``,
            ``"margin"``, ``"entropy"`` or ``"random"``.
        temperature: 0 for greedy proposals, else the sampling temperature.
        top_p: nucleus sampling mass (with ``temperature > 0``).
        schedule: ``"uniform"`` (LLaDA: equal counts per step within a block) or
            ``"dream"`` (Dream's time-based budget, see `dream_transfer_count`).
        joint_draw: optional `JointDraw` replacing the factorized draw at
            the committed positions (the CoDD hook).
        generator: optional random generator (sampling, random remasking).
        return_trace: also return a `GenerationTrace`.
        prior: optional `diffusion.CoDDPrior` coupling the tokens committed
            together (CoDD, see `diffusion.codd.draw`): joint proposals and
            remasking confidences from ``p_hat`` in the active block.
        pc_frac: gamma in ``[0, 1]``: the prior is used in a window only when
            its mask ratio is at most gamma (1: always).
        pc_temperature: tau > 0 of ``p_hat ∝ p_omega * prod p_theta^(1/tau)``.
        sampler: the prior's sampler, ``"latent"`` (path under untempered
            evidence), ``"latent_tempered"`` (the official CoDD code's step,
            see `diffusion.codd.draw`), ``"exact"`` or ``"any_order"``
            (greedy decoding, ``temperature=0``, takes the MPE of ``p_hat``
            instead, except ``"latent_tempered"``: the argmax given a drawn path).
        attention_mask: ``[B, P]`` bool or 0/1 tensor, True on real prompt
            tokens and False on left padding (None: no padding). Padding is
            invisible to the backbone and the prior, so with greedy decoding
            a prompt's output is the same alone and in any batch (see the
            module docstring for the rounding caveat).
        entropy_bound: gamma ``>= 0`` of the EB-Sampler (module docstring):
            each step commits the longest remasking-ordered prefix of the
            block's masked positions whose entropy sum minus its largest
            entropy is at most gamma (at least one token); ``schedule`` is then
            unused. None: the fixed schedule.

    Returns:
        ``LongTensor[B, P + L]``: prompts followed by generated tokens, with no
        mask token left (and the trace if requested).

    Raises:
        ValueError: for incompatible ``gen_length`` / ``steps`` /
            ``block_length``, a prompt containing the mask id or ids outside the
            vocabulary, an unknown ``remasking`` rule or ``schedule``, or a bad
            ``temperature`` / ``top_p``, ``pc_frac`` outside ``[0, 1]``,
            ``pc_temperature <= 0``, an unknown ``sampler``, a prior whose
            vocabulary differs from the backbone's, both ``prior`` and
            ``joint_draw``, a malformed ``attention_mask`` (see
            `diffusion.backbones.check_attention_mask`), or backbone logits with
            NaN or ``+inf`` (or only ``-inf``) at a masked position of the active block,
            or an ``entropy_bound`` that is not a number ``>= 0``.
    """
    block_length, num_blocks, steps_per_block = _validate(
        backbone, prompt_ids, gen_length, steps, block_length, remasking, temperature, top_p, schedule, entropy_bound
    )
    prompt_mask = check_attention_mask(attention_mask, tuple(prompt_ids.shape))
    from .codd.draw import CoDDDraw, check_codd_options

    check_codd_options(pc_frac, pc_temperature, sampler)
    codd = None
    if prior is not None:
        if joint_draw is not None:
            raise ValueError("prior: pass either prior= or joint_draw=, not both")
        codd = CoDDDraw(
            prior, backbone.vocab_size, pc_frac, pc_temperature, sampler, temperature, remasking, generator,
            entropy=entropy_bound is not None,
        )
        joint_draw = codd
    mask_id = backbone.mask_token_id
    device = backbone.device
    prompt_ids = prompt_ids.to(device)
    b, p = prompt_ids.shape
    x = torch.cat([prompt_ids, torch.full((b, gen_length), mask_id, dtype=torch.long, device=device)], dim=1)
    full_mask = None  # [B, N]: real prompt tokens and the whole generation window
    first = torch.zeros(b, dtype=torch.long, device=device)  # [B] first real column per row
    if prompt_mask is not None:
        prompt_mask = prompt_mask.to(device)
        full_mask = torch.cat([prompt_mask, torch.ones((b, gen_length), dtype=torch.bool, device=device)], dim=1)
        first = (~prompt_mask).sum(1)
    commit_step = torch.full((b, gen_length), -1, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device)
    passes = 0
    global_step = 0
    for blk in range(num_blocks):
        lo, hi = p + blk * block_length, p + (blk + 1) * block_length
        counts = num_transfer_tokens((x[:, lo:hi] == mask_id).sum(1), steps_per_block)
        for i in range(steps_per_block):
            in_block = x[:, lo:hi] == mask_id  # [B, Lb]
            n_masked = in_block.sum(1)
            if entropy_bound is not None:
                k = n_masked.clone()  # the bound sets the count once the scores are known
            elif schedule == "uniform":
                k = torch.minimum(counts[:, i], n_masked)
            else:
                k = dream_transfer_count(n_masked, i, steps_per_block)
            if i == steps_per_block - 1:
                k = n_masked  # nothing stays masked past the block's last step
            if int(k.sum()) == 0:
                global_step += 1
                continue
            logits = _step_logits(backbone, x, full_mask, mask_id)  # [B, N, V]
            passes += 1
            blk_logits = logits[:, lo:hi]  # [B, Lb, V]
            problem = logits_problem(blk_logits, in_block)
            if problem is not None:
                (what, (row, col)) = problem
                raise ValueError(
                    f"backbone returned non-finite logits at denoising step {global_step}: {what} "
                    f"at batch row {row}, position {lo + col}"
                )
            logp = F.log_softmax(blk_logits, dim=-1)
            proposal = sample_tokens(blk_logits, temperature, top_p, generator)  # [B, Lb]
            score = confidence_scores(logp, proposal, remasking, generator)
            if codd is not None:  # joint proposals and coupled confidences from the prior
                proposal, score = codd.rescore(x, logits, lo, hi, in_block, proposal, score, mask_id, first)
            if entropy_bound is not None and i < steps_per_block - 1:
                ent = token_entropy(blk_logits, temperature)  # [B, Lb]
                if codd is not None:
                    ent = codd.coupled_entropy(ent)
                k = torch.minimum(entropy_bounded_count(score, ent, in_block, float(entropy_bound)), n_masked)
            score = score.masked_fill(~in_block, float("-inf"))
            order = score.argsort(dim=1, descending=True, stable=True)
            rank = torch.empty_like(order)
            rank[rows[:, None], order] = torch.arange(hi - lo, device=device)[None, :].expand(b, -1)
            commit_blk = (rank < k[:, None]) & in_block  # [B, Lb]
            if joint_draw is not None:
                window = torch.zeros_like(x, dtype=torch.bool)
                window[:, lo:hi] = in_block
                commit = torch.zeros_like(window)
                commit[:, lo:hi] = commit_blk
                tokens, _conf = joint_draw(x, logits, window, commit)
                new_blk = tokens[:, lo:hi]
                if (new_blk[commit_blk] == mask_id).any():
                    raise ValueError("joint_draw: returned the mask token at a committed position")
            else:
                new_blk = proposal
            x[:, lo:hi] = torch.where(commit_blk, new_blk, x[:, lo:hi])
            commit_step[:, lo - p : hi - p] = torch.where(
                commit_blk, torch.full_like(commit_blk, global_step, dtype=torch.long), commit_step[:, lo - p : hi - p]
            )
            global_step += 1
    if return_trace:
        return x, GenerationTrace(commit_step, passes)
    return x
