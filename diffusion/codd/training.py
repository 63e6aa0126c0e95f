"""Training a CoDD prior on a frozen backbone.

The data are masked windows ``(x0, masked)`` with the backbone's logits for
the masked input (cached once, optionally as their top-``k``). The prior
maximises the conditional log-likelihood

``log p_hat(x0_masked | x0_observed, logits) = log Z(x0, all observed) + sum_i log q_i(x0_i) - log Z(x0_observed, q)``

with Adam on the circuit's unconstrained logits, or with Anemone's conditional
update (``optimizer="anemone"``, `pcircuits.learning.anemone_step`). Plain EM is
not used for this objective: its monotone guarantee holds for the (marginal)
joint likelihood ``log p_omega(x)``, not for a ratio of two partition functions.
A few epochs of `pcircuits.em` on the windows' clean tokens can initialise the prior.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import pcircuits as pc
from pcircuits import distributed as pdist

from ..backbones import Backbone, load_backbone
from ..masking import mask_exact_ratio
from ..settings import with_overrides
from ..tokenizers import as_text_tokenizer
from .prior import CoDDPrior

__all__ = [
    "PriorTrainConfig",
    "fit_prior",
    "PriorJobConfig",
    "train_prior_cli",
    "make_windows",
    "backbone_window_logits",
    "answer_tiles",
    "answer_window_logits",
    "answer_window_topk",
    "prior_cache_bytes",
    "topk_with_target",
    "conditional_nll",
    "mean_nll",
]


def make_windows(
    tokens: torch.Tensor,
    window: int,
    maskable: torch.Tensor | None = None,
    num_windows: int | None = None,
    generator: torch.Generator | None = None,
    min_ratio: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked training windows: a window start per example and a mask ratio ``t ~ U(min_ratio, 1)``.

    Args:
        tokens: ``LongTensor[N, L]`` clean sequences (``L >= window``).
        window: window length ``W``.
        maskable: ``BoolTensor[N, L]`` positions that may be masked (e.g. the
            answer tokens of QA data); windows start where the whole window is
            maskable when possible. ``None``: everything.
        num_windows: windows to draw (default ``N``), examples drawn with replacement.
        generator: random generator.
        min_ratio: smallest mask ratio.

    Returns:
        ``(rows [M], starts [M], masked [M, W])``: the example and first
        position of each window and its mask (at least one masked position).
    """
    N, L = tokens.shape
    if window > L:
        raise ValueError(f"tokens: sequences of length {L} are shorter than the window {window}")
    M = N if num_windows is None else num_windows
    if maskable is None:
        maskable = torch.ones_like(tokens, dtype=torch.bool)
    rows = torch.randint(N, (M,), generator=generator)
    starts = torch.empty(M, dtype=torch.long)
    for m in range(M):
        ok = maskable[rows[m]]
        idx = ok.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            starts[m] = int(torch.randint(L - window + 1, (1,), generator=generator))
            continue
        lo = min(int(idx[0]), L - window)  # clamp first: an answer starting after L - window has no full window
        hi = max(lo, min(int(idx[-1]) - window + 1, L - window))
        starts[m] = lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))
    pos = starts[:, None] + torch.arange(window)
    can = maskable[rows[:, None], pos]
    t = min_ratio + (1 - min_ratio) * torch.rand(M, 1, generator=generator)
    masked = (torch.rand(M, window, generator=generator) < t) & can
    # at least one masked position per window where possible
    none = ~masked.any(1) & can.any(1)
    if bool(none.any()):
        first = can.float().argmax(1)
        masked[none, first[none]] = True
    return rows, starts, masked


@torch.no_grad()
def backbone_window_logits(
    backbone: Backbone,
    tokens: torch.Tensor,
    rows: torch.Tensor,
    starts: torch.Tensor,
    masked: torch.Tensor,
    batch_size: int = 32,
    top_k: int | None = None,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Runs the frozen backbone on the masked sequences and caches the window logits.

    The whole sequence is the backbone's input (with the window's masked
    positions replaced by the mask id); only the window's rows are kept.

    Args:
        backbone: the frozen denoiser.
        tokens: ``LongTensor[N, L]`` clean sequences.
        rows: ``LongTensor[M]`` sequence of each window, from `make_windows`.
        starts: ``LongTensor[M]`` first position of each window, from `make_windows`.
        masked: ``BoolTensor[M, W]`` masked positions of each window, from `make_windows`.
        batch_size: sequences per backbone call.
        top_k: keep only the ``top_k`` logits per position plus the target's (see `topk_with_target`).
        progress: progress bar.

    Returns:
        ``(x0 [M, W], logits, candidates)``: logits ``[M, W, V]`` (float32,
        mask id at ``-inf``) and ``candidates=None``, or with ``top_k`` logits
        ``[M, W, top_k + 1]`` and ``candidates [M, W, top_k + 1]``.
    """
    M, W = masked.shape
    pos = starts[:, None] + torch.arange(W)
    x0 = tokens[rows[:, None], pos]
    outs, cands = [], []
    for s in tqdm(range(0, M, batch_size), desc="backbone logits", disable=progress is False, leave=False):
        r, p, m = rows[s : s + batch_size], pos[s : s + batch_size], masked[s : s + batch_size]
        inp = tokens[r].clone()
        ar = torch.arange(len(r))[:, None].expand_as(p)
        inp[ar[m], p[m]] = backbone.mask_token_id
        lg = backbone(inp.to(backbone.device)).float().cpu()[ar, p]  # [b, W, V]
        lg[..., backbone.mask_token_id] = -math.inf
        if top_k is not None:
            lg, c = topk_with_target(lg, x0[s : s + batch_size], top_k)
            cands.append(c)
        outs.append(lg)
    return x0, torch.cat(outs), (torch.cat(cands) if cands else None)


def answer_tiles(start: int, end: int, window: int) -> list[tuple[int, int]]:
    """Windows tiling the span ``[start, end)``: ``(first position, first position it owns)`` each.

    Tiles follow each other; the last one is shifted back to end at ``end``
    (when the span is at least a window long), so it overlaps its
    predecessor, whose positions it does not own. A span shorter than the
    window gets one tile starting at ``max(end - window, 0)``.

    Args:
        start: first position of the span.
        end: one past its last position.
        window: window length ``W``.

    Returns:
        ``[(first, owns_from), ...]``, empty for an empty span.
    """
    out = []
    st = start
    while st < end:
        s0 = max(min(st, end - window), 0)
        out.append((s0, st))
        st = s0 + window
    return out


@torch.no_grad()
def answer_window_logits(
    backbone: Backbone,
    tokens: torch.Tensor,
    answer: torch.Tensor,
    window: int,
    draws: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows of whole-answer masks, as the backbone sees them when it decodes or is evaluated.

    For every sequence and draw a ratio ``t ~ U(0, 1)`` is drawn and
    ``round(t * n)`` (at least one) of the ``n`` answer tokens are masked
    *over the whole answer*; one backbone call gives the logits of every
    window tiling the answer (`answer_tiles`). Unlike `make_windows`, where
    only the window is masked and the rest of the answer is clean context,
    the backbone's context here is as uncertain as the window itself, as in
    the masked-diffusion objective, in the mask-ratio evaluation and during
    generation. The answer span ends after its first EOS (padding is left out).

    Args:
        backbone: the frozen denoiser.
        tokens: ``LongTensor[N, L]`` clean sequences (from `qa_token_matrix`).
        answer: ``BoolTensor[N, L]`` answer positions.
        window: window length ``W``.
        draws: mask draws per sequence.
        generator: random generator.
        batch_size: sequences per backbone call.
        progress: progress bar.

    Returns:
        ``(x0 [M, W], masked [M, W], logits [M, W, V])``: windows with at
        least one masked position (float32 logits, mask id at ``-inf``).

    Raises:
        ValueError: mismatched shapes, ``draws < 1`` or sequences shorter than the window.
    """
    _check_answer_inputs(tokens, answer, window, draws)
    xs, ms, ls = [], [], []
    for x, m, lg in _answer_window_batches(backbone, tokens, answer, window, draws, generator, batch_size, progress):
        xs.append(x)
        ms.append(m)
        ls.append(lg)
    return torch.cat(xs), torch.cat(ms), torch.cat(ls)


