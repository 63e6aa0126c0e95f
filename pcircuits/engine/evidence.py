"""Evidence of a pass: checked values, missing mask, soft evidence and top-``k`` candidates.

A pass conditions on three kinds of evidence for each row ``b`` and variable ``v``:

- a value ``x[b, v]`` (ignored where ``missing[b, v]``),
- a mask ``missing[b, v]``: True marginalises (or maximises, or samples) the variable,
- soft evidence: log-weights ``log w_v(c)`` multiplied into the leaves of
  discrete variables, for observed variables too (``p(x) w(x)``).

Soft evidence is either *full*, ``[B, V, C]`` over every category, or given
over *candidates*: ids ``candidates [B, V, K]`` with log-weights
``soft_evidence [B, V, K]``. Candidate evidence means exactly the full soft
evidence ``log w_v(c) = log sum_{k: candidates[b, v, k] = c} exp(soft_evidence[b, v, k])``,
``-inf`` for every id that is not a candidate; the leaves then cost
``O(K)`` instead of ``O(C)`` per node. A repeated id is merged into its first
occurrence when the evidence is built (its later copies get weight ``-inf``),
so every query sees distinct candidates. To leave an observed entry
unweighted, give it the candidates ``[x, ...]`` with log-weights ``[0, -inf, ...]``.

Shapes: ``B`` rows, ``V`` variables, ``C`` categories (the circuit's
``max_cats``), ``K`` candidates per entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Evidence", "Domain", "build_evidence", "dense_soft_evidence"]


@dataclass
class Evidence:
    """Checked evidence in the circuit's dtype and device (build it with
    [`TensorCircuit.prepare`][pcircuits.engine.circuit.TensorCircuit.prepare]).

    Attributes:
        x_discrete: ``[B, V]`` long; placeholder 0 at missing or continuous entries.
        x_continuous: ``[B, V]`` float or ``None`` when the circuit has no continuous variable.
        missing: ``[B, V]`` bool or ``None`` (nothing missing).
        soft_evidence: ``[B, V, C]`` log-weights, ``[B, V, K]`` with ``candidates``, or ``None``.
        candidates: ``[B, V, K]`` long distinct category ids per entry (0 on
            continuous variables), or ``None`` for full soft evidence.
    """

    x_discrete: torch.Tensor
    x_continuous: torch.Tensor | None
    missing: torch.Tensor | None
    soft_evidence: torch.Tensor | None
    candidates: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.x_discrete.shape[0]


@dataclass
class Domain:
    """The variables of a circuit, as evidence checks need them.

    Attributes:
        num_vars: ``V``.
        max_cats: ``C``, the largest number of categories (0 without discrete variables).
        var_cats: ``[V]`` long categories of each variable (0 for continuous ones).
        continuous: ``[V]`` bool, True for continuous (Gaussian) variables.
    """

    num_vars: int
    max_cats: int
    var_cats: torch.Tensor
    continuous: torch.Tensor

    @property
    def has_continuous(self) -> bool:
        return bool(self.continuous.any())


def build_evidence(
    domain: Domain,
    x: torch.Tensor | np.ndarray,
    missing: torch.Tensor | np.ndarray | None,
    soft_evidence: torch.Tensor | np.ndarray | None,
    candidates: torch.Tensor | np.ndarray | None,
    dtype: torch.dtype,
) -> Evidence:
    """Checks evidence and converts it to ``domain``'s device and ``dtype``; see
    [`TensorCircuit.prepare`][pcircuits.engine.circuit.TensorCircuit.prepare]."""
    dev = domain.var_cats.device
    x = _check_x(domain, x).to(dev)
    missing = _check_missing(missing, x)
    observed = torch.ones_like(x, dtype=torch.bool) if missing is None else ~missing
    x_disc = _discrete_values(domain, x, observed)
    x_cont = _continuous_values(domain, x, observed, dtype) if domain.has_continuous else None
    if candidates is not None:
        if soft_evidence is None:
            raise ValueError("candidates need soft_evidence: their log-weights [batch, num_vars, K]")
        candidates = _check_candidates(domain, candidates, x.shape[0])
        soft_evidence = _check_soft(domain, soft_evidence, tuple(candidates.shape), "num_vars, K", dtype)
        soft_evidence, candidates = _merge_duplicates(soft_evidence, candidates)
    elif soft_evidence is not None:
        shape = (x.shape[0], domain.num_vars, domain.max_cats)
        soft_evidence = _check_soft(domain, soft_evidence, shape, "num_vars, max_cats", dtype)
    return Evidence(x_disc, x_cont, missing, soft_evidence, candidates)


def dense_soft_evidence(ev: Evidence, num_cats: int) -> torch.Tensor | None:
    """The full soft evidence ``[B, V, num_cats]`` that ``ev`` means (``-inf`` off the candidates)."""
    if ev.candidates is None or ev.soft_evidence is None:
        return ev.soft_evidence
    se = ev.soft_evidence
    full = torch.full((*se.shape[:2], num_cats), -math.inf, dtype=se.dtype, device=se.device)
    # candidates are distinct after merging; "amax" keeps the result deterministic all the same
    return full.scatter_reduce(2, ev.candidates.clamp_max(num_cats - 1), se, "amax")


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _check_x(domain: Domain, x) -> torch.Tensor:
    """``x [B, V]`` as a tensor, with its shape checked."""
    x = _as_tensor(x, "x")
    if x.dim() != 2 or x.shape[1] != domain.num_vars:
        raise ValueError(
            f"x must have shape [batch, {domain.num_vars}] (one column per variable), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one example")
    if x.dtype.is_complex:
        raise TypeError(f"x must be a real or integer tensor, got {x.dtype}")
    return x


def _check_missing(missing, x: torch.Tensor) -> torch.Tensor | None:
    """``missing [B, V]`` bool on ``x``'s device, or ``None`` when nothing is missing."""
    if missing is None:
        return None
    missing = _as_tensor(missing, "missing")
    if missing.dtype != torch.bool:
        raise TypeError(f"missing must be a bool tensor, got {missing.dtype}")
    if tuple(missing.shape) != tuple(x.shape):
        raise ValueError(f"missing must have the shape of x, {tuple(x.shape)}, got {tuple(missing.shape)}")
    missing = missing.to(x.device)
    return missing if bool(missing.any()) else None


