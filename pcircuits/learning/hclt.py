"""Hidden Chow-Liu trees (HCLT): the structure over a tree and its learning.

[`hclt_from_tree`][pcircuits.learning.hclt.hclt_from_tree] builds an HCLT over a given tree of variables: a
latent variable per data variable ([`HCLTGroups`][pcircuits.learning.hclt.HCLTGroups] holds its groups).
[`learn_hclt`][pcircuits.learning.hclt.learn_hclt] runs the whole procedure in named phases: *data* (checks,
categories), *structure* (the Chow-Liu tree of
[`chow_liu_tree`][pcircuits.region_graphs.chow_liu_tree.chow_liu_tree], the maximum
spanning tree of the pairwise mutual information, and an HCLT over it),
*initialisation* (latent variables from a k-means clustering of the data
instead of at random) and *training* (mini-batch EM followed by full-batch EM
with a pseudocount, keeping the parameters with the best validation
log-likelihood). [`HCLTConfig`][pcircuits.learning.hclt.HCLTConfig] holds its settings. The template
`pcircuits.structures.hclt` builds the same structure without training.

Shapes: ``N`` examples, ``V`` variables, ``C`` the largest number of
categories, ``M`` latent states per variable (``num_latents``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch
from tqdm.auto import tqdm

from ..distributions import Categorical
from ..engine.circuit import TensorCircuit, compile
from ..nodes import InputGroup, SumGroup, inputs, multiply, summate
from ..region_graphs.chow_liu_tree import as_category_array, check_num_cats, chow_liu_tree, one_hot
from ..region_graphs.constructors import tree_center
from .checks import build_config, check_int, check_real
from .em import em

__all__ = [
    "FitResult",
    "HCLTConfig",
    "HCLTGroups",
    "hclt_from_tree",
    "init_hclt_kmeans",
    "kmeans",
    "learn_hclt",
    "softened_evidence",
]


# ---------------------------------------------------------------- structure


@dataclass
class HCLTGroups:
    """The groups of an HCLT, for initialising their parameters.

    Attributes:
        root: the root sum group (one node).
        leaves: ``{variable: input group}`` with ``num_latents`` leaves each.
        sums: ``{variable: sum group}`` for every non-root tree node;
            node ``i`` of the group is the parent's latent state ``i``, its
            child node ``j`` the variable's own latent state ``j``.
        tree: the directed tree (edges from parent to child).
        root_var: the tree's root variable.
    """

    root: SumGroup
    leaves: dict[int, InputGroup]
    sums: dict[int, SumGroup]
    tree: nx.DiGraph
    root_var: int


def _check_latents(num_latents: int) -> None:
    if not isinstance(num_latents, int) or isinstance(num_latents, bool) or num_latents < 1:
        raise ValueError(f"num_latents must be a positive int, got {num_latents!r}")


def _check_tree(tree: nx.Graph | Sequence[tuple[int, int]], num_cats: int | Sequence[int]) -> tuple[nx.Graph, list]:
    """The tree as an undirected graph over ``0..V-1`` and the categories of its ``V`` variables."""
    g = nx.Graph(tree) if isinstance(tree, nx.Graph) else nx.Graph(list(tree))
    if g.number_of_nodes() == 0:
        raise ValueError("tree: has no nodes")
    n = g.number_of_nodes()
    if sorted(g.nodes) != list(range(n)) or not nx.is_tree(g):
        raise ValueError(f"tree: must be a tree spanning variables 0..{n - 1}")
    cats = [num_cats] * n if isinstance(num_cats, (int, np.integer)) else list(num_cats)
    if len(cats) != n or any(int(c) < 2 for c in cats):
        raise ValueError(f"num_cats must be an int >= 2 or {n} such ints, got {num_cats!r}")
    return g, cats


def hclt_from_tree(
    tree: nx.Graph | Sequence[tuple[int, int]],
    num_latents: int,
    num_cats: int | Sequence[int] = 2,
    root_var: int | None = None,
) -> HCLTGroups:
    """Builds an HCLT over a given tree of variables ``0..V-1``.

    Per variable ``v`` there is a leaf group of ``num_latents`` categorical
    leaves (``p(x_v | z_v)``); per non-root tree node a sum group of
    ``num_latents`` nodes over the element-wise product of its leaf group
    with its children's sum groups (``p(x_subtree | z_parent)``); the root
    variable's product feeds a one-node root sum.

    Args:
        tree: an undirected tree (networkx graph or edge list) spanning ``0..V-1``.
        num_latents: latent states per variable.
        num_cats: categories of every variable, or one number per variable.
        root_var: the root of the tree (``None``: a centre of the tree, which
            gives the fewest layers).

    Returns:
        The groups of the circuit; ``.root`` is the circuit's root.

    Raises:
        ValueError: ``tree`` is not a spanning tree of ``0..V-1``, or bad
            ``num_latents``, ``num_cats`` or ``root_var``.
    """
    _check_latents(num_latents)
    g, cats = _check_tree(tree, num_cats)
    if root_var is None:
        root_var = tree_center(g)
    if root_var not in g:
        raise ValueError(f"root_var must be a variable of the tree, got {root_var!r}")
    directed = nx.bfs_tree(g, root_var)
    leaves = {v: inputs(v, num_latents, Categorical(int(cats[v])), name=f"hclt_leaf{v}") for v in range(len(cats))}
    sums: dict[int, SumGroup] = {}
    root = None
    for v in reversed(list(nx.topological_sort(directed))):
        kids = sorted(directed.successors(v))
        prod = multiply(leaves[v], *[sums[c] for c in kids], name=f"hclt_prod{v}")
        if v == root_var:
            root = summate(prod, num_nodes=1, name="hclt_root")
        else:
            sums[v] = summate(prod, num_nodes=num_latents, name=f"hclt_sum{v}")
    assert root is not None
    return HCLTGroups(root, leaves, sums, directed, int(root_var))


# ---------------------------------------------------------------- initialisation


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
    fit = x if max_fit >= N else x[rng.choice(N, max_fit, replace=False)]
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
        groups: its [`HCLTGroups`][pcircuits.learning.hclt.HCLTGroups].
        data: ``[N, V]`` training data.
        seed: seed of the clustering and the noise.
        diagonal: weight of the identity in the transition initialisation.

    Returns:
        ``[N]`` cluster labels.
    """
    diagonal = check_real(diagonal, "diagonal", low=0.0, high=1.0)
    arr = as_category_array(data)
    M = groups.root.children[0].num_nodes
    cats = [groups.leaves[v].dist.num_cats for v in range(arr.shape[1])]
    feats = arr.astype(np.float64) if max(cats) == 2 else one_hot(arr, cats)[0].reshape(len(arr), -1)
    labels, _ = kmeans(feats, M, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for v, leaf in groups.leaves.items():
        C = leaf.dist.num_cats
        counts = np.ones((M, C))
        np.add.at(counts, (labels, arr[:, v]), 1.0)
        p = counts / counts.sum(1, keepdims=True)
        bank, slot = circuit.layout.param_slot[id(leaf)]
        circuit.params[bank][slot].copy_(torch.from_numpy(np.log(p)))
    for s in groups.sums.values():
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



# ---------------------------------------------------------------- learning


@dataclass
class HCLTConfig:
    """Settings of [`learn_hclt`][pcircuits.learning.hclt.learn_hclt] (each can also be passed to it as a keyword).

    Attributes:
        num_latents: latent states per variable.
        num_cats: categories per variable (``None``: inferred from the data).
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
        patience: with validation data, stop once this many epochs in a row
            have not improved the best validation log-likelihood (``None``: never).
        seed: seed of the initialisation and of the mini-batch order.
        dtype: parameter dtype.
        progress: show a tqdm bar (``None``: only on a terminal).

    Raises:
        ValueError: a value out of range (the message names the field);
            ``num_cats`` is checked against the data by [`learn_hclt`][pcircuits.learning.hclt.learn_hclt].
    """

    num_latents: int = 16
    num_cats: int | Sequence[int] | None = None
    num_components: int = 1
    mixture: str = "separate"
    init: str = "kmeans"
    minibatch_epochs: int = 10
    batch_size: int = 512
    step_size: float = 0.2
    fullbatch_epochs: int = 40
    pseudocount: float = 0.1
    softening: float = 0.0
    time_budget: float | None = None
    patience: int | None = None
    seed: int = 0
    dtype: torch.dtype = torch.float32
    progress: bool | None = None

    def __post_init__(self) -> None:
        _check_latents(self.num_latents)
        n = self.num_components
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_components must be a positive int, got {n!r}")
        if self.mixture not in ("separate", "joint"):
            raise ValueError(f"mixture must be 'separate' or 'joint', got {self.mixture!r}")
        if self.init not in ("kmeans", "random"):
            raise ValueError(f"init must be 'kmeans' or 'random', got {self.init!r}")
        self._check_schedule()

    def _check_schedule(self) -> None:
        self.minibatch_epochs = check_int(self.minibatch_epochs, "minibatch_epochs", 0)
        self.fullbatch_epochs = check_int(self.fullbatch_epochs, "fullbatch_epochs", 0)
        if self.minibatch_epochs + self.fullbatch_epochs == 0:
            raise ValueError("minibatch_epochs and fullbatch_epochs must be non-negative and not both 0")
        self.batch_size = check_int(self.batch_size, "batch_size", 1)
        if self.time_budget is not None:
            self.time_budget = check_real(self.time_budget, "time_budget", low=0.0, low_open=True)
        if self.patience is not None:
            self.patience = check_int(self.patience, "patience", 1)
        self.step_size = check_real(self.step_size, "step_size", low=0.0, high=1.0, low_open=True)
        self.pseudocount = check_real(self.pseudocount, "pseudocount", low=0.0)
        self.softening = check_real(self.softening, "softening", low=0.0, high=0.5, high_open=True)


@dataclass
class _HCLTData:
    """The data phase's output: training data ``arr``/``x`` ``[N, V]``, validation ``xv`` ``[N', V]``,
    categories, and the softened evidence (``missing`` ``[N, V]``, ``soft`` ``[N, V, C]``) or ``None``."""

    arr: np.ndarray
    x: torch.Tensor
    xv: torch.Tensor | None
    cats: list[int]
    missing: torch.Tensor | None
    soft: torch.Tensor | None


def learn_hclt(
    data: np.ndarray | torch.Tensor,
    num_latents: int | None = None,
    valid: np.ndarray | torch.Tensor | None = None,
    *,
    config: HCLTConfig | None = None,
    **options: Any,
) -> FitResult:
    """Learns an HCLT: Chow-Liu tree, clustering initialisation, then EM.

    Training runs ``minibatch_epochs`` of mini-batch EM (step size
    ``step_size``, annealed linearly to ``step_size / 4``) and then
    ``fullbatch_epochs`` of full-batch EM with ``pseudocount``. With
    validation data the parameters of the best validation epoch are kept.

    Args:
        data: ``[N, V]`` training data (category indices).
        num_latents: latent states per variable (``None``: ``config``'s, 16 by default).
        valid: ``[N', V]`` validation data for model selection, or ``None``.
        config: the settings (``None``: the defaults of [`HCLTConfig`][pcircuits.learning.hclt.HCLTConfig]).
        **options: fields of [`HCLTConfig`][pcircuits.learning.hclt.HCLTConfig] replacing those of ``config``,
            e.g. ``learn_hclt(x, 32, fullbatch_epochs=5)``.

    Returns:
        A [`FitResult`][pcircuits.learning.hclt.FitResult]; ``info["tree"]`` holds the Chow-Liu tree.

    Raises:
        ValueError: bad data or argument values.
        TypeError: an option that is not a field of [`HCLTConfig`][pcircuits.learning.hclt.HCLTConfig].
    """
    t0 = time.perf_counter()
    if num_latents is not None:
        options["num_latents"] = num_latents
    cfg = build_config(HCLTConfig, config, options, "learn_hclt")
    prepared = _prepare_data(data, valid, cfg)
    tree = chow_liu_tree(prepared.arr, prepared.cats)
    components = [hclt_from_tree(tree, cfg.num_latents, prepared.cats) for _ in range(cfg.num_components)]
    root = components[0].root if cfg.num_components == 1 else summate(*(g.root for g in components), num_nodes=1)
    info = {
        "tree": tree, "num_latents": cfg.num_latents, "num_components": cfg.num_components,
        "root_var": components[0].root_var,
    }
    train = _train_jointly if cfg.num_components == 1 or cfg.mixture == "joint" else _train_separately
    result, epochs = train(components, root, prepared, cfg, t0, info)
    result.info["epochs"] = epochs
    result.seconds = time.perf_counter() - t0
    return result


def _prepare_data(
    data: np.ndarray | torch.Tensor, valid: np.ndarray | torch.Tensor | None, cfg: HCLTConfig
) -> _HCLTData:
    """Data phase: checks ``data`` and ``valid``, fixes the categories, softens the training data."""
    arr = as_category_array(data)
    cats = check_num_cats(cfg.num_cats, arr)
    va = None
    if valid is not None:
        va = as_category_array(valid, "valid")
        if va.shape[1] != arr.shape[1]:
            raise ValueError(f"valid must have {arr.shape[1]} columns like data, got {va.shape[1]}")
    x = torch.from_numpy(arr)
    xv = None if va is None else torch.from_numpy(va)
    missing, soft = (None, None) if cfg.softening == 0 else softened_evidence(x, cats, cfg.softening)
    return _HCLTData(arr, x, xv, cats, missing, soft)


def _train_jointly(
    components: list[HCLTGroups], root: SumGroup, data: _HCLTData, cfg: HCLTConfig, t0: float, info: dict
) -> tuple[FitResult, int]:
    """Training phase of one HCLT, or of a mixture trained as a whole; returns the result and the epochs run."""
    circuit = compile(root, seed=cfg.seed).to(cfg.dtype)
    if cfg.init == "kmeans":
        for k, groups in enumerate(components):
            init_hclt_kmeans(circuit, groups, data.arr, seed=cfg.seed + k)
    if len(components) > 1:
        circuit.set_group_parameters(root, torch.ones(1, len(components)))
    deadline = None if cfg.time_budget is None else t0 + cfg.time_budget
    result = FitResult(circuit, info=info)
    desc = f"HCLT({cfg.num_latents})"
    result.train_ll, result.valid_ll, epochs = _fit_em(circuit, data, cfg, seed=cfg.seed, deadline=deadline, desc=desc)
    return result, epochs


def _train_separately(
    components: list[HCLTGroups], root: SumGroup, data: _HCLTData, cfg: HCLTConfig, t0: float, info: dict
) -> tuple[FitResult, int]:
    """Training phase of a mixture whose components are trained on all the data on their own, then mixed
    with equal weights (the time budget is shared out); returns the result and the epochs run."""
    parts, epochs, n = [], 0, len(components)
    info["component_valid_ll"] = []
    for k, groups in enumerate(components):
        part = compile(groups.root, seed=cfg.seed + k).to(cfg.dtype)
        if cfg.init == "kmeans":
            init_hclt_kmeans(part, groups, data.arr, seed=cfg.seed + k)
        now = time.perf_counter()
        deadline = None if cfg.time_budget is None else now + (t0 + cfg.time_budget - now) / (n - k)
        desc = f"HCLT({cfg.num_latents}) {k + 1}/{n}"
        _, valid_k, epochs_k = _fit_em(part, data, cfg, seed=cfg.seed + k, deadline=deadline, desc=desc)
        info["component_valid_ll"].append(max(valid_k) if valid_k else None)
        parts.append(part)
        epochs += epochs_k
    circuit = compile(root, seed=cfg.seed).to(cfg.dtype)
    for part, groups in zip(parts, components, strict=True):
        for g in [groups.root, *groups.leaves.values(), *groups.sums.values()]:
            circuit.set_group_parameters(g, part.group_parameters(g))
    circuit.set_group_parameters(root, torch.ones(1, n))
    result = FitResult(circuit, info=info)
    result.train_ll = [_mean_ll(circuit, data.x)]
    result.valid_ll = [] if data.xv is None else [_mean_ll(circuit, data.xv)]
    return result, epochs


def _em_epoch(circuit: TensorCircuit, data: _HCLTData, cfg: HCLTConfig, ep: int, seed: int) -> float:
    """One epoch of EM: mini-batch (annealed step size) for the first ``minibatch_epochs``, then full-batch.

    Returns:
        The mean train log-likelihood during the epoch.
    """
    evidence = {"missing": data.missing, "soft_evidence": data.soft, "pseudocount": cfg.pseudocount, "progress": False}
    if ep < cfg.minibatch_epochs:
        frac = ep / max(1, cfg.minibatch_epochs - 1)
        lr = cfg.step_size * (1 - 0.75 * frac)
        hist = em(circuit, data.x, 1, batch_size=cfg.batch_size, step_size=lr, seed=seed + ep, **evidence)
    else:
        hist = em(circuit, data.x, 1, batch_size=None, **evidence)
    return hist[0]


def _fit_em(
    circuit: TensorCircuit, data: _HCLTData, cfg: HCLTConfig, *, seed: int, deadline: float | None, desc: str
) -> tuple[list[float], list[float], int]:
    """Mini-batch then full-batch EM on ``circuit`` in place, keeping the best validation epoch.

    Returns:
        The train and validation log-likelihoods of each epoch, and the number of epochs run.
    """
    train_ll: list[float] = []
    valid_ll: list[float] = []
    best, best_state, best_epoch = -math.inf, None, 0
    disable = (not cfg.progress) if cfg.progress is not None else None
    bar = tqdm(range(cfg.minibatch_epochs + cfg.fullbatch_epochs), desc=desc, disable=disable)
    for ep in bar:
        train_ll.append(_em_epoch(circuit, data, cfg, ep, seed))
        post = {"train": f"{train_ll[-1]:.3f}"}
        if data.xv is not None:
            v = _mean_ll(circuit, data.xv)
            valid_ll.append(v)
            post["valid"] = f"{v:.3f}"
            if v > best:
                best, best_state, best_epoch = v, copy.deepcopy(circuit.state_dict()), ep
        bar.set_postfix(post)
        if deadline is not None and time.perf_counter() > deadline:
            break
        if cfg.patience is not None and data.xv is not None and ep - best_epoch >= cfg.patience:
            break
    bar.close()
    if best_state is not None:
        circuit.load_state_dict(best_state)
    return train_ll, valid_ll, len(train_ll)
