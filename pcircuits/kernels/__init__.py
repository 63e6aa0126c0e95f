"""Per-layer compute kernels behind one dispatch point.

The engine asks for an operation (``dense_sum``, ``single_group_dense_sum``,
``single_group_max_plus``, ``sparse_sum``, ``soft_evidence_lse``, ``soft_evidence_max``) and gets the
implementation of the active backend: plain torch everywhere, Triton kernels where registered and
selected. A backend may leave an operation out; the torch reference then
computes it. Nothing outside this package calls a backend module directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
from types import ModuleType
from typing import Iterator

from . import native, torch_ops

__all__ = [
    "BACKENDS",
    "register_backend",
    "use_backend",
    "active_backend",
    "dense_sum",
    "single_group_dense_sum",
    "single_group_max_plus",
    "argmax_plus",
    "sparse_sum",
    "soft_evidence_lse",
    "soft_evidence_max",
    "table_exp",
]

#: Backend name -> module providing ``dense_sum``, ``sparse_sum`` and ``soft_evidence_lse``
#: (and optionally ``single_group_dense_sum``).
BACKENDS: dict[str, ModuleType] = {"torch": torch_ops}
_ACTIVE: contextvars.ContextVar[str] = contextvars.ContextVar("pcircuits_backend", default="torch")


def register_backend(name: str, module: ModuleType) -> None:
    """Makes ``module`` selectable as backend ``name``."""
    BACKENDS[name] = module


class _LazyBackend(ModuleType):
    """A backend module imported on first use (so ``import pcircuits`` does not import triton)."""

    def __init__(self, name: str, target: str):
        super().__init__(name)
        self._target = target

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._target), attr)


if importlib.util.find_spec("triton") is not None:
    register_backend("triton", _LazyBackend(f"{__name__}.triton_ops", f"{__name__}.triton_ops"))


def active_backend() -> ModuleType:
    """The module of the backend selected for the current pass."""
    return BACKENDS[_ACTIVE.get()]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Selects backend ``name`` for the kernels called inside the ``with`` block."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {name!r}")
    token = _ACTIVE.set(name)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def dense_sum(children, log_weights, semiring="sum", weights=None):
    """See [`pcircuits.kernels.torch_ops.dense_sum`][pcircuits.kernels.torch_ops.dense_sum]."""
    return active_backend().dense_sum(children, log_weights, semiring, weights=weights)


def single_group_dense_sum(children, weights_t):
    """See [`pcircuits.kernels.torch_ops.single_group_dense_sum`][pcircuits.kernels.torch_ops.single_group_dense_sum]
    (the torch reference where a backend has none)."""
    op = getattr(active_backend(), "single_group_dense_sum", None)
    return (op or torch_ops.single_group_dense_sum)(children, weights_t)


def single_group_max_plus(children, log_weights_t):
    """See [`pcircuits.kernels.torch_ops.single_group_max_plus`][pcircuits.kernels.torch_ops.single_group_max_plus]
    (the torch reference where a backend has none)."""
    op = getattr(active_backend(), "single_group_max_plus", None)
    return (op or torch_ops.single_group_max_plus)(children, log_weights_t)


def argmax_plus(children, rows, log_weights, nodes):
    """``argmax_k children[rows[i], k] + log_weights[nodes[i], k]`` (``[A]`` long) by the compiled CPU kernel of
    [`pcircuits.kernels.native.argmax_plus`][pcircuits.kernels.native.argmax_plus], or None where it does not
    apply (the caller then computes it with torch)."""
    return native.argmax_plus(children, rows, log_weights, nodes)


def sparse_sum(children, log_weights, semiring="sum"):
    """See [`pcircuits.kernels.torch_ops.sparse_sum`][pcircuits.kernels.torch_ops.sparse_sum]."""
    return active_backend().sparse_sum(children, log_weights, semiring)


def soft_evidence_lse(evidence, table, shifted=None):
    """See [`pcircuits.kernels.torch_ops.soft_evidence_lse`][pcircuits.kernels.torch_ops.soft_evidence_lse]
    (``shifted``, the exponentiated table a caller keeps, is used by the torch backend)."""
    backend = active_backend()
    if shifted is not None and backend is torch_ops:
        return torch_ops.soft_evidence_lse(evidence, table, shifted=shifted)
    return backend.soft_evidence_lse(evidence, table)


def soft_evidence_max(evidence, table):
    """See [`pcircuits.kernels.torch_ops.soft_evidence_max`][pcircuits.kernels.torch_ops.soft_evidence_max]
    (the torch reference where a backend has none)."""
    op = getattr(active_backend(), "soft_evidence_max", None)
    return (op or torch_ops.soft_evidence_max)(evidence, table)


def table_exp(table, out=None):
    """See [`pcircuits.kernels.torch_ops.table_exp`][pcircuits.kernels.torch_ops.table_exp] (what
    ``soft_evidence_lse`` takes as ``shifted``; the same on every backend)."""
    return torch_ops.table_exp(table, out=out)
