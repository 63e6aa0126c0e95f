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
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch
from scipy.stats import chi2
from tqdm.auto import tqdm

from ..distributions import Categorical
from ..engine.circuit import compile
from ..nodes import NodeGroup, inputs, multiply, summate
from .checks import check_int, check_real
from .chow_liu import FitResult, _as_array, _cats_list, _one_hot, kmeans

__all__ = ["learn_spn", "independent_components"]


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
    oh, C = _one_hot(x, cats)
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


def learn_spn(
    data: np.ndarray | torch.Tensor,
    num_cats: int | Sequence[int] | None = None,
    min_instances: int | None = None,
    alpha: float = 0.001,
    num_clusters: int = 2,
    pseudocount: float = 1.0,
    max_nodes: int | None = None,
    time_budget: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    progress: bool | None = None,
) -> FitResult:
    """Learns a sum-product network with LearnSPN.

    Args:
        data: ``[N, V]`` training data (category indices).
        num_cats: categories per variable (``None``: inferred).
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

    Returns:
        A :class:`~pcircuits.learning.chow_liu.FitResult` whose circuit has
        its parameters set from counts; ``info`` holds the numbers of sum,
        product and leaf nodes.

    Raises:
        ValueError: bad data or argument values.
    """
    t0 = time.perf_counter()
    arr = _as_array(data)
    cats = _cats_list(num_cats, arr)
    N, V = arr.shape
    if min_instances is None:
        min_instances = max(10, N // 100)
    if not isinstance(min_instances, int) or min_instances < 1:
        raise ValueError(f"min_instances must be a positive int, got {min_instances!r}")
    alpha = check_real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)
    num_clusters = check_int(num_clusters, "num_clusters", 2)
    pseudocount = check_real(pseudocount, "pseudocount", low=0.0, low_open=True)  # leaves need smoothing
    if max_nodes is not None:
        max_nodes = check_int(max_nodes, "max_nodes", 1)
    if time_budget is not None:
        time_budget = check_real(time_budget, "time_budget", low=0.0, low_open=True)

    leaf_params: list[tuple[NodeGroup, np.ndarray]] = []
    sum_params: list[tuple[NodeGroup, np.ndarray]] = []
    counts = {"sum": 0, "product": 0, "leaf": 0}
    bar = tqdm(desc="LearnSPN", unit="node", disable=(not progress) if progress is not None else None)

    def over_budget() -> bool:
        if max_nodes is not None and sum(counts.values()) >= max_nodes:
            return True
        return time_budget is not None and time.perf_counter() - t0 > time_budget

    def leaf(rows: np.ndarray, v: int) -> NodeGroup:
        C = cats[v]
        c = np.bincount(arr[rows, v], minlength=C).astype(np.float64) + pseudocount / C
        g = inputs(v, 1, Categorical(C))
        leaf_params.append((g, np.log(c / c.sum())[None, :]))
        counts["leaf"] += 1
        bar.update(1)
        return g

    def factorised(rows: np.ndarray, vars_: list[int]) -> NodeGroup:
        kids = [leaf(rows, v) for v in vars_]
        if len(kids) == 1:
            return kids[0]
        counts["product"] += 1
        bar.update(1)
        return multiply(*kids)

    def build(rows: np.ndarray, vars_: list[int], try_vars: bool) -> NodeGroup:
        if len(vars_) == 1:
            return leaf(rows, vars_[0])
        if len(rows) < min_instances or over_budget():
            return factorised(rows, vars_)
        x = arr[np.ix_(rows, vars_)]
        if try_vars:
            comps = independent_components(x, [cats[v] for v in vars_], alpha)
            if len(comps) > 1:
                kids = [build(rows, [vars_[i] for i in comp], False) for comp in comps]
                counts["product"] += 1
                bar.update(1)
                return multiply(*kids)
        feats = x.astype(np.float64) if max(cats[v] for v in vars_) == 2 else _one_hot(x, [cats[v] for v in vars_])[0].reshape(len(x), -1)
        labels, _ = kmeans(feats, min(num_clusters, len(rows)), iters=10, seed=seed + sum(counts.values()))
        parts = [rows[labels == k] for k in range(labels.max() + 1)]
        parts = [p for p in parts if len(p)]
        if len(parts) < 2:
            if not try_vars:  # a cluster split failed on a slice never tested for independence
                return build(rows, vars_, True) if len(vars_) > 1 and _can_split_vars(x, vars_) else factorised(rows, vars_)
            return factorised(rows, vars_)
        kids = [build(p, vars_, True) for p in parts]
        w = np.array([len(p) for p in parts], dtype=np.float64) + pseudocount / len(parts)
        g = summate(*kids, num_nodes=1)
        sum_params.append((g, np.log(w / w.sum())[None, :]))
        counts["sum"] += 1
        bar.update(1)
        return g

    def _can_split_vars(x: np.ndarray, vars_: list[int]) -> bool:
        return len(independent_components(x, [cats[v] for v in vars_], alpha)) > 1

    root = build(np.arange(N), list(range(V)), True)
    bar.close()
    if root.kind != "sum":
        root = summate(root, num_nodes=1)
        sum_params.append((root, np.zeros((1, 1))))
        counts["sum"] += 1
    circuit = compile(root, seed=seed).to(dtype)
    with torch.no_grad():
        for g, p in leaf_params + sum_params:
            bank, slot = circuit.layout.param_slot[id(g)]
            circuit.params[bank][slot].copy_(torch.from_numpy(p))
    info = dict(counts)
    info["min_instances"] = min_instances
    info["budget_hit"] = over_budget()
    return FitResult(circuit, seconds=time.perf_counter() - t0, info=info)
