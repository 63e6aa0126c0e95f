"""Most probable explanation (MPE) by a max-product upward pass and backtracking."""

from __future__ import annotations

import numpy as np
import torch

from ..engine.circuit import TensorCircuit
from ..engine.downward import downward, empty_assignment, fill_leaves
from .marginals import _check_circuit

__all__ = ["mpe"]


def mpe(
    circuit: TensorCircuit,
    x: torch.Tensor | np.ndarray,
    missing: torch.Tensor | np.ndarray | None = None,
    soft_evidence: torch.Tensor | np.ndarray | None = None,
    return_log_prob: bool = False,
    candidates: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Most probable completion of each example by max-product and backtracking.

    The upward pass replaces every sum by a maximum (``max_k w_k v_k``) and
    every missing leaf by its largest value ``max_v p(v) w(v)``; the downward
    pass follows, from the root, the maximising child of each selected sum
    node, and each missing variable takes the mode of its selected leaf under
    the soft evidence. Observed entries are returned unchanged.

    The result maximises ``p(x, z) prod_i w_i(x_i)`` jointly over the missing
    variables ``x`` and the latent choices ``z`` of the sum nodes (the
    circuit's induced trees). For *deterministic* circuits (the children of
    every sum node have disjoint supports) only one ``z`` is consistent with
    each ``x``, so this is the exact MPE ``argmax_x p(x) prod_i w_i(x_i)``;
    for other circuits it is the usual max-product approximation (exact MPE
    is NP-hard there) and ``log p(x)`` of the result, from
    [`TensorCircuit.forward`][pcircuits.engine.circuit.TensorCircuit.forward], can be larger than the returned value.
    Missing Gaussian variables take the mean of their selected leaf (its mode).

    Args:
        circuit: a compiled circuit.
        x: ``[B, V]`` values; entries under ``missing`` are ignored.
        missing: ``[B, V]`` bool, True where the variable is to be filled in.
        soft_evidence: ``[B, V, C]`` log-weights on discrete variables,
            ``[B, V, K]`` with ``candidates``, or ``None``.
        return_log_prob: also return the max-product value.
        candidates: ``[B, V, K]`` category ids weighed by ``soft_evidence``
            (a missing variable then takes one of its candidates), or ``None``.

    Returns:
        ``[B, V]`` completed examples: long when every variable is discrete,
        otherwise the circuit's float dtype. With ``return_log_prob``, also
        ``[B]`` ``max_{x_missing, z} log p(x, z) + sum_i log w_i(x_i)`` (the
        log-probability, or log-density with Gaussian variables, of the returned
        assignment together with its latent choices; for deterministic circuits
        ``log p(x) + sum_i log w_i(x_i)`` of the returned ``x``). Examples whose
        evidence has probability 0 get ``-inf`` and an arbitrary completion.

    Raises:
        TypeError: ``circuit`` is not a [`TensorCircuit`][pcircuits.engine.circuit.TensorCircuit], or evidence of the
            wrong type.
        ValueError: evidence of the wrong shape or with invalid values (see
            [`TensorCircuit.prepare`][pcircuits.engine.circuit.TensorCircuit.prepare]).
    """
    _check_circuit(circuit)
    ev = circuit.prepare(x, missing, soft_evidence, candidates)
    with torch.no_grad():
        lw = circuit.sum_log_weights()
        # without missing values nothing is backtracked: only the root value is needed, and releasing
        # each layer's output after its last reader lets the allocator reuse warm memory
        outs = circuit.upward(ev, semiring="max", log_weights=lw, keep_outputs=ev.missing is not None)
        rows = torch.arange(ev.batch_size, device=circuit.device)
        out = empty_assignment(circuit, ev, rows)
        if ev.missing is not None:
            sel = downward(circuit, outs, rows, "max", log_weights=lw)
            fill_leaves(circuit, sel, ev, rows, out, "max")
    if return_log_prob:
        return out, outs[-1][:, 0].detach()
    return out
