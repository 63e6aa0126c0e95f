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

Joint draws: the proposals above are a *factorized* draw, each position
independent given the current ids. A `JointDraw` passed as ``joint_draw=``
is called, once per step and after the positions to commit have been
chosen, with ``(ids, logits, window, commit)`` and returns the tokens (and
confidences) to write at the committed positions, so a joint output layer
can replace the per-position draw for the positions committed together.
`FactorizedDraw` is the default behaviour written as a ``JointDraw``;
``prior=`` builds the CoDD draw (`diffusion.codd.CoDDDraw`), which also
rescores the proposals. The protocol and the per-position proposals live in
`diffusion.proposals`, below both this loop and the CoDD prior.

Settings: the knobs from ``gen_length`` to ``sampler`` form a
`GenerationConfig`, passed whole or as keywords of `generate`. The loop is
cut into phases: `_Canvas.start` (prompts and the masked window),
`_decode_block` (the block's steps and their schedule), `_decode_step` (one
backbone call: `_propose`, `_commit_positions`, the joint draw, the write).

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
from typing import Any

import torch
import torch.nn.functional as F

from .backbones import Backbone, check_attention_mask, check_token_ids
from .codd.draw import CoDDDraw, check_codd_options
from .proposals import REMASKING_RULES, FactorizedDraw, JointDraw, confidence_scores, logits_problem, sample_tokens
from .settings import with_overrides

