"""Random small DAG circuits and a brute-force reference evaluator for tests.

The reference walks the symbolic DAG node by node in float64 (an
implementation independent of the compiled layers) and marginalises missing
discrete variables by enumerating their values.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

import pcircuits as pc
from pcircuits.nodes import InputGroup, NodeGroup, ProductGroup, topological_order

#: variable kinds: (name, number of categories or None for Gaussian)
KINDS = [("categorical", 3), ("bernoulli", 2), ("indicator", 3), ("gaussian", None)]


def random_circuit(
    seed: int,
    num_vars: int | None = None,
    kinds: list[str] | None = None,
    max_nodes: int = 3,
    allow_gaussian: bool = True,
    deterministic: bool = False,
) -> tuple[NodeGroup, list[str]]:
    """A random smooth, decomposable DAG circuit with shared sub-circuits.

    Returns the root and the kind of each variable. With ``deterministic``
    every variable is categorical with indicator leaves and sums pick among
    children with disjoint supports, so MPE is exact.
    """
    rng = np.random.default_rng(seed)
    if num_vars is None:
        num_vars = int(rng.integers(1, 5))
    if kinds is None:
        names = [k for k, c in KINDS if allow_gaussian or c is not None]
        kinds = [str(rng.choice(names)) for _ in range(num_vars)]
    cache: dict[tuple, list[NodeGroup]] = {}

    def leaf(v: int, n: int) -> NodeGroup:
        kind = kinds[v]
        if kind == "categorical":
            d = pc.Categorical(3) if rng.random() < 0.7 else pc.Indicator([int(i) for i in rng.integers(0, 3, n)], num_cats=3)
        elif kind == "bernoulli":
            d = pc.Bernoulli()
        elif kind == "indicator":
            d = pc.Indicator([int(i) for i in rng.integers(0, 3, n)], num_cats=3)
        else:
            d = pc.Gaussian()
        g = pc.inputs(v, n, d)
        if rng.random() < 0.3:  # a mixture of two leaf groups
            g2 = pc.inputs(v, n, pc.Categorical(3) if kind in ("categorical", "indicator") else (pc.Bernoulli() if kind == "bernoulli" else pc.Gaussian()))
            g = pc.summate(g, g2, num_nodes=n, edges=_random_edges(rng, n, 2 * n) if rng.random() < 0.5 else None)
        return g

    def build(vars_: tuple[int, ...], n: int) -> NodeGroup:
        key = (vars_, n)
        if key in cache and rng.random() < 0.6:
            return cache[key][int(rng.integers(len(cache[key])))]
        if len(vars_) == 1:
            g = leaf(vars_[0], n)
        else:
            prods = []
            for _ in range(int(rng.integers(1, 3))):
                perm = list(rng.permutation(vars_))
                cut = sorted(rng.choice(range(1, len(perm)), size=min(len(perm) - 1, int(rng.integers(1, 3))), replace=False))
                parts = [tuple(sorted(int(v) for v in p)) for p in np.split(perm, cut)]
                m = int(rng.integers(1, max_nodes + 1))
                kids = [build(p, m) for p in parts]
                if rng.random() < 0.3:
                    np_ = int(rng.integers(1, max_nodes + 1))
                    edges = torch.tensor(rng.integers(0, m, (np_, len(kids))))
                    prods.append(pc.multiply(*kids, edges=edges))
                else:
                    prods.append(pc.multiply(*kids))
            total = sum(p.num_nodes for p in prods)
            edges = _random_edges(rng, n, total) if rng.random() < 0.4 else None
            g = pc.summate(*prods, num_nodes=n, edges=edges)
        cache.setdefault(key, []).append(g)
        return g

    root = build(tuple(range(num_vars)), 1)
    if rng.random() < 0.3:  # share a sub-circuit under a new root
        root = pc.summate(root, build(tuple(range(num_vars)), 1), num_nodes=1)
    return root, kinds


def _random_edges(rng: np.random.Generator, n: int, total: int) -> torch.Tensor:
    """A random sparse edge list where every parent has at least one child."""
    rows, cols = [], []
    for i in range(n):
        k = int(rng.integers(1, total + 1))
        for c in rng.choice(total, size=k, replace=False):
            rows.append(i)
            cols.append(int(c))
    return torch.tensor([rows, cols])


def _leaf_value(circuit: pc.TensorCircuit, g: InputGroup, value: float | None) -> np.ndarray:
    params = circuit.group_parameters(g).detach().double()
    d = g.dist
    if value is None:
        return np.ones(g.num_nodes)
    if isinstance(d, pc.Gaussian):
        mean, std = params[:, 0].numpy(), np.exp(params[:, 1].numpy())
        return np.exp(-0.5 * ((value - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    table = d.log_table(params).exp().numpy()  # [n, C]
    return table[:, int(value)]


def node_values(circuit: pc.TensorCircuit, root: NodeGroup, assignment: list[float | None]) -> dict[int, np.ndarray]:
    """Probability of every node of the DAG for one (partial) assignment, node by node."""
    vals: dict[int, np.ndarray] = {}
    for g in topological_order(root):
        if isinstance(g, InputGroup):
            vals[id(g)] = _leaf_value(circuit, g, assignment[g.var])
        elif isinstance(g, ProductGroup):
            v = np.ones(g.num_nodes)
            for j, c in enumerate(g.children):
                v = v * vals[id(c)][g.edges[:, j].numpy()]
            vals[id(g)] = v
        else:
            w = circuit.group_parameters(g).detach().double().numpy()
            kids = np.concatenate([vals[id(c)] for c in g.children])
            vals[id(g)] = w @ kids
    return vals


def brute_force_ll(
    circuit: pc.TensorCircuit,
    kinds: list[str],
    x: np.ndarray,
    missing: np.ndarray | None,
    soft: np.ndarray | None,
) -> np.ndarray:
    """``log sum_{x_missing discrete} p(x) * prod_i w_i(x_i)`` per row, by enumeration."""
    cards = [dict(KINDS)[k] for k in kinds]
    out = []
    for b in range(x.shape[0]):
        miss = [bool(missing[b, v]) if missing is not None else False for v in range(len(kinds))]
        free = [v for v in range(len(kinds)) if miss[v] and cards[v] is not None]
        total = 0.0
        for combo in itertools.product(*[range(cards[v]) for v in free]):
            a: list[float | None] = [None if miss[v] else float(x[b, v]) for v in range(len(kinds))]
            for v, c in zip(free, combo):
                a[v] = float(c)
            p = node_values(circuit, circuit.root, a)[id(circuit.root)][0]
            if soft is not None:
                for v in range(len(kinds)):
                    if cards[v] is not None:
                        p *= math.exp(soft[b, v, int(a[v])])
            total += p
        out.append(math.log(total) if total > 0 else -math.inf)
    return np.array(out)


def random_evidence(
    seed: int, kinds: list[str], batch: int, missing_rate: float = 0.3, soft: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random ``x [B, V]`` (float64), ``missing [B, V]`` and soft evidence ``[B, V, 3]``."""
    rng = np.random.default_rng(seed)
    V = len(kinds)
    x = np.zeros((batch, V))
    for v, k in enumerate(kinds):
        card = dict(KINDS)[k]
        x[:, v] = rng.normal(size=batch) if card is None else rng.integers(0, card, batch)
    missing = rng.random((batch, V)) < missing_rate
    ev = None
    if soft:
        ev = rng.normal(size=(batch, V, 3)) * 2
        for v, k in enumerate(kinds):
            card = dict(KINDS)[k]
            if card is None:
                ev[:, v] = 0
            elif card < 3:
                ev[:, v, card:] = -np.inf
        ev[rng.random((batch, V)) < 0.2] = 0.0
    return x, missing, ev
