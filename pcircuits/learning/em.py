"""Expectation-maximisation for circuit parameters.

The expected counts ("flows") come from one upward pass and autograd: for a
normalised sum weight, ``d log p(x) / d log w`` is the posterior probability
that the edge is on the example's active path, and for a leaf output it is
the probability that the leaf is active. Gradients accumulate over the batch
and over tied groups, so per-example edge flows are never stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed as pdist
from ..atomic import atomic_write
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
    sum_grads = zip(lw.items(), grads[: len(lw)], strict=True)  # grads: the sum weights', then the leaves'
    sum_flows = {k: (g if g is not None else torch.zeros_like(v)) for (k, v), g in sum_grads}
    leaf_stats: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, (blk, flows) in enumerate(zip(circuit.layout.leaf_blocks, grads[len(lw) :], strict=True)):
            if not blk.dist.trainable:
                continue
            params, xb, mb, sb = circuit.leaf_block_inputs(ev, i)
            flows = torch.zeros_like(leaves[i]) if flows is None else flows
            stats = blk.dist.em_statistics(params, xb, mb, sb, flows)  # [G, n, S]
            bank = circuit.params[blk.bank]
            acc = leaf_stats.setdefault(blk.bank, stats.new_zeros(bank.shape[0], *stats.shape[1:]))
            acc.index_add_(0, circuit.leaf_blocks()[i].slots, stats)
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
                raise ValueError(
                    f"{_UNCHANGED}: the statistics of {kind} bank {name!r} hold {t[idx].item()} at index {idx}"
                )
    lw = circuit.sum_log_weights()
    out: dict[str, torch.Tensor] = {}
    for name, flows in sum_flows.items():
        old = lw[name].exp()
        mask = circuit.banks()[name].mask
        if mask is not None:
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
    rows: slice | None = None,
) -> None:
    """Runs [`TensorCircuit.prepare`][pcircuits.engine.circuit.TensorCircuit.prepare]'s checks over ``data[rows]``
    (default: all of it) before any update.

    Raises:
        TypeError, ValueError: from ``prepare``, prefixed with ``data`` and the rows checked.
    """
    n = data.shape[0]
    lo, hi = (0, n) if rows is None else (rows.start, rows.stop)
    for i in range(lo, max(hi, lo + 1), chunk_size):
        j = min(hi, i + chunk_size)
        if j <= i and (i > 0 or n > 0):
            break  # an empty share of the data (more ranks than rows): nothing to check
        try:
            circuit.prepare(
                data[i:j],
                None if missing is None else missing[i:j],
                None if soft_evidence is None else soft_evidence[i:j],
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
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    distributed: bool | None = None,
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
            [`forward`][pcircuits.engine.circuit.TensorCircuit.forward]); EM then maximises
            ``log sum_{x_missing} p(x) prod_i w_i(x_i)``, for example softened
            data (all entries missing, weights spread around the observed value).
        shuffle: reshuffle mini-batches every epoch.
        seed: seed of the shuffling.
        chunk_size: examples per pass when accumulating full-batch statistics.
        progress: show a progress bar (``None``: only on a terminal; never on ranks other than 0).
        checkpoint: a directory (created if missing; its parent must exist)
            where the circuit and the epochs done are written after every
            epoch (by rank 0 only; the other ranks wait), as
            ``circuit-<epoch>.safetensors`` (a [`pcircuits.save`][pcircuits.io.save] file) and
            ``em_state.json``.
        resume: continue from ``checkpoint`` if it holds a state (its
            parameters replace the circuit's, the epochs done are skipped and
            their log-likelihoods returned first; mini-batch shuffles are
            replayed, so an interrupted run resumed gives the uninterrupted
            result); start from the circuit if it holds none.
        distributed: data-parallel over ``torch.distributed`` (see
            [`pcircuits.distributed`][pcircuits.distributed]): ``None`` when a default process
            group with several ranks is initialised, ``True`` (required) or
            ``False``. Every rank passes the same ``data``; rank 0's
            parameters are broadcast first, each rank computes the statistics
            of its share of every chunk or mini-batch, and the statistics and
            log-likelihoods are all-reduced before every update, so the
            result equals the single-process one up to the order of sums.

    Returns:
        The mean log-likelihood of the examples in each epoch, computed
        during the epoch (for full-batch EM: under the parameters before
        that epoch's update).

    Raises:
        TypeError: a non-integer ``epochs``/``batch_size``/``chunk_size``/``seed``,
            a non-numeric ``step_size``/``pseudocount``, or inputs that are not tensors.
        ValueError: ``epochs``, ``batch_size`` or ``chunk_size`` below 1,
            ``step_size`` outside ``(0, 1]``, ``pseudocount`` negative or not
            finite, evidence that [`prepare`][pcircuits.engine.circuit.TensorCircuit.prepare]
            refuses (checked for all rows before the first update, the
            message prefixed with ``data``), or an update that would write
            NaN or ``inf`` into the circuit. The circuit is changed only when
            all epochs succeed. A ``checkpoint`` that is not a directory, or
            whose state disagrees with the data, the settings or the circuit
            when resuming; ``resume`` without ``checkpoint``; ``data`` of
            different sizes on different ranks; ``distributed=True`` without
            an initialised process group.
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
    data, missing, soft_evidence = _as_tensors(data, missing, soft_evidence)
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {resume!r}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint directory")
    on = pdist.active(distributed)
    n = data.shape[0]
    pdist.check_same(n, "data (its number of rows)", on)
    error = None
    try:
        _check_data(
            circuit, data, missing, soft_evidence, chunk_size, pdist.shard(n, pdist.rank(on), pdist.world_size(on))
        )
    except (TypeError, ValueError) as err:
        error = err
    pdist.agree_on_failure(error, "checking data", on)
    full = batch_size is None or batch_size >= n
    settings = {"examples": n, "batch_size": None if full else batch_size, "shuffle": shuffle, "seed": seed,
                "step_size": step_size, "pseudocount": pseudocount}
    with all_or_nothing(circuit):  # a failed run leaves the circuit as it was
        start, history = (0, [])
        if resume:
            start, history = _resume(circuit, Path(checkpoint), settings, epochs, on)
        if on:
            pdist.broadcast_tensors(circuit.params.values())
        return _run_em(
            circuit, data, missing, soft_evidence, epochs, batch_size, full, step_size, pseudocount, shuffle, seed,
            chunk_size, progress, on=on, start=start, history=history,
            checkpoint=None if checkpoint is None else Path(checkpoint), settings=settings,
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


def _as_tensors(
    data: torch.Tensor | np.ndarray,
    missing: torch.Tensor | np.ndarray | None,
    soft_evidence: torch.Tensor | np.ndarray | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``data [N, V]``, ``missing [N, V]`` and ``soft_evidence [N, V, C]`` as tensors with one row per example.

    Raises:
        TypeError: inputs that are neither tensors nor numpy arrays.
        ValueError: ``missing``/``soft_evidence`` without one row per example.
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
            raise ValueError(
                f"{name} must have one row per example of data ({data.shape[0]}), got shape {tuple(t.shape)}"
            )
    return data, missing, soft_evidence


def _checked_inputs(
    circuit: TensorCircuit,
    data: torch.Tensor | np.ndarray,
    missing: torch.Tensor | np.ndarray | None,
    soft_evidence: torch.Tensor | np.ndarray | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Like `_as_tensors`, with every row checked by ``prepare`` (messages prefixed with ``data``)."""
    data, missing, soft_evidence = _as_tensors(data, missing, soft_evidence)
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
    *,
    on: bool = False,
    start: int = 0,
    history: list[float] | None = None,
    checkpoint: Path | None = None,
    settings: dict | None = None,
) -> list[float]:
    """The epochs ``start..epochs-1`` of [`em`][pcircuits.learning.em.em] on checked arguments; returns the mean
    log-likelihood per epoch.

    With ``on``, this rank handles its share of every chunk or batch and the
    statistics are all-reduced before each update.
    """
    n = data.shape[0]
    gen = torch.Generator().manual_seed(seed)
    history = list(history or [])
    for _ in range(start):  # replay the shuffles of the epochs done before a resume
        if shuffle and not full:
            torch.randperm(n, generator=gen)
    hide = (not progress) if progress is not None else None
    bar = tqdm(range(start, epochs), desc="EM", initial=start, total=epochs, disable=True if pdist.rank(on) else hide)
    for epoch in bar:
        order = torch.randperm(n, generator=gen) if (shuffle and not full) else torch.arange(n)
        if full:
            mine = order[pdist.shard(n, pdist.rank(on), pdist.world_size(on))]
            total_ll, count, acc = _share_statistics(circuit, data, missing, soft_evidence, mine, chunk_size, on)
            apply_statistics(circuit, acc, pseudocount, step_size)
        else:
            total_ll, count = 0.0, 0
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                mine = idx[pdist.shard(len(idx), pdist.rank(on), pdist.world_size(on))]
                ll, c, stats = _share_statistics(circuit, data, missing, soft_evidence, mine, batch_size, on)
                total_ll, count = total_ll + ll, count + c
                apply_statistics(circuit, stats, pseudocount, step_size)
        history.append(total_ll / count if count else math.nan)
        bar.set_postfix(ll=f"{history[-1]:.4f}")
        if checkpoint is not None:
            _write_checkpoint(circuit, checkpoint, epoch + 1, history, settings or {}, on)
    return history


