"""Chow-Liu trees and hidden Chow-Liu tree (HCLT) learning.

:func:`chow_liu_tree` finds the maximum spanning tree of the pairwise mutual
information (estimated from smoothed counts). :func:`learn_hclt` builds an
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
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch
from scipy.sparse.csgraph import minimum_spanning_tree
from tqdm.auto import tqdm

from ..engine.circuit import TensorCircuit, compile
from ..nodes import summate
from .em import em

if TYPE_CHECKING:
    from ..structures.hclt import HCLTGroups

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


def _as_array(data: np.ndarray | torch.Tensor, name: str = "data") -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(data).__name__}")
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{name} must have shape [N, V] with N, V >= 1, got {data.shape}")
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise ValueError(f"{name} must hold integer category values")
    elif data.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer category values, got dtype {data.dtype}")
    data = data.astype(np.int64)
    if data.min() < 0:
        raise ValueError(f"{name} holds negative values; categories must be 0..C-1")
    return data


def infer_num_cats(data: np.ndarray | torch.Tensor) -> list[int]:
    """Categories per variable: ``max(data[:, v]) + 1``, at least 2. Returns a list of ``V`` ints."""
    arr = _as_array(data)
    return [max(2, int(m) + 1) for m in arr.max(0)]


def _cats_list(num_cats: int | Sequence[int] | None, arr: np.ndarray) -> list[int]:
    V = arr.shape[1]
    if num_cats is None:
        return infer_num_cats(arr)
    cats = [int(num_cats)] * V if isinstance(num_cats, (int, np.integer)) else [int(c) for c in num_cats]
    if len(cats) != V or min(cats) < 2:
        raise ValueError(f"num_cats must be an int >= 2 or {V} such ints, got {num_cats!r}")
    over = np.nonzero(arr.max(0) >= np.array(cats))[0]
    if over.size:
        raise ValueError(f"num_cats: variable {int(over[0])} has value {int(arr[:, over[0]].max())} >= {cats[over[0]]}")
    return cats


def _one_hot(arr: np.ndarray, cats: list[int]) -> tuple[np.ndarray, int]:
    C = max(cats)
    N, V = arr.shape
    oh = np.zeros((N, V, C), dtype=np.float64)
    oh[np.arange(N)[:, None], np.arange(V)[None, :], arr] = 1.0
    return oh, C


def mutual_information(
    data: np.ndarray | torch.Tensor,
    num_cats: int | Sequence[int] | None = None,
    pseudocount: float = 1.0,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Pairwise mutual information (nats) of discrete variables, from smoothed counts.

    Args:
        data: ``[N, V]`` category indices.
        num_cats: categories per variable (``None``: inferred from ``data``).
        num_components: with more than 1, a mixture of that many HCLTs over
            the same tree, each initialised from its own clustering (seeds
            ``seed + k``), trained jointly by EM with the mixture weights.
        pseudocount: total pseudocount spread evenly over the cells of every
            pairwise table (and consistently over the marginals).
        weights: ``[N]`` non-negative example weights (``None``: all 1).

    Returns:
        ``[V, V]`` symmetric matrix with zeros on the diagonal.
    """
    arr = _as_array(data)
    cats = _cats_list(num_cats, arr)
    if pseudocount < 0:
        raise ValueError(f"pseudocount must be non-negative, got {pseudocount}")
    N, V = arr.shape
    w = np.ones(N) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (N,) or (w < 0).any():
        raise ValueError(f"weights must be a non-negative array of shape [{N}]")
    oh, C = _one_hot(arr, cats)
    flat = oh.reshape(N, V * C)
    joint = ((flat * w[:, None]).T @ flat).reshape(V, C, V, C).transpose(0, 2, 1, 3)  # [V, V, C, C]
    valid = np.zeros((V, C), dtype=bool)
    for v, c in enumerate(cats):
        valid[v, :c] = True
    cells = valid[:, None, :, None] & valid[None, :, None, :]
    ncell = np.outer(cats, cats).astype(np.float64)[:, :, None, None]
    total = w.sum() + pseudocount
    pj = np.where(cells, (joint + pseudocount / ncell) / total, 0.0)
    pi = pj.sum(3)  # [V, V, C]: marginal of the first variable
    pk = pj.sum(2)  # [V, V, C]: marginal of the second
    denom = pi[:, :, :, None] * pk[:, :, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pj > 0, pj * (np.log(pj) - np.log(np.where(denom > 0, denom, 1.0))), 0.0)
    mi = terms.sum((2, 3))
    np.fill_diagonal(mi, 0.0)
    return np.maximum((mi + mi.T) / 2, 0.0)


