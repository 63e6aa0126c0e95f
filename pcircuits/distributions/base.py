"""The contract every leaf distribution fulfils.

A distribution object describes a *family* (``Categorical(5)``); an input
group holds ``num_nodes`` members of it, each with its own raw parameter
vector of length ``num_params``. The engine stacks the parameters of ``G``
groups with equal fold keys into one tensor ``[G, n, P]`` and calls the
methods below on whole blocks, so every method is batched.

Shapes used throughout:

- ``B`` batch size, ``G`` groups in a block, ``n`` nodes per group,
  ``P`` raw parameters per node, ``C`` categories, ``S`` selected nodes,
  ``K`` candidates per entry.

**Candidates** (discrete families only): soft evidence may come as top-``K``
candidate ids ``candidates [..., K]`` with log-weights ``soft_evidence [..., K]``;
it means the full soft evidence that is ``-inf`` on every other category
(the engine passes distinct ids). Discrete methods then gather the leaf's
table at the candidate ids, so their cost is ``O(K)``, not ``O(C)``, per node,
and ``sample``/``mode`` return category ids (not positions among the candidates).
The engine passes ``candidates=`` only when there are candidates, so a
family without them keeps working on full soft evidence.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "Distribution",
    "DiscreteDistribution",
    "safe_logsumexp",
    "candidate_table",
    "gather_categories",
    "DISTRIBUTIONS",
]

#: Registry of distribution classes by name, used when loading saved circuits.
DISTRIBUTIONS: dict[str, type["Distribution"]] = {}


def safe_logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` whose value is ``-inf`` and gradient 0 on all ``-inf`` slices."""
    m = x.detach().amax(dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = (x - m).exp().sum(dim, keepdim=True)
    pos = s > 0
    out = torch.where(pos, torch.log(torch.where(pos, s, torch.ones_like(s))) + m, torch.full_like(s, -math.inf))
    return out.squeeze(dim)


class Distribution:
    """Base class of leaf distribution families.

    Subclasses set ``discrete`` and implement the methods below. Register a
    new family with ``@register`` so saved circuits can name it.
    """

    #: Whether the variable takes category values ``0..num_cats-1``.
    discrete: bool = True
    #: Whether the raw parameters are learned (indicators have none to learn).
    trainable: bool = True

    @property
    def num_cats(self) -> int | None:
        """Number of categories of a discrete variable, ``None`` for continuous ones."""
        return None

    @property
    def num_params(self) -> int:
        """Length ``P`` of one node's raw parameter vector."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        return {}

    def signature(self) -> tuple:
        """Identity of the distribution: equal signatures mean equal distributions for equal parameters.

        Includes every constructor argument that changes the distribution or
        its learning; groups may be tied (share parameters) only when their
        signatures are equal.
        """
        return (type(self).__name__, tuple(sorted(self.config().items())))

    def fold_key(self) -> tuple:
        """Groups with equal fold keys (and sizes) are computed as one block.

        The block calls the first group's object on every member's parameter
        rows, so the key must include everything the methods read from the
        object itself. The default is [`signature`][pcircuits.distributions.base.Distribution.signature]; a family whose
        arguments live in its parameters (an Indicator's values) folds more.
        """
        return self.signature()

    def check_num_nodes(self, num_nodes: int) -> None:
        """Raises ``ValueError`` if this family cannot fill a group of ``num_nodes`` nodes."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Distribution) and self.signature() == other.signature()

    def __hash__(self) -> int:
        return hash(self.signature())

    # --- parameters -------------------------------------------------------
    def init_params(self, num_nodes: int, generator: torch.Generator) -> torch.Tensor:
        """Random raw parameters ``[num_nodes, P]`` (float64; the module casts them)."""
        raise NotImplementedError

    def init_params_into(self, out: torch.Tensor, generator: torch.Generator) -> None:
        """Writes the values of ``init_params(out.shape[0], generator)`` into ``out [n, P]`` (any float dtype).

        The compiler calls this to fill each bank in place; a family with large
        parameter vectors overrides it to avoid the float64 intermediate.
        """
        out.copy_(self.init_params(out.shape[0], generator))

    def check_params(self, params: torch.Tensor, name: str = "params") -> None:
        """Raises ``ValueError`` naming ``name`` unless ``params`` are valid raw parameters of this family.

        Called wherever parameters enter a circuit (set through the public
        API, learned, loaded). The default accepts finite values only;
        families override it to allow more (``-inf`` logits of a category
        with probability 0) or demand more (integer indicated values).

        Args:
            params: ``[..., n, P]`` raw parameters (any float dtype).
            name: the argument's name, used in the message.

        Raises:
            ValueError: a parameter vector that does not describe a distribution of the family.
        """
        _check_last_dim(params, self.num_params, name, self)
        bad = ~torch.isfinite(params)
        if bool(bad.any()):
            raise ValueError(f"{name}: {self!r} parameters must be finite, got {_first_bad(params, bad)}")

    # --- inference ----------------------------------------------------------
    def log_prob(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        missing: torch.Tensor | None,
        soft_evidence: torch.Tensor | None,
        slots: torch.Tensor | None = None,
        candidates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-values of the leaves of a block.

        Args:
            params: ``[G, n, P]`` raw parameters, or ``[Q, n, P]`` distinct
                parameter rows when ``slots`` is given.
            x: ``[B, G]`` values (long for discrete families, float otherwise);
                entries under ``missing`` hold an arbitrary valid placeholder.
                A discrete value may lie outside the leaf's own domain
                ``0..num_cats-1`` (when other leaves of the variable have
                more categories): its probability is 0.
            missing: ``[B, G]`` bool or ``None``; True integrates the leaf out.
            soft_evidence: ``[B, G, C]`` log-weights or ``None`` (discrete only);
                the leaf value becomes ``log sum_c p(c) w(c)`` over the allowed
                values (the observed one, or all of them when missing).
            slots: ``[G]`` row of ``params`` used by each group (tied groups
                share rows, so per-row work such as normalisation is done once).
            candidates: ``[B, G, K]`` category ids that ``soft_evidence [B, G, K]``
                weighs (discrete families; see the module docstring), or ``None``.

        Returns:
            ``[B, G, n]`` log-values.
        """
        raise NotImplementedError

    def sample(
        self,
        params: torch.Tensor,
        soft_evidence: torch.Tensor | None,
        temperature: float,
        generator: torch.Generator | None,
        candidates: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One draw per row from ``p(v)^(1/temperature) * w(v)`` (normalised).

        Args:
            params: ``[S, P]`` raw parameters of the selected nodes.
            soft_evidence: ``[S, C]`` log-weights (``[S, K]`` with ``candidates``) or ``None``.
            temperature: leaf temperature (> 0); 1 samples the leaf itself.
            generator: random generator or ``None``.
            candidates: ``[S, K]`` category ids (discrete families), or ``None``.

        Returns:
            ``[S]`` values (long for discrete families).
        """
        raise NotImplementedError

    def mode(
        self, params: torch.Tensor, soft_evidence: torch.Tensor | None, candidates: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[S]`` maximisers of ``p(v) * w(v)`` for the selected nodes ``params [S, P]``.

        ``soft_evidence`` is ``[S, C]``, or ``[S, K]`` over ``candidates [S, K]`` (discrete families).
        """
        raise NotImplementedError

    def max_log_prob(
        self, params: torch.Tensor, soft_evidence: torch.Tensor | None, candidates: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``max_v log p(v) + log w(v)`` for a block: params ``[G, n, P]``, evidence ``[B, G, C]``
        (or ``[B, G, K]`` over ``candidates [B, G, K]``, discrete families).

        Returns ``[B, G, n]`` (broadcastable over B when ``soft_evidence`` is None).
        """
        raise NotImplementedError

    # --- learning -----------------------------------------------------------
    @property
    def num_stats(self) -> int:
        """Length of one node's EM sufficient-statistics vector."""
        raise NotImplementedError

    def em_statistics(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        missing: torch.Tensor | None,
        soft_evidence: torch.Tensor | None,
        flows: torch.Tensor,
    ) -> torch.Tensor:
        """Expected sufficient statistics ``[G, n, num_stats]`` summed over the batch.

        ``flows [B, G, n]`` is the posterior probability that each leaf is on
        the circuit's active path for each example; missing values contribute
        their expected statistics.
        """
        raise NotImplementedError

    def em_update(
        self, params: torch.Tensor, stats: torch.Tensor, pseudocount: float, step_size: float
    ) -> torch.Tensor:
        """New raw parameters ``[Q, n, P]`` from statistics ``[Q, n, num_stats]``.

        The result interpolates ``(1 - step_size) * old + step_size * new`` in
        the family's mean-parameter space.
        """
        raise NotImplementedError

    # --- saving -------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "config": self.config()}

    @staticmethod
    def from_json(data: dict[str, Any]) -> "Distribution":
        name = data.get("type")
        if name not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution type {name!r}; known: {sorted(DISTRIBUTIONS)}")
        return DISTRIBUTIONS[name](**data.get("config", {}))


def _first_bad(params: torch.Tensor, bad: torch.Tensor) -> str:
    """``"<value> at index (...)"`` for the first True entry of ``bad`` (same shape as ``params``)."""
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return f"{params[idx].item()} at index {idx}"


def _check_last_dim(params: torch.Tensor, num_params: int, name: str, dist: Distribution) -> None:
    """Raises ``TypeError``/``ValueError`` naming ``name`` unless ``params`` is a float tensor ``[..., P]``."""
    if not isinstance(params, torch.Tensor) or not params.dtype.is_floating_point:
        kind = params.dtype if isinstance(params, torch.Tensor) else type(params).__name__
        raise TypeError(f"{name}: {dist!r} parameters must be a float tensor, got {kind}")
    if params.dim() < 1 or params.shape[-1] != num_params:
        raise ValueError(f"{name}: {dist!r} needs {num_params} parameters per node, got shape {list(params.shape)}")


def register(cls: type[Distribution]) -> type[Distribution]:
    """Class decorator adding a distribution family to the registry."""
    DISTRIBUTIONS[cls.__name__] = cls
    return cls


def _stable_einsum_lse(
    ev: torch.Tensor, table: torch.Tensor, shifted: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """``log sum_c exp(ev[b,g,c] + table[g,n,c])`` as a matrix product.

    ``ev [B, G, C]``, ``table [G, n, C]`` -> ``[B, G, n]``. Each side is
    shifted by its row maximum and exponentiated, so the cost is one batched
    matrix product; entries whose sum is too small to trust (terms lost to
    underflow) are recomputed exactly with ``logsumexp``.
    """
    from ..kernels import soft_evidence_lse

    return soft_evidence_lse(ev, table, shifted)


def candidate_table(table: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """A leaf table read at candidate ids: ``table [G or 1, n, C]``, ``candidates [B, G, K]`` -> ``[B, G, n, K]``.

    Every entry is ``table[g, j, candidates[b, g, k]]`` (group 0 for all when
    ``table`` has one row), ``-inf`` at ids ``>= C``; ``K`` is the innermost, contiguous dimension.
    """
    C = table.shape[-1]
    outside = candidates >= C  # ids of wider leaves of the variable: probability 0 in this one
    if bool(outside.any()):
        cand = candidates.clamp_max(C - 1)
        return candidate_table(table, cand).masked_fill(outside.unsqueeze(2), -math.inf)
    if table.shape[0] == 1 and table.stride(1) == 1 and table.shape[1] > 1:
        # category-major memory (a cached table, see TensorCircuit.leaf_table): one contiguous row per candidate
        B, G, K = candidates.shape
        rows = table[0].transpose(0, 1).index_select(0, candidates.reshape(-1))  # [B * G * K, n]
        return rows.view(B, G, K, -1).transpose(2, 3)
    if table.shape[0] == 1:
        return table[0][:, candidates].permute(1, 2, 0, 3)
    groups = torch.arange(table.shape[0], device=candidates.device).view(1, -1, 1)
    return table.transpose(0, 1)[:, groups, candidates].permute(1, 2, 0, 3)


def gather_categories(table: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``table [S, C]`` read at ``candidates [S, K]`` -> ``[S, K]``, ``-inf`` at ids ``>= C`` (outside the leaf)."""
    C = table.shape[-1]
    outside = candidates >= C
    if not bool(outside.any()):
        return table.gather(-1, candidates)
    return table.gather(-1, candidates.clamp_max(C - 1)).masked_fill(outside, -math.inf)


def _observed_log_prob(
    table: torch.Tensor, x: torch.Tensor, outside: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """``[B, G, n]`` ``log p(x)`` of every leaf from ``table [Q, n, C]``, ``-inf`` where ``outside [B, G]``."""
    Q, n, C = table.shape
    B, G = x.shape
    if Q * C <= B * G:  # small table: one transposed copy, then contiguous row gathers
        rows = (slots * C).unsqueeze(0) + x  # [B, G]
        flat = table.transpose(1, 2).contiguous().view(Q * C, n)
        # outside values read an appended row of -inf (the copy is made anyway)
        flat = torch.cat([flat, flat.new_full((1, n), -math.inf)])
        rows = torch.where(outside, torch.full((), Q * C, dtype=rows.dtype, device=rows.device), rows)
        return flat.index_select(0, rows.reshape(-1)).view(B, G, n)
    # large table (e.g. untied emissions): gather in place, no copy of the table
    out = table[slots.unsqueeze(0), :, x]  # [B, G, n]
    return out.masked_fill(outside.unsqueeze(-1), -math.inf)


def _block_table(table: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The table rows of a block's groups: ``[1, n, C]`` when all share one slot (no copy), else ``[G, n, C]``."""
    if table.shape[0] == 1 or bool((slots == slots[0]).all()):
        s0 = int(slots[0])
        return table[s0 : s0 + 1]
    return table.index_select(0, slots)


def _candidate_log_prob(
    out: torch.Tensor,
    table: torch.Tensor,
    x: torch.Tensor,
    missing: torch.Tensor | None,
    soft: torch.Tensor | None,
    candidates: torch.Tensor,
) -> torch.Tensor:
    """Leaf values under candidate evidence.

    Observed entries: ``out [B, G, n]`` (``log p(x)``) plus ``log w(x)``, the
    log-sum of the weights of the candidates equal to ``x`` (``-inf`` if none);
    missing ones: ``log sum_k p(candidates_k) w_k``, over ``table [G or 1, n, C]``.
    """
    hit = candidates == x.unsqueeze(-1)  # [B, G, K]
    wx = safe_logsumexp(torch.where(hit, soft, torch.full((), -math.inf, dtype=soft.dtype, device=soft.device)), -1)
    out = out + wx.unsqueeze(-1)
    if missing is not None and bool(missing.any()):
        marg = safe_logsumexp(candidate_table(table, candidates) + soft.unsqueeze(2), -1)  # [B, G, n]
        out = torch.where(missing.unsqueeze(-1), marg, out)
    return out


class DiscreteDistribution(Distribution):
    """A family over categories ``0..num_cats-1`` given by a log-probability table.

    Subclasses implement [`log_table`][pcircuits.distributions.base.DiscreteDistribution.log_table] (and the
    parameter methods); the likelihood, soft evidence, sampling, mode and EM statistics follow from it.
    """

    discrete = True

    def log_table(self, params: torch.Tensor) -> torch.Tensor:
        """``[..., n, C]`` log-probabilities from raw parameters ``[..., n, P]``."""
        raise NotImplementedError

    def log_prob(self, params, x, missing, soft_evidence, slots=None, candidates=None, table=None, shifted=None):
        """See `Distribution.log_prob`; ``table`` is ``log_table(params)`` ``[Q, n, C]`` when the caller has it,
        ``shifted`` its ``(exp(table - m), m)`` (`pcircuits.kernels.torch_ops.table_exp`) for full soft evidence."""
        if table is None:
            table = self.log_table(params)  # [Q, n, C]
        B, G = x.shape
        if slots is None:
            slots = torch.arange(G, device=x.device)
        # a variable may have more categories than this leaf (other leaves of it are wider):
        # values outside the leaf's own domain 0..C-1 have probability 0
        outside = x >= table.shape[-1]  # [B, G]
        x = torch.where(outside, torch.zeros((), dtype=x.dtype, device=x.device), x)
        out = _observed_log_prob(table, x, outside, slots)
        if soft_evidence is None and missing is None:
            return out
        table = _block_table(table, slots)  # [G or 1, n, C]
        if candidates is not None:
            return _candidate_log_prob(out, table, x, missing, soft_evidence, candidates)
        if soft_evidence is not None:
            ev = soft_evidence
            out = out + ev.gather(2, x.unsqueeze(-1))
            if missing is not None and bool(missing.any()):
                if shifted is not None:
                    shifted = tuple(_block_table(t, slots) for t in shifted)
                if table.shape[0] == 1 and not bool(missing.all()):
                    # one shared table: the product only for the missing entries (observed ones keep log p(x) w(x))
                    b, g = missing.nonzero(as_tuple=True)
                    marg = _stable_einsum_lse(ev[b, g].unsqueeze(1), table, shifted)[:, 0]  # [M, n]
                    return out.index_put((b, g), marg)
                marg = _stable_einsum_lse(ev, table, shifted)
                out = torch.where(missing.unsqueeze(-1), marg, out)
        elif missing is not None:
            marg = safe_logsumexp(table, -1).unsqueeze(0)  # [1, G, n]; 0 when normalised
            out = torch.where(missing.unsqueeze(-1), marg, out)
        return out

    def max_log_prob(self, params, soft_evidence, candidates=None, table=None):
        """See `Distribution.max_log_prob`; ``table`` is ``log_table(params)`` when the caller has it."""
        if table is None:
            table = self.log_table(params)
        if soft_evidence is None:
            return table.amax(-1).unsqueeze(0)
        if candidates is not None:
            return (candidate_table(table, candidates) + soft_evidence.unsqueeze(2)).amax(-1)
        from ..kernels import soft_evidence_max

        return soft_evidence_max(soft_evidence, table)

    def _weighted_table(self, params, soft_evidence, temperature: float, candidates=None) -> torch.Tensor:
        table = self.log_table(params)
        if candidates is not None:
            table = gather_categories(table, candidates)  # [S, K]
        if temperature != 1.0:
            table = table / temperature
        if soft_evidence is not None:
            table = table + soft_evidence
        return table

    def sample(self, params, soft_evidence, temperature, generator, candidates=None):
        logits = self._weighted_table(params, soft_evidence, temperature, candidates)  # [S, C] or [S, K]
        probs = torch.softmax(logits, -1)
        if not torch.isfinite(logits).any(-1).all():
            raise ValueError("sample: some selected leaves have probability 0 for every value under the evidence")
        pick = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return pick if candidates is None else candidates.gather(-1, pick.unsqueeze(-1)).squeeze(-1)

    def mode(self, params, soft_evidence, candidates=None):
        pick = self._weighted_table(params, soft_evidence, 1.0, candidates).argmax(-1)
        return pick if candidates is None else candidates.gather(-1, pick.unsqueeze(-1)).squeeze(-1)

    @property
    def num_stats(self) -> int:
        return self.num_cats

    def em_statistics(self, params, x, missing, soft_evidence, flows):
        table = self.log_table(params)  # [G, n, C]
        G, n, C = table.shape
        counts = table.new_zeros(G * C, n)
        # values outside the leaf's domain have probability 0, so no flow: they add nothing
        outside = x >= C  # [B, G]
        x = torch.where(outside, torch.zeros((), dtype=x.dtype, device=x.device), x)
        observed = ~outside if missing is None else ~outside & ~missing
        obs_flows = flows * observed.unsqueeze(-1).to(flows.dtype)
        rows = (torch.arange(G, device=x.device) * C).unsqueeze(0) + x  # [B, G]
        counts.index_add_(0, rows.reshape(-1), obs_flows.reshape(-1, n))
        counts = counts.view(G, C, n).transpose(1, 2)  # [G, n, C]
        if missing is not None and bool(missing.any()):
            miss_flows = flows * missing.unsqueeze(-1).to(flows.dtype)  # [B, G, n]
            if soft_evidence is None:
                counts = counts + miss_flows.sum(0).unsqueeze(-1) * table.exp()
            else:
                # posterior over c: p(c) w(c) / sum_c' p(c') w(c'), weighted by the flow
                norm = _stable_einsum_lse(soft_evidence, table)  # [B, G, n]
                m_ev = soft_evidence.amax(-1, keepdim=True)
                m_ev = torch.where(torch.isfinite(m_ev), m_ev, torch.zeros_like(m_ev))
                ev = torch.exp(soft_evidence - m_ev)  # [B, G, C]
                live = (miss_flows > 0) & torch.isfinite(norm)
                scale = torch.where(
                    live,
                    miss_flows * torch.exp(torch.where(live, m_ev - norm, torch.zeros_like(norm))),
                    torch.zeros_like(norm),
                )
                counts = counts + torch.einsum("bgn,bgc->gnc", scale, ev) * table.exp()
        return counts