def _share_statistics(
    circuit: TensorCircuit,
    data: torch.Tensor,
    missing: torch.Tensor | None,
    soft_evidence: torch.Tensor | None,
    rows: torch.Tensor,
    chunk_size: int,
    on: bool,
) -> tuple[float, int, Statistics]:
    """Summed log-likelihood, example count and statistics of ``data[rows]`` (``rows [b]``), in chunks.

    With ``on``, all three are summed over the ranks (each passing its own
    ``rows``, possibly none), so every rank returns the whole batch's values.
    """
    acc: Statistics | None = None
    total_ll, count = 0.0, 0
    for i in range(0, max(len(rows), 1), chunk_size):
        idx = rows[i : i + chunk_size]
        empty = len(idx) == 0  # a rank without examples still takes part in the all-reduce, with zeros
        idx = torch.zeros(1, dtype=torch.long) if empty else idx
        ev = circuit.prepare(
            data[idx], None if missing is None else missing[idx], None if soft_evidence is None else soft_evidence[idx]
        )
        ll, stats = expected_statistics(circuit, ev)
        if empty:
            stats = (
                {k: torch.zeros_like(v) for k, v in stats[0].items()},
                {k: torch.zeros_like(v) for k, v in stats[1].items()},
            )
        else:
            total_ll += float(ll.sum())
            count += ll.numel()
        acc = _add(acc, stats)
    assert acc is not None
    if on:
        totals = torch.tensor([total_ll, float(count)], dtype=torch.float64, device=pdist.control_device())
        pdist.all_reduce_sum([*acc[0].values(), *acc[1].values(), totals])
        total_ll, count = float(totals[0]), int(totals[1])
    return total_ll, count, acc