def chow_liu_tree(
    data: np.ndarray | torch.Tensor,
    num_cats: int | Sequence[int] | None = None,
    pseudocount: float = 1.0,
    weights: np.ndarray | None = None,
) -> nx.Graph:
    """The Chow-Liu tree: maximum spanning tree of the pairwise mutual information.

    Args:
        data: ``[N, V]`` category indices.
        num_cats: categories per variable (``None``: inferred).
        pseudocount: smoothing of the pairwise counts.
        weights: ``[N]`` example weights.

    Returns:
        An undirected tree over nodes ``0..V-1``; edge attribute ``weight``
        is the mutual information.
    """
    mi = mutual_information(data, num_cats, pseudocount, weights)
    V = mi.shape[0]
    tree = nx.Graph()
    tree.add_nodes_from(range(V))
    if V == 1:
        return tree
    cost = (mi.max() + 1.0) - mi  # all off-diagonal costs positive: zeros would mean "no edge"
    np.fill_diagonal(cost, 0.0)
    mst = minimum_spanning_tree(cost).tocoo()
    for i, j in zip(mst.row.tolist(), mst.col.tolist()):
        tree.add_edge(int(i), int(j), weight=float(mi[i, j]))
    return tree


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
    circuit: TensorCircuit, groups: "HCLTGroups", data: np.ndarray, seed: int = 0, diagonal: float = 0.5
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
        groups: its :class:`~pcircuits.structures.hclt.HCLTGroups`.
        data: ``[N, V]`` training data.
        seed: seed of the clustering and the noise.
        diagonal: weight of the identity in the transition initialisation.

    Returns:
        ``[N]`` cluster labels.
    """
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
    from ..structures.hclt import hclt_from_tree

    t0 = time.perf_counter()
    arr = _as_array(data)
    if not isinstance(num_components, int) or isinstance(num_components, bool) or num_components < 1:
        raise ValueError(f"num_components must be a positive int, got {num_components!r}")
    if init not in ("kmeans", "random"):
        raise ValueError(f"init must be 'kmeans' or 'random', got {init!r}")
    if minibatch_epochs < 0 or fullbatch_epochs < 0 or minibatch_epochs + fullbatch_epochs == 0:
        raise ValueError("minibatch_epochs and fullbatch_epochs must be non-negative and not both 0")
    if time_budget is not None and time_budget <= 0:
        raise ValueError(f"time_budget must be positive seconds, got {time_budget}")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ValueError(f"patience must be a positive int or None, got {patience!r}")
    if not (0 < step_size <= 1):
        raise ValueError(f"step_size must be in (0, 1], got {step_size}")
    if not (0 <= softening < 0.5):
        raise ValueError(f"softening must be in [0, 0.5), got {softening}")
    cats = _cats_list(num_cats, arr)
    va = None
    if valid is not None:
        va = _as_array(valid, "valid")
        if va.shape[1] != arr.shape[1]:
            raise ValueError(f"valid must have {arr.shape[1]} columns like data, got {va.shape[1]}")
    tree = chow_liu_tree(arr, cats)
    components = [hclt_from_tree(tree, num_latents, cats) for _ in range(num_components)]
    root = components[0].root if num_components == 1 else summate(*(g.root for g in components), num_nodes=1)
    circuit = compile(root, seed=seed).to(dtype)
    if init == "kmeans":
        for k, groups in enumerate(components):
            init_hclt_kmeans(circuit, groups, arr, seed=seed + k)
    if num_components > 1:
        circuit.set_group_parameters(root, torch.ones(1, num_components))
    x = torch.from_numpy(arr)
    xv = None if va is None else torch.from_numpy(va)
    missing, soft = (None, None) if softening == 0 else softened_evidence(x, cats, softening)
    result = FitResult(
        circuit,
        info={"tree": tree, "num_latents": num_latents, "num_components": num_components, "root_var": components[0].root_var},
    )
    best, best_state, best_epoch = -math.inf, None, 0
    total = minibatch_epochs + fullbatch_epochs
    bar = tqdm(range(total), desc=f"HCLT({num_latents})", disable=(not progress) if progress is not None else None)
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
        result.train_ll.append(hist[0])
        post = {"train": f"{hist[0]:.3f}"}
        if xv is not None:
            v = _mean_ll(circuit, xv)
            result.valid_ll.append(v)
            post["valid"] = f"{v:.3f}"
            if v > best:
                best, best_state, best_epoch = v, copy.deepcopy(circuit.state_dict()), ep
        bar.set_postfix(post)
        if time_budget is not None and time.perf_counter() - t0 > time_budget:
            break
        if patience is not None and xv is not None and ep - best_epoch >= patience:
            break
    bar.close()
    if best_state is not None:
        circuit.load_state_dict(best_state)
    result.info["epochs"] = len(result.train_ll)
    result.seconds = time.perf_counter() - t0
    return result
