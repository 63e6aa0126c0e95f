"""Expectation-maximisation for circuit parameters.

The expected counts ("flows") come from one upward pass and autograd: for a
normalised sum weight, ``d log p(x) / d log w`` is the posterior probability
that the edge is on the example's active path, and for a leaf output it is
the probability that the leaf is active. Gradients accumulate over the batch
and over tied groups, so per-example edge flows are never stored.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..engine.circuit import Evidence, TensorCircuit

__all__ = ["em", "expected_statistics", "apply_statistics", "Statistics"]

#: ``(sum_flows, leaf_stats)``: ``{bank: [slots, n, k]}`` and ``{bank: [slots, n, S]}``.
Statistics = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def expected_statistics(circuit: TensorCircuit, ev: Evidence) -> tuple[torch.Tensor, Statistics]:
    """Log-likelihoods ``[B]`` and EM statistics summed over the batch.

    Examples with log-likelihood ``-inf`` (impossible evidence) contribute nothing.
    """
    with torch.no_grad():
        lw = {k: v.detach().requires_grad_() for k, v in circuit.sum_log_weights().items()}
        leaves = [o.detach().requires_grad_() for o in circuit.leaf_values(ev)]
    with torch.enable_grad():
        ll = circuit.upward(ev, log_weights=lw, leaf_outputs=leaves)[-1][:, 0]
        finite = torch.isfinite(ll)
        total = torch.where(finite, ll, torch.zeros_like(ll)).sum()
        inputs = list(lw.values()) + leaves
        grads = torch.autograd.grad(total, inputs, allow_unused=True)
    sum_flows = {k: (g if g is not None else torch.zeros_like(v)) for (k, v), g in zip(lw.items(), grads)}
    leaf_stats: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, (blk, flows) in enumerate(zip(circuit.layout.leaf_blocks, grads[len(lw) :])):
            if not blk.dist.trainable:
                continue
            params, xb, mb, sb = circuit.leaf_block_inputs(ev, i)
            flows = torch.zeros_like(leaves[i]) if flows is None else flows
            stats = blk.dist.em_statistics(params, xb, mb, sb, flows)  # [G, n, S]
            bank = circuit.params[blk.bank]
            acc = leaf_stats.setdefault(blk.bank, stats.new_zeros(bank.shape[0], *stats.shape[1:]))
            acc.index_add_(0, circuit._get(f"leaf{i}_slots"), stats)
    return ll.detach(), (sum_flows, leaf_stats)


def _add(a: Statistics | None, b: Statistics) -> Statistics:
    if a is None:
        return b
    return ({k: a[0][k] + v for k, v in b[0].items()}, {k: a[1][k] + v for k, v in b[1].items()})


@torch.no_grad()
def apply_statistics(circuit: TensorCircuit, stats: Statistics, pseudocount: float, step_size: float) -> None:
    """Moves every parameter ``step_size`` of the way to its EM optimum given ``stats``.

    Sum weights of a node get ``pseudocount`` spread evenly over its edges.
    """
    sum_flows, leaf_stats = stats
    lw = circuit.sum_log_weights()
    for name, flows in sum_flows.items():
        old = lw[name].exp()
        spec = circuit.layout.banks[name]
        if spec.masks:
            mask = getattr(circuit, f"_mask_{name}")
            fan_in = mask.sum(-1, keepdim=True)
            new = (flows + pseudocount / fan_in) * mask
        else:
            mask = None
            new = flows + pseudocount / flows.shape[-1]
        total = new.sum(-1, keepdim=True)
        new = torch.where(total > 0, new / total.clamp_min(1e-300), old)
        probs = (1 - step_size) * old + step_size * new
        logits = torch.log(probs)
        if mask is not None:
            logits = logits.masked_fill(~mask, 0.0)
        circuit.params[name].copy_(logits)
    for name, s in leaf_stats.items():
        dist = circuit.layout.banks[name].dist
        p = circuit.params[name]
        p.copy_(dist.em_update(p.double(), s.double(), pseudocount, step_size))


def em(
    circuit: TensorCircuit,
    data: torch.Tensor | np.ndarray,
    epochs: int = 1,
    batch_size: int | None = None,
    step_size: float = 1.0,
    pseudocount: float = 0.1,
    missing: torch.Tensor | np.ndarray | None = None,
    soft_evidence: torch.Tensor | np.ndarray | None = None,
    shuffle: bool = True,
    seed: int = 0,
    chunk_size: int = 4096,
    progress: bool | None = None,
) -> list[float]:
    """Trains ``circuit`` in place with EM and returns the mean train log-likelihood of each epoch.

    With ``batch_size=None`` (or at least the data size) this is full-batch
    EM: statistics are accumulated over the whole data (in chunks of
    ``chunk_size`` examples) and applied once per epoch, and with
    ``step_size=1`` the log-likelihood never decreases. Otherwise it is
    mini-batch EM: after every batch the parameters move ``step_size``
    towards that batch's optimum.

    Args:
        circuit: the circuit to train.
        data: ``[N, V]`` training examples.
        epochs: passes over the data.
        batch_size: examples per update (``None``: all of them).
        step_size: in ``(0, 1]``.
        pseudocount: Laplace smoothing added per sum node and per leaf.
        missing: ``[N, V]`` bool, missing entries of ``data``.
        soft_evidence: ``[N, V, C]`` log-weights on discrete variables (see
            :meth:`~pcircuits.TensorCircuit.forward`); EM then maximises
            ``log sum_{x_missing} p(x) prod_i w_i(x_i)``, for example softened
            data (all entries missing, weights spread around the observed value).
        shuffle: reshuffle mini-batches every epoch.
        seed: seed of the shuffling.
        chunk_size: examples per pass when accumulating full-batch statistics.
        progress: show a progress bar (``None``: only on a terminal).

    Returns:
        The mean log-likelihood of the examples in each epoch, computed
        during the epoch (for full-batch EM: under the parameters before
        that epoch's update).
    """
    if not isinstance(circuit, TensorCircuit):
        raise TypeError(f"circuit must be a TensorCircuit, got {type(circuit).__name__}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not (0 < step_size <= 1):
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if pseudocount < 0:
        raise ValueError(f"pseudocount must be non-negative, got {pseudocount}")
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a torch.Tensor or numpy array, got {type(data).__name__}")
    if isinstance(missing, np.ndarray):
        missing = torch.from_numpy(missing)
    if isinstance(soft_evidence, np.ndarray):
        soft_evidence = torch.from_numpy(soft_evidence)
    for name, t in (("missing", missing), ("soft_evidence", soft_evidence)):
        if t is not None and (t.dim() < 2 or t.shape[0] != data.shape[0]):
            raise ValueError(f"{name} must have one row per example of data ({data.shape[0]}), got shape {tuple(t.shape)}")
    n = data.shape[0]
    full = batch_size is None or batch_size >= n
    if not full and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    bar = tqdm(range(epochs), desc="EM", disable=(not progress) if progress is not None else None)
    for _ in bar:
        order = torch.randperm(n, generator=gen) if (shuffle and not full) else torch.arange(n)
        size = chunk_size if full else batch_size
        acc: Statistics | None = None
        total_ll, count = 0.0, 0
        for i in range(0, n, size):
            idx = order[i : i + size]
            ev = circuit.prepare(
                data[idx],
                None if missing is None else missing[idx],
                None if soft_evidence is None else soft_evidence[idx],
            )
            ll, stats = expected_statistics(circuit, ev)
            total_ll += float(ll.sum())
            count += ll.numel()
            if full:
                acc = _add(acc, stats)
            else:
                apply_statistics(circuit, stats, pseudocount, step_size)
        if full:
            apply_statistics(circuit, acc, pseudocount, step_size)
        history.append(total_ll / count if count else math.nan)
        bar.set_postfix(ll=f"{history[-1]:.4f}")
    return history
