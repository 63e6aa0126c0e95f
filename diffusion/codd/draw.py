"""CoDD inside the denoising loop: `CoDDDraw`, the `JointDraw` built by ``generate(prior=...)``.

At every step of `diffusion.generate` with a prior:

1. **Scoring** (`CoDDDraw.rescore`): the active block is covered by prior
   windows (one window when the block is at most ``W`` long, placed to end at
   the block's end so that earlier tokens are observed context, but never
   starting before the row's first real token; ``ceil(L / W)`` tiles
   otherwise). In every window whose mask ratio (masked positions of
   the block in the window over block positions in the window) is at most
   ``pc_frac`` (gamma, the adaptive activation), the masked positions get a
   *joint* proposal from ``p_hat`` (``sampler``; the MPE of ``p_hat`` with
   greedy decoding, ``temperature=0``) and the remasking confidence is
   computed from the prior's exact marginals of ``p_hat`` instead of the
   backbone's factorized ones. Other windows keep the factorized proposal
   and confidence. ``sampler="latent_tempered"`` is the official CoDD
   code's step instead: one latent path is drawn under the tau-tempered
   evidence (`CoDDPrior.path_conditionals`), each position's token
   distribution given that path, ``E_{z_i} q_i^tau`` normalised, replaces
   its logits, the proposal is drawn from it at the generation temperature
   (its argmax when greedy, so greedy output is random: the path is always
   drawn) and the confidence is computed from it. With an entropy bound
   (``generate(entropy_bound=...)``) the entropies of the active windows'
   masked positions also come from ``p_hat``'s exact marginals
   (`CoDDDraw.coupled_entropy`).
2. **Drawing** (`CoDDDraw.__call__`): the committed positions take the
   joint proposal (a subset of a joint sample is a sample of the subset's
   marginal). With a block longer than the window (full-sequence diffusion),
   the committed positions are re-drawn jointly in *dynamic* windows: the
   first committed position not yet covered opens a window of ``W``
   positions (shifted left to stay inside the block), repeated until every
   committed position is covered; the block's other masked positions in a
   window are marginalised under their logits, decoded ones are evidence.

Positions of a window outside the sequence, in a row's left padding or
after the block are marginalised (uniform soft evidence), which is exact for
a circuit. Windows are placed relative to each row's first real token, so a
row's windows hold the same tokens at the same window positions alone and in
a batch of longer prompts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..proposals import REMASKING_RULES, confidence_scores, logits_problem, sample_tokens
from .prior import SAMPLE_METHODS, CoDDPrior

__all__ = ["CoDDDraw", "check_codd_options"]


def check_codd_options(pc_frac: float, pc_temperature: float, sampler: str) -> None:
    """Validates ``generate``'s CoDD options.

    Raises:
        ValueError: ``pc_frac`` outside ``[0, 1]``, ``pc_temperature <= 0`` or
            not finite, or an unknown ``sampler``.
    """
    if isinstance(pc_frac, bool) or not isinstance(pc_frac, (int, float)) or not 0.0 <= pc_frac <= 1.0:
        raise ValueError(f"pc_frac: expected gamma in [0, 1], got {pc_frac!r}")
    if (
        isinstance(pc_temperature, bool)
        or not isinstance(pc_temperature, (int, float))
        or not math.isfinite(pc_temperature)
        or pc_temperature <= 0
    ):
        raise ValueError(f"pc_temperature: expected tau > 0, got {pc_temperature!r}")
    if sampler not in SAMPLE_METHODS:
        raise ValueError(f"sampler: unknown sampler {sampler!r}; expected one of {', '.join(SAMPLE_METHODS)}")


class CoDDDraw:
    """The CoDD `diffusion.proposals.JointDraw` (see the module docstring).

    Args:
        prior: the prior (its vocabulary must equal the backbone's).
        vocab_size: the backbone's vocabulary.
        pc_frac: gamma in ``[0, 1]``: the prior is used in a window whose mask ratio is ``<= gamma``.
        pc_temperature: tau > 0 of ``p_hat``.
        sampler: ``"latent"``, ``"latent_tempered"``, ``"exact"`` or ``"any_order"``.
        temperature: the generation temperature; 0 means greedy (the MPE of
            ``p_hat``; with ``"latent_tempered"`` the argmax given a drawn
            path), any other value samples ``p_hat`` (tau is
            ``pc_temperature``; with ``"latent_tempered"`` each token is drawn
            from its path conditional at this temperature).
        remasking: the remasking rule (its confidence is computed from
            ``p_hat``'s marginals; from the path conditionals with ``"latent_tempered"``).
        generator: random generator.
        entropy: also compute the entropies of ``p_hat``'s marginals at every
            `rescore` (for `coupled_entropy`).

    Attributes:
        prior_calls: windows the prior was evaluated on.
        active_steps: steps in which at least one window used the prior.

    Raises:
        ValueError: see `check_codd_options`, a bad ``temperature`` or
            ``remasking``, or a vocabulary mismatch.
    """

    def __init__(
        self,
        prior: CoDDPrior,
        vocab_size: int,
        pc_frac: float = 1.0,
        pc_temperature: float = 1.0,
        sampler: str = "latent",
        temperature: float = 1.0,
        remasking: str = "low_confidence",
        generator: torch.Generator | None = None,
        entropy: bool = False,
    ):
        check_codd_options(pc_frac, pc_temperature, sampler)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature >= 0
        ):
            raise ValueError(f"temperature: expected a finite number >= 0 (0: greedy), got {temperature!r}")
        if remasking not in REMASKING_RULES:
            raise ValueError(f"remasking: unknown rule {remasking!r}; expected one of {', '.join(REMASKING_RULES)}")
        if not isinstance(prior, CoDDPrior):
            raise ValueError(f"prior: expected a CoDDPrior, got {type(prior).__name__}")
        if prior.vocab_size != vocab_size:
            raise ValueError(f"prior: vocabulary {prior.vocab_size} does not match the backbone's {vocab_size}")
        self.prior = prior
        self.gamma = float(pc_frac)
        self.tau = float(pc_temperature)
        self.sampler = sampler
        self.temperature = temperature
        self.remasking = remasking
        self.generator = generator
        self.entropy = bool(entropy)
        self._entropy: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.prior_calls = 0
        self.active_steps = 0
        self._proposal: torch.Tensor | None = None
        self._block: tuple[int, int] = (0, 0)
        self._mask_id = -1
        self._first: torch.Tensor | None = None

    # ----------------------------------------------------------- windows
    def _window_inputs(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        rows: torch.Tensor,
        starts: torch.Tensor,
        lo: int,
        hi: int,
        mask_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prior inputs of windows ``(rows [M], starts [M])``.

        Positions past the sequence, in the row's left padding (before
        ``self._first[row]``) or after the block are marginalised.

        Returns:
            ``(xw [M, W], lw [M, W, V], mw [M, W], pos [M, W], in_blk [M, W])``.
        """
        W = self.prior.window
        N = x.shape[1]
        pos = starts[:, None] + torch.arange(W, device=x.device)  # [M, W]
        first = self._first[rows] if self._first is not None else torch.zeros_like(rows)
        inside = (pos < N) & (pos >= first[:, None])
        pc = pos.clamp(max=N - 1)
        xw = x[rows[:, None], pc]
        lw = logits[rows[:, None], pc].to(self.prior.dtype)
        in_blk = inside & (pos >= lo) & (pos < hi)
        pad = ~inside | (pos >= hi)
        masked = (xw == mask_id) & in_blk
        mw = masked | pad
        lw = torch.where(pad.unsqueeze(-1), torch.zeros_like(lw), lw)
        xw = torch.where(mw, torch.zeros_like(xw), xw)
        return xw, lw, mw, pos, in_blk & masked

    def _active(self, mw_blk: torch.Tensor, in_blk_count: torch.Tensor) -> torch.Tensor:
        ratio = mw_blk.sum(1).double() / in_blk_count.clamp_min(1).double()
        return mw_blk.any(1) & (ratio <= self.gamma)

    def _draw(self, xw: torch.Tensor, lw: torch.Tensor, mw: torch.Tensor) -> torch.Tensor:
        return self._draw_cond(xw, lw, mw)[0]

    def _draw_cond(
        self, xw: torch.Tensor, lw: torch.Tensor, mw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Joint draw ``[M, W]`` of windows, with the path conditionals ``[M, W, V]`` (``"latent_tempered"``) or None.

        Args:
            xw, lw, mw: ``[M, W]``, ``[M, W, V]``, ``[M, W]`` window inputs (`_window_inputs`).
        """
        self.prior_calls += xw.shape[0]
        if self.sampler == "latent_tempered":
            cond = self.prior.path_conditionals(xw, lw, mw, self.tau, self.generator)
            tok = sample_tokens(cond, self.temperature, 1.0, self.generator)
            return torch.where(mw, tok.to(xw.device), xw), cond
        if self.temperature == 0.0:
            return self.prior.mpe(xw, lw, mw, self.tau), None
        order = self.remasking if self.remasking != "random" else "random"
        return self.prior.sample(xw, lw, mw, self.tau, self.sampler, self.generator, order=order), None

    # ------------------------------------------------------------ scoring
    def rescore(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        lo: int,
        hi: int,
        in_block: torch.Tensor,
        proposal: torch.Tensor,
        score: torch.Tensor,
        mask_id: int,
        first: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint proposals and coupled confidences for the active block.

        Args:
            x: ``LongTensor[B, N]`` current ids.
            logits: ``FloatTensor[B, N, V]`` logits (mask id at ``-inf``).
            lo: the block's first column.
            hi: one past the block's last column.
            in_block: ``BoolTensor[B, L]`` masked positions of the block.
            proposal: ``LongTensor[B, L]`` factorized proposals.
            score: ``FloatTensor[B, L]`` factorized confidences.
            mask_id: the mask id.
            first: ``LongTensor[B]`` first real (non-padding) column of each
                row (None: 0, no padding).

        Returns:
            ``(proposal, score)`` for the block, ``[B, L]`` each, replaced in
            the windows where the prior is active.
        """
        B = in_block.shape[0]
        proposal, score = proposal.clone(), score.clone()
        self._entropy = None
        self._first = torch.zeros(B, dtype=torch.long, device=x.device) if first is None else first.to(x.device)
        rows, starts = self._block_windows(in_block.shape, lo, hi, x.device)
        xw, lw, mw, pos, mblk = self._window_inputs(x, logits, rows, starts, lo, hi, mask_id)
        in_count = ((pos >= lo) & (pos < hi)).sum(1)
        act = self._active(mblk, in_count)
        if bool(act.any()):
            self.active_steps += 1
            win = (rows[act], xw[act], lw[act], mw[act], pos[act], mblk[act])
            self._rescore_windows(win, lo, proposal, score)
        self._proposal = proposal
        self._block = (lo, hi)
        self._mask_id = mask_id
        return proposal, score

    def _block_windows(
        self, shape: tuple[int, int], lo: int, hi: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows [M], starts [M])`` of the windows covering the block ``lo:hi`` of ``shape = (B, L)``.

        One window per row when ``L <= W`` (ending at the block's end, never
        starting before the row's first real token), else ``ceil(L / W)``
        tiles per row (the last one ending at the block's end).
        """
        W = self.prior.window
        B, L = shape
        if L <= W:
            return torch.arange(B, device=device), self._first.clamp_min(hi - W)
        starts_1 = list(range(lo, hi, W))
        starts_1[-1] = hi - W
        rows = torch.arange(B, device=device).repeat_interleave(len(starts_1))
        return rows, torch.tensor(starts_1, device=device).repeat(B)

    def _rescore_windows(
        self,
        win: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        lo: int,
        proposal: torch.Tensor,
        score: torch.Tensor,
    ) -> None:
        """Writes the active windows' joint proposals and coupled confidences into ``proposal``, ``score`` ``[B, L]``.

        ``win = (rows [M], xw [M, W], lw [M, W, V], mw [M, W], pos [M, W], mblk [M, W])``
        as from `_window_inputs`, for the active windows only.
        """
        r, xw, lw, mw, pos, mblk = win
        if self.sampler != "latent_tempered" and self.temperature != 0.0:
            # a joint draw and the marginals of the same windows: one upward pass serves both where it can
            self.prior_calls += xw.shape[0]
            post, tokens = self.prior.marginals_and_sample(
                xw, lw, mw, self.tau, self.sampler, self.generator, order=self.remasking
            )
            cond = None
        else:
            tokens, cond = self._draw_cond(xw, lw, mw)  # [M, W], [M, W, V] or None
            post = None
            if cond is None or self.entropy:
                post = self.prior.marginals(xw, lw, mw, self.tau)  # [M, W, V]
        logp = cond if cond is not None else torch.log(post.clamp_min(0.0))
        conf = confidence_scores(logp.to(score.dtype), tokens, self.remasking, self.generator)
        rr = r[:, None].expand_as(pos)[mblk]
        cc = pos[mblk] - lo
        proposal[rr, cc] = tokens[mblk]
        score[rr, cc] = conf[mblk].to(score.dtype)
        if self.entropy:
            p = post.clamp_min(0.0)
            ent = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(-1)  # [M, W]
            self._entropy = (rr, cc, ent[mblk])

    def coupled_entropy(self, entropy: torch.Tensor) -> torch.Tensor:
        """The block's per-position entropies with those of the last `rescore`'s active windows replaced.

        Args:
            entropy: ``FloatTensor[B, L]`` the backbone's (factorized) entropies of the block.

        Returns:
            ``FloatTensor[B, L]``: entropies of ``p_hat``'s exact marginals at
            the masked positions of the windows where the prior was active
            (the last tile's value where tiles overlap), ``entropy`` elsewhere.

        Raises:
            ValueError: the draw was built without ``entropy=True``.
        """
        if not self.entropy:
            raise ValueError("entropy: build the CoDDDraw with entropy=True to get the coupled entropies")
        out = entropy.clone()
        if self._entropy is not None:
            rr, cc, ent = self._entropy
            out[rr, cc] = ent.to(out.dtype)
        return out

    # ------------------------------------------------------------- drawing
    def __call__(
        self, ids: torch.Tensor, logits: torch.Tensor, window: torch.Tensor, commit: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens for the committed positions (see the module docstring).

        Args:
            ids: ``LongTensor[B, N]`` current ids.
            logits: ``FloatTensor[B, N, V]`` logits.
            window: ``BoolTensor[B, N]`` masked positions of the active block.
            commit: ``BoolTensor[B, N]`` positions committed at this step.

        Returns:
            ``(tokens [B, N], confidence [B, N])``: the tokens and their
            log-probability under the backbone's factorized logits.

        Raises:
            ValueError: NaN, ``+inf`` or only ``-inf`` in the logits of a committed position.
        """
        problem = logits_problem(logits, commit)
        if problem is not None:
            raise ValueError(f"logits: {problem[0]} at committed position {problem[1][1]} of batch row {problem[1][0]}")
        lo, hi = self._block
        W = self.prior.window
        tokens = ids.clone()
        if self._proposal is None:  # called without rescore: factorized
            prop = sample_tokens(logits, self.temperature, 1.0, self.generator)
            tokens = torch.where(commit, prop, ids)
        else:
            tokens[:, lo:hi] = torch.where(commit[:, lo:hi], self._proposal, ids[:, lo:hi])
            if hi - lo > W:
                self._dynamic(ids, logits, commit, tokens, lo, hi)
        conf = F.log_softmax(logits.float(), -1).gather(-1, tokens[..., None])[..., 0]
        return tokens, conf

    def _dynamic(
        self, ids: torch.Tensor, logits: torch.Tensor, commit: torch.Tensor, tokens: torch.Tensor, lo: int, hi: int
    ) -> None:
        """Re-draws the committed positions jointly in windows covering them (in place)."""
        W = self.prior.window
        rows_l, starts_l, own_l = [], [], []
        for b in range(ids.shape[0]):
            cols = commit[b, lo:hi].nonzero(as_tuple=True)[0].tolist()
            covered = -1
            for c in cols:
                p = lo + c
                if p <= covered:
                    continue
                s = min(p, hi - W)
                rows_l.append(b)
                starts_l.append(s)
                own_l.append(covered + 1)  # positions owned by this window (earlier ones belong to the previous)
                covered = s + W - 1
        if not rows_l:
            return
        dev = ids.device
        rows = torch.tensor(rows_l, device=dev)
        starts = torch.tensor(starts_l, device=dev)
        own = torch.tensor(own_l, device=dev)
        xw, lw, mw, pos, mblk = self._window_inputs(ids, logits, rows, starts, lo, hi, self._mask_id)
        in_count = ((pos >= lo) & (pos < hi)).sum(1)
        act = self._active(mblk, in_count)
        if not bool(act.any()):
            return
        rows, xw, lw, mw, pos, mblk, own = rows[act], xw[act], lw[act], mw[act], pos[act], mblk[act], own[act]
        drawn = self._draw(xw, lw, mw)
        take = mblk & commit[rows[:, None].expand_as(pos), pos] & (pos >= own[:, None])
        tokens[rows[:, None].expand_as(pos)[take], pos[take]] = drawn[take]
