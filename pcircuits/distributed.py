"""Data parallelism over ``torch.distributed``: ranks, sharding, all-reduce and one checkpoint writer.

Launch the same script on every process with ``torchrun`` (gloo on CPU, NCCL
on GPU). The training functions of the project ([`pcircuits.em`][pcircuits.learning.em.em],
``diffusion.codd.fit_prior``) take ``distributed: bool | None``:

* ``None`` (default): data-parallel when a default process group is
  initialised with more than one process, single-process otherwise;
* ``True``: data-parallel, and a ``ValueError`` if no group is initialised;
* ``False``: single-process even inside a group (every rank trains alone).

They never create a process group themselves: call [`init`][pcircuits.distributed.init] (or
``torch.distributed.init_process_group``) once at the start of the script.
Every rank passes the same full data; each works on its share of every batch
and the sums (EM flows, gradients) are all-reduced before each update, so the
result equals the single-process run up to the order of floating-point sums.

Shape letters: ``N`` examples.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "active",
    "agree_on_failure",
    "all_reduce_gradients",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "broadcast_tensors",
    "check_same",
    "control_device",
    "init",
    "rank",
    "rank_zero_writes",
    "shard",
    "world_size",
]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialises the default process group from ``torchrun``'s environment variables.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``None`` (NCCL when CUDA is available, gloo otherwise).
        timeout_s: seconds a collective waits for the other ranks before failing.

    Returns:
        ``True`` if this call created the group, ``False`` if one was already initialised.

    Raises:
        ValueError: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` or ``MASTER_PORT``
            is not set (the script was not started by ``torchrun``), or an
            unknown ``backend``.
    """
    if dist.is_initialized():
        return False
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ValueError(
            f"environment: {', '.join(missing)} not set; start the script with torchrun "
            "(e.g. torchrun --nproc_per_node 2 script.py) or call torch.distributed.init_process_group yourself"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None, got {backend!r}")
    if backend == "nccl" and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def active(distributed: bool | None) -> bool:
    """Whether a training call runs data-parallel (see the module docstring for ``distributed``).

    Raises:
        TypeError: ``distributed`` is not a bool or ``None``.
        ValueError: ``distributed=True`` without an initialised default process group.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True, False or None, got {distributed!r}")
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is True and not initialised:
        raise ValueError(
            "distributed=True needs an initialised default process group: call pcircuits.distributed.init() "
            "in a script started by torchrun"
        )
    if distributed is False or not initialised:
        return False
    return distributed is True or dist.get_world_size() > 1


def rank(on: bool = True) -> int:
    """This process's rank (0 when ``on`` is false or no group is initialised)."""
    return dist.get_rank() if on and dist.is_available() and dist.is_initialized() else 0


def world_size(on: bool = True) -> int:
    """Number of processes (1 when ``on`` is false or no group is initialised)."""
    return dist.get_world_size() if on and dist.is_available() and dist.is_initialized() else 1


def shard(n: int, rank: int, world: int) -> slice:
    """The contiguous part of ``range(n)`` that ``rank`` of ``world`` owns (sizes differ by at most one).

    Raises:
        ValueError: ``n < 0``, ``world < 1`` or ``rank`` outside ``[0, world)``.
    """
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"shard: expected n >= 0, world >= 1 and 0 <= rank < world, got n={n}, rank={rank}, world={world}"
        )
    q, r = divmod(n, world)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (1 if rank < r else 0))


def all_reduce_sum(tensors: Iterable[torch.Tensor]) -> None:
    """Sums each tensor over all ranks, in place; one collective per (dtype, device).

    Every rank must pass tensors of the same shapes, dtypes and order.
    """
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for ts in groups.values():
        flat = torch.cat([t.reshape(-1) for t in ts])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in ts:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_gradients(params: Iterable[torch.Tensor]) -> None:
    """Sums the ``.grad`` of each parameter over all ranks (a missing gradient counts as zeros).

    Sums, not means: callers scale their local loss by the *global* normaliser
    (e.g. all masked tokens of the batch on all ranks), so the summed gradient
    is exactly the single-process gradient of the whole batch.

    A parameter with no gradient on any rank keeps ``grad=None`` (so an
    optimiser skips it, as it would in one process); one with a gradient on
    some rank gets the sum, the others counting as zeros.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.long, device=control_device())
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    used = [p for p, h in zip(params, has.tolist(), strict=True) if h]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_sum(p.grad for p in used)


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrites each tensor with rank ``src``'s value, in place (e.g. parameters before training).

    The value is received into a buffer and copied with ``copy_``, so the
    tensor's version counter moves and caches keyed on it (such as
    `TensorCircuit.leaf_table`) see the change.
    """
    with torch.no_grad():
        for t in tensors:
            buf = t.detach().clone()
            dist.broadcast(buf, src=src)
            t.copy_(buf)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (a picklable value made by this program, never read from a file), on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(on: bool = True) -> None:
    """Waits for every rank (nothing when ``on`` is false)."""
    if on:
        dist.barrier()


@contextlib.contextmanager
def rank_zero_writes(on: bool) -> Iterator[bool]:
    """Yields whether this rank writes (rank 0, or any process when ``on`` is false); the others wait for it.

    Use as ``with rank_zero_writes(on) as writer: if writer: save(...)``. All
    ranks meet after the block (a collective that also carries failure), so no
    rank reads a checkpoint before it is complete, and if the writer fails
    every rank raises instead of waiting forever in the next collective.
    """
    error: Exception | None = None
    try:
        yield rank(on) == 0
    except Exception as err:  # handed to agree_on_failure, which re-raises it on this rank
        error = err
    agree_on_failure(error, "writing a checkpoint on rank 0", on)


def check_same(value: int, name: str, on: bool = True) -> None:
    """Raises ``ValueError`` on every rank unless ``value`` is equal on all ranks (e.g. the number of examples)."""
    if not on:
        return
    t = torch.tensor([value, -value], dtype=torch.long, device=control_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != -int(t[1]):
        raise ValueError(f"{name} must be the same on every rank, got values from {-int(t[1])} to {int(t[0])}")


def agree_on_failure(error: BaseException | None, what: str, on: bool = True) -> None:
    """Re-raises ``error``, or raises on every rank if another rank failed, so no rank waits forever.

    Call on every rank after a step that may fail on some ranks only (e.g.
    checking a rank's share of the data).
    """
    if on:
        flag = torch.tensor([0 if error is None else 1 + rank()], dtype=torch.long, device=control_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        failed = int(flag) - 1
    else:
        failed = -1 if error is None else 0
    if error is not None:
        raise error
    if failed >= 0:
        raise ValueError(f"{what} failed on rank {failed} (see that rank's error)")


def control_device() -> torch.device:
    """The device collectives of small control tensors use (CUDA for NCCL, CPU otherwise)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.currentcontrol_device())
    return torch.device("cpu")
