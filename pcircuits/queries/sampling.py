"""Exact top-down sampling, unconditional or given (soft) evidence."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..engine.circuit import TensorCircuit
from ..engine.downward import Selection, downward, empty_assignment, fill_leaves
from ..nodes import SumGroup
from .marginals import _check_circuit

__all__ = ["sample"]


def sample(
    circuit: TensorCircuit,
    num_samples: int = 1,
    x: torch.Tensor | np.ndarray | None = None,
    missing: torch.Tensor | np.ndarray | None = None,
    soft_evidence: torch.Tensor | np.ndarray | None = None,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    latent_path: bool = False,
    candidates: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor | dict[SumGroup, torch.Tensor]:
    """Draws samples top-down, exactly from the circuit or from its conditional.

    One upward pass computes every node's value under the evidence; the
    downward pass then starts at the root and, at every selected sum node,
    picks child ``k`` with probability ``w_k v_k / v_parent`` (``v`` the
    upward values), follows all children of selected product nodes, and
    finally draws each missing variable from its selected leaf ``p(v)``
    times its soft-evidence weight ``w(v)``. The samples therefore follow

    ``p(x_missing | x_observed, w) ∝ p(x_missing, x_observed) prod_i w_i(x_i)``

    exactly; observed entries are copied. Everything is vectorised over
    samples (one loop over layers), and memory is linear in the number of
    nodes times the number of samples.

    Without ``x`` and ``soft_evidence`` this samples the joint distribution
    ``p(x)``. With ``soft_evidence`` but no ``x`` every variable is missing.

    Args:
        circuit: a compiled circuit.
        num_samples: samples per evidence row (at least 1).
        x: ``[B, V]`` evidence values, or ``None``.
        missing: ``[B, V]`` bool, True where the variable is sampled
            (``None`` with ``x``: nothing is missing).
        soft_evidence: ``[B, V, C]`` log-weights on discrete variables,
            ``[B, V, K]`` with ``candidates``, or ``None``.
        temperature: leaves are sampled from ``p(v)^(1/temperature) w(v)``
            (Gaussians with their standard deviation times
            ``sqrt(temperature)``); the sum-node choices are not tempered, so
            only ``temperature=1`` samples the circuit exactly.
        generator: random generator on the circuit's device.
        seed: seed of a fresh generator (instead of ``generator``).
        latent_path: return the sampled latent path instead of samples (the
            leaves are not sampled).
        candidates: ``[B, V, K]`` category ids weighed by ``soft_evidence``
            (a sampled variable takes one of its candidates), or ``None``.

    Returns:
        Unconditionally ``[num_samples, V]``, with evidence
        ``[num_samples, B, V]``: long when every variable is discrete,
        otherwise the circuit's float dtype. With ``latent_path``, a dict
        mapping every sum group to a long tensor ``[num_samples, n]``
        (``[num_samples, B, n]`` with evidence): the child each of its ``n``
        nodes chose, as an index into the group's child nodes (numbered
        consecutively over its child groups), or ``-1`` where the node is
        not on the sample's path.

    Raises:
        TypeError: ``circuit`` is not a [`TensorCircuit`][pcircuits.engine.circuit.TensorCircuit], or evidence of the
            wrong type.
        ValueError: ``num_samples`` below 1, ``temperature`` not positive,
            both ``generator`` and ``seed``, evidence of the wrong shape or
            with invalid values (see [`TensorCircuit.prepare`][pcircuits.engine.circuit.TensorCircuit.prepare]), or
            evidence with probability 0.
    """
    _check_circuit(circuit)
    num_samples, generator = _check_sampling(circuit, num_samples, temperature, generator, seed)
    conditional = x is not None or soft_evidence is not None
    ev = circuit.prepare(*_evidence_or_all_missing(circuit, x, missing, soft_evidence), soft_evidence, candidates)
    B = ev.batch_size
    with torch.no_grad():
        lw = circuit.sum_log_weights()
        outs = circuit.upward(ev, semiring="sum", log_weights=lw)
        _check_possible(outs[-1][:, 0])
        row_source = torch.arange(B, device=circuit.device).repeat(num_samples)  # pass row s * B + b reads row b
        sel = None
        if latent_path or ev.missing is not None:
            sel = downward(circuit, outs, row_source, "sum", generator, lw, record_choices=latent_path)
        shape = (num_samples, B) if conditional else (num_samples,)
        if latent_path:
            return _latent_path(circuit, sel, row_source.numel(), shape)
        out = empty_assignment(circuit, ev, row_source)
        if sel is not None:
            fill_leaves(circuit, sel, ev, row_source, out, "sum", float(temperature), generator)
    return out.view(*shape, circuit.num_vars)


def _check_sampling(
    circuit: TensorCircuit, num_samples, temperature, generator: torch.Generator | None, seed: int | None
) -> tuple[int, torch.Generator | None]:
    """``num_samples`` as an int and the generator to use; raises for bad arguments (see
    [`sample`][pcircuits.queries.sampling.sample])."""
    if not isinstance(num_samples, (int, np.integer)) or isinstance(num_samples, bool):
        raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        generator = torch.Generator(device=circuit.device).manual_seed(int(seed))
    return int(num_samples), generator


def _evidence_or_all_missing(circuit: TensorCircuit, x, missing, soft_evidence) -> tuple:
    """``(x, missing)``: as given, or every variable missing when there is no ``x`` (one row per soft-evidence row)."""
    if x is not None:
        return x, missing
    if missing is not None:
        raise ValueError("missing needs x")
    B = 1 if soft_evidence is None else len(soft_evidence)
    return torch.zeros(B, circuit.num_vars, dtype=torch.long), torch.ones(B, circuit.num_vars, dtype=torch.bool)


def _check_possible(root: torch.Tensor) -> None:
    """Raises ``ValueError`` naming the first row whose root value ``root [B]`` is not finite."""
    if not bool(torch.isfinite(root).all()):
        b = int((~torch.isfinite(root)).nonzero()[0])
        raise ValueError(f"the evidence of row {b} has probability 0; there is nothing to sample")


def _latent_path(
    circuit: TensorCircuit, sel: Selection, num_rows: int, shape: tuple[int, ...]
) -> dict[SumGroup, torch.Tensor]:
    """The child index chosen by every node of every sum group, ``-1`` off the path."""
    dev = circuit.device
    path: dict[SumGroup, torch.Tensor] = {}
    for blk in circuit.sum_blocks():
        G, n = blk.num_groups, blk.num_nodes
        full = torch.full((num_rows, G * n), -1, dtype=torch.long, device=dev)
        if (blk.layer, blk.index) in sel.choices:
            rows, node, chosen = sel.choices[(blk.layer, blk.index)]
            if not blk.dense:  # padded slot -> child node of the group
                child_index = circuit.banks()[blk.bank].child_index  # [slots, n, k]
                g = torch.div(node, n, rounding_mode="floor")
                chosen = child_index[blk.slots[g], node - g * n, chosen]
            full[rows, node] = chosen
        full = full.view(num_rows, G, n)
        for gi, group in enumerate(blk.groups):
            path[group] = full[:, gi].reshape(*shape, n)
    return path
