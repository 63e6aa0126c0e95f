"""Expectation-maximisation for circuit parameters.

The expected counts ("flows") come from one upward pass and autograd: for a
normalised sum weight, ``d log p(x) / d log w`` is the posterior probability
that the edge is on the example's active path, and for a leaf output it is
the probability that the leaf is active. Gradients accumulate over the batch
and over tied groups, so per-example edge flows are never stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from tqdm.auto import tqdm

from ..engine.circuit import Evidence, TensorCircuit
from .checks import check_int, check_real

__all__ = ["em", "expected_statistics", "apply_statistics", "Statistics"]

#: ``(sum_flows, leaf_stats)``: ``{bank: [slots, n, k]}`` and ``{bank: [slots, n, S]}``.
Statistics = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def expected_statistics(
    circuit: TensorCircuit, ev: Evidence, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, Statistics]:
    """Log-likelihoods ``[B]`` and EM statistics summed over the batch.

    Examples with log-likelihood ``-inf`` (impossible evidence) contribute nothing.
    With ``weights [B]`` (non-negative), example ``b``'s statistics count ``weights[b]`` times.
    """
    with torch.no_grad():
        lw = {k: v.detach().requires_grad_() for k, v in circuit.sum_log_weights().items()}
        leaves = [o.detach().requires_grad_() for o in circuit.leaf_values(ev)]
    with torch.enable_grad():
        ll = circuit.upward(ev, log_weights=lw, leaf_outputs=leaves)[-1][:, 0]
        finite = torch.isfinite(ll)
        kept = torch.where(finite, ll, torch.zeros_like(ll))
        total = (kept if weights is None else kept * weights.to(kept)).sum()
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
    Every new parameter is computed and checked before any is written.

    Raises:
        ValueError: a bad ``pseudocount`` (finite, ``>= 0``) or ``step_size``
            (in ``(0, 1]``), or an update that would write NaN, ``+inf`` or an
            invalid leaf parameter (the circuit is then left unchanged).
    """
    pseudocount = check_real(pseudocount, "pseudocount", low=0.0)
    step_size = check_real(step_size, "step_size", low=0.0, high=1.0, low_open=True)
    new = _updated_parameters(circuit, stats, pseudocount, step_size)
    for name, value in new.items():
        circuit.params[name].copy_(value)


def _updated_parameters(
    circuit: TensorCircuit, stats: Statistics, pseudocount: float, step_size: float
) -> dict[str, torch.Tensor]:
    """New values ``{bank: [slots, ...]}`` of the banks touched by ``stats``, checked, in the banks' dtypes."""
    sum_flows, leaf_stats = stats
    for kind, group in (("sum", sum_flows), ("leaf", leaf_stats)):
        for name, t in group.items():
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                idx = tuple(bad.nonzero()[0].tolist())
                raise ValueError(f"{_UNCHANGED}: the statistics of {kind} bank {name!r} hold {t[idx].item()} at index {idx}")
    lw = circuit.sum_log_weights()
    out: dict[str, torch.Tensor] = {}
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
        logits = torch.log(probs).to(circuit.params[name].dtype)
        if mask is not None:
            logits = logits.masked_fill(~mask, 0.0)
        _check_sum_logits(name, logits, mask)
        out[name] = logits
    for name, s in leaf_stats.items():
        dist = circuit.layout.banks[name].dist
        p = circuit.params[name]
        value = dist.em_update(p.double(), s.double(), pseudocount, step_size).to(p.dtype)
        try:
            dist.check_params(value, f"leaf bank {name!r}")
        except ValueError as err:
            raise ValueError(f"{_UNCHANGED}: {err}") from None
        out[name] = value
    return out


_UNCHANGED = (
    "EM would write invalid parameters (its statistics overflowed or were NaN: are values of data too large "
    "for the circuit's dtype?); the circuit is left unchanged"
)