_CHECKPOINT_FORMAT = "pcircuits-em-checkpoint"
_STATE_FILE = "em_state.json"


def _write_checkpoint(
    circuit: TensorCircuit, directory: Path, done: int, history: list[float], settings: dict, on: bool
) -> None:
    """Rank 0 writes ``circuit-<done>.safetensors`` then ``em_state.json`` naming it (the commit point).

    The other ranks wait.

    Raises:
        ValueError: ``directory`` is a file or its parent does not exist (on every rank).
    """
    with pdist.rank_zero_writes(on) as writer:
        if writer:
            if directory.exists() and not directory.is_dir():
                raise ValueError(f"checkpoint: {os.fspath(directory)!r} is a file, expected a directory")
            if not directory.parent.is_dir():
                raise ValueError(f"checkpoint: the parent directory of {os.fspath(directory)!r} does not exist")
            directory.mkdir(exist_ok=True)
            name = f"circuit-{done:06d}.safetensors"
            from ..io import save

            save(circuit, directory / name)
            state = {"format": _CHECKPOINT_FORMAT, "version": 1, "epochs_done": done, "circuit": name,
                     "history": history, "settings": settings}
            with atomic_write(directory / _STATE_FILE, "w") as f:
                json.dump(state, f)
            for old in directory.glob("circuit-*.safetensors"):
                if old.name != name:
                    old.unlink()