@torch.no_grad()
def answer_window_topk(
    backbone: Backbone,
    tokens: torch.Tensor,
    answer: torch.Tensor,
    window: int,
    top_k: int,
    draws: int = 1,
    generator: torch.Generator | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`answer_window_logits` with the top-``k`` cut (`topk_with_target`) made batch by batch.

    Only ``[M, W, top_k + 1]`` values and ids are kept, never the ``[M, W, V]``
    logits: the memory grows with ``top_k`` instead of the vocabulary. The
    caches are allocated once for every tile of every draw (an upper bound on
    ``M``; windows without a masked position are dropped) and filled batch by
    batch, so no second copy is made when they are joined; the returned
    tensors are views of them. The
    windows, masks and random draws are those of `answer_window_logits` with
    the same generator, and the values and ids those of `topk_with_target` on
    its logits.

    Args:
        backbone, tokens, answer, window, draws, generator, batch_size, progress: as in `answer_window_logits`.
        top_k: candidates kept per position (plus the target's).

    Returns:
        ``(x0 [M, W], masked [M, W], values [M, W, top_k + 1], candidates [M, W, top_k + 1])``:
        float32 values (mask id at ``-inf``) and int64 token ids.

    Raises:
        ValueError: as `answer_window_logits`, or ``top_k`` not a positive int.
    """
    _check_answer_inputs(tokens, answer, window, draws)
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k: expected a positive int, got {top_k!r}")
    span = _answer_span(tokens, answer, getattr(backbone.tokenizer, "eos_id", None))
    cap = draws * _tile_count(span, window)  # every tile of every draw: an upper bound on M
    x0 = torch.empty(cap, window, dtype=torch.long)
    masked = torch.empty(cap, window, dtype=torch.bool)
    values = torch.empty(cap, window, top_k + 1, dtype=torch.float32)
    cand = torch.empty(cap, window, top_k + 1, dtype=torch.long)
    n = 0
    for x, m, lg in _answer_window_batches(backbone, tokens, answer, window, draws, generator, batch_size, progress):
        v, c = topk_with_target(lg, x, top_k)
        b = len(x)
        x0[n : n + b], masked[n : n + b], values[n : n + b], cand[n : n + b] = x, m, v, c
        n += b
    return x0[:n], masked[:n], values[:n], cand[:n]


def _tile_count(span: torch.Tensor, window: int) -> int:
    """Windows tiling the spans ``span [N, L]`` (`answer_tiles` of each row's first to last position)."""
    L = span.shape[1]
    starts = span.float().argmax(1).tolist()
    ends = torch.where(span.any(1), L - span.flip(1).float().argmax(1), 0).tolist()
    return sum(len(answer_tiles(a, b, window)) for a, b in zip(starts, ends, strict=True) if b > a)


def _check_answer_inputs(tokens: torch.Tensor, answer: torch.Tensor, window: int, draws: int) -> None:
    """Raises ValueError unless ``answer`` matches ``tokens [N, L]``, ``L >= window`` and ``draws >= 1``."""
    N, L = tokens.shape
    if tuple(answer.shape) != (N, L):
        raise ValueError(f"answer: expected BoolTensor[{N}, {L}] like tokens, got {tuple(answer.shape)}")
    if window > L:
        raise ValueError(f"tokens: sequences of length {L} are shorter than the window {window}")
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws: expected a positive int, got {draws!r}")


def _answer_window_batches(
    backbone: Backbone,
    tokens: torch.Tensor,
    answer: torch.Tensor,
    window: int,
    draws: int,
    generator: torch.Generator | None,
    batch_size: int,
    progress: bool | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One backbone call per ``batch_size`` sequences: ``(x0 [b, W], masked [b, W], logits [b, W, V])`` each.

    A tqdm bar counts the backbone batches (``progress=None``: on a terminal only).
    """
    N = tokens.shape[0]
    span = _answer_span(tokens, answer, getattr(backbone.tokenizer, "eos_id", None))
    seqs = torch.arange(N).repeat(draws)
    for s in tqdm(range(0, len(seqs), batch_size), desc="backbone logits", disable=progress is False, leave=False):
        r = seqs[s : s + batch_size]
        ids, sp = tokens[r], span[r]
        m = mask_exact_ratio(sp, torch.rand(len(r), generator=generator), generator)
        inp = torch.where(m, torch.full_like(ids, backbone.mask_token_id), ids)
        lg = backbone(inp.to(backbone.device)).float().cpu()
        lg[..., backbone.mask_token_id] = -math.inf
        rows, pos = _span_tiles(sp, window)
        mw = m[rows[:, None], pos]
        keep = mw.any(1)
        yield ids[rows[:, None], pos][keep], mw[keep], lg[rows[:, None], pos][keep]


def _answer_span(tokens: torch.Tensor, answer: torch.Tensor, eos: int | None) -> torch.Tensor:
    """``BoolTensor[N, L]``: the answer positions ``answer [N, L]`` up to and including the first EOS of each row."""
    N, L = tokens.shape
    span = answer.clone()
    if eos is not None:
        after = (tokens == eos) & answer
        first = torch.where(after.any(1), after.float().argmax(1), torch.full((N,), L - 1))
        span &= torch.arange(L)[None, :] <= first[:, None]
    return span


def _span_tiles(span: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows tiling each row's span (`answer_tiles`): ``(rows [M], positions [M, W])`` of ``span [b, L]``."""
    L = span.shape[1]
    rows_l, starts_l = [], []
    for i in range(span.shape[0]):
        idx = span[i].nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            continue
        for s0, _ in answer_tiles(int(idx[0]), int(idx[-1]) + 1, window):
            rows_l.append(i)
            starts_l.append(min(s0, L - window))
    rows = torch.tensor(rows_l, dtype=torch.long)
    return rows, torch.tensor(starts_l, dtype=torch.long)[:, None] + torch.arange(window)


def topk_with_target(logits: torch.Tensor, x0: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` logits plus the target token's logit as a ``k+1``-th candidate.

    Where the target is already among the top ``k`` the extra candidate gets
    ``-inf`` (no double counting), so the target always has a candidate and
    the conditional likelihood stays finite.

    Args:
        logits: ``FloatTensor[..., V]``.
        x0: ``LongTensor[...]`` targets.
        k: candidates.

    Returns:
        ``(values [..., k+1], candidates [..., k+1])``.
    """
    v, c = logits.topk(k, dim=-1)
    tv = logits.gather(-1, x0.unsqueeze(-1))
    inside = (c == x0.unsqueeze(-1)).any(-1, keepdim=True)
    tv = torch.where(inside, torch.full_like(tv, -math.inf), tv)
    return torch.cat([v, tv], -1), torch.cat([c, x0.unsqueeze(-1)], -1)


def conditional_nll(
    prior: CoDDPrior | None,
    x0: torch.Tensor,
    masked: torch.Tensor,
    logits: torch.Tensor,
    candidates: torch.Tensor | None = None,
    temperature: float = 1.0,
    batch_size: int = 256,
) -> torch.Tensor:
    """Per-window conditional NLL ``-log p_hat(x0_masked | ...)`` (``prior=None``: factorized backbone).

    Args:
        prior: the prior, or ``None`` for ``-sum_i log softmax(logits_i)(x0_i)``.
        x0: ``LongTensor[M, W]``.
        masked: ``BoolTensor[M, W]``.
        logits: ``FloatTensor[M, W, V]`` or ``[M, W, K]`` with ``candidates``.
        candidates: ``LongTensor[M, W, K]`` or ``None``.
        temperature: ``tau`` (the factorized NLL uses ``tau = 1``).
        batch_size: windows per pass.

    Returns:
        ``FloatTensor[M]`` NLL in nats (sum over the window's masked tokens).
    """
    out = []
    for s in range(0, len(x0), batch_size):
        xb, mb, lb = x0[s : s + batch_size], masked[s : s + batch_size], logits[s : s + batch_size]
        cb = None if candidates is None else candidates[s : s + batch_size]
        if prior is None:
            lp = torch.log_softmax(lb.double(), -1)
            if cb is None:
                t = lp.gather(-1, xb.unsqueeze(-1))[..., 0]
            else:
                t = torch.where(cb == xb.unsqueeze(-1), lp, torch.full_like(lp, -math.inf)).amax(-1)
            out.append(-torch.where(mb, t, torch.zeros_like(t)).sum(-1))
            continue
        with torch.no_grad():
            out.append(-_batch_ll(prior, xb, mb, lb, cb, temperature, grad=False).double())
    return torch.cat(out)


def mean_nll(nll: torch.Tensor, masked: torch.Tensor, weighting: str = "token") -> float:
    """Per-token NLL of windows under a `fit_prior` weighting.

    Args:
        nll: ``FloatTensor[M]`` per-window NLL (from `conditional_nll`).
        masked: ``BoolTensor[M, W]`` masked positions.
        weighting: ``"token"`` (summed NLL over masked tokens) or
            ``"window"`` (mean of each window's per-token NLL).

    Returns:
        The NLL per masked token.
    """
    n = masked.sum(1).to(nll.device)
    if weighting == "window":
        return float((nll[n > 0] / n[n > 0]).mean())
    return float(nll.sum() / n.sum())


def _batch_ll(
    prior: CoDDPrior,
    x0: torch.Tensor,
    masked: torch.Tensor,
    logits: torch.Tensor,
    candidates: torch.Tensor | None,
    temperature: float,
    grad: bool,
) -> torch.Tensor:
    dev = prior.device
    x0, masked, logits = x0.to(dev), masked.to(dev), logits.to(dev)
    if candidates is None and prior.top_k is None:
        return prior.log_prob(x0, logits, masked, temperature, requires_grad=grad)
    if candidates is None:
        logits, candidates = topk_with_target(logits, x0, prior.top_k)
    x0, masked, w, cand = prior.evidence(x0, logits, masked, temperature, candidates)
    return prior.conditional_ll(x0, masked, w, cand, detach=not grad)


# ----------------------------------------------------------------------------------------- fit_prior
@dataclass(frozen=True)
class PriorTrainConfig:
    """The settings of `fit_prior` (each may also be passed to `fit_prior` as a keyword).

    Attributes:
        epochs: passes over the training windows.
        batch_size: windows per Adam step.
        lr: Adam learning rate (on the circuit's logits).
        temperature: ``tau`` used in training.
        valid_frac: share of windows held out for the per-epoch NLL (0: report the train NLL).
        em_epochs: epochs of full-batch `pcircuits.em` on the training windows' clean tokens first.
        checkpoint: file path; the prior with the best held-out NLL is saved there (`CoDDPrior.save`, atomic).
        seed: seed of the split and the shuffling.
        progress: tqdm progress bar (``None``: on a terminal only).
        callback: called as ``callback(epoch, nll)`` after every epoch.
        weighting: ``"token"`` or ``"window"`` (see `fit_prior`); the same
            weighting defines the held-out NLL that picks the checkpoint.
        distributed: data-parallel over ``torch.distributed`` (see
            `fit_prior`; ``None``: when a group of several ranks is initialised).
        optimizer: ``"adam"`` or ``"anemone"`` (the conditional update of
            `pcircuits.learning.anemone_step`, single-process; ``lr`` is then its
            step size in ``(0, 1]``, and each batch builds ``[batch_size, W, V]``
            dense soft evidence).

    Raises:
        ValueError: an unknown ``weighting`` or ``optimizer``, ``valid_frac``
            outside ``[0, 1)``, or ``lr`` outside ``(0, 1]`` with Anemone.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    temperature: float = 1.0
    valid_frac: float = 0.1
    em_epochs: int = 0
    checkpoint: str | Path | None = None
    seed: int = 0
    progress: bool | None = None
    callback: Callable[[int, float], None] | None = None
    weighting: str = "token"
    distributed: bool | None = None
    optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.weighting not in ("token", "window"):
            raise ValueError(f"weighting: expected 'token' or 'window', got {self.weighting!r}")
        if self.optimizer not in ("adam", "anemone"):
            raise ValueError(f"optimizer: expected 'adam' or 'anemone', got {self.optimizer!r}")
        if self.optimizer == "anemone" and not 0.0 < self.lr <= 1.0:
            raise ValueError(f"lr: Anemone's step size must lie in (0, 1], got {self.lr!r}")
        if not 0.0 <= self.valid_frac < 1.0:
            raise ValueError(f"valid_frac: expected a value in [0, 1), got {self.valid_frac}")


@dataclass(frozen=True)
class _Windows:
    """Training windows.

    Attributes:
        x0: ``LongTensor[M, W]``; masked: ``BoolTensor[M, W]``; logits:
        ``FloatTensor[M, W, V]`` or ``[M, W, K]``; candidates: ``LongTensor[M, W, K]`` or None.
    """

    x0: torch.Tensor
    masked: torch.Tensor
    logits: torch.Tensor
    candidates: torch.Tensor | None

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The windows ``idx [b]``: ``(x0, masked, logits, candidates)``."""
        cand = None if self.candidates is None else self.candidates[idx]
        return self.x0[idx], self.masked[idx], self.logits[idx], cand


def _check_fit_inputs(prior: CoDDPrior, data: _Windows) -> None:
    x0, masked, logits = data.x0, data.masked, data.logits
    if tuple(masked.shape) != tuple(x0.shape) or logits.shape[:2] != x0.shape:
        raise ValueError("x0, masked and logits must agree on [M, W]")
    if x0.shape[1] != prior.window:
        raise ValueError(f"x0: windows of length {x0.shape[1]}, the prior's window is {prior.window}")
    if data.candidates is None and logits.shape[-1] != prior.vocab_size:
        raise ValueError(f"logits: vocabulary {logits.shape[-1]}, the prior's is {prior.vocab_size}")
    if not bool(masked.any()):
        raise ValueError("masked: no masked position to learn from")
    if prior.backoff is not None:
        raise ValueError(
            "prior: has backoff weights; train the circuit first (prior.set_backoff(None)), then fit_backoff"
        )


def _split(m: int, valid_frac: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(held-out [n_val], train [m - n_val])`` window indices of a random split."""
    perm = torch.randperm(m, generator=generator)
    n_val = int(round(valid_frac * m)) if valid_frac > 0 else 0
    return perm[:n_val], perm[n_val:]


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    for s in range(0, n, batch_size):
        yield perm[s : s + batch_size]


def _denominator(mb: torch.Tensor, weighting: str) -> torch.Tensor:
    """The normaliser of a batch's loss: its masked tokens (``"token"``) or its windows with a mask (``"window"``)."""
    if weighting == "window":
        return (mb.sum(1) > 0).sum().clamp_min(1)
    return mb.sum().clamp_min(1)


def _batch_loss(ll: torch.Tensor, mb: torch.Tensor, denominator: torch.Tensor, weighting: str) -> torch.Tensor:
    """Loss of windows with log-likelihoods ``ll [b]`` and masks ``mb [b, W]``, over a given normaliser.

    ``"token"``: ``-sum(ll) / denominator`` (masked tokens of the whole batch);
    ``"window"``: ``-sum(ll / n) / denominator`` (windows of the whole batch with ``n > 0`` masks).
    """
    ll = torch.where(torch.isfinite(ll), ll, torch.zeros_like(ll))
    if weighting == "window":
        return -(ll / mb.sum(1).to(ll.device).clamp_min(1)).sum() / denominator
    return -ll.sum() / denominator


def _anemone_batch(
    prior: CoDDPrior,
    x0: torch.Tensor,
    masked: torch.Tensor,
    logits: torch.Tensor,
    candidates: torch.Tensor | None,
    temperature: float,
    step_size: float,
    weighting: str,
) -> None:
    """One Anemone step of the conditional objective on windows ``x0 [B, W]`` (dense ``[B, W, V]`` soft evidence)."""
    dev = prior.device
    x0, masked, logits = x0.to(dev), masked.to(dev), logits.to(dev)
    if candidates is None and prior.top_k is not None:
        logits, candidates = topk_with_target(logits, x0, prior.top_k)
    x0, masked, w, cand = prior.evidence(x0, logits, masked, temperature, candidates)
    if cand is not None:  # -inf off the candidates; amax keeps the target's value when it is listed twice
        full = torch.full((*w.shape[:2], prior.vocab_size), -math.inf, dtype=w.dtype, device=dev)
        w = full.scatter_reduce(-1, cand, w, "amax")
    w = torch.where(masked.unsqueeze(-1), w, torch.zeros_like(w))
    n = masked.sum(1).to(w.dtype)
    weights = None if weighting == "token" else torch.where(n > 0, 1 / n.clamp_min(1), torch.zeros_like(n))
    pc.learning.anemone_step(
        prior.circuit, x0, masked, w, step_size=step_size, objective="conditional", weights=weights
    )


def _adam_step(
    prior: CoDDPrior, opt: torch.optim.Optimizer, data: _Windows, rows: torch.Tensor, cfg: PriorTrainConfig, on: bool
) -> None:
    """One Adam step on the windows ``rows [b]`` (the same on every rank).

    Data-parallel (``on``), this rank differentiates the loss of its share of
    ``rows`` scaled by the whole batch's normaliser, and the gradients are
    summed over ranks, so every rank takes the single-process step of the
    whole batch.
    """
    denominator = _denominator(data.masked[rows], cfg.weighting)
    mine = rows[pdist.shard(len(rows), pdist.rank(), pdist.world_size())] if on else rows
    opt.zero_grad()
    if len(mine):  # a rank with no window of this batch contributes no gradient
        xb, mb, lb, cb = data.take(mine)
        ll = _batch_ll(prior, xb, mb, lb, cb, cfg.temperature, grad=True)
        _batch_loss(ll, mb, denominator.to(ll.device), cfg.weighting).backward()
    if on:
        pdist.all_reduce_gradients(prior.circuit.parameters())
    opt.step()


def _heldout_nll(prior: CoDDPrior, data: _Windows, rows: torch.Tensor, cfg: PriorTrainConfig, on: bool) -> float:
    """`mean_nll` of the windows ``rows`` (sharded over ranks and all-reduced when ``on``)."""
    batch_size = max(cfg.batch_size, 256)
    if on:
        return _sharded_mean_nll(prior, data, rows, cfg.temperature, batch_size, cfg.weighting)
    xb, mb, lb, cb = data.take(rows)
    return mean_nll(conditional_nll(prior, xb, mb, lb, cb, cfg.temperature, batch_size=batch_size), mb, cfg.weighting)


def _sharded_mean_nll(
    prior: CoDDPrior, data: _Windows, rows: torch.Tensor, temperature: float, batch_size: int, weighting: str
) -> float:
    """`mean_nll` of the windows ``rows [b]``, each rank scoring its share and the sums all-reduced."""
    mine = rows[pdist.shard(len(rows), pdist.rank(), pdist.world_size())]
    sums = torch.zeros(2, dtype=torch.float64, device=pdist.control_device())
    if len(mine):
        xb, mb, lb, cb = data.take(mine)
        nll = conditional_nll(prior, xb, mb, lb, cb, temperature, batch_size=batch_size)
        n = mb.sum(1).to(nll.device, torch.float64)
        if weighting == "window":
            sums[0], sums[1] = (nll[n > 0] / n[n > 0]).sum(), (n > 0).sum()
        else:
            sums[0], sums[1] = nll.sum(), n.sum()
    pdist.all_reduce_sum([sums])
    return float(sums[0] / sums[1])


def _initialise(prior: CoDDPrior, x0_train: torch.Tensor, cfg: PriorTrainConfig, on: bool) -> None:
    """EM on the clean training windows ``x0_train [m, W]`` (``em_epochs > 0``); rank 0's parameters everywhere."""
    if cfg.em_epochs > 0:
        pc.em(prior.circuit, x0_train.to(prior.device), epochs=cfg.em_epochs, progress=False, distributed=on)
    if on:
        pdist.broadcast_tensors(prior.circuit.parameters())


def _keep_best(prior: CoDDPrior, nll: float, best: float, cfg: PriorTrainConfig, on: bool) -> float:
    """Saves the prior at ``cfg.checkpoint`` when ``nll`` beats ``best`` (one writer); returns the new best."""
    if cfg.checkpoint is not None and nll < best:
        with pdist.rank_zero_writes(on) as writer:  # one writer; the other ranks wait
            if writer:
                prior.save(cfg.checkpoint)
    return min(best, nll)


def fit_prior(
    prior: CoDDPrior,
    x0: torch.Tensor,
    masked: torch.Tensor,
    logits: torch.Tensor,
    config: PriorTrainConfig | None = None,
    *,
    candidates: torch.Tensor | None = None,
    **settings: Any,
) -> list[float]:
    """Fits ``prior`` to maximise ``log p_hat(x0_masked | observed, logits)`` with Adam or Anemone.

    Two weightings of the windows in the objective:

    * ``"token"``: the sum of the windows' conditional log-likelihoods over
      the number of masked tokens, so each masked token counts once and
      windows with many masks (high mask ratios) dominate;
    * ``"window"``: the mean of each window's per-token conditional
      log-likelihood, so every window counts once whatever its mask ratio.
      With windows masked at ratio ``t`` this is the ``1/t`` weighting of the
      masked-diffusion ELBO (up to the constant window length), and it keeps
      low mask ratios, where the backbone alone is already sharp, from being
      traded for gains at high ones.

    Data-parallel (``distributed``, see `pcircuits.distributed`): every rank
    passes the same windows; each computes the loss of its share of every
    batch (scaled by the whole batch's normaliser) and the gradients are
    summed over ranks before each Adam step, so the steps are the
    single-process ones; the held-out NLL is sharded too, and only rank 0
    writes ``checkpoint``.

    Phases: check the inputs, split off the held-out windows, initialise
    (EM, broadcast), then per epoch the Adam steps, the held-out NLL, the
    checkpoint and the callback.

    Args:
        prior: the prior (trained in place).
        x0: ``LongTensor[M, W]`` clean windows.
        masked: ``BoolTensor[M, W]`` masked positions of each window.
        logits: ``FloatTensor[M, W, V]`` cached backbone logits, or
            ``[M, W, K]`` values of ``candidates``.
        config: the settings (`PriorTrainConfig`; default ``PriorTrainConfig()``).
        candidates: ``LongTensor[M, W, K]`` token ids of ``logits`` (top-``k`` caches).
        **settings: fields of `PriorTrainConfig` (``epochs``, ``batch_size``,
            ``lr``, ``temperature``, ``valid_frac``, ``em_epochs``,
            ``checkpoint``, ``seed``, ``progress``, ``callback``,
            ``weighting``, ``distributed``, ``optimizer``), overriding those of ``config``.

    Returns:
        Held-out (or train) conditional NLL per masked token (``"token"``) or
        mean per-window NLL per masked token (``"window"``), one value per epoch.

    Raises:
        TypeError: ``config`` not a `PriorTrainConfig` or a keyword that is not a setting.
        ValueError: mismatched shapes, ``valid_frac`` outside ``[0, 1)``,
            nothing masked, an unknown ``weighting``, or a prior with backoff weights.
    """
    cfg = with_overrides(PriorTrainConfig, config, settings, "fit_prior")
    data = _Windows(x0, masked, logits, candidates)
    _check_fit_inputs(prior, data)
    gen = torch.Generator().manual_seed(cfg.seed)
    val, tr = _split(x0.shape[0], cfg.valid_frac, gen)
    on = pdist.active(cfg.distributed)
    if on and cfg.optimizer != "adam":
        raise ValueError(f"optimizer: data-parallel training supports 'adam' only, got {cfg.optimizer!r}")
    _initialise(prior, x0[tr], cfg, on)
    opt = torch.optim.Adam(prior.circuit.parameters(), lr=cfg.lr) if cfg.optimizer == "adam" else None
    history: list[float] = []
    best = math.inf
    bar = tqdm(range(cfg.epochs), desc="prior epochs", disable=cfg.progress is False or pdist.rank(on) != 0)
    for ep in bar:
        for idx in _batches(len(tr), cfg.batch_size, gen):
            if opt is None:
                _anemone_batch(prior, *data.take(tr[idx]), cfg.temperature, cfg.lr, cfg.weighting)
            else:
                _adam_step(prior, opt, data, tr[idx], cfg, on)
        nll = _heldout_nll(prior, data, val if len(val) else tr, cfg, on)
        history.append(nll)
        bar.set_postfix(nll=f"{nll:.4f}")
        best = _keep_best(prior, nll, best, cfg, on)
        if cfg.callback is not None:
            cfg.callback(ep, nll)
    return history


def qa_token_matrix(examples: list, tokenizer: object, max_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[N, L]`` token matrix of ``prompt + answer`` and the answer mask (maskable positions).

    Args:
        examples: `diffusion.QAExample` pairs.
        tokenizer: the backbone's tokenizer (a `diffusion.tokenizers.TextTokenizer`).
        max_length: maximal length.

    Returns:
        ``(tokens [N, L], answer [N, L])``; padding uses the tokenizer's EOS
        id and counts as answer (the backbone is trained to fill it).
    """
    from ..data import encode_qa

    enc = encode_qa(examples, tokenizer, max_length)
    L = max(len(e.prompt) + len(e.target) for e in enc)
    tokens = torch.full((len(enc), L), tokenizer.eos_id, dtype=torch.long)
    answer = torch.zeros(len(enc), L, dtype=torch.bool)
    for i, e in enumerate(enc):
        p = len(e.prompt)
        tokens[i, :p] = torch.tensor(e.prompt)
        tokens[i, p : p + len(e.target)] = torch.tensor(e.target)
        answer[i, p:] = True
    return tokens, answer


@contextlib.contextmanager
def _torchrun_group() -> Iterator[None]:
    """The default process group for the block, when started by ``torchrun`` with several processes.

    A group this creates is destroyed when the block ends, after every rank
    has finished it (a barrier on success), so no rank tears down gloo while
    another still uses it; leaving that to interpreter exit could abort a
    rank ("terminate called without an active exception").
    """
    started = int(os.environ.get("WORLD_SIZE", "1")) > 1 and pdist.init()
    try:
        yield
        if started:
            torch.distributed.barrier()
    finally:
        if started:
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------- train_prior_cli
@dataclass(frozen=True)
class PriorJobConfig:
    """The settings of `train_prior_cli` (``codd train-prior``; each may also be passed as a keyword).

    Attributes:
        window: window length ``W`` of the prior.
        states: hidden states of its HMM.
        num_windows: windows drawn (``mask_scope="window"``).
        top_k: candidates kept per position (None: the whole vocabulary).
        examples: use the first N QA pairs (None: all).
        mask_scope: ``"window"`` (`make_windows`) or ``"answer"`` (`answer_window_logits`).
        draws: whole-answer mask draws per QA pair (``mask_scope="answer"``).
        backoff_bins: mask-ratio bins of the backoff weights (0: none).
        trust_remote_code: passed to `diffusion.backbones.load_backbone`.
        device: the backbone's device (its logits are cached on the CPU).
        dtype: the backbone's parameter dtype (None: as saved).
        backbone_batch: sequences per backbone call when caching logits (bounds the ``[b, L, V]`` logits
            of one call).
        epochs, batch_size, lr, em_epochs, progress, weighting: those of `PriorTrainConfig`.
        seed: seed of the data split, the windows, the prior's initialisation and the training.

    Raises:
        ValueError: an unknown ``mask_scope`` or ``weighting``.
    """

    window: int = 16
    states: int = 64
    num_windows: int = 2000
    top_k: int | None = 64
    examples: int | None = None
    mask_scope: str = "window"
    draws: int = 4
    backoff_bins: int = 0
    trust_remote_code: bool = False
    device: str = "cpu"
    dtype: torch.dtype | None = None
    backbone_batch: int = 32
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    em_epochs: int = 0
    seed: int = 0
    progress: bool | None = None
    weighting: str = "token"

    def __post_init__(self) -> None:
        if self.mask_scope not in ("window", "answer"):
            raise ValueError(f"mask_scope: expected 'window' or 'answer', got {self.mask_scope!r}")
        if self.weighting not in ("token", "window"):
            raise ValueError(f"weighting: expected 'token' or 'window', got {self.weighting!r}")
        if isinstance(self.backbone_batch, bool) or not isinstance(self.backbone_batch, int) or self.backbone_batch < 1:
            raise ValueError(f"backbone_batch: expected a positive int, got {self.backbone_batch!r}")

    def train_config(self, checkpoint: str | Path) -> PriorTrainConfig:
        """The `fit_prior` settings of this job, saving the best prior at ``checkpoint``."""
        return PriorTrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, em_epochs=self.em_epochs,
            checkpoint=checkpoint, seed=self.seed, progress=self.progress, weighting=self.weighting,
        )


def _load_qa(data: str, examples: int | None) -> list:
    """QA pairs of ``data``: ``"gsm8k"`` (the train split), a GSM8K folder, or a JSONL file."""
    from ..data import load_gsm8k, read_jsonl_qa

    if data == "gsm8k":
        return load_gsm8k("train", limit=examples)
    if Path(data).is_dir():
        return load_gsm8k("train", data, limit=examples)
    return read_jsonl_qa(data)[:examples]


def _hold_out(qa: list, job: PriorJobConfig, generator: torch.Generator) -> tuple[list, list]:
    """``(held-out, training)`` QA pairs: 10% held out for the backoff weights when ``backoff_bins > 0``."""
    if not job.backoff_bins:
        return [], qa
    perm = torch.randperm(len(qa), generator=generator).tolist()
    n_held = max(1, round(0.1 * len(qa)))
    return [qa[i] for i in perm[:n_held]], [qa[i] for i in perm[n_held:]]


def _qa_windows(
    backbone: Backbone,
    qa: tuple[torch.Tensor, torch.Tensor],
    n: int,
    job: PriorJobConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(x0 [M, W], masked [M, W], logits [M, W, V or K], candidates [M, W, K] or None)`` of ``qa``.

    ``qa`` is ``(tokens [N, L], answer [N, L])`` from `qa_token_matrix`. With
    ``job.top_k`` the cut is made batch by batch inside the backbone loop, so
    no ``[M, W, V]`` tensor is ever kept (`prior_cache_bytes`).
    """
    tokens, answer = qa
    if job.mask_scope == "window":
        rows, starts, masked = make_windows(tokens, job.window, answer, n, generator)
        x0, logits, cand = backbone_window_logits(
            backbone, tokens, rows, starts, masked, batch_size=job.backbone_batch, top_k=job.top_k,
            progress=job.progress,
        )
        return x0, masked, logits, cand
    if job.top_k is None:
        x0, masked, logits = answer_window_logits(
            backbone, tokens, answer, job.window, job.draws, generator, batch_size=job.backbone_batch,
            progress=job.progress,
        )
        return x0, masked, logits, None
    return answer_window_topk(
        backbone, tokens, answer, job.window, job.top_k, job.draws, generator, batch_size=job.backbone_batch,
        progress=job.progress,
    )


def prior_cache_bytes(windows: int, window: int, top_k: int | None, vocab_size: int) -> int:
    """Bytes of the window caches `train_prior_cli` keeps for ``windows`` windows of length ``window``.

    Per position: the target (int64) and its mask flag (bool), plus either
    ``top_k + 1`` float32 values and their int64 token ids, or (``top_k=None``)
    all ``vocab_size`` float32 logits.

    Args:
        windows: cached windows ``M``.
        window: window length ``W``.
        top_k: candidates per position, or None for the whole vocabulary.
        vocab_size: the backbone's vocabulary ``V``.

    Returns:
        ``M * W * (9 + 12 * (top_k + 1))`` or ``M * W * (9 + 4 * V)``.

    Raises:
        ValueError: a negative ``windows`` or a non-positive ``window``, ``top_k`` or ``vocab_size``.
    """
    if windows < 0:
        raise ValueError(f"windows: expected a non-negative int, got {windows!r}")
    for name, val in (("window", window), ("vocab_size", vocab_size), ("top_k", 1 if top_k is None else top_k)):
        if val < 1:
            raise ValueError(f"{name}: expected a positive int, got {val!r}")
    per_pos = 8 + 1 + (4 * vocab_size if top_k is None else (top_k + 1) * (4 + 8))
    return windows * window * per_pos


def _count_windows(backbone: Backbone, qa: tuple[torch.Tensor, torch.Tensor], n: int, job: PriorJobConfig) -> int:
    """Windows `_qa_windows` caches for ``qa`` (answer scope: an upper bound, all tiles of every draw)."""
    tokens, answer = qa
    if job.mask_scope == "window" or tokens.shape[0] == 0:
        return n
    span = _answer_span(tokens, answer, getattr(backbone.tokenizer, "eos_id", None))
    return job.draws * _tile_count(span, job.window)


def _memory_estimate(backbone: Backbone, windows: int, length: int, job: PriorJobConfig) -> str:
    """One line: the caches kept for ``windows`` windows, the backbone's parameters and one backbone batch."""
    gib = 1024**3
    k = "V" if job.top_k is None else f"K={job.top_k + 1}"
    cache = prior_cache_bytes(windows, job.window, job.top_k, backbone.vocab_size)
    params = getattr(backbone, "parameters", None)
    weights = sum(p.numel() * p.element_size() for p in params()) if callable(params) else 0
    batch = job.backbone_batch * length * backbone.vocab_size * 4  # float32 logits of one backbone call
    return (
        f"train-prior: estimated memory kept: {windows} windows x W={job.window} x {k} = {cache / gib:.2f} GiB "
        f"of window caches, backbone {weights / gib:.2f} GiB, {batch / gib:.2f} GiB per backbone batch"
    )


def _fit_saved_backoff(
    backbone: Backbone,
    output: str,
    held: tuple[torch.Tensor, torch.Tensor],
    n: int,
    job: PriorJobConfig,
    generator: torch.Generator,
) -> list[float]:
    """Fits the backoff weights of the prior saved at ``output`` on ``n`` windows of ``held`` and saves it again.

    ``held`` is ``(tokens, answer)`` from `qa_token_matrix`. One reader and
    writer (rank 0); the weights are broadcast to the other ranks.
    """
    on = pdist.active(None)
    backoff = None
    with pdist.rank_zero_writes(on) as writer:  # the other ranks wait
        if writer:
            prior = CoDDPrior.load(output, job.top_k)  # the best held-out epoch
            hx, hm, hl, hc = _qa_windows(backbone, held, n, job, generator)
            backoff = prior.fit_backoff(hx, hl, hm, bins=job.backoff_bins, candidates=hc)
            prior.save(output)
    if on:
        backoff = pdist.broadcast_object(backoff)
    return backoff


def train_prior_cli(
    model: str, data: str, output: str, config: PriorJobConfig | None = None, **settings: Any
) -> dict:
    """``codd train-prior``: windows of QA answers, cached backbone logits, `fit_prior`, a saved prior.

    ``mask_scope="window"`` draws ``num_windows`` windows with `make_windows`;
    ``"answer"`` masks whole answers ``draws`` times each and keeps every
    window tiling them (`answer_window_logits`). With ``backoff_bins > 0``,
    10% of the QA pairs are set aside before any window is drawn, and the
    best circuit's backoff weights (`CoDDPrior.fit_backoff`) are fitted on
    their windows (answers the circuit never saw) and saved in the same file.
    ``trust_remote_code`` is passed to `load_backbone`.

    Started by ``torchrun`` with several processes (``WORLD_SIZE > 1``), it
    initialises the default process group (`pcircuits.distributed.init`, kept
    until the interpreter exits) unless one exists, and trains data-parallel
    (`fit_prior`); every rank caches the same windows' logits, rank 0 alone
    fits the backoff and writes ``output``.

    Args:
        model: a saved backbone with a tokenizer: the project's, or a Hugging
            Face one (encoded through `diffusion.tokenizers.HFTokenizer`, chat
            template included).
        data: ``"gsm8k"``, a GSM8K folder or a JSONL file of QA pairs.
        output: the prior: a checkpoint directory (`CoDDPrior.save_pretrained`,
            recording the backbone's vocabulary and mask id and these settings)
            when it has no file suffix, else one file (`CoDDPrior.save`).
        config: the settings (`PriorJobConfig`; default ``PriorJobConfig()``).
        **settings: fields of `PriorJobConfig`, overriding those of ``config``.

    Returns:
        ``{"output": ..., "heldout_nll": [...], "backoff": [...] or None}``.

    Raises:
        TypeError: ``config`` not a `PriorJobConfig` or a keyword that is not a setting.
        ValueError: a bad setting, or a model without a tokenizer.
    """
    job = with_overrides(PriorJobConfig, config, settings, "train_prior_cli")
    with _torchrun_group():
        return _train_prior_job(model, data, output, job)


def _train_prior_job(model: str | Path, data: str, output: str | Path, job: PriorJobConfig) -> dict:
    """`train_prior_cli`'s work once the settings are checked (and the process group, if any, is up)."""
    backbone = load_backbone(model, device=job.device, dtype=job.dtype, trust_remote_code=job.trust_remote_code)
    if backbone.tokenizer is None:
        raise ValueError(f"model: {model} has no tokenizer; QA text cannot be encoded")
    backbone.tokenizer = as_text_tokenizer(backbone.tokenizer)
    qa = _load_qa(data, job.examples)
    g = torch.Generator().manual_seed(job.seed)
    held, qa = _hold_out(qa, job, g)
    n_held = max(1, round(job.num_windows * len(held) / len(qa))) if held else 0
    train_qa = qa_token_matrix(qa, backbone.tokenizer)
    held_qa = qa_token_matrix(held, backbone.tokenizer) if held else None
    if pdist.rank(pdist.active(None)) == 0:  # the estimate prints with or without progress bars
        windows = _count_windows(backbone, train_qa, job.num_windows, job)
        windows += _count_windows(backbone, held_qa, n_held, job) if held_qa is not None else 0
        print(_memory_estimate(backbone, windows, train_qa[0].shape[1], job), file=sys.stderr, flush=True)
    x0, masked, logits, cand = _qa_windows(backbone, train_qa, job.num_windows, job, g)
    prior = CoDDPrior.hmm(job.window, job.states, backbone.vocab_size, seed=job.seed, top_k=job.top_k)
    with _best_file(output) as best:
        hist = fit_prior(prior, x0, masked, logits, job.train_config(best), candidates=cand)
        backoff = None
        if held_qa is not None:
            backoff = _fit_saved_backoff(backbone, best, held_qa, n_held, job, g)
        if best != output:
            _write_checkpoint(best, output, backbone, job, data)
    return {"output": str(output), "heldout_nll": hist, "backoff": backoff}


def is_checkpoint_output(output: str | Path) -> bool:
    """Whether ``codd train-prior --output`` names a checkpoint directory (no file suffix) or a single file."""
    return Path(output).suffix == ""


@contextlib.contextmanager
def _best_file(output: str | Path) -> Iterator[str | Path]:
    """Where `fit_prior` keeps the best prior: ``output`` itself for a file, a temporary file for a directory."""
    if not is_checkpoint_output(output):
        yield output
        return
    parent = Path(output).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{Path(output).name}.", suffix=".train", dir=parent) as tmp:
        yield os.path.join(tmp, "best.safetensors")


def _write_checkpoint(best: str | Path, output: str | Path, backbone: Backbone, job: PriorJobConfig, data: str) -> None:
    """Writes the prior saved at ``best`` as the checkpoint directory ``output`` (one writer)."""
    on = pdist.active(None)
    with pdist.rank_zero_writes(on) as writer:
        if writer:
            settings = {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
            settings["dtype"] = None if job.dtype is None else str(job.dtype).removeprefix("torch.")
            settings["data"] = str(data)
            CoDDPrior.load(best, job.top_k).save_pretrained(output, backbone=backbone, training=settings)
