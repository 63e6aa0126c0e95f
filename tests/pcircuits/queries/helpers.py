"""Brute-force references for the query tests: joint enumeration and max-product, node by node.

Everything here walks the symbolic DAG in float64 numpy, independently of the
compiled layers, evaluating all enumerated completions of one example at once.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

import pcircuits as pc
from pcircuits.nodes import InputGroup, NodeGroup, ProductGroup, topological_order
from tests.pcircuits.random_circuits import KINDS, random_circuit, random_evidence

CARDS = dict(KINDS)


def cards_of(kinds: list[str]) -> list[int | None]:
    return [CARDS[k] for k in kinds]


def max_cats(kinds: list[str]) -> int:
    c = [x for x in cards_of(kinds) if x is not None]
    return max(c) if c else 0


class Reference:
    """Node-by-node evaluator of a compiled circuit's symbolic DAG (parameters read once)."""

    def __init__(self, circuit: pc.TensorCircuit):
        self.circuit = circuit
        self.order = topological_order(circuit.root)
        self.params: dict[int, object] = {}
        with torch.no_grad():
            for g in self.order:
                if isinstance(g, InputGroup):
                    p = circuit.group_parameters(g).detach().double()
                    if isinstance(g.dist, pc.Gaussian):
                        self.params[id(g)] = (p[:, 0].numpy(), np.exp(p[:, 1].numpy()))
                    else:
                        self.params[id(g)] = g.dist.log_table(p).exp().numpy()  # [n, C]
                elif not isinstance(g, ProductGroup) and g.children:
                    self.params[id(g)] = circuit.group_parameters(g).detach().double().numpy()  # [n, total]

    def values(self, a: np.ndarray, semiring: str = "sum") -> dict[int, np.ndarray]:
        """Values ``[K, n]`` of every group for ``K`` assignments ``a [K, V]`` (NaN: missing)."""
        vals: dict[int, np.ndarray] = {}
        K = a.shape[0]
        for g in self.order:
            if isinstance(g, InputGroup):
                col = a[:, g.var]
                miss = np.isnan(col)
                if isinstance(g.dist, pc.Gaussian):
                    mean, std = self.params[id(g)]
                    z = (np.where(miss, 0.0, col)[:, None] - mean) / std
                    v = np.exp(-0.5 * z * z) / (std * math.sqrt(2 * math.pi))
                    fill = np.ones_like(std) if semiring == "sum" else 1 / (std * math.sqrt(2 * math.pi))
                else:
                    table = self.params[id(g)]
                    v = table[:, np.where(miss, 0, col).astype(int)].T  # [K, n]
                    fill = table.sum(1) if semiring == "sum" else table.max(1)
                vals[id(g)] = np.where(miss[:, None], np.broadcast_to(fill, v.shape), v)
            elif isinstance(g, ProductGroup):
                v = np.ones((K, g.num_nodes))
                for j, c in enumerate(g.children):
                    v = v * vals[id(c)][:, g.edges[:, j].numpy()]
                vals[id(g)] = v
            else:
                w = self.params[id(g)]
                kids = np.concatenate([vals[id(c)] for c in g.children], 1)  # [K, total]
                if semiring == "sum":
                    vals[id(g)] = kids @ w.T
                else:
                    vals[id(g)] = (kids[:, None, :] * w[None]).max(-1)
        return vals

    def root(self, a: np.ndarray, semiring: str = "sum") -> np.ndarray:
        return self.values(a, semiring)[id(self.circuit.root)][:, 0]