def _resume(circuit: TensorCircuit, directory: Path, settings: dict, epochs: int, on: bool) -> tuple[int, list[float]]:
    """Rank 0 reads the checkpoint into ``circuit``; returns ``(epochs done, their log-likelihoods)`` on every rank.

    The parameters reach the other ranks by the broadcast that starts every
    distributed run. ``(0, [])`` when ``directory`` holds no state yet.
    """
    result, error = None, None
    if pdist.rank(on) == 0:
        try:
            result = _read_checkpoint(circuit, directory, settings, epochs)
        except (TypeError, ValueError) as err:
            error = err
    pdist.agree_on_failure(error, "reading the EM checkpoint", on)
    if on:
        result = pdist.broadcast_object(result)
    return result


def _read_checkpoint(circuit: TensorCircuit, directory: Path, settings: dict, epochs: int) -> tuple[int, list[float]]:
    """Checks the state in ``directory`` against this run and copies its parameters into ``circuit``.

    Raises:
        ValueError: a malformed state, settings or data size that differ from
            this run's, more epochs done than ``epochs``, or a saved circuit
            whose parameter banks differ from ``circuit``'s.
    """
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint: {os.fspath(directory)!r} is a file, expected a directory")
    path = directory / _STATE_FILE
    if not path.exists():
        return 0, []
    done, history, name = _read_state(path, settings)
    if done > epochs:
        raise ValueError(f"epochs: the checkpoint already holds {done} epochs, more than epochs={epochs}")
    _copy_saved_params(circuit, directory / name)
    return done, [float(h) for h in history]


def _read_state(path: Path, settings: dict) -> tuple[int, list, str]:
    """``(epochs done, history, circuit file name)`` of the state file ``path``, checked against ``settings``.

    Raises:
        ValueError: the file cannot be read, is malformed, or was written with other settings.
    """
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint: cannot read {os.fspath(path)!r} ({err})") from None
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT or state.get("version") != 1:
        raise ValueError(f"checkpoint: {os.fspath(path)!r} is not a version-1 EM checkpoint state")
    done, history, name = state.get("epochs_done"), state.get("history"), state.get("circuit")
    if not (isinstance(done, int) and done >= 1 and isinstance(history, list) and len(history) == done
            and all(isinstance(h, (int, float)) for h in history) and isinstance(name, str)
            and name == os.path.basename(name)):
        raise ValueError(f"checkpoint: {os.fspath(path)!r} has a malformed epochs_done, history or circuit entry")
    written = state.get("settings")
    if not isinstance(written, dict):
        raise ValueError(f"checkpoint: {os.fspath(path)!r} has no settings entry")  # noqa: TRY004 (bad file content)
    for key, value in settings.items():
        if written.get(key) != value:
            raise ValueError(
                f"checkpoint: it was written with {key}={written.get(key)!r}, this run has {key}={value!r}"
            )
    return done, history, name


def _copy_saved_params(circuit: TensorCircuit, path: Path) -> None:
    """Copies the parameter banks of the circuit saved at ``path`` into ``circuit``.

    Raises:
        ValueError: the saved circuit's banks differ in names or shapes from ``circuit``'s.
    """
    from ..io import load

    saved = load(path)
    mine = {k: tuple(v.shape) for k, v in circuit.params.items()}
    theirs = {k: tuple(v.shape) for k, v in saved.params.items()}
    if mine != theirs:
        raise ValueError(f"checkpoint: its circuit has parameter banks {theirs}, the circuit being trained has {mine}")
    with torch.no_grad():
        for k, v in saved.params.items():
            circuit.params[k].copy_(v.to(circuit.params[k].device, circuit.params[k].dtype))
