"""Log-likelihood (EVI and MAR) queries."""

from __future__ import annotations

import numpy as np
import torch

from ..engine.circuit import TensorCircuit

__all__ = ["log_likelihood"]


def log_likelihood(
    circuit: TensorCircuit,
    x: torch.Tensor | np.ndarray,
    missing: torch.Tensor | np.ndarray | None = None,
    soft_evidence: torch.Tensor | np.ndarray | None = None,
    batch_size: int | None = None,
    candidates: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """Log-likelihood of each example, ``[B]``; see
    [`TensorCircuit.forward`][pcircuits.engine.circuit.TensorCircuit.forward].

    Args:
        circuit: a compiled circuit.
        x: ``[B, V]`` values.
        missing: ``[B, V]`` bool, True marginalises the variable.
        soft_evidence: ``[B, V, C]`` log-weights on discrete variables (``[B, V, K]`` with ``candidates``).
        batch_size: evaluate in chunks of this many examples (``None``: one pass).
        candidates: ``[B, V, K]`` category ids weighed by ``soft_evidence`` (see
            [`TensorCircuit.prepare`][pcircuits.engine.circuit.TensorCircuit.prepare]).
    """
    if not isinstance(circuit, TensorCircuit):
        raise TypeError(f"circuit must be a TensorCircuit, got {type(circuit).__name__}")
    if batch_size is None:
        return circuit(x, missing, soft_evidence, candidates)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = len(x)
    out = []
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        rows = [None if t is None else t[sl] for t in (missing, soft_evidence, candidates)]
        out.append(circuit(x[sl], *rows))
    return torch.cat(out)
