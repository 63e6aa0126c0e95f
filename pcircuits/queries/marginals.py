"""Posterior marginals of every discrete variable from one upward and one downward pass."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..distributions.base import DiscreteDistribution, safe_logsumexp
from ..engine.circuit import Evidence, TensorCircuit
from ..engine.downward import leaf_flows

__all__ = ["marginals"]


def _check_circuit(circuit: object) -> None:
    if not isinstance(circuit, TensorCircuit):
        raise TypeError(f"circuit must be a TensorCircuit, got {type(circuit).__name__}")


def marginals(
    circuit: TensorCircuit,
    x: torch.Tensor | np.ndarray,
    missing: torch.Tensor | np.ndarray | None = None,
    soft_evidence: torch.Tensor | np.ndarray | None = None,
    candidates: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Posterior marginals ``p(X_i = c | evidence)`` of all discrete variables at once.

    The evidence is the forward pass's: observed values ``x`` (where
    ``missing`` is False) and soft evidence ``w_i(c)``, so the result is

    ``p(X_i = c | e) = sum_{x_missing: x_i = c} p(x) prod_j w_j(x_j) / sum_{x_missing} p(x) prod_j w_j(x_j)``.

    It costs one upward pass and its backward pass (the downward pass):
    ``d log Z / d log w_i(c)`` is exactly that posterior, where ``Z`` is the
    forward pass's value. Without ``soft_evidence`` the pass runs with
    all-zero log-weights, which leave ``Z`` unchanged.

    Args:
        circuit: a compiled circuit.
        x: ``[B, V]`` values; entries under ``missing`` are ignored (may be NaN).
        missing: ``[B, V]`` bool, True where the variable is unobserved.
        soft_evidence: ``[B, V, C]`` log-weights on discrete variables
            (``C`` = `TensorCircuit.max_cats`), ``[B, V, K]`` with
            ``candidates``, or ``None``.
        candidates: ``[B, V, K]`` category ids weighed by ``soft_evidence``
            (every other id has weight 0, so its posterior is 0), or ``None``.

    Returns:
        ``[B, V, C]`` probabilities in the circuit's dtype. Observed discrete
        variables get their one-hot row; categories ``c >= num_cats`` of a
        variable are 0; rows of Gaussian (continuous) variables are all 0.
        Where the evidence has probability 0 (the forward pass gives
        ``-inf``), the missing discrete variables of that example are NaN
        (the posterior is undefined).

    Raises:
        TypeError: ``circuit`` is not a [`TensorCircuit`][pcircuits.engine.circuit.TensorCircuit], or evidence of the
            wrong type.
        ValueError: evidence of the wrong shape or with invalid values, or
            soft evidence on a Gaussian variable (see
            [`TensorCircuit.prepare`][pcircuits.engine.circuit.TensorCircuit.prepare]).
    """
    _check_circuit(circuit)
    ev = circuit.prepare(x, missing, soft_evidence, candidates)
    B, V, C = ev.batch_size, circuit.num_vars, circuit.max_cats
    if C == 0:
        return torch.zeros(B, V, 0, dtype=circuit.dtype, device=circuit.device)
    with torch.no_grad():
        lw = circuit.sum_log_weights()
    direct = ev.soft_evidence is None and all(
        isinstance(b.dist, DiscreteDistribution) or not b.dist.discrete for b in circuit.leaf_blocks()
    )
    post, finite = (_table_posterior if direct else _gradient_posterior)(circuit, ev, lw)
    return _finish(circuit, ev, post.detach(), finite)


