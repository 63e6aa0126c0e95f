"""Brute-force references for the query tests: joint enumeration and max-product, node by node.

Everything here walks the user-built DAG in float64 numpy from parameters the
test drew and set through the public API (see ``tests/pcircuits/random_circuits.py``),
independently of the compiled layers, evaluating all enumerated completions of
one example at once.
"""

from __future__ import annotations

import numpy as np

from tests.pcircuits.random_circuits import (
    CARDS,
    Reference,
    compile_with_reference,
    brute_force_ll,
    completions,
    draw_parameters,
    log_soft_weights,
    random_circuit,
    random_evidence,
    set_parameters,
    soft_weights,
)


def cards_of(kinds: list[str]) -> list[int | None]:
    return [CARDS[k] for k in kinds]


def max_cats(kinds: list[str]) -> int:
    c = [x for x in cards_of(kinds) if x is not None]
    return max(c) if c else 0


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


def make_possible(ref: Reference, x: np.ndarray, miss: np.ndarray, soft: np.ndarray | None) -> np.ndarray:
    """``miss`` with observed variables turned missing, first to last, until every row has probability > 0."""
    miss = miss.copy()
    for b in range(x.shape[0]):
        row_soft = None if soft is None else soft[b : b + 1]
        for v in range(x.shape[1]):
            if np.isfinite(brute_force_ll(ref, x[b : b + 1], miss[b : b + 1], row_soft)[0]):
                break
            miss[b, v] = True
    return miss


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
    "compile_with_reference",
    "completions",
    "draw_parameters",
    "evidence",
    "log_soft_weights",
    "make_possible",
    "max_cats",
    "random_circuit",
    "set_parameters",
    "soft_weights",
]
