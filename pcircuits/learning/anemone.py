"""Anemone: mini-batch EM with a per-node adaptive step (Liu, Shao & Van den Broeck 2025).

Reference: "Rethinking Probabilistic Circuit Parameter Learning", arXiv 2505.19982.

Shapes: ``B`` examples in a batch, ``V`` variables, ``C`` categories; a sum
bank's weights and flows are ``[slots, n, k]`` and a leaf bank's statistics
``[slots, n, S]``, as in [`pcircuits.learning.em`][pcircuits.learning.em].

**The update (joint likelihood).** Plain mini-batch EM moves every parameter
the same fraction ``alpha`` of the way to the current batch's EM optimum, so a
node the batch barely reaches is still dragged to an optimum computed from
almost no flow: each update "overfits" the batch. Anemone regularises the
batch's EM objective with the KL divergence from the current circuit, which
for a circuit is a sum over nodes weighted by the node's *top-down
probability* ``q_n`` (the probability that a sample of the circuit passes
through node ``n``). The closed-form maximiser is EM on mixed statistics:

``theta'_{n,c}  proportional to  alpha / B * F_{n,c}  +  (1 - alpha) * q_n * theta_{n,c}``

with ``F_{n,c}`` the edge flows summed over the batch (leaves alike: their
expected sufficient statistics against ``q_leaf`` times the statistics the
leaf expects of itself). Written as a step, ``theta' = (1 - eta_n) theta +
eta_n theta_batch`` with ``eta_n = alpha F_n / B / (alpha F_n / B + (1 - alpha)
q_n)``: a node whose share of the batch's flow ``F_n / B`` is large against
``q_n`` moves far, a node the batch hardly uses stays. The statistics ``q *
theta`` of every parameter at once are the flows of one example with every
variable missing (``d log p(nothing) / d log theta = q theta``), so they come
from the same pass as EM's flows and tied parameters sum over their nodes.
``pseudocount`` is counted with the batch (``alpha / B * pseudocount``).

**The conditional objective** (``objective="conditional"``): maximise
``log p(x_m | x_o, w) = log p(x) + sum_{i in m} w_i(x_i) - log sum_{x_m}
p(x_o, x_m) prod_{i in m} w_i(x_i)`` over the rows' masked variables ``m``
(``missing``) with soft evidence ``w``, e.g. a CoDD prior on frozen backbone
logits. Its gradient in a node's softmax logits is ``g_c = (F+_c - theta_c F+_n)
- (F-_c - theta_c F-_n)`` with ``F+`` the flows of the fully observed rows and
``F-`` those under the soft evidence. The step is Anemone's with the
numerator's flows as the node's batch share, ``theta' = theta + alpha / B *
g / (alpha F+_n / B + (1 - alpha) q_n)`` (for ``F- = 0`` it is exactly the
joint update above), shortened per node where needed so that no weight loses
more than half of its value (the difference of flows can point below zero;
the joint update never does). A node whose step size is undefined (``alpha =
1`` and no flow from the observed rows) keeps its weights. Sum weights and
discrete leaves only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..distributions.base import DiscreteDistribution
from ..engine.circuit import TensorCircuit
from .checks import check_int, check_real
from .em import Statistics, _checked_inputs, _updated_parameters, all_or_nothing, expected_statistics

__all__ = ["anemone", "anemone_step", "model_statistics", "OBJECTIVES"]

#: The objectives [`anemone`][pcircuits.learning.anemone.anemone] and
#: [`anemone_step`][pcircuits.learning.anemone.anemone_step] maximise.
OBJECTIVES = ("joint", "conditional")

#: In the conditional update, no weight falls below this fraction of its old value in one step.
_KEEP = 0.5


def model_statistics(circuit: TensorCircuit) -> Statistics:
    """The statistics the circuit expects of one example of its own: ``q * theta`` per parameter.

    Sum banks ``{bank: [slots, n, k]}`` hold ``q_n theta_{n,c}`` (summed over
    tied nodes), leaf banks ``{bank: [slots, n, S]}`` ``q_leaf`` times the
    leaf's own expected sufficient statistics; both are the flows of one
    example whose every variable is missing.
    """
    V = circuit.num_vars
    x = torch.zeros(1, V, dtype=circuit.dtype, device=circuit.device)  # a placeholder: every entry is missing
    ev = circuit.prepare(x, torch.ones(1, V, dtype=torch.bool, device=circuit.device))
    _, stats = expected_statistics(circuit, ev)
    return stats


def _mixed(stats: Statistics, model: Statistics, count: float, step_size: float) -> Statistics:
    """``alpha / count * stats + (1 - alpha) * model`` bank by bank (the joint update's statistics)."""
    a = step_size / count
    return (
        {k: a * v + (1 - step_size) * model[0][k] for k, v in stats[0].items()},
        {k: a * v + (1 - step_size) * model[1][k] for k, v in stats[1].items()},
    )


def _conditional_bank(
    theta: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, model: torch.Tensor, count: float, step_size: float
) -> torch.Tensor:
    """Statistics ``[slots, n, k]`` whose normalisation is the conditional step of one bank.

    ``theta`` are the bank's probabilities, ``pos``/``neg`` the flows of the
    observed and soft-evidence passes, ``model`` its [`model_statistics`][pcircuits.learning.anemone.model_statistics].
    """
    a = step_size / count
    grad = (pos - theta * pos.sum(-1, keepdim=True)) - (neg - theta * neg.sum(-1, keepdim=True))
    norm = a * pos.sum(-1, keepdim=True) + (1 - step_size) * model.sum(-1, keepdim=True)  # [slots, n, 1]
    step = a * grad  # theta' = theta + step / norm
    # shorten the step of a node where some weight would lose more than _KEEP of its value
    room = torch.where(step < 0, _KEEP * theta * norm / (-step).clamp_min(1e-300), torch.full_like(step, math.inf))
    scale = room.amin(-1, keepdim=True).clamp(max=1.0)
    out = (norm * theta + scale * step).clamp_min(0.0)
    # a node with no step size (alpha = 1 and no flow from the observed rows) keeps its weights: all-zero
    # statistics leave a node unchanged, where rounding remnants of the step would normalise to a wrong row
    return torch.where(norm > 0, out, torch.zeros_like(out))


def _conditional_statistics(
    circuit: TensorCircuit, pos: Statistics, neg: Statistics, model: Statistics, count: float, step_size: float
) -> Statistics:
    """The conditional update's statistics for every sum bank and discrete leaf bank."""
    lw = circuit.sum_log_weights()
    sums = {k: _conditional_bank(lw[k].exp(), v, neg[0][k], model[0][k], count, step_size) for k, v in pos[0].items()}
    leaves = {}
    for k, v in pos[1].items():
        dist = circuit.layout.banks[k].dist
        theta = dist.log_table(circuit.params[k].detach().to(v.dtype)).exp()
        leaves[k] = _conditional_bank(theta, v, neg[1][k], model[1][k], count, step_size)
    return sums, leaves


def _check_conditional_leaves(circuit: TensorCircuit) -> None:
    for blk in circuit.layout.leaf_blocks:
        if blk.dist.trainable and not isinstance(blk.dist, DiscreteDistribution):
            raise ValueError(
                "objective: 'conditional' trains sum weights and discrete leaves only, "
                f"the circuit has {blk.dist!r} leaves"
            )


def _check_objective(objective: object) -> str:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    return str(objective)


def anemone_step(
    circuit: TensorCircuit,
    data: torch.Tensor,
    missing: torch.Tensor | None = None,
    soft_evidence: torch.Tensor | None = None,
    step_size: float = 0.5,
    pseudocount: float = 0.1,
    objective: str = "joint",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Anemone update of ``circuit`` from one batch; returns the batch's objective per row before it.

    Args:
        circuit: the circuit (updated in place).
        data: ``[B, V]`` examples (with ``objective="conditional"``, the
            targets of the masked entries too).
        missing: ``[B, V]`` bool: missing entries (``"joint"``) or the masked
            entries whose values are scored (``"conditional"``, required).
        soft_evidence: ``[B, V, C]`` log-weights (see [`forward`][pcircuits.engine.circuit.TensorCircuit.forward]).
        step_size: ``alpha`` in ``(0, 1]`` (1: the batch's EM optimum).
        pseudocount: Laplace smoothing counted with the batch.
        objective: ``"joint"`` (``log sum_{x_missing} p(x) prod w``) or
            ``"conditional"`` (``log p(x_masked | x_observed, w)``; see the module docstring).
        weights: ``[B]`` non-negative weight of each row (``None``: 1 each);
            the batch size of the update is their sum over rows with a finite objective.

    Returns:
        ``[B]`` each row's objective under the parameters before the update
        (``-inf`` for impossible rows, which do not count).

    Raises:
        TypeError, ValueError: bad arguments (each named), evidence that
            [`prepare`][pcircuits.engine.circuit.TensorCircuit.prepare] refuses, or an update
            that would write NaN or ``inf`` (the circuit is then unchanged).
    """
    objective = _check_objective(objective)
    step_size = check_real(step_size, "step_size", low=0.0, high=1.0, low_open=True)
    pseudocount = check_real(pseudocount, "pseudocount", low=0.0)
    if not isinstance(circuit, TensorCircuit):
        raise TypeError(f"circuit must be a TensorCircuit, got {type(circuit).__name__}")
    if objective == "conditional":
        _check_conditional_leaves(circuit)
        if missing is None:
            raise ValueError("missing: objective='conditional' needs the masked entries ([B, V] bool), got None")
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (data.shape[0],):
            raise ValueError(
                f"weights must be a tensor [{data.shape[0]}], got {getattr(weights, 'shape', type(weights))}"
            )
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError("weights must be finite and non-negative")
    return _step(circuit, data, missing, soft_evidence, step_size, pseudocount, objective, weights)


def _step(
    circuit: TensorCircuit,
    data: torch.Tensor,
    missing: torch.Tensor | None,
    soft_evidence: torch.Tensor | None,
    step_size: float,
    pseudocount: float,
    objective: str,
    weights: torch.Tensor | None,
) -> torch.Tensor:
    """[`anemone_step`][pcircuits.learning.anemone.anemone_step] on checked arguments."""
    dev = circuit.device
    data = data.to(dev)
    missing = None if missing is None else missing.to(dev)
    soft_evidence = None if soft_evidence is None else soft_evidence.to(dev)
    w = (
        torch.ones(data.shape[0], dtype=circuit.dtype, device=dev)
        if weights is None
        else weights.to(dev, circuit.dtype)
    )
    ev = circuit.prepare(data, missing, soft_evidence)
    ll, stats = expected_statistics(circuit, ev, w)
    neg = None
    if objective == "conditional":
        den, neg = ll, stats
        ll, stats = expected_statistics(circuit, circuit.prepare(data), w * torch.isfinite(den))
        if bool((torch.isfinite(den) & ~torch.isfinite(ll)).any()):  # count a row in both passes or in neither
            _, neg = expected_statistics(circuit, ev, w * torch.isfinite(ll))
        ll = ll + _evidence_at(data, missing, soft_evidence) - den
        ll = torch.where(torch.isfinite(ll), ll, torch.full_like(ll, -math.inf))
    count = float((w * torch.isfinite(ll)).sum())
    if count <= 0:
        return ll.detach()
    model = model_statistics(circuit)
    mixed = _mixed(stats, model, count, step_size) if neg is None else _conditional_statistics(
        circuit, stats, neg, model, count, step_size
    )
    new = _updated_parameters(circuit, mixed, step_size * pseudocount / count, 1.0)
    with torch.no_grad():
        for name, value in new.items():
            circuit.params[name].copy_(value)
    return ll.detach()


def _evidence_at(data: torch.Tensor, missing: torch.Tensor, soft_evidence: torch.Tensor | None) -> torch.Tensor:
    """``[B]`` ``sum_{i masked} w_i(x_i)``: the soft evidence's log-weight of the targets (0 without evidence)."""
    if soft_evidence is None:
        return torch.zeros(data.shape[0], dtype=torch.float64, device=data.device)
    idx = data.long().clamp(0, soft_evidence.shape[-1] - 1).unsqueeze(-1)
    at = soft_evidence.gather(-1, idx)[..., 0].double()
    return torch.where(missing, at, torch.zeros_like(at)).sum(-1)


def anemone(
    circuit: TensorCircuit,
    data: torch.Tensor | np.ndarray,
    epochs: int = 1,
    batch_size: int = 256,
    step_size: float = 0.5,
    pseudocount: float = 0.1,
    missing: torch.Tensor | np.ndarray | None = None,
    soft_evidence: torch.Tensor | np.ndarray | None = None,
    objective: str = "joint",
    shuffle: bool = True,
    seed: int = 0,
    progress: bool | None = None,
) -> list[float]:
    """Trains ``circuit`` in place with Anemone and returns the mean train objective of each epoch.

    Anemone is mini-batch EM whose every node moves toward the batch's
    optimum by its own step ``eta_n = alpha F_n / B / (alpha F_n / B + (1 -
    alpha) q_n)``, large where the batch's flow through the node is large
    against the node's top-down probability ``q_n`` (see the module docstring
    for the update and for the conditional objective).

    Args:
        circuit: the circuit to train.
        data: ``[N, V]`` training examples.
        epochs: passes over the data.
        batch_size: examples per update.
        step_size: ``alpha`` in ``(0, 1]``.
        pseudocount: Laplace smoothing, counted with each batch.
        missing: ``[N, V]`` bool: missing entries (``"joint"``) or the masked
            entries scored by the conditional objective.
        soft_evidence: ``[N, V, C]`` log-weights on discrete variables.
        objective: ``"joint"`` or ``"conditional"`` (see [`anemone_step`][pcircuits.learning.anemone.anemone_step]).
        shuffle: reshuffle the batches every epoch.
        seed: seed of the shuffling.
        progress: show a progress bar (``None``: only on a terminal).

    Returns:
        The mean objective of the rows in each epoch, each row computed
        during the epoch under the parameters before its batch's update.

    Raises:
        TypeError: non-integer ``epochs``/``batch_size``/``seed``, non-numeric
            ``step_size``/``pseudocount`` or inputs that are not tensors.
        ValueError: ``epochs``/``batch_size`` below 1, ``step_size`` outside
            ``(0, 1]``, a negative or non-finite ``pseudocount``, an unknown
            ``objective``, ``"conditional"`` without ``missing`` or with
            continuous leaves, evidence that ``prepare`` refuses (all rows are
            checked before the first update), or an update that would write
            NaN or ``inf``. The circuit is changed only when all epochs succeed.
    """
    if not isinstance(circuit, TensorCircuit):
        raise TypeError(f"circuit must be a TensorCircuit, got {type(circuit).__name__}")
    epochs = check_int(epochs, "epochs", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    seed = check_int(seed, "seed")
    step_size = check_real(step_size, "step_size", low=0.0, high=1.0, low_open=True)
    pseudocount = check_real(pseudocount, "pseudocount", low=0.0)
    objective = _check_objective(objective)
    data, missing, soft_evidence = _checked_inputs(circuit, data, missing, soft_evidence, 4096)
    if objective == "conditional":
        _check_conditional_leaves(circuit)
        if missing is None:
            raise ValueError("missing: objective='conditional' needs the masked entries ([N, V] bool), got None")
        _checked_inputs(circuit, data, None, None, 4096)  # the numerator sees every target
    n = data.shape[0]
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    with all_or_nothing(circuit):
        bar = tqdm(range(epochs), desc="Anemone", disable=(not progress) if progress is not None else None)
        for _ in bar:
            order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
            total, count = 0.0, 0
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                ll = _step(
                    circuit, data[idx], None if missing is None else missing[idx],
                    None if soft_evidence is None else soft_evidence[idx], step_size, pseudocount, objective, None,
                )
                total += float(ll.sum())
                count += ll.numel()
            history.append(total / count if count else math.nan)
            bar.set_postfix(ll=f"{history[-1]:.4f}")
    return history