def _table_posterior(
    circuit: TensorCircuit, ev: Evidence, lw: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posteriors ``[B, V, C]`` of the missing variables and ``[B]`` finite-evidence flags, without soft evidence.

    A missing leaf's posterior over its values is then its own table, weighted by the leaf's flow.
    """
    B, V, C = ev.batch_size, circuit.num_vars, circuit.max_cats
    dt = circuit.dtype
    with torch.no_grad():
        outs = circuit.upward(ev, log_weights=lw)
        finite = torch.isfinite(outs[-1][:, 0])
        flows = leaf_flows(circuit, outs, lw)  # [B, N_0]: the downward pass
        post = torch.zeros(B, V, C, dtype=dt, device=circuit.device)
        if ev.missing is None:
            return post, finite
        for blk in circuit.leaf_blocks():
            if not blk.dist.discrete:
                continue
            params, _, mb, _ = circuit.leaf_block_inputs(ev, blk.index)
            table = blk.dist.log_table(params)  # [G, n, c]
            table = (table - safe_logsumexp(table, -1).unsqueeze(-1)).exp()
            G, n = table.shape[:2]
            f = flows[:, blk.columns].view(B, G, n) * mb.unsqueeze(-1).to(dt)
            contrib = torch.matmul(f.transpose(0, 1), table).transpose(0, 1)  # [B, G, c]
            post[:, :, : table.shape[-1]].index_add_(1, blk.vars, contrib)
    return post, finite


def _gradient_posterior(
    circuit: TensorCircuit, ev: Evidence, lw: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posteriors ``[B, V, C]`` and ``[B]`` finite-evidence flags as ``d log Z / d soft evidence``.

    With candidates the gradient ``[B, V, K]`` is added up at the candidates' ids.
    """
    B, V, C = ev.batch_size, circuit.num_vars, circuit.max_cats
    dt, dev = circuit.dtype, circuit.device
    se = ev.soft_evidence if ev.soft_evidence is not None else torch.zeros(B, V, C, dtype=dt, device=dev)
    se = se.detach().requires_grad_()
    ev_g = Evidence(ev.x_discrete, ev.x_continuous, ev.missing, se, ev.candidates)
    leaf_params = {k: v.detach() for k, v in circuit.params.items()}
    with torch.enable_grad():
        leaves = circuit.leaf_values(ev_g, leaf_params=leaf_params)  # [B, G, n] per block
    with torch.no_grad():
        outs = circuit.upward(ev_g, log_weights=lw, leaf_outputs=[o.detach() for o in leaves])
        finite = torch.isfinite(outs[-1][:, 0])
        flows = leaf_flows(circuit, outs, lw)  # [B, N_0]: the downward pass
    # d log Z / d soft_evidence = sum over leaves of flow * d log v_leaf / d soft_evidence
    outputs, grads = [], []
    for blk, o in zip(circuit.leaf_blocks(), leaves, strict=True):
        if o.requires_grad:
            outputs.append(o)
            grads.append(flows[:, blk.columns].view_as(o))
    post = None
    if outputs:
        (post,) = torch.autograd.grad(outputs, se, grads, allow_unused=True)
    post = torch.zeros_like(se) if post is None else post
    if ev.candidates is not None:
        post = torch.zeros(B, V, C, dtype=post.dtype, device=dev).scatter_add_(2, ev.candidates, post)
    return post, finite


def _finish(circuit: TensorCircuit, ev: Evidence, post: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """One-hot rows at observed discrete variables, zeros at continuous ones and
    categories a variable lacks, NaN for the missing variables of impossible rows."""
    B, V, C = post.shape
    disc = ~circuit.continuous  # [V]
    observed = disc.unsqueeze(0).expand(B, V)
    if ev.missing is not None:
        observed = observed & ~ev.missing
    onehot = torch.zeros_like(post).scatter_(2, ev.x_discrete.unsqueeze(-1), 1.0)
    post = torch.where(observed.unsqueeze(-1), onehot, post)
    post = post.masked_fill(circuit.continuous.view(1, V, 1), 0.0)
    cats = torch.arange(C, device=post.device)
    valid = cats.view(1, 1, C) < circuit.var_cats.view(1, V, 1)  # [1, V, C]
    post = post.masked_fill(~valid, 0.0)
    undefined = (~finite).view(B, 1) & ~observed & disc.unsqueeze(0)  # [B, V]
    return post.masked_fill(undefined.unsqueeze(-1) & valid, math.nan)