def _check_sum_logits(name: str, logits: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Raises ``ValueError`` unless ``logits [slots, n, k]`` hold no NaN or ``+inf`` and each node a finite edge."""
    bad = torch.isnan(logits) | (logits == math.inf)
    if bool(bad.any()):
        idx = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"{_UNCHANGED}: sum bank {name!r} would get {logits[idx].item()} at index {idx}")
    live = torch.isfinite(logits) if mask is None else torch.isfinite(logits) & mask
    dead = ~live.any(-1)
    if bool(dead.any()):
        idx = tuple(dead.nonzero()[0].tolist())
        raise ValueError(f"{_UNCHANGED}: sum bank {name!r} would give node {idx} no edge of positive weight")


def _check_data(
    circuit: TensorCircuit,
    data: torch.Tensor,
    missing: torch.Tensor | None,
    soft_evidence: torch.Tensor | None,
    chunk_size: int,
) -> None:
    """Runs :meth:`TensorCircuit.prepare`'s checks over all of ``data`` before any update.

    Raises:
        TypeError, ValueError: from ``prepare``, prefixed with ``data`` and the rows checked.
    """
    n = data.shape[0]
    for i in range(0, max(n, 1), chunk_size):
        j = min(n, i + chunk_size)
        try:
            circuit.prepare(
                data[i:j], None if missing is None else missing[i:j], None if soft_evidence is None else soft_evidence[i:j]
            )
        except (TypeError, ValueError) as err:
            where = "" if i == 0 and j == n else f" (rows {i}..{j - 1}; row numbers below count from {i})"
            raise type(err)(f"data{where}: {err}") from None


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

    Raises:
        TypeError: a non-integer ``epochs``/``batch_size``/``chunk_size``/``seed``,
            a non-numeric ``step_size``/``pseudocount``, or inputs that are not tensors.
        ValueError: ``epochs``, ``batch_size`` or ``chunk_size`` below 1,
            ``step_size`` outside ``(0, 1]``, ``pseudocount`` negative or not
            finite, evidence that :meth:`~pcircuits.TensorCircuit.prepare`
            refuses (checked for all rows before the first update, the
            message prefixed with ``data``), or an update that would write
            NaN or ``inf`` into the circuit. The circuit is changed only when
            all epochs succeed.
    """
    if not isinstance(circuit, TensorCircuit):
        raise TypeError(f"circuit must be a TensorCircuit, got {type(circuit).__name__}")
    epochs = check_int(epochs, "epochs", 1)
    step_size = check_real(step_size, "step_size", low=0.0, high=1.0, low_open=True)
    pseudocount = check_real(pseudocount, "pseudocount", low=0.0)
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    seed = check_int(seed, "seed")
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", 1)
    data, missing, soft_evidence = _checked_inputs(circuit, data, missing, soft_evidence, chunk_size)
    n = data.shape[0]
    full = batch_size is None or batch_size >= n
    with all_or_nothing(circuit):
        return _run_em(
            circuit, data, missing, soft_evidence, epochs, batch_size, full, step_size, pseudocount, shuffle, seed,
            chunk_size, progress,
        )


@contextmanager
def all_or_nothing(circuit: TensorCircuit) -> Iterator[None]:
    """Restores every parameter of ``circuit`` when the block raises (a failed run leaves it as it was)."""
    saved = {k: v.detach().clone() for k, v in circuit.params.items()}
    try:
        yield
    except BaseException:
        with torch.no_grad():
            for k, v in saved.items():
                circuit.params[k].copy_(v)
        raise


def _checked_inputs(
    circuit: TensorCircuit,
    data: torch.Tensor | np.ndarray,
    missing: torch.Tensor | np.ndarray | None,
    soft_evidence: torch.Tensor | np.ndarray | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``data [N, V]``, ``missing [N, V]`` and ``soft_evidence [N, V, C]`` as tensors, all rows checked by ``prepare``.

    Raises:
        TypeError: inputs that are neither tensors nor numpy arrays.
        ValueError: ``missing``/``soft_evidence`` without one row per example, or evidence
            :meth:`~pcircuits.TensorCircuit.prepare` refuses (the message prefixed with ``data``).
    """
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a torch.Tensor or numpy array, got {type(data).__name__}")
    if isinstance(missing, np.ndarray):
        missing = torch.from_numpy(missing)
    if isinstance(soft_evidence, np.ndarray):
        soft_evidence = torch.from_numpy(soft_evidence)
    for name, t in (("missing", missing), ("soft_evidence", soft_evidence)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(t).__name__}")
        if t is not None and (t.dim() < 2 or data.dim() < 1 or t.shape[0] != data.shape[0]):
            raise ValueError(f"{name} must have one row per example of data ({data.shape[0]}), got shape {tuple(t.shape)}")
    _check_data(circuit, data, missing, soft_evidence, chunk_size)
    return data, missing, soft_evidence


def _run_em(
    circuit: TensorCircuit,
    data: torch.Tensor,
    missing: torch.Tensor | None,
    soft_evidence: torch.Tensor | None,
    epochs: int,
    batch_size: int | None,
    full: bool,
    step_size: float,
    pseudocount: float,
    shuffle: bool,
    seed: int,
    chunk_size: int,
    progress: bool | None,
) -> list[float]:
    """The epochs of :func:`em` on checked arguments; returns the mean log-likelihood per epoch."""
    n = data.shape[0]
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
