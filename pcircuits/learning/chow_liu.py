"""Hidden Chow-Liu tree (HCLT) learning.

:func:`~pcircuits.region_graphs.chow_liu_tree.chow_liu_tree` (re-exported
here) finds the maximum spanning tree of the pairwise mutual information
(estimated from smoothed counts). :func:`learn_hclt` builds an
HCLT over that tree (see :func:`pcircuits.structures.hclt`), initialises its
latent variables by k-means clustering of the data instead of at random, and
trains it with mini-batch EM followed by full-batch EM with a pseudocount,
keeping the parameters with the best validation log-likelihood.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..engine.circuit import TensorCircuit, compile
from ..nodes import summate
from ..region_graphs.chow_liu_tree import (
    _as_array,
    _cats_list,
    _one_hot,
    chow_liu_tree,
    infer_num_cats,
    mutual_information,
)
from .checks import check_int, check_real
from .em import em
from .hclt_structure import HCLTGroups, hclt_from_tree

__all__ = [
    "FitResult",
    "chow_liu_tree",
    "infer_num_cats",
    "init_hclt_kmeans",
    "kmeans",
    "learn_hclt",
    "mutual_information",
    "softened_evidence",
]


def kmeans(
    x: np.ndarray, k: int, iters: int = 20, seed: int = 0, max_fit: int = 20000
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding.

    Args:
        x: ``[N, D]`` points.
        k: number of clusters (at most ``N``).
        iters: Lloyd iterations.
        seed: random seed.
        max_fit: fit the centres on at most this many random points, then assign all.

    Returns:
        ``(labels [N], centres [k, D])``.
    """
    x = np.asarray(x, dtype=np.float64)
    N = x.shape[0]
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = min(k, N)
    rng = np.random.default_rng(seed)
    fit = x if N <= max_fit else x[rng.choice(N, max_fit, replace=False)]
    sq = (fit**2).sum(1)
    centres = [fit[rng.integers(len(fit))]]
    d2 = ((fit - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(fit), 1 / len(fit))
        c = fit[rng.choice(len(fit), p=p)]
        centres.append(c)
        d2 = np.minimum(d2, ((fit - c) ** 2).sum(1))
    cen = np.stack(centres)

    def assign(pts: np.ndarray, sqp: np.ndarray) -> np.ndarray:
        d = sqp[:, None] - 2 * pts @ cen.T + (cen**2).sum(1)[None, :]
        return d.argmin(1)

    for _ in range(iters):
        lab = assign(fit, sq)
        new = cen.copy()
        for j in range(k):
            m = lab == j
            if m.any():
                new[j] = fit[m].mean(0)
        if np.allclose(new, cen):
            break
        cen = new
    return assign(x, (x**2).sum(1)), cen


@torch.no_grad()
def init_hclt_kmeans(
    circuit: TensorCircuit, groups: HCLTGroups, data: np.ndarray, seed: int = 0, diagonal: float = 0.5
) -> np.ndarray:
    """Initialises an HCLT's parameters from a k-means clustering of ``data``.

    Every latent variable starts as the cluster label: leaf ``k`` of variable
    ``v`` is ``p(x_v | cluster k)`` (add-one smoothed), the root weights are the
    cluster proportions, and every transition ``p(z_child | z_parent)`` is
    ``diagonal * I`` plus ``1 - diagonal`` times a random Dirichlet row, so
    the initial circuit is close to a mixture of fully factorised clusters
    that EM then refines per variable.

    Args:
        circuit: the compiled HCLT.
        groups: its :class:`~pcircuits.learning.hclt_structure.HCLTGroups`.
        data: ``[N, V]`` training data.
        seed: seed of the clustering and the noise.
        diagonal: weight of the identity in the transition initialisation.

    Returns:
        ``[N]`` cluster labels.
    """
    diagonal = check_real(diagonal, "diagonal", low=0.0, high=1.0)
    arr = _as_array(data)
    M = groups.root.children[0].num_nodes
    cats = [groups.leaves[v].dist.num_cats for v in range(arr.shape[1])]
    feats = arr.astype(np.float64) if max(cats) == 2 else _one_hot(arr, cats)[0].reshape(len(arr), -1)
    labels, _ = kmeans(feats, M, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for v, leaf in groups.leaves.items():
        C = leaf.dist.num_cats
        counts = np.ones((M, C))
        np.add.at(counts, (labels, arr[:, v]), 1.0)
        p = counts / counts.sum(1, keepdims=True)
        bank, slot = circuit.layout.param_slot[id(leaf)]
        circuit.params[bank][slot].copy_(torch.from_numpy(np.log(p)))
    for v, s in groups.sums.items():
        noise = rng.dirichlet(np.ones(M), size=M)
        w = diagonal * np.eye(M) + (1 - diagonal) * noise
        bank, slot = circuit.layout.param_slot[id(s)]
        circuit.params[bank][slot].copy_(torch.from_numpy(np.log(w)))
    prop = np.bincount(labels, minlength=M) + 1.0
    bank, slot = circuit.layout.param_slot[id(groups.root)]
    circuit.params[bank][slot].copy_(torch.from_numpy(np.log(prop / prop.sum()))[None, :])
    return labels


@dataclass
class FitResult:
    """A learned circuit and its learning curve.

    Attributes:
        circuit: the trained circuit (with the best validation parameters
            when validation data was given).
        train_ll: mean train log-likelihood per epoch (during the epoch).
        valid_ll: mean validation log-likelihood after each epoch (empty without validation data).
        seconds: wall time of structure and parameter learning.
        info: extra facts (tree, number of epochs run, ...).
    """

    circuit: TensorCircuit
    train_ll: list[float] = field(default_factory=list)
    valid_ll: list[float] = field(default_factory=list)
    seconds: float = 0.0
    info: dict = field(default_factory=dict)


def _mean_ll(circuit: TensorCircuit, x: torch.Tensor, chunk: int = 4096) -> float:
    with torch.no_grad():
        return float(torch.cat([circuit(x[i : i + chunk]) for i in range(0, len(x), chunk)]).mean())


def softened_evidence(x: torch.Tensor, cats: Sequence[int], softening: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Missing mask and soft evidence that soften the data ``x`` ``[N, V]``.

    Returns:
        ``missing`` ``[N, V]`` (all True) and ``soft_evidence`` ``[N, V, C]``
        with ``log(1 - softening)`` at the observed value and
        ``log(softening / (C_v - 1))`` at the other categories of variable ``v``.
    """
    n, v = x.shape
    c_max = max(cats)
    other = torch.tensor([math.log(softening / (c - 1)) for c in cats], dtype=torch.float32)  # [V]
    soft = other.view(1, v, 1).expand(n, v, c_max).clone()
    soft.scatter_(2, x.long().unsqueeze(-1), math.log1p(-softening))
    return torch.ones(n, v, dtype=torch.bool), soft


def learn_hclt(
    data: np.ndarray | torch.Tensor,
    num_latents: int = 16,
    valid: np.ndarray | torch.Tensor | None = None,
    num_cats: int | Sequence[int] | None = None,
    num_components: int = 1,
    mixture: str = "separate",
    init: str = "kmeans",
    minibatch_epochs: int = 10,
    batch_size: int = 512,
    step_size: float = 0.2,
    fullbatch_epochs: int = 40,
    pseudocount: float = 0.1,
    softening: float = 0.0,
    time_budget: float | None = None,
    patience: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> FitResult:
    """Learns an HCLT: Chow-Liu tree, clustering initialisation, then EM.

    Training runs ``minibatch_epochs`` of mini-batch EM (step size
    ``step_size``, annealed linearly to ``step_size / 4``) and then
    ``fullbatch_epochs`` of full-batch EM with ``pseudocount``. With
    validation data the parameters of the best validation epoch are kept.

    Args:
        data: ``[N, V]`` training data (category indices).
        num_latents: latent states per variable.
        valid: ``[N', V]`` validation data for model selection, or ``None``.
        num_cats: categories per variable (``None``: inferred from ``data``).
        num_components: with more than 1, a mixture of that many HCLTs over
            the same tree with equal weights, each initialised from its own
            clustering (seeds ``seed + k``).
        mixture: how a mixture is trained: ``"separate"`` (each component by
            EM on all the data on its own, with ``time_budget`` shared out;
            ``train_ll``/``valid_ll`` then hold one entry, the mixture's) or
            ``"joint"`` (EM on the whole mixture, weights included). On small
            data sets ``"separate"`` overfits less.
        init: ``"kmeans"`` (clustering-based latents) or ``"random"``.
        minibatch_epochs: epochs of mini-batch EM.
        batch_size: mini-batch size.
        step_size: initial mini-batch EM step size in ``(0, 1]``.
        fullbatch_epochs: epochs of full-batch EM.
        pseudocount: Laplace smoothing of the EM updates.
        softening: data softening (Liu & Van den Broeck, "Tractable
            regularization of probabilistic circuits", NeurIPS 2021): EM sees
            each observed value kept with probability ``1 - softening`` and
            replaced by each other category with ``softening / (C - 1)``,
            as soft evidence on every variable; 0 trains on the data as is.
            Validation log-likelihoods are always of the data as is.
        time_budget: seconds; training stops after the epoch that exceeds it.
        patience: with ``valid``, stop once this many epochs in a row have
            not improved the best validation log-likelihood (``None``: never).
        seed: seed of the initialisation and of the mini-batch order.
        dtype: parameter dtype.
        progress: show a tqdm bar (``None``: only on a terminal).

    Returns:
        A :class:`FitResult`; ``info["tree"]`` holds the Chow-Liu tree.

    Raises:
        ValueError: bad data or argument values.
    """
    t0 = time.perf_counter()
    arr = _as_array(data)
    if not isinstance(num_components, int) or isinstance(num_components, bool) or num_components < 1:
        raise ValueError(f"num_components must be a positive int, got {num_components!r}")
    if mixture not in ("separate", "joint"):
        raise ValueError(f"mixture must be 'separate' or 'joint', got {mixture!r}")
    if init not in ("kmeans", "random"):
        raise ValueError(f"init must be 'kmeans' or 'random', got {init!r}")
    minibatch_epochs = check_int(minibatch_epochs, "minibatch_epochs", 0)
    fullbatch_epochs = check_int(fullbatch_epochs, "fullbatch_epochs", 0)
    if minibatch_epochs + fullbatch_epochs == 0:
        raise ValueError("minibatch_epochs and fullbatch_epochs must be non-negative and not both 0")
    batch_size = check_int(batch_size, "batch_size", 1)
    if time_budget is not None:
        time_budget = check_real(time_budget, "time_budget", low=0.0, low_open=True)
    if patience is not None:
        patience = check_int(patience, "patience", 1)
    step_size = check_real(step_size, "step_size", low=0.0, high=1.0, low_open=True)
    pseudocount = check_real(pseudocount, "pseudocount", low=0.0)
    softening = check_real(softening, "softening", low=0.0, high=0.5, high_open=True)
    cats = _cats_list(num_cats, arr)
    va = None
    if valid is not None:
        va = _as_array(valid, "valid")
        if va.shape[1] != arr.shape[1]:
            raise ValueError(f"valid must have {arr.shape[1]} columns like data, got {va.shape[1]}")
    tree = chow_liu_tree(arr, cats)
    components = [hclt_from_tree(tree, num_latents, cats) for _ in range(num_components)]
    root = components[0].root if num_components == 1 else summate(*(g.root for g in components), num_nodes=1)
    x = torch.from_numpy(arr)
    xv = None if va is None else torch.from_numpy(va)
    missing, soft = (None, None) if softening == 0 else softened_evidence(x, cats, softening)
    schedule = dict(
        minibatch_epochs=minibatch_epochs, fullbatch_epochs=fullbatch_epochs, batch_size=batch_size,
        step_size=step_size, pseudocount=pseudocount, missing=missing, soft=soft, patience=patience, progress=progress,
    )
    info = {"tree": tree, "num_latents": num_latents, "num_components": num_components, "root_var": components[0].root_var}
    if num_components == 1 or mixture == "joint":
        circuit = compile(root, seed=seed).to(dtype)
        if init == "kmeans":
            for k, groups in enumerate(components):
                init_hclt_kmeans(circuit, groups, arr, seed=seed + k)
        if num_components > 1:
            circuit.set_group_parameters(root, torch.ones(1, num_components))
        deadline = None if time_budget is None else t0 + time_budget
        result = FitResult(circuit, info=info)
        result.train_ll, result.valid_ll, epochs = _fit_em(
            circuit, x, xv, seed=seed, deadline=deadline, desc=f"HCLT({num_latents})", **schedule
        )
    else:  # each component trained on all the data on its own, then mixed with equal weights
        parts, epochs = [], 0
        info["component_valid_ll"] = []
        for k, groups in enumerate(components):
            part = compile(groups.root, seed=seed + k).to(dtype)
            if init == "kmeans":
                init_hclt_kmeans(part, groups, arr, seed=seed + k)
            now = time.perf_counter()
            deadline = None if time_budget is None else now + (t0 + time_budget - now) / (num_components - k)
            _, valid_k, epochs_k = _fit_em(
                part, x, xv, seed=seed + k, deadline=deadline, desc=f"HCLT({num_latents}) {k + 1}/{num_components}", **schedule
            )
            info["component_valid_ll"].append(max(valid_k) if valid_k else None)
            parts.append(part)
            epochs += epochs_k
        circuit = compile(root, seed=seed).to(dtype)
        for part, groups in zip(parts, components):
            for g in [groups.root, *groups.leaves.values(), *groups.sums.values()]:
                circuit.set_group_parameters(g, part.group_parameters(g))
        circuit.set_group_parameters(root, torch.ones(1, num_components))
        result = FitResult(circuit, info=info)
        result.train_ll = [_mean_ll(circuit, x)]
        result.valid_ll = [] if xv is None else [_mean_ll(circuit, xv)]
    result.info["epochs"] = epochs
    result.seconds = time.perf_counter() - t0
    return result


def _fit_em(
    circuit: TensorCircuit,
    x: torch.Tensor,
    xv: torch.Tensor | None,
    *,
    minibatch_epochs: int,
    fullbatch_epochs: int,
    batch_size: int,
    step_size: float,
    pseudocount: float,
    missing: torch.Tensor | None,
    soft: torch.Tensor | None,
    patience: int | None,
    seed: int,
    deadline: float | None,
    desc: str,
    progress: bool | None,
) -> tuple[list[float], list[float], int]:
    """Mini-batch then full-batch EM on ``circuit`` in place, keeping the best validation epoch.

    Returns:
        The train and validation log-likelihoods of each epoch, and the number of epochs run.
    """
    train_ll: list[float] = []
    valid_ll: list[float] = []
    best, best_state, best_epoch = -math.inf, None, 0
    bar = tqdm(range(minibatch_epochs + fullbatch_epochs), desc=desc, disable=(not progress) if progress is not None else None)
    for ep in bar:
        if ep < minibatch_epochs:
            frac = ep / max(1, minibatch_epochs - 1)
            lr = step_size * (1 - 0.75 * frac)
            hist = em(
                circuit, x, 1, batch_size=batch_size, step_size=lr, pseudocount=pseudocount,
                missing=missing, soft_evidence=soft, seed=seed + ep, progress=False,
            )
        else:
            hist = em(circuit, x, 1, batch_size=None, pseudocount=pseudocount, missing=missing, soft_evidence=soft, progress=False)
        train_ll.append(hist[0])
        post = {"train": f"{hist[0]:.3f}"}
        if xv is not None:
            v = _mean_ll(circuit, xv)
            valid_ll.append(v)
            post["valid"] = f"{v:.3f}"
            if v > best:
                best, best_state, best_epoch = v, copy.deepcopy(circuit.state_dict()), ep
        bar.set_postfix(post)
        if deadline is not None and time.perf_counter() > deadline:
            break
        if patience is not None and xv is not None and ep - best_epoch >= patience:
            break
    bar.close()
    if best_state is not None:
        circuit.load_state_dict(best_state)
    return train_ll, valid_ll, len(train_ll)
