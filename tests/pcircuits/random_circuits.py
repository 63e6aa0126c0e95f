"""Random small DAG circuits, test-drawn parameters and an independent brute-force reference.

The reference never reads the compiled module. A test draws every input and
sum group's parameters itself (:func:`draw_parameters`), writes them through
the public API (:meth:`TensorCircuit.set_group_parameters`, in
:func:`set_parameters`), and :class:`Reference` evaluates the user-built DAG
node by node in float64 numpy from those recorded values, with its own
formula per leaf family (Categorical: softmax of the logits; Bernoulli:
sigmoid of the logit; Gaussian: mean and log-std; Indicator: the values of
the group's own ``dist``). Missing discrete variables are marginalised by
enumerating their values.

Shapes: ``B`` rows of evidence, ``V`` variables, ``K`` enumerated
assignments, ``n`` nodes of a group, ``C`` categories.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

import pcircuits as pc
from pcircuits.nodes import InputGroup, NodeGroup, ProductGroup, SumGroup, topological_order

#: variable kinds: (name, number of categories of the variable or None for Gaussian). A "mixed"
#: variable has leaves with 2 and 3 categories (Categorical(2), Categorical(3), Bernoulli,
#: Indicator(num_cats=2 or 3)); its domain is 0..2 and every leaf gives 0 outside its own.
KINDS = [("categorical", 3), ("bernoulli", 2), ("indicator", 3), ("mixed", 3), ("gaussian", None)]
CARDS = dict(KINDS)

#: recorded parameters: id of the owning group -> (group, values as passed to set_group_parameters)
Params = dict[int, tuple[NodeGroup, np.ndarray]]


# ----------------------------------------------------------------------------------- generators
def random_circuit(
    seed: int,
    num_vars: int | None = None,
    kinds: list[str] | None = None,
    max_nodes: int = 3,
    allow_gaussian: bool = True,
    deterministic: bool = False,
) -> tuple[NodeGroup, list[str]]:
    """A random smooth, decomposable DAG circuit with shared sub-circuits.

    Leaves: several Indicator groups per variable and, for "mixed" variables,
    leaf groups with different category counts. With ``deterministic`` every
    sum over more than one variable mixes products ``[X_v = c] * (...)`` with
    pairwise different values ``c`` of one variable, so the children of
    every sum node have disjoint supports and MPE is exact (no Gaussians).

    Returns the root and the kind of each variable (see :data:`KINDS`).
    """
    rng = np.random.default_rng(seed)
    if num_vars is None:
        num_vars = int(rng.integers(1, 5))
    if kinds is None:
        names = [k for k, c in KINDS if (allow_gaussian and not deterministic) or c is not None]
        kinds = [str(rng.choice(names)) for _ in range(num_vars)]
    if deterministic and any(CARDS[k] is None for k in kinds):
        raise ValueError("kinds: deterministic circuits need discrete variables")
    build = _deterministic_builder(rng, kinds, max_nodes) if deterministic else _builder(rng, kinds, max_nodes)
    root = build(tuple(range(num_vars)), 1)
    if not deterministic and rng.random() < 0.3:  # share a sub-circuit under a new root
        root = pc.summate(root, build(tuple(range(num_vars)), 1), num_nodes=1)
    return _widen_mixed(root, kinds, deterministic), kinds


def _leaf_dist(rng: np.random.Generator, kind: str, n: int) -> pc.Distribution:
    """A random leaf family for a variable of ``kind`` (``n`` nodes)."""
    def indicator(cats: int) -> pc.Indicator:
        if rng.random() < 0.3:
            return pc.Indicator(int(rng.integers(0, cats)), num_cats=cats)  # one value for every node
        return pc.Indicator([int(i) for i in rng.integers(0, cats, n)], num_cats=cats)

    r = rng.random()
    if kind == "categorical":
        return pc.Categorical(3) if r < 0.6 else indicator(3)
    if kind == "bernoulli":
        return pc.Bernoulli() if r < 0.7 else indicator(2)
    if kind == "indicator":
        return indicator(3)
    if kind == "mixed":
        choices = [
            lambda: pc.Categorical(2),
            lambda: pc.Categorical(3),
            pc.Bernoulli,
            lambda: indicator(2),
            lambda: indicator(3),
        ]
        return choices[int(rng.integers(len(choices)))]()
    return pc.Gaussian()


def _builder(rng: np.random.Generator, kinds: list[str], max_nodes: int):
    cache: dict[tuple, list[NodeGroup]] = {}

    def leaf(v: int, n: int) -> NodeGroup:
        g = pc.inputs(v, n, _leaf_dist(rng, kinds[v], n))
        if rng.random() < 0.35:  # a mixture of two leaf groups of the variable
            g2 = pc.inputs(v, n, _leaf_dist(rng, kinds[v], n))
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
                cut = sorted(
                    rng.choice(range(1, len(perm)), size=min(len(perm) - 1, int(rng.integers(1, 3))), replace=False)
                )
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

    return build


def _deterministic_builder(rng: np.random.Generator, kinds: list[str], max_nodes: int):
    """Sums over ``[X_v = c] * (sub-circuits of the other variables)`` with distinct ``c`` per sum node."""
    cards = [CARDS[k] for k in kinds]
    cache: dict[tuple, list[NodeGroup]] = {}

    def build(vars_: tuple[int, ...], n: int) -> NodeGroup:
        key = (vars_, n)
        if key in cache and rng.random() < 0.5:
            return cache[key][int(rng.integers(len(cache[key])))]
        if len(vars_) == 1:
            g = pc.inputs(vars_[0], n, _leaf_dist(rng, kinds[vars_[0]], n))
        else:
            v = int(rng.choice(vars_))
            rest = [u for u in vars_ if u != v]
            ind = pc.inputs(v, cards[v], pc.Indicator(list(range(cards[v])), num_cats=cards[v]))
            perm = list(rng.permutation(rest))
            cut = int(rng.integers(1, len(perm) + 1)) if len(perm) > 1 and rng.random() < 0.5 else len(perm)
            parts = [tuple(sorted(int(u) for u in p)) for p in (perm[:cut], perm[cut:]) if len(p)]
            m = int(rng.integers(1, max_nodes + 1))
            subs = [build(p, m) for p in parts]
            num_prod = int(rng.integers(1, 6))
            edges = np.zeros((num_prod, 1 + len(subs)), dtype=np.int64)
            edges[:, 0] = rng.integers(0, cards[v], num_prod)
            edges[:, 1:] = rng.integers(0, m, (num_prod, len(subs)))
            prods = pc.multiply(ind, *subs, edges=torch.from_numpy(edges))
            rows, cols = [], []
            for i in range(n):
                for c in range(cards[v]):  # at most one product per value of v: disjoint supports
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

    return build


def _widen_mixed(root: NodeGroup, kinds: list[str], deterministic: bool) -> NodeGroup:
    """Makes every variable's widest leaf match its kind's category count.

    A "mixed" variable whose leaves all happen to have 2 categories gets a
    3-category leaf: by a new mixture component (a product of one leaf per
    variable), or, in a deterministic circuit, by a product with an
    ``Indicator`` that keeps the supports disjoint.
    """
    cards = variable_cards(root)
    short = [v for v, k in enumerate(kinds) if CARDS[k] is not None and cards[v] < CARDS[k]]
    if not short:
        return root
    V = len(kinds)
    if deterministic:
        # the new component only covers X_v = 2, which no other leaf of v supports
        v = short[0]
        parts = [
            pc.inputs(
                u,
                1,
                pc.Indicator(2, num_cats=3)
                if u == v
                else (pc.Categorical(CARDS[kinds[u]]) if CARDS[kinds[u]] == 3 else pc.Bernoulli()),
            )
            for u in range(V)
        ]
        return _widen_mixed(pc.summate(root, pc.multiply(*parts), num_nodes=1), kinds, deterministic)
    parts = [pc.inputs(u, 1, pc.Categorical(3) if u in short else _plain_leaf(kinds[u])) for u in range(V)]
    return pc.summate(root, pc.multiply(*parts), num_nodes=1)


def _plain_leaf(kind: str) -> pc.Distribution:
    return pc.Gaussian() if CARDS[kind] is None else (pc.Bernoulli() if CARDS[kind] == 2 else pc.Categorical(3))


def _random_edges(rng: np.random.Generator, n: int, total: int) -> torch.Tensor:
    """A random sparse edge list where every parent has at least one child."""
    rows, cols = [], []
    for i in range(n):
        k = int(rng.integers(1, total + 1))
        for c in rng.choice(total, size=k, replace=False):
            rows.append(i)
            cols.append(int(c))
    return torch.tensor([rows, cols])


# ----------------------------------------------------------------------------------- parameters
def draw_parameters(root: NodeGroup, seed: int) -> Params:
    """Random parameters for every input and sum group of ``root`` (tied groups once), as numpy float64.

    Values follow the raw convention of :meth:`TensorCircuit.set_group_parameters`:
    Categorical ``[n, C]`` logits, Bernoulli ``[n, 1]`` logits, Gaussian
    ``[n, 2]`` (mean, log std), sums ``[n, num_child_nodes]`` weights
    (normalised, 0 off the edge pattern). Indicators have none: their values
    are the group's ``dist``.
    """
    rng = np.random.default_rng(seed + 7919)
    params: Params = {}
    for g in topological_order(root):
        owner = getattr(g, "tied_to", None) or g
        if id(owner) in params:
            continue
        n = owner.num_nodes
        if isinstance(owner, InputGroup):
            d = owner.dist
            if isinstance(d, pc.Indicator):
                continue
            if isinstance(d, pc.Categorical):
                value = rng.normal(size=(n, d.num_cats)) * 1.5
            elif isinstance(d, pc.Bernoulli):
                value = rng.normal(size=(n, 1)) * 1.5
            elif isinstance(d, pc.Gaussian):
                value = np.stack([rng.normal(size=n) * 2, rng.uniform(-0.7, 0.5, n)], -1)
            else:
                raise TypeError(f"no reference formula for {d!r}")
        elif isinstance(owner, SumGroup):
            value = rng.gamma(1.0, size=(n, owner.num_child_nodes)) + 1e-3
            value = value * edge_mask(owner)
            value = value / value.sum(1, keepdims=True)
        else:
            continue
        params[id(owner)] = (owner, value)
    return params


def edge_mask(g: SumGroup) -> np.ndarray:
    """``[n, num_child_nodes]`` 1 where sum node ``i`` has an edge to child node ``j``, from the user's edges."""
    if g.edges is None:
        return np.ones((g.num_nodes, g.num_child_nodes))
    mask = np.zeros((g.num_nodes, g.num_child_nodes))
    mask[g.edges[0].numpy(), g.edges[1].numpy()] = 1.0
    return mask