def completions(cards: list[int | None], x: np.ndarray, miss: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """All completions ``[K, V]`` of one example over its missing discrete variables.

    Missing Gaussian variables stay NaN (integrated out, or maxed out under max-product).
    """
    V = len(cards)
    free = [v for v in range(V) if miss[v] and cards[v] is not None]
    base = np.where(miss, np.nan, x).astype(float)
    combos = list(itertools.product(*[range(cards[v]) for v in free]))
    a = np.repeat(base[None], len(combos), 0)
    for i, combo in enumerate(combos):
        a[i, free] = combo
    return a, free


def soft_weights(cards: list[int | None], a: np.ndarray, soft: np.ndarray | None) -> np.ndarray:
    """``prod_i w_i(a_i)`` of each completion ``a [K, V]`` (soft ``[V, C]``), scaled by a common constant.

    The log-weights are summed and shifted by their maximum before
    exponentiating, so huge logits do not overflow (the scale cancels in
    every normalised quantity).
    """
    lw = np.zeros(a.shape[0])
    if soft is None:
        return lw + 1.0
    for v, c in enumerate(cards):
        if c is not None:
            lw = lw + soft[v, a[:, v].astype(int)]
    m = lw.max()
    return np.exp(lw - (m if np.isfinite(m) else 0.0))


def brute_force_marginals(
    ref: Reference, cards: list[int | None], x: np.ndarray, miss: np.ndarray, soft: np.ndarray | None, C: int
) -> np.ndarray:
    """``[B, V, C]`` posterior marginals by enumeration (NaN for missing discrete variables of impossible rows)."""
    B, V = x.shape
    out = np.zeros((B, V, C))
    for b in range(B):
        a, free = completions(cards, x[b], miss[b])
        p = ref.root(a) * soft_weights(cards, a, None if soft is None else soft[b])
        total = p.sum()
        for v in range(V):
            if cards[v] is None:
                continue
            if not miss[b, v]:
                out[b, v, int(x[b, v])] = 1.0
            elif total == 0:
                out[b, v, : cards[v]] = np.nan
            else:
                for c in range(cards[v]):
                    out[b, v, c] = p[a[:, v] == c].sum() / total
    return out


def random_deterministic_circuit(seed: int, num_vars: int | None = None) -> tuple[NodeGroup, list[str]]:
    """A random deterministic DAG circuit over categorical and Bernoulli variables.

    Every sum node with more than one variable in scope mixes products
    ``[X_v = c] * (sub-circuits over the other variables)`` with pairwise
    different values ``c`` of one splitting variable ``v``, so its children have
    disjoint supports; single-variable scopes are plain leaf groups
    (categorical, Bernoulli or indicator). Sub-circuits are shared.
    """
    rng = np.random.default_rng(seed)
    if num_vars is None:
        num_vars = int(rng.integers(1, 5))
    kinds = [str(rng.choice(["categorical", "bernoulli"])) for _ in range(num_vars)]
    cards = cards_of(kinds)
    cache: dict[tuple, list[NodeGroup]] = {}

    def leaf(v: int, n: int) -> NodeGroup:
        r = rng.random()
        if r < 0.25:
            return pc.inputs(v, n, pc.Indicator([int(i) for i in rng.integers(0, cards[v], n)], num_cats=cards[v]))
        return pc.inputs(v, n, pc.Categorical(3) if cards[v] == 3 else pc.Bernoulli())

    def build(vars_: tuple[int, ...], n: int) -> NodeGroup:
        key = (vars_, n)
        if key in cache and rng.random() < 0.5:
            return cache[key][int(rng.integers(len(cache[key])))]
        if len(vars_) == 1:
            g = leaf(vars_[0], n)
        else:
            v = int(rng.choice(vars_))
            rest = [u for u in vars_ if u != v]
            ind = pc.inputs(v, cards[v], pc.Indicator(list(range(cards[v])), num_cats=cards[v]))
            perm = list(rng.permutation(rest))
            cut = int(rng.integers(1, len(perm) + 1)) if len(perm) > 1 and rng.random() < 0.5 else len(perm)
            parts = [tuple(sorted(int(u) for u in p)) for p in (perm[:cut], perm[cut:]) if len(p)]
            m = int(rng.integers(1, 4))
            subs = [build(p, m) for p in parts]
            num_prod = int(rng.integers(1, 6))
            edges = np.zeros((num_prod, 1 + len(subs)), dtype=np.int64)
            edges[:, 0] = rng.integers(0, cards[v], num_prod)
            edges[:, 1:] = rng.integers(0, m, (num_prod, len(subs)))
            prods = pc.multiply(ind, *subs, edges=torch.from_numpy(edges))
            rows, cols = [], []
            for i in range(n):
                # at most one product per value of v: children with disjoint supports
                for c in range(cards[v]):
                    cands = np.nonzero(edges[:, 0] == c)[0]
                    if len(cands) and rng.random() < 0.7:
                        rows.append(i)
                        cols.append(int(rng.choice(cands)))
                if not rows or rows[-1] != i:
                    rows.append(i)
                    cols.append(int(rng.integers(num_prod)))
            g = pc.summate(prods, num_nodes=n, edges=torch.tensor([rows, cols]))
        cache.setdefault(key, []).append(g)
        return g

    return build(tuple(range(num_vars)), 1), kinds


def evidence(seed: int, kinds: list[str], batch: int, soft: bool, missing_rate: float = 0.4):
    """Random evidence as tensors; soft evidence cut to the circuit's ``max_cats``."""
    x, miss, ev = random_evidence(seed, kinds, batch, missing_rate=missing_rate, soft=soft)
    C = max_cats(kinds)
    if ev is not None:
        ev = None if C == 0 else np.ascontiguousarray(ev[:, :, :C])
    return x, miss, ev


__all__ = [
    "CARDS",
    "Reference",
    "brute_force_marginals",
    "cards_of",
    "completions",
    "evidence",
    "max_cats",
    "random_circuit",
    "random_deterministic_circuit",
    "soft_weights",
]
