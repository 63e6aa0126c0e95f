"""Chow-Liu trees: the maximum spanning tree of the pairwise mutual information.

[`chow_liu_tree`][pcircuits.region_graphs.chow_liu_tree.chow_liu_tree] estimates the mutual information from
smoothed counts and returns the tree;
[`pcircuits.region_graphs.chow_liu`][pcircuits.region_graphs.constructors.chow_liu] turns it into a region graph
and [`pcircuits.learning.learn_hclt`][pcircuits.learning.hclt.learn_hclt] into a hidden Chow-Liu tree.
[`as_category_array`][pcircuits.region_graphs.chow_liu_tree.as_category_array],
[`check_num_cats`][pcircuits.region_graphs.chow_liu_tree.check_num_cats] and
[`one_hot`][pcircuits.region_graphs.chow_liu_tree.one_hot] are the
checks and encodings of discrete data that the structure learners share.

Shapes: ``N`` examples, ``V`` variables, ``C`` the largest number of categories.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch
from scipy.sparse.csgraph import minimum_spanning_tree

__all__ = ["as_category_array", "check_num_cats", "chow_liu_tree", "infer_num_cats", "mutual_information", "one_hot"]


def as_category_array(data: np.ndarray | torch.Tensor, name: str = "data") -> np.ndarray:
    """``data`` ``[N, V]`` as an int64 array of category indices.

    Raises:
        ValueError: not an array or tensor, not 2-D with ``N, V >= 1``, or
            values that are not non-negative integers; the message names ``name``.
    """
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
    arr = as_category_array(data)
    return [max(2, int(m) + 1) for m in arr.max(0)]


def check_num_cats(num_cats: int | Sequence[int] | None, arr: np.ndarray) -> list[int]:
    """Categories per variable of ``arr`` ``[N, V]``: ``num_cats`` checked against the data, or inferred.

    Returns:
        ``V`` ints, each at least 2 and above every value of its column.

    Raises:
        ValueError: ``num_cats`` has the wrong length, a value below 2, or
            a value not above its column's largest category.
    """
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


def one_hot(arr: np.ndarray, cats: list[int]) -> tuple[np.ndarray, int]:
    """One-hot encoding of ``arr`` ``[N, V]``: ``([N, V, C] float64, C)`` with ``C = max(cats)``."""
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
        pseudocount: total pseudocount spread evenly over the cells of every
            pairwise table (and consistently over the marginals).
        weights: ``[N]`` non-negative example weights (``None``: all 1).

    Returns:
        ``[V, V]`` symmetric matrix with zeros on the diagonal.
    """
    arr = as_category_array(data)
    cats = check_num_cats(num_cats, arr)
    if pseudocount < 0:
        raise ValueError(f"pseudocount must be non-negative, got {pseudocount}")
    N, V = arr.shape
    w = np.ones(N) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (N,) or (w < 0).any():
        raise ValueError(f"weights must be a non-negative array of shape [{N}]")
    oh, C = one_hot(arr, cats)
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
    for i, j in zip(mst.row.tolist(), mst.col.tolist(), strict=True):
        tree.add_edge(int(i), int(j), weight=float(mi[i, j]))
    return tree
