"""Helpers shared by several pcircuits test modules (and the CoDD tests built on them).

Test modules import shared helpers from here (or from the reference modules
``tests/pcircuits/random_circuits.py`` and ``tests/pcircuits/queries/helpers.py``),
never from one another.

- :func:`nltcs`: rows of the bundled NLTCS training set (16 binary variables).
- :func:`save_v1`: the writer of circuit file format version 1, to test reading old files.
- :data:`WORLD`, :data:`TIMEOUT_S`, :func:`spawn`: running a function on
  ``WORLD`` local processes (torch.distributed tests with gloo).
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import pcircuits as pc

__all__ = ["NLTCS", "nltcs", "save_v1", "WORLD", "TIMEOUT_S", "spawn"]

#: the bundled NLTCS training set (gzip'ed CSV of 0/1 values)
NLTCS = Path(pc.__file__).parent / "data" / "nltcs.train.data.gz"

#: number of processes of the distributed tests
WORLD = 2
#: seconds a distributed test may run before its workers are killed
TIMEOUT_S = 120


def nltcs(n: int | None = None) -> torch.Tensor:
    """``[N, 16]`` long rows of NLTCS's training set, or its first ``n`` rows."""
    with gzip.open(NLTCS, "rt") as f:
        rows = [[int(v) for v in line.strip().split(",")] for line in f if line.strip()]
    data = torch.tensor(rows)
    return data if n is None else data[:n]


def save_v1(circuit: pc.TensorCircuit, path: Path) -> None:
    """The writer of format version 1 (pcircuits before safetensors), kept here to test reading old files."""
    from pcircuits.io import structure_to_json

    structure, arrays = structure_to_json(circuit.root)
    header = {"format": "pcircuits", "version": 1, "structure": structure, "backend": circuit.backend}
    payload = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    payload.update(arrays)
    for name, p in circuit.params.items():
        payload[f"param/{name}"] = p.detach().cpu().numpy()
    with open(path, "wb") as f:
        np.savez(f, **payload)


def spawn(fn: Callable[..., None], args: tuple, timeout_s: float = TIMEOUT_S) -> None:
    """Runs ``fn(rank, *args)`` on ``WORLD`` spawned processes; fails on an error or after ``timeout_s``."""
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout_s} s")