def _discrete_values(domain: Domain, x: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` long categories of the observed discrete entries (0 elsewhere), checked against their range."""
    check = observed & ~domain.continuous.unsqueeze(0)
    if x.dtype.is_floating_point:
        _check_float_x(domain, x, observed, check)
        x_disc = torch.where(check, x, torch.zeros_like(x)).long()
    else:
        x_disc = torch.where(check, x.long(), torch.zeros((), dtype=torch.long, device=x.device))
    bad = check & ((x_disc < 0) | (x_disc >= domain.var_cats.unsqueeze(0)))
    if bool(bad.any()):
        b, v = bad.nonzero()[0].tolist()
        raise ValueError(
            f"x has category {int(x_disc[b, v])} for variable {v} (row {b}), outside 0..{int(domain.var_cats[v]) - 1}"
        )
    return x_disc


def _check_float_x(domain: Domain, x: torch.Tensor, observed: torch.Tensor, check: torch.Tensor) -> None:
    """Raises ``ValueError`` for NaN, ``+-inf``, non-integer or huge values at observed (discrete) entries of ``x``."""
    nan = torch.isnan(x) & observed
    if bool(nan.any()):
        b, v = nan.nonzero()[0].tolist()
        raise ValueError(f"x has NaN at an observed entry (row {b}, variable {v}); mark it in missing instead")
    inf = torch.isinf(x) & observed
    if bool(inf.any()):
        b, v = inf.nonzero()[0].tolist()
        kind = "continuous (Gaussian)" if bool(domain.continuous[v]) else "discrete"
        raise ValueError(
            f"x has {x[b, v].item()} at an observed entry (row {b}, variable {v}, {kind}); "
            "observed values must be finite"
        )
    xd = torch.where(check, x, torch.zeros_like(x))
    frac = xd != torch.round(xd)
    if bool(frac.any()):
        b, v = frac.nonzero()[0].tolist()
        raise ValueError(f"x holds a non-integer value {x[b, v].item()} for discrete variable {v} (row {b})")
    huge = check & (xd.abs() > 2**62)  # would wrap around when cast to int64
    if bool(huge.any()):
        b, v = huge.nonzero()[0].tolist()
        raise ValueError(
            f"x has category {x[b, v].item():g} for variable {v} (row {b}), outside 0..{int(domain.var_cats[v]) - 1}"
        )


def _continuous_values(domain: Domain, x: torch.Tensor, observed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, V]`` observed continuous values in ``dtype`` (0 elsewhere); raises if one overflows ``dtype``."""
    zero = torch.zeros((), dtype=dtype, device=x.device)
    x_cont = torch.where(observed & domain.continuous.unsqueeze(0), x.to(dtype), zero)
    overflow = ~torch.isfinite(x_cont)
    if bool(overflow.any()):
        b, v = overflow.nonzero()[0].tolist()
        raise ValueError(
            f"x has {x[b, v].item():g} at row {b}, variable {v}, which overflows the circuit's dtype {dtype}; "
            "rescale the data or cast the circuit to float64"
        )
    return x_cont


def _check_soft(domain: Domain, soft, expected: tuple[int, ...], letters: str, dtype: torch.dtype) -> torch.Tensor:
    """Soft evidence of shape ``expected`` in ``dtype``: log-weights in ``[-inf, inf)``, 0 on continuous variables."""
    soft = _as_tensor(soft, "soft_evidence")
    if tuple(soft.shape) != expected:
        raise ValueError(f"soft_evidence must have shape [batch, {letters}] = {list(expected)}, got {list(soft.shape)}")
    if not soft.dtype.is_floating_point:
        raise TypeError(f"soft_evidence must be a float tensor of log-weights, got {soft.dtype}")
    soft = soft.to(device=domain.var_cats.device, dtype=dtype)
    if bool(torch.isnan(soft).any()) or bool((soft == math.inf).any()):
        raise ValueError("soft_evidence holds NaN or +inf; it must be log-weights in [-inf, inf)")
    if domain.has_continuous and bool((soft[:, domain.continuous] != 0).any()):
        v = int(domain.continuous.nonzero()[0])
        raise ValueError(
            f"soft_evidence: variable {v} is continuous (Gaussian); soft evidence needs a discrete variable"
        )
    return soft


def _check_candidates(domain: Domain, candidates, batch: int) -> torch.Tensor:
    """``candidates [B, V, K]`` as long ids on the domain's device (0 on continuous variables), range-checked."""
    candidates = _as_tensor(candidates, "candidates")
    if candidates.dtype == torch.bool or candidates.dtype.is_floating_point or candidates.dtype.is_complex:
        raise TypeError(f"candidates must be an integer tensor of category ids, got {candidates.dtype}")
    if candidates.dim() != 3 or tuple(candidates.shape[:2]) != (batch, domain.num_vars) or candidates.shape[2] == 0:
        raise ValueError(
            f"candidates must have shape [batch, num_vars, K] = [{batch}, {domain.num_vars}, K >= 1], "
            f"got {list(candidates.shape)}"
        )
    dev = domain.var_cats.device
    candidates = candidates.to(dev).long()
    disc = ~domain.continuous.view(1, -1, 1)
    bad = disc & ((candidates < 0) | (candidates >= domain.var_cats.view(1, -1, 1)))
    if bool(bad.any()):
        b, v, k = bad.nonzero()[0].tolist()
        raise ValueError(
            f"candidates has id {int(candidates[b, v, k])} at row {b}, variable {v}, position {k}, "
            f"outside 0..{int(domain.var_cats[v]) - 1}"
        )
    return torch.where(disc, candidates, torch.zeros((), dtype=torch.long, device=dev))


def _merge_duplicates(soft: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Folds the weights of repeated ids into their first occurrence (later copies get ``-inf``); order kept.

    Inputs and outputs are ``[B, V, K]``; without repeats both are returned unchanged.
    """
    if candidates.shape[-1] == 1:
        return soft, candidates
    ids, order = candidates.sort(dim=-1, stable=True)
    repeat = ids[..., 1:] == ids[..., :-1]  # [B, V, K-1]: same id as the previous sorted entry
    if not bool(repeat.any()):
        return soft, candidates
    # a stable sort puts each id's first occurrence at the head of its run
    first = torch.cat([torch.ones_like(repeat[..., :1]), ~repeat], -1)  # [B, V, K] run heads (sorted order)
    run = first.long().cumsum(-1) - 1  # [B, V, K] run of each sorted entry
    sorted_soft = soft.gather(-1, order)
    top = torch.full_like(soft, -math.inf).scatter_reduce(-1, run, sorted_soft, "amax", include_self=False)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # [B, V, runs] finite shift per run
    shift = top.gather(-1, run)
    total = torch.zeros_like(soft).scatter_add(-1, run, torch.exp(sorted_soft - shift))
    merged = (torch.log(total) + top).gather(-1, run)  # [B, V, K] the run's weight at every member
    sorted_out = torch.where(first, merged, torch.full_like(merged, -math.inf))
    out = torch.empty_like(soft).scatter(-1, order, sorted_out)
    return out, candidates
