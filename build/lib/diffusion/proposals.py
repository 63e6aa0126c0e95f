"""What one denoising step draws: per-position proposals, their remasking scores, and the joint-draw protocol.

This is the lowest module of the samplers: `diffusion.sampling.generate`
(the denoising loop) and the CoDD prior (`diffusion.codd`) both build on
it, and it imports neither.

* `sample_tokens`: the factorized proposal, each position independently
  (greedy, or temperature / top-p sampling).
* `confidence_scores`: the remasking rules of `REMASKING_RULES`, which
  positions to commit first.
* `logits_problem`: the first row of logits with no valid token (NaN,
  ``+inf``, or all ``-inf``).
* `JointDraw`: the protocol of a draw of the committed tokens at one step,
  and `FactorizedDraw`, the factorized draw written as one. The CoDD draw
  (`diffusion.codd.CoDDDraw`) is another.

Shapes: ``B`` rows, ``N`` sequence positions, ``V`` vocabulary; ``...``
any leading shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

__all__ = [
    "REMASKING_RULES",
    "JointDraw",
    "FactorizedDraw",
    "logits_problem",
    "sample_tokens",
    "confidence_scores",
]

REMASKING_RULES: tuple[str, ...] = ("low_confidence", "margin", "entropy", "random")
"""Accepted values of ``remasking``."""


@runtime_checkable
class JointDraw(Protocol):
    """A draw of the committed tokens at one denoising step.

    `diffusion.sampling.generate` calls it once per step, after the
    positions to commit have been chosen, and writes the returned tokens at
    those positions. Implementations may sample the committed positions
    jointly instead of independently: `FactorizedDraw` is the independent
    draw, and `diffusion.codd.CoDDDraw` (what ``generate(prior=...,
    pc_frac=..., pc_temperature=..., sampler=...)`` builds) draws them from
    a probabilistic-circuit prior conditioned on the backbone's logits.
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
        device = "cpu" if generator is None else generator.device
        return torch.rand(tokens.shape, generator=generator, device=device).to(logp.device)
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
