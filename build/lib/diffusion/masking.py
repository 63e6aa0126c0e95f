r"""The masked diffusion forward process and training objective (MDLM / LLaDA).

Forward process: given clean tokens $x_0$ and a time $t \sim U(0,1)$,
each maskable token is replaced by the mask token independently with
probability $t$ (prompt tokens are never masked). The negative ELBO of
the absorbing-state diffusion with a linear schedule is

$$
-\log p(x_0) \le \mathbb{E}_{t}\Big[\frac{1}{t} \sum_{i:\, x_t^i = [M]} -\log p_\theta(x_0^i \mid x_t)\Big],
$$

so the loss is the cross-entropy on masked tokens weighted by $1/t$.
`masked_diffusion_loss` returns a per-token estimate of this bound
(summed over the batch and divided by the number of maskable tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["sample_times", "mask_tokens", "mask_exact_ratio", "masked_diffusion_loss", "DiffusionLoss"]


def sample_times(
    batch_size: int,
    eps: float = 1e-3,
    stratified: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw diffusion times ``t ~ U(eps, 1)``.

    With ``stratified=True`` the batch uses one uniform offset and evenly
    spaced strata (low-discrepancy sampling as in MDLM); every single ``t`` is
    still marginally uniform, so the loss stays unbiased while its variance
    drops.

    Args:
        batch_size: ``B``.
        eps: lower bound, keeps the ``1/t`` weight finite.
        stratified: use stratified (antithetic-style) sampling.
        generator: optional random generator.
        device: output device.

    Returns:
        ``FloatTensor[B]`` of times in ``[eps, 1)``.
    """
    if stratified:
        u0 = torch.rand((), generator=generator)
        u = (u0 + torch.arange(batch_size) / batch_size) % 1.0
        u = u[torch.randperm(batch_size, generator=generator)]
    else:
        u = torch.rand(batch_size, generator=generator)
    return (eps + (1.0 - eps) * u).to(device)


def mask_tokens(
    input_ids: torch.Tensor,
    t: torch.Tensor,
    mask_token_id: int,
    maskable: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the forward process: mask each maskable token with probability ``t``.

    Args:
        input_ids: ``LongTensor[B, N]`` clean ids.
        t: ``FloatTensor[B]`` per-sequence mask probabilities.
        mask_token_id: the mask id.
        maskable: ``BoolTensor[B, N]``, False for prompt tokens (never masked);
            default all True.
        generator: optional random generator (CPU).

    Returns:
        ``(noisy_ids, masked)``: ``LongTensor[B, N]`` with masks inserted and
        the ``BoolTensor[B, N]`` of masked positions.
    """
    if t.dim() != 1 or t.shape[0] != input_ids.shape[0]:
        raise ValueError(f"t: expected shape [{input_ids.shape[0]}], got {tuple(t.shape)}")
    u = torch.rand(input_ids.shape, generator=generator).to(input_ids.device)
    masked = u < t.to(input_ids.device)[:, None]
    if maskable is not None:
        masked &= maskable
    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return noisy, masked


def mask_exact_ratio(
    maskable: torch.Tensor, ratio: torch.Tensor, generator: torch.Generator | None = None
) -> torch.BoolTensor:
    """Masks exactly ``round(ratio * n)`` (at least one) of each row's ``n`` maskable positions, chosen uniformly.

    Unlike `mask_tokens` (each token independently with probability ``t``),
    the number of masks is fixed, so a row's mask ratio is ``ratio`` up to
    rounding: the protocol of the mask-ratio evaluation.

    Args:
        maskable: ``BoolTensor[B, N]`` positions that may be masked.
        ratio: ``FloatTensor[B]`` mask ratio of each row.
        generator: optional random generator (CPU).

    Returns:
        ``BoolTensor[B, N]`` masked positions (on ``maskable``'s device).
    """
    scores = torch.rand(maskable.shape, generator=generator).to(maskable.device).masked_fill(~maskable, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # rank of each position; the unmaskable ones come last
    k = (ratio.to(maskable.device) * maskable.sum(1)).round().clamp(min=1).long()
    return (rank < k[:, None]) & maskable


@dataclass
class DiffusionLoss:
    """Output of `masked_diffusion_loss`.

    Attributes:
        loss: scalar bound estimate in nats per maskable token (differentiable).
        masked_ce: scalar mean cross-entropy over masked tokens (unweighted, detached).
        num_masked: number of masked tokens.
        num_tokens: number of maskable tokens (the normaliser).
    """

    loss: torch.Tensor
    masked_ce: torch.Tensor
    num_masked: int
    num_tokens: int


def masked_diffusion_loss(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    input_ids: torch.Tensor,
    mask_token_id: int,
    maskable: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
) -> DiffusionLoss:
    r"""MDLM / LLaDA loss: ``1/t``-weighted cross-entropy on masked tokens.

    ``loss = sum_b sum_{i masked in b} CE_bi / t_b / #maskable``, an unbiased
    estimate of the negative ELBO per maskable token.

    Args:
        logits_fn: maps ``LongTensor[B, N]`` noisy ids to ``FloatTensor[B, N, V]``
            logits (a `Backbone`).
        input_ids: ``LongTensor[B, N]`` clean ids.
        mask_token_id: the mask id.
        maskable: ``BoolTensor[B, N]``, False on prompt tokens; default all True.
        t: optional ``FloatTensor[B]`` times (drawn with `sample_times` if None).
        eps: lower bound of ``t`` when drawing.
        generator: optional random generator.

    Returns:
        A `DiffusionLoss`.
    """
    if maskable is None:
        maskable = torch.ones_like(input_ids, dtype=torch.bool)
    if t is None:
        t = sample_times(input_ids.shape[0], eps=eps, generator=generator, device=input_ids.device)
    noisy, masked = mask_tokens(input_ids, t, mask_token_id, maskable, generator)
    logits = logits_fn(noisy)
    num_tokens = int(maskable.sum())
    num_masked = int(masked.sum())
    if num_masked == 0:
        zero = logits.sum() * 0.0
        return DiffusionLoss(zero, zero.detach(), 0, num_tokens)
    ce = F.cross_entropy(logits[masked].float(), input_ids[masked], reduction="none")  # [M]
    weights = (1.0 / t.to(logits.device))[:, None].expand_as(masked)[masked]  # [M]
    loss = (ce * weights).sum() / max(num_tokens, 1)
    return DiffusionLoss(loss, ce.mean().detach(), num_masked, num_tokens)
