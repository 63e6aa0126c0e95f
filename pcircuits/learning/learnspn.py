"""LearnSPN (Gens & Domingos, 2013): top-down structure learning by splitting variables and instances.

At every step the learner holds a slice of the data (some rows, some
columns). A single column becomes a univariate leaf (smoothed frequencies).
Otherwise it tries a *variable split*: a G-test of pairwise independence
links dependent variables, and if the dependency graph has several
connected components the slice becomes a product of them. If not, it makes
an *instance split*: k-means clusters the rows, and the slice becomes a sum
of the clusters weighted by their sizes. Slices with fewer than
``min_instances`` rows, or any slice once the time or size budget is spent,
become fully factorised products of leaves.

[`learn_spn`][pcircuits.learning.learnspn.learn_spn] runs in phases: *data* (checks, categories), *structure*
(the recursive splitting of `_LearnSPN`, which also records the
parameters from counts) and *compilation* (the circuit, with those
parameters). [`LearnSPNConfig`][pcircuits.learning.learnspn.LearnSPNConfig] holds its settings.

Shapes: ``N`` examples (rows), ``V`` variables, ``d`` columns of a slice,
``C`` the largest number of categories.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import torch
from scipy.stats import chi2
from tqdm.auto import tqdm

from ..distributions import Categorical
from ..engine.circuit import compile
from ..nodes import NodeGroup, inputs, multiply, summate
from ..region_graphs.chow_liu_tree import as_category_array, check_num_cats, one_hot
from .checks import build_config, check_int, check_real
from .hclt import FitResult, kmeans

__all__ = ["LearnSPNConfig", "learn_spn", "independent_components"]


def independent_components(x: np.ndarray, cats: Sequence[int], alpha: float = 0.001) -> list[list[int]]:
    """Groups the columns of ``x`` into connected components of the dependency graph.

    Two columns are linked when the G-test rejects independence at level
    ``alpha`` (``G = 2 N MI`` against a chi-squared law with
    ``(C_i - 1)(C_j - 1)`` degrees of freedom).

    Args:
        x: ``[N, d]`` category indices.
        cats: categories of each column.
        alpha: significance level.

    Returns:
        Lists of column indices (positions in ``x``), one per component.
    """
    N, d = x.shape
    if d == 1:
        return [[0]]
    cats = list(cats)
    oh, C = one_hot(x, cats)
    flat = oh.reshape(N, d * C)
    joint = (flat.T @ flat).reshape(d, C, d, C).transpose(0, 2, 1, 3) / N  # [d, d, C, C]
    marg = oh.mean(0)  # [d, C]
    denom = marg[:, None, :, None] * marg[None, :, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * (np.log(joint) - np.log(np.where(denom > 0, denom, 1.0))), 0.0)
    g = 2 * N * terms.sum((2, 3))
    # degrees of freedom from the categories actually present in this slice
    present = (marg > 0).sum(1)
    dof = np.maximum(np.outer(present - 1, present - 1), 1)
    threshold = chi2.ppf(1 - alpha, dof)
    dep = (g > threshold) & ~np.eye(d, dtype=bool)
    graph = nx.from_numpy_array(dep.astype(np.int8))
    return [sorted(c) for c in nx.connected_components(graph)]


@dataclass
class LearnSPNConfig:
    """Settings of [`learn_spn`][pcircuits.learning.learnspn.learn_spn] (each can also be passed to it as a keyword).

    Attributes:
        num_cats: categories per variable (``None``: inferred from the data).
        min_instances: slices with fewer rows become factorised products
            (``None``: ``max(10, N // 100)``).
        alpha: significance level of the G-test of independence.
        num_clusters: clusters per instance split.
        pseudocount: smoothing of leaf frequencies (spread over the categories)
            and of cluster weights.
        max_nodes: size budget: once this many groups exist, remaining
            slices are factorised.
        time_budget: seconds; once spent, remaining slices are factorised.
        seed: seed of the clustering.
        dtype: parameter dtype.
        progress: show a tqdm bar (``None``: only on a terminal).

    Raises:
        ValueError: a value out of range (the message names the field);
            ``num_cats`` is checked against the data by [`learn_spn`][pcircuits.learning.learnspn.learn_spn].
    """

    num_cats: int | Sequence[int] | None = None
    min_instances: int | None = None
    alpha: float = 0.001
    num_clusters: int = 2
    pseudocount: float = 1.0
    max_nodes: int | None = None
    time_budget: float | None = None
    seed: int = 0
    dtype: torch.dtype = torch.float32
    progress: bool | None = None

    def __post_init__(self) -> None:
        m = self.min_instances
        if m is not None and (not isinstance(m, int) or m < 1):
            raise ValueError(f"min_instances must be a positive int, got {m!r}")
        self.alpha = check_real(self.alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)
        self.num_clusters = check_int(self.num_clusters, "num_clusters", 2)
        self.pseudocount = check_real(self.pseudocount, "pseudocount", low=0.0, low_open=True)  # leaves need smoothing
        if self.max_nodes is not None:
            self.max_nodes = check_int(self.max_nodes, "max_nodes", 1)
        if self.time_budget is not None:
            self.time_budget = check_real(self.time_budget, "time_budget", low=0.0, low_open=True)


def learn_spn(
    data: np.ndarray | torch.Tensor,
    num_cats: int | Sequence[int] | None = None,
    *,
    config: LearnSPNConfig | None = None,
    **options: Any,
) -> FitResult:
    """Learns a sum-product network with LearnSPN.

    Args:
        data: ``[N, V]`` training data (category indices).
        num_cats: categories per variable (``None``: ``config``'s, inferred by default).
        config: the settings (``None``: the defaults of [`LearnSPNConfig`][pcircuits.learning.learnspn.LearnSPNConfig]).
        **options: fields of [`LearnSPNConfig`][pcircuits.learning.learnspn.LearnSPNConfig] replacing those of
            ``config``,
            e.g. ``learn_spn(x, min_instances=100)``.

    Returns:
        A [`FitResult`][pcircuits.learning.hclt.FitResult] whose circuit has
        its parameters set from counts; ``info`` holds the numbers of sum,
        product and leaf nodes.

    Raises:
        ValueError: bad data or argument values.
        TypeError: an option that is not a field of [`LearnSPNConfig`][pcircuits.learning.learnspn.LearnSPNConfig].
    """
    t0 = time.perf_counter()
    if num_cats is not None:
        options["num_cats"] = num_cats
    cfg = build_config(LearnSPNConfig, config, options, "learn_spn")
    arr = as_category_array(data)
    cats = check_num_cats(cfg.num_cats, arr)
    min_instances = cfg.min_instances if cfg.min_instances is not None else max(10, arr.shape[0] // 100)
    learner = _LearnSPN(arr, cats, cfg, min_instances, t0)
    root = learner.learn()
    circuit = compile(root, seed=cfg.seed).to(cfg.dtype)
    with torch.no_grad():
        for g, p in learner.leaf_params + learner.sum_params:
            bank, slot = circuit.layout.param_slot[id(g)]
            circuit.params[bank][slot].copy_(torch.from_numpy(p))
    info = dict(learner.counts)
    info["min_instances"] = min_instances
    info["budget_hit"] = learner.over_budget()
    return FitResult(circuit, seconds=time.perf_counter() - t0, info=info)


class _LearnSPN:
    """The structure phase: recursive splits of slices (rows ``[n]``, variables ``vars_``) of ``arr`` ``[N, V]``.

    Every group it creates gets its parameters from counts, recorded in
    ``leaf_params``/``sum_params`` as ``(group, log-parameters)``; ``counts``
    holds the numbers of sum, product and leaf groups.
    """

    def __init__(self, arr: np.ndarray, cats: list[int], cfg: LearnSPNConfig, min_instances: int, t0: float) -> None:
        self.arr, self.cats, self.cfg, self.min_instances, self.t0 = arr, cats, cfg, min_instances, t0
        self.leaf_params: list[tuple[NodeGroup, np.ndarray]] = []
        self.sum_params: list[tuple[NodeGroup, np.ndarray]] = []
        self.counts = {"sum": 0, "product": 0, "leaf": 0}
        self.bar: Any = None

    def learn(self) -> NodeGroup:
        """The root: a sum group (a one-child sum is added when the top split is not an instance split)."""
        progress = self.cfg.progress
        self.bar = tqdm(desc="LearnSPN", unit="node", disable=(not progress) if progress is not None else None)
        N, V = self.arr.shape
        root = self.build(np.arange(N), list(range(V)), True)
        self.bar.close()
        if root.kind != "sum":
            root = summate(root, num_nodes=1)
            self.sum_params.append((root, np.zeros((1, 1))))
            self.counts["sum"] += 1
        return root

    def over_budget(self) -> bool:
        """Whether the size or time budget is spent."""
        cfg = self.cfg
        if cfg.max_nodes is not None and sum(self.counts.values()) >= cfg.max_nodes:
            return True
        return cfg.time_budget is not None and time.perf_counter() - self.t0 > cfg.time_budget

    def _made(self, kind: str) -> None:
        self.counts[kind] += 1
        self.bar.update(1)

    def leaf(self, rows: np.ndarray, v: int) -> NodeGroup:
        """A univariate leaf of variable ``v`` with the smoothed frequencies of ``rows``."""
        C = self.cats[v]
        c = np.bincount(self.arr[rows, v], minlength=C).astype(np.float64) + self.cfg.pseudocount / C
        g = inputs(v, 1, Categorical(C))
        self.leaf_params.append((g, np.log(c / c.sum())[None, :]))
        self._made("leaf")
        return g

    def factorised(self, rows: np.ndarray, vars_: list[int]) -> NodeGroup:
        """The product of the leaves of ``vars_`` (a leaf alone for one variable)."""
        kids = [self.leaf(rows, v) for v in vars_]
        if len(kids) == 1:
            return kids[0]
        self._made("product")
        return multiply(*kids)

    def _components(self, x: np.ndarray, vars_: list[int]) -> list[list[int]]:
        return independent_components(x, [self.cats[v] for v in vars_], self.cfg.alpha)

    def build(self, rows: np.ndarray, vars_: list[int], try_vars: bool) -> NodeGroup:
        """The group of a slice: a leaf, a factorised product, a variable split or an instance split."""
        if len(vars_) == 1:
            return self.leaf(rows, vars_[0])
        if len(rows) < self.min_instances or self.over_budget():
            return self.factorised(rows, vars_)
        x = self.arr[np.ix_(rows, vars_)]
        if try_vars:
            comps = self._components(x, vars_)
            if len(comps) > 1:
                kids = [self.build(rows, [vars_[i] for i in comp], False) for comp in comps]
                self._made("product")
                return multiply(*kids)
        return self.instance_split(rows, vars_, x, try_vars)

    def instance_split(self, rows: np.ndarray, vars_: list[int], x: np.ndarray, tried_vars: bool) -> NodeGroup:
        """A sum over k-means clusters of ``rows`` (``x`` ``[n, d]`` is the slice), weighted by their sizes."""
        cats = [self.cats[v] for v in vars_]
        feats = x.astype(np.float64) if max(cats) == 2 else one_hot(x, cats)[0].reshape(len(x), -1)
        seed = self.cfg.seed + sum(self.counts.values())
        labels, _ = kmeans(feats, min(self.cfg.num_clusters, len(rows)), iters=10, seed=seed)
        parts = [rows[labels == k] for k in range(labels.max() + 1)]
        parts = [p for p in parts if len(p)]
        if len(parts) < 2:
            # a cluster split failed: on a slice never tested for independence, try a variable split
            if not tried_vars and len(self._components(x, vars_)) > 1:
                return self.build(rows, vars_, True)
            return self.factorised(rows, vars_)
        kids = [self.build(p, vars_, True) for p in parts]
        w = np.array([len(p) for p in parts], dtype=np.float64) + self.cfg.pseudocount / len(parts)
        g = summate(*kids, num_nodes=1)
        self.sum_params.append((g, np.log(w / w.sum())[None, :]))
        self._made("sum")
        return g