def set_parameters(circuit: pc.TensorCircuit, params: Params) -> None:
    """Writes recorded parameters into a circuit compiled from the same groups (public API only)."""
    for g, value in params.values():
        circuit.set_group_parameters(g, torch.from_numpy(value))


def compile_with_reference(
    root: NodeGroup, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[pc.TensorCircuit, "Reference"]:
    """Compiles ``root``, sets test-drawn parameters and returns the circuit with its reference."""
    circuit = pc.compile(root, seed=seed).to(dtype)
    params = draw_parameters(root, seed)
    set_parameters(circuit, params)
    return circuit, Reference(root, params)


# ----------------------------------------------------------------------------------- reference
def variable_cards(root: NodeGroup) -> list[int | None]:
    """Categories of each variable: the most of its leaves (``None``: Gaussian), from the user's groups."""
    cards: dict[int, int | None] = {}
    for g in topological_order(root):
        if isinstance(g, InputGroup):
            c = g.dist.num_cats if g.dist.discrete else None
            cards[g.var] = c if cards.get(g.var) is None else max(cards[g.var], c)
    return [cards[v] for v in range(len(cards))]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _indicator_values(g: InputGroup) -> list[int]:
    value = g.dist.config()["value"]
    return [int(value)] * g.num_nodes if isinstance(value, int) else [int(v) for v in value]


class Reference:
    """Node-by-node evaluator of a user-built DAG from recorded parameters (float64 numpy).

    Args:
        root: the root group the test built.
        params: the values the test drew and set (:func:`draw_parameters`).
    """

    def __init__(self, root: NodeGroup, params: Params):
        self.root_group = root
        self.order = topological_order(root)
        self.cards = variable_cards(root)
        self.leaf: dict[int, object] = {}
        self.weights: dict[int, np.ndarray] = {}
        for g in self.order:
            owner = getattr(g, "tied_to", None) or g
            if isinstance(g, InputGroup):
                self.leaf[id(g)] = self._leaf_table(g, params.get(id(owner), (None, None))[1])
            elif isinstance(g, SumGroup):
                self.weights[id(g)] = params[id(owner)][1]  # [n, total]

    def _leaf_table(self, g: InputGroup, raw: np.ndarray | None):
        """``("gauss", mean, std)`` or ``("table", [n, card])`` probabilities, 0 outside the leaf's domain."""
        d = g.dist
        if isinstance(d, pc.Gaussian):
            return ("gauss", raw[:, 0], np.exp(raw[:, 1]))
        if isinstance(d, pc.Categorical):
            table = _softmax(raw)
        elif isinstance(d, pc.Bernoulli):
            p1 = 1.0 / (1.0 + np.exp(-raw[:, 0]))
            table = np.stack([1 - p1, p1], -1)
        elif isinstance(d, pc.Indicator):
            table = np.zeros((g.num_nodes, d.num_cats))
            table[np.arange(g.num_nodes), _indicator_values(g)] = 1.0
        else:
            raise TypeError(f"no reference formula for {d!r}")
        full = np.zeros((g.num_nodes, self.cards[g.var]))
        full[:, : table.shape[1]] = table
        return ("table", full)

    def values(self, a: np.ndarray, semiring: str = "sum") -> dict[int, np.ndarray]:
        """Values ``[K, n]`` of every group for ``K`` assignments ``a [K, V]`` (NaN: missing)."""
        vals: dict[int, np.ndarray] = {}
        K = a.shape[0]
        for g in self.order:
            if isinstance(g, InputGroup):
                col = a[:, g.var]
                miss = np.isnan(col)
                leaf = self.leaf[id(g)]
                if leaf[0] == "gauss":
                    _, mean, std = leaf
                    z = (np.where(miss, 0.0, col)[:, None] - mean) / std
                    v = np.exp(-0.5 * z * z) / (std * math.sqrt(2 * math.pi))
                    fill = np.ones_like(std) if semiring == "sum" else 1 / (std * math.sqrt(2 * math.pi))
                else:
                    table = leaf[1]
                    v = table[:, np.where(miss, 0, col).astype(int)].T  # [K, n]
                    fill = table.sum(1) if semiring == "sum" else table.max(1)
                vals[id(g)] = np.where(miss[:, None], np.broadcast_to(fill, v.shape), v)
            elif isinstance(g, ProductGroup):
                v = np.ones((K, g.num_nodes))
                for j, c in enumerate(g.children):
                    v = v * vals[id(c)][:, g.edges[:, j].numpy()]
                vals[id(g)] = v
            else:
                w = self.weights[id(g)]
                kids = np.concatenate([vals[id(c)] for c in g.children], 1)  # [K, total]
                if semiring == "sum":
                    vals[id(g)] = kids @ w.T
                else:
                    vals[id(g)] = (kids[:, None, :] * w[None]).max(-1)
        return vals

    def root(self, a: np.ndarray, semiring: str = "sum") -> np.ndarray:
        """``[K]`` value of the root for assignments ``a [K, V]``."""
        return self.values(a, semiring)[id(self.root_group)][:, 0]


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


def log_soft_weights(cards: list[int | None], a: np.ndarray, soft: np.ndarray | None) -> np.ndarray:
    """``[K]`` ``sum_i log w_i(a_i)`` of each completion ``a [K, V]`` (soft ``[V, C]``)."""
    lw = np.zeros(a.shape[0])
    if soft is None:
        return lw
    for v, c in enumerate(cards):
        if c is not None:
            lw = lw + soft[v, a[:, v].astype(int)]
    return lw


def soft_weights(cards: list[int | None], a: np.ndarray, soft: np.ndarray | None) -> np.ndarray:
    """``prod_i w_i(a_i)`` of each completion, scaled by a common constant (so huge logits do not overflow)."""
    lw = log_soft_weights(cards, a, soft)
    m = lw.max()
    return np.exp(lw - (m if np.isfinite(m) else 0.0))


def brute_force_ll(ref: Reference, x: np.ndarray, missing: np.ndarray | None, soft: np.ndarray | None) -> np.ndarray:
    """``[B]`` ``log sum_{x_missing discrete} p(x) * prod_i w_i(x_i)`` by enumeration."""
    B, V = x.shape
    out = np.empty(B)
    for b in range(B):
        miss = np.zeros(V, dtype=bool) if missing is None else missing[b]
        a, _ = completions(ref.cards, x[b], miss)
        lw = log_soft_weights(ref.cards, a, None if soft is None else soft[b])
        m = lw.max()
        m = m if np.isfinite(m) else 0.0
        total = (ref.root(a) * np.exp(lw - m)).sum()
        out[b] = math.log(total) + m if total > 0 else -math.inf
    return out


def random_evidence(
    seed: int, kinds: list[str], batch: int, missing_rate: float = 0.3, soft: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random ``x [B, V]`` (float64), ``missing [B, V]`` and soft evidence ``[B, V, 3]``."""
    rng = np.random.default_rng(seed)
    V = len(kinds)
    x = np.zeros((batch, V))
    for v, k in enumerate(kinds):
        card = CARDS[k]
        x[:, v] = rng.normal(size=batch) if card is None else rng.integers(0, card, batch)
    missing = rng.random((batch, V)) < missing_rate
    ev = None
    if soft:
        ev = rng.normal(size=(batch, V, 3)) * 2
        for v, k in enumerate(kinds):
            card = CARDS[k]
            if card is None:
                ev[:, v] = 0
            elif card < 3:
                ev[:, v, card:] = -np.inf
        ev[rng.random((batch, V)) < 0.2] = 0.0
    return x, missing, ev