__all__ = [
    "REMASKING_RULES",
    "SCHEDULES",
    "JointDraw",
    "FactorizedDraw",
    "GenerationConfig",
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

SCHEDULES: tuple[str, ...] = ("uniform", "dream")
"""Accepted values of ``schedule``."""


def token_entropy(logits: torch.Tensor, temperature: float = 0.0) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` per position (``softmax(logits / temperature)`` when ``temperature > 0``).

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


def _step_logits(
    backbone: Backbone, x: torch.Tensor, attention_mask: torch.Tensor | None, mask_id: int
) -> torch.Tensor:
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



# ----------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class GenerationConfig:
    """The settings of `generate` (each may also be passed to `generate` as a keyword).

    Attributes:
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
        entropy_bound: gamma ``>= 0`` of the EB-Sampler (module docstring):
            each step commits the longest remasking-ordered prefix of the
            block's masked positions whose entropy sum minus its largest
            entropy is at most gamma (at least one token); ``schedule`` is then
            unused. None: the fixed schedule.
        pc_frac: gamma in ``[0, 1]`` of a CoDD prior: the prior is used in a
            window only when its mask ratio is at most gamma (1: always).
        pc_temperature: tau > 0 of ``p_hat ∝ p_omega * prod p_theta^(1/tau)``.
        sampler: the prior's sampler, ``"latent"`` (path under untempered
            evidence), ``"latent_tempered"`` (the official CoDD code's step,
            see `diffusion.codd.draw`), ``"exact"`` or ``"any_order"``
            (greedy decoding, ``temperature=0``, takes the MPE of ``p_hat``
            instead, except ``"latent_tempered"``: the argmax given a drawn path).

    Raises:
        ValueError: incompatible ``gen_length`` / ``steps`` / ``block_length``,
            an unknown ``remasking`` rule or ``schedule``, a bad ``temperature``
            / ``top_p``, an ``entropy_bound`` that is not a number ``>= 0``,
            ``pc_frac`` outside ``[0, 1]``, ``pc_temperature <= 0`` or an
            unknown ``sampler`` (the message names the field).
    """

    gen_length: int = 128
    steps: int = 128
    block_length: int | None = 32
    remasking: str = "low_confidence"
    temperature: float = 0.0
    top_p: float = 1.0
    schedule: str = "uniform"
    entropy_bound: float | None = None
    pc_frac: float = 1.0
    pc_temperature: float = 1.0
    sampler: str = "latent"

    def __post_init__(self) -> None:
        self._check_lengths()
        self._check_rules()
        check_codd_options(self.pc_frac, self.pc_temperature, self.sampler)

    def _check_lengths(self) -> None:
        if not isinstance(self.gen_length, int) or self.gen_length < 1:
            raise ValueError(f"gen_length: expected a positive int, got {self.gen_length!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: expected a positive int, got {self.steps!r}")
        block_length = self.block_length if self.block_length is not None else self.gen_length
        if not isinstance(block_length, int) or block_length < 1:
            raise ValueError(f"block_length: expected a positive int, got {block_length!r}")
        if self.gen_length % block_length:
            raise ValueError(f"gen_length: {self.gen_length} is not a multiple of block_length={block_length}")
        num_blocks = self.gen_length // block_length
        if self.steps % num_blocks:
            raise ValueError(
                f"steps: {self.steps} is not a multiple of the number of blocks "
                f"({num_blocks} = gen_length / block_length)"
            )

    def _check_rules(self) -> None:
        if self.remasking not in REMASKING_RULES:
            rules = ", ".join(REMASKING_RULES)
            raise ValueError(f"remasking: unknown rule {self.remasking!r}; expected one of {rules}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if not self.temperature >= 0.0 or math.isinf(self.temperature):
            raise ValueError(f"temperature: expected a finite value >= 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected 0 < top_p <= 1, got {self.top_p!r}")
        bound = self.entropy_bound
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound >= 0.0):
            raise ValueError(f"entropy_bound: expected None or a number >= 0 (nats), got {bound!r}")

    @property
    def blocks(self) -> tuple[int, int, int]:
        """``(block_length, num_blocks, steps_per_block)``, ``block_length=None`` resolved to ``gen_length``."""
        block_length = self.block_length if self.block_length is not None else self.gen_length
        num_blocks = self.gen_length // block_length
        return block_length, num_blocks, self.steps // num_blocks


# ------------------------------------------------------------------------------------------- canvas
@dataclass
class _Canvas:
    """The sequence being decoded and its bookkeeping.

    Attributes:
        x: ``LongTensor[B, P + L]`` prompts then the generation window (mask id where undecided).
        full_mask: ``BoolTensor[B, P + L]`` real prompt tokens and the whole window, or None (no padding).
        first: ``LongTensor[B]`` first real column of each row.
        commit_step: ``LongTensor[B, L]`` global step at which each window position was committed (-1: not yet).
        prompt_width: ``P``.
        mask_id: the mask id.
        passes: backbone calls so far.
        step: the global step index.
    """

    x: torch.Tensor
    full_mask: torch.Tensor | None
    first: torch.Tensor
    commit_step: torch.Tensor
    prompt_width: int
    mask_id: int
    passes: int = 0
    step: int = 0

    @classmethod
    def start(
        cls, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor | None, gen_length: int, mask_id: int
    ) -> _Canvas:
        """The prompts ``[B, P]`` (on the backbone's device) followed by ``gen_length`` mask ids."""
        device = prompt_ids.device
        b, p = prompt_ids.shape
        x = torch.cat([prompt_ids, torch.full((b, gen_length), mask_id, dtype=torch.long, device=device)], dim=1)
        full_mask = None
        first = torch.zeros(b, dtype=torch.long, device=device)
        if prompt_mask is not None:
            prompt_mask = prompt_mask.to(device)
            full_mask = torch.cat([prompt_mask, torch.ones((b, gen_length), dtype=torch.bool, device=device)], dim=1)
            first = (~prompt_mask).sum(1)
        commit_step = torch.full((b, gen_length), -1, dtype=torch.long, device=device)
        return cls(x, full_mask, first, commit_step, p, mask_id)

    def write(self, lo: int, hi: int, commit_blk: torch.Tensor, new_blk: torch.Tensor) -> None:
        """Writes ``new_blk [B, hi - lo]`` in columns ``lo:hi`` where ``commit_blk [B, hi - lo]`` is True.

        The commit step of those positions is the current step.
        """
        p = self.prompt_width
        self.x[:, lo:hi] = torch.where(commit_blk, new_blk, self.x[:, lo:hi])
        step = torch.full_like(commit_blk, self.step, dtype=torch.long)
        self.commit_step[:, lo - p : hi - p] = torch.where(commit_blk, step, self.commit_step[:, lo - p : hi - p])


@dataclass
class _Step:
    """What one denoising step of a block sees.

    Attributes:
        lo: the block's first column; ``hi``: one past its last.
        in_block: ``BoolTensor[B, hi - lo]`` masked positions of the block.
        count: ``LongTensor[B]`` tokens to commit per row (before an entropy bound).
        last: the block's last step (everything left is committed).
    """

    lo: int
    hi: int
    in_block: torch.Tensor
    count: torch.Tensor
    last: bool


# ----------------------------------------------------------------------------------------- phases
def _check_prompt(backbone: Backbone, prompt_ids: torch.Tensor) -> None:
    check_token_ids(prompt_ids, backbone.vocab_size, "prompt_ids")
    if (prompt_ids == backbone.mask_token_id).any():
        raise ValueError("prompt_ids: the prompt contains the mask token id")


def _prior_draw(
    prior: object | None,
    joint_draw: JointDraw | None,
    backbone: Backbone,
    cfg: GenerationConfig,
    generator: torch.Generator | None,
) -> tuple[CoDDDraw | None, JointDraw | None]:
    """``(codd, joint_draw)``: the CoDD draw built from ``prior`` (None without one) and the step's joint draw."""
    if prior is None:
        return None, joint_draw
    if joint_draw is not None:
        raise ValueError("prior: pass either prior= or joint_draw=, not both")
    codd = CoDDDraw(
        prior, backbone.vocab_size, cfg.pc_frac, cfg.pc_temperature, cfg.sampler, cfg.temperature, cfg.remasking,
        generator, entropy=cfg.entropy_bound is not None,
    )
    return codd, codd


def _scheduled_count(
    cfg: GenerationConfig, counts: torch.Tensor, n_masked: torch.Tensor, i: int, steps: int
) -> torch.Tensor:
    """Tokens to commit per row ``[B]`` at step ``i`` of a block of ``steps``, from the schedule.

    ``counts [B, steps]`` is the uniform schedule, ``n_masked [B]`` the
    block's masked positions. With an entropy bound every masked position is
    a candidate (the bound sets the count once the scores are known).
    """
    if i == steps - 1:
        return n_masked  # nothing stays masked past the block's last step
    if cfg.entropy_bound is not None:
        return n_masked.clone()
    if cfg.schedule == "uniform":
        return torch.minimum(counts[:, i], n_masked)
    return dream_transfer_count(n_masked, i, steps)


def _check_step_logits(blk_logits: torch.Tensor, in_block: torch.Tensor, step: int, lo: int) -> None:
    problem = logits_problem(blk_logits, in_block)
    if problem is not None:
        (what, (row, col)) = problem
        raise ValueError(
            f"backbone returned non-finite logits at denoising step {step}: {what} "
            f"at batch row {row}, position {lo + col}"
        )


def _propose(
    logits: torch.Tensor,
    canvas: _Canvas,
    st: _Step,
    cfg: GenerationConfig,
    codd: CoDDDraw | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Proposals, remasking scores and the commit count of one step.

    Args:
        logits: ``FloatTensor[B, N, V]`` the step's logits (mask id at ``-inf``).

    Returns:
        ``(proposal [B, Lb], score [B, Lb], count [B])``: factorized (or, in
        the prior's active windows, joint) proposals, their scores, and the
        count after the entropy bound.
    """
    blk_logits = logits[:, st.lo : st.hi]  # [B, Lb, V]
    _check_step_logits(blk_logits, st.in_block, canvas.step, st.lo)
    logp = F.log_softmax(blk_logits, dim=-1)
    proposal = sample_tokens(blk_logits, cfg.temperature, cfg.top_p, generator)  # [B, Lb]
    score = confidence_scores(logp, proposal, cfg.remasking, generator)
    if codd is not None:  # joint proposals and coupled confidences from the prior
        proposal, score = codd.rescore(
            canvas.x, logits, st.lo, st.hi, st.in_block, proposal, score, canvas.mask_id, canvas.first
        )
    count = st.count
    if cfg.entropy_bound is not None and not st.last:
        ent = token_entropy(blk_logits, cfg.temperature)  # [B, Lb]
        if codd is not None:
            ent = codd.coupled_entropy(ent)
        bounded = entropy_bounded_count(score, ent, st.in_block, float(cfg.entropy_bound))
        count = torch.minimum(bounded, st.in_block.sum(1))
    return proposal, score, count


def _commit_positions(score: torch.Tensor, count: torch.Tensor, in_block: torch.Tensor) -> torch.Tensor:
    """``BoolTensor[B, Lb]``: the ``count [B]`` best-scored (``score [B, Lb]``) masked positions of each row."""
    b, lb = in_block.shape
    device = in_block.device
    order = score.masked_fill(~in_block, float("-inf")).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[torch.arange(b, device=device)[:, None], order] = torch.arange(lb, device=device)[None, :].expand(b, -1)
    return (rank < count[:, None]) & in_block


def _joint_tokens(
    joint_draw: JointDraw, canvas: _Canvas, logits: torch.Tensor, st: _Step, commit_blk: torch.Tensor
) -> torch.Tensor:
    """The block's tokens ``[B, Lb]`` from the joint draw (only those at ``commit_blk`` are used)."""
    x, lo, hi = canvas.x, st.lo, st.hi
    window = torch.zeros_like(x, dtype=torch.bool)
    window[:, lo:hi] = st.in_block
    commit = torch.zeros_like(window)
    commit[:, lo:hi] = commit_blk
    tokens, _conf = joint_draw(x, logits, window, commit)
    new_blk = tokens[:, lo:hi]
    if (new_blk[commit_blk] == canvas.mask_id).any():
        raise ValueError("joint_draw: returned the mask token at a committed position")
    return new_blk


def _decode_step(
    backbone: Backbone,
    canvas: _Canvas,
    st: _Step,
    cfg: GenerationConfig,
    draws: tuple[CoDDDraw | None, JointDraw | None],
    generator: torch.Generator | None,
) -> None:
    """One backbone call: propose, choose the positions to commit, draw them, write them."""
    codd, joint_draw = draws
    logits = _step_logits(backbone, canvas.x, canvas.full_mask, canvas.mask_id)  # [B, N, V]
    canvas.passes += 1
    proposal, score, count = _propose(logits, canvas, st, cfg, codd, generator)
    commit_blk = _commit_positions(score, count, st.in_block)  # [B, Lb]
    new_blk = proposal if joint_draw is None else _joint_tokens(joint_draw, canvas, logits, st, commit_blk)
    canvas.write(st.lo, st.hi, commit_blk, new_blk)


def _decode_block(
    backbone: Backbone,
    canvas: _Canvas,
    lo: int,
    hi: int,
    cfg: GenerationConfig,
    draws: tuple[CoDDDraw | None, JointDraw | None],
    generator: torch.Generator | None,
) -> None:
    """Decodes the columns ``lo:hi`` in the block's share of the steps.

    A step with nothing to commit calls no backbone (but counts as a step).
    """
    steps = cfg.blocks[2]
    counts = num_transfer_tokens((canvas.x[:, lo:hi] == canvas.mask_id).sum(1), steps)  # [B, steps]
    for i in range(steps):
        in_block = canvas.x[:, lo:hi] == canvas.mask_id  # [B, Lb]
        count = _scheduled_count(cfg, counts, in_block.sum(1), i, steps)
        if int(count.sum()) > 0:
            _decode_step(backbone, canvas, _Step(lo, hi, in_block, count, i == steps - 1), cfg, draws, generator)
        canvas.step += 1


# ---------------------------------------------------------------------------------------- generate
@torch.no_grad()
def generate(
    backbone: Backbone,
    prompt_ids: torch.Tensor,
    config: GenerationConfig | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    joint_draw: JointDraw | None = None,
    prior: object | None = None,
    generator: torch.Generator | None = None,
    return_trace: bool = False,
    **settings: Any,
) -> torch.Tensor | tuple[torch.Tensor, GenerationTrace]:
    """Generate ``gen_length`` tokens after each prompt by masked diffusion.

    The settings are a `GenerationConfig`, or its fields as keywords
    (``generate(backbone, prompt_ids, gen_length=64, steps=16)``); keywords
    override the fields of a given ``config``.

    Args:
        backbone: the denoiser (``ids [B, N] -> logits [B, N, V]``).
        prompt_ids: ``LongTensor[B, P]`` prompts (left-padded when their
            lengths differ, with ``attention_mask``); never changed.
        config: the settings (default ``GenerationConfig()``: 128 tokens,
            128 steps, blocks of 32, greedy, low-confidence remasking).
        attention_mask: ``[B, P]`` bool or 0/1 tensor, True on real prompt
            tokens and False on left padding (None: no padding). Padding is
            invisible to the backbone and the prior, so with greedy decoding
            a prompt's output is the same alone and in any batch (see the
            module docstring for the rounding caveat).
        joint_draw: optional `JointDraw` replacing the factorized draw at
            the committed positions (the CoDD hook).
        prior: optional `diffusion.CoDDPrior` coupling the tokens committed
            together (CoDD, see `diffusion.codd.draw`): joint proposals and
            remasking confidences from ``p_hat`` in the active block, with the
            config's ``pc_frac``, ``pc_temperature`` and ``sampler``.
        generator: optional random generator (sampling, random remasking).
        return_trace: also return a `GenerationTrace`.
        **settings: fields of `GenerationConfig` (``gen_length``, ``steps``,
            ``block_length``, ``remasking``, ``temperature``, ``top_p``,
            ``schedule``, ``entropy_bound``, ``pc_frac``, ``pc_temperature``,
            ``sampler``).

    Returns:
        ``LongTensor[B, P + L]``: prompts followed by generated tokens, with no
        mask token left (and the trace if requested).

    Raises:
        TypeError: ``config`` not a `GenerationConfig` (e.g. a setting passed
            by position) or a keyword that is not a setting.
        ValueError: bad settings (see `GenerationConfig`), a prompt containing
            the mask id or ids outside the vocabulary, a prior whose
            vocabulary differs from the backbone's, both ``prior`` and
            ``joint_draw``, a malformed ``attention_mask`` (see
            `diffusion.backbones.check_attention_mask`), or backbone logits with
            NaN or ``+inf`` (or only ``-inf``) at a masked position of the active block.
    """
    cfg = with_overrides(GenerationConfig, config, settings, "generate")
    _check_prompt(backbone, prompt_ids)
    prompt_mask = check_attention_mask(attention_mask, tuple(prompt_ids.shape))
    draws = _prior_draw(prior, joint_draw, backbone, cfg, generator)
    canvas = _Canvas.start(prompt_ids.to(backbone.device), prompt_mask, cfg.gen_length, backbone.mask_token_id)
    block_length, num_blocks, _ = cfg.blocks
    for blk in range(num_blocks):
        lo = canvas.prompt_width + blk * block_length
        _decode_block(backbone, canvas, lo, lo + block_length, cfg, draws, generator)
    if return_trace:
        return canvas.x, GenerationTrace(canvas.commit_step, canvas.passes)
    return canvas.x
