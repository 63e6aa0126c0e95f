"""Data-parallel EM scaling: time per full-batch EM epoch on 1 and on 2 processes (gloo, CPU).

An HCLT (Chow-Liu tree of the training data, ``--latents`` states per
variable, float64) on a DEBD data set is trained with full-batch `pcircuits.em`
by one process without a process group and by ``2`` processes in a gloo group
(``torch.multiprocessing`` spawn, a file store, one thread per process), both
in this one run. First both do one epoch from the same initialisation and the
parameters are checked equal (within ``1e-6``); then each times ``--epochs``
epochs (all ranks pass a barrier before each), and the median is reported.

Usage::

    python benchmarks/distributed_scaling.py [--data plants] [--data-dir /work/shared/data/debd]
        [--latents 16] [--epochs 3] [--out benchmarks/results]

Writes ``distributed_scaling.json`` and ``distributed_scaling.md`` (the table in ``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pcircuits as pc
from pcircuits.atomic import atomic_write
from pcircuits.datasets import load_debd


def _setup(args: argparse.Namespace) -> tuple[torch.Tensor, pc.TensorCircuit]:
    """The training data ``[N, V]`` and the float64 HCLT (same structure and seed on every process)."""
    x = torch.from_numpy(load_debd(args.data, "train", args.data_dir))
    circuit = pc.compile(pc.structures.hclt(x, args.latents), seed=0).to(torch.float64)
    return x, circuit


def _worker(rank: int, world: int, store: str, args: argparse.Namespace, outdir: str) -> None:
    """One process: the check epoch, then ``args.epochs`` timed epochs; rank 0 writes its results."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    on = world > 1
    if on:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=600))
    try:
        x, circuit = _setup(args)
        pc.em(circuit, x, epochs=1, progress=False, distributed=on)
        check = {k: v.detach().numpy().copy() for k, v in circuit.params.items()}
        times = []
        for _ in range(args.epochs):
            if on:
                dist.barrier()
            t0 = time.perf_counter()
            pc.em(circuit, x, epochs=1, progress=False, distributed=on)
            if on:
                dist.barrier()
            times.append(time.perf_counter() - t0)
        if rank == 0:
            np.savez(Path(outdir) / f"check{world}.npz", **check)
            (Path(outdir) / f"times{world}.json").write_text(json.dumps(times))
    finally:
        if on:
            dist.destroy_process_group()


def _run(world: int, args: argparse.Namespace, tmp: str) -> list[float]:
    mp.start_processes(_worker, args=(world, os.path.join(tmp, f"store{world}"), args, tmp), nprocs=world,
                       start_method="spawn", join=True)
    return json.loads((Path(tmp) / f"times{world}.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="plants")
    ap.add_argument("--data-dir", default="/work/shared/data/debd")
    ap.add_argument("--latents", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        times = {w: _run(w, args, tmp) for w in (1, 2)}
        one, two = np.load(Path(tmp) / "check1.npz"), np.load(Path(tmp) / "check2.npz")
        diff = max(float(np.abs(one[k] - two[k]).max()) for k in one.files)
    if diff > 1e-6:
        raise SystemExit(f"parameters after one epoch differ by {diff:.3g} between 1 and 2 processes")
    x, circuit = _setup(args)
    med = {w: statistics.median(t) for w, t in times.items()}
    res = {
        "data": args.data, "examples": int(x.shape[0]), "variables": int(x.shape[1]), "latents": args.latents,
        "parameters": int(sum(p.numel() for p in circuit.parameters())), "dtype": "float64", "backend": "gloo",
        "threads_per_process": 1, "epochs_timed": args.epochs, "max_param_diff_after_one_epoch": diff,
        "seconds_per_epoch": {str(w): t for w, t in times.items()},
        "median_seconds_per_epoch": {str(w): m for w, m in med.items()}, "speedup_2_vs_1": med[1] / med[2],
        "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "distributed_scaling.json", "w") as f:
        json.dump(res, f, indent=2)
    table = (
        "| processes | seconds per EM epoch (median) | speed-up |\n|---|---|---|\n"
        f"| 1 | {med[1]:.2f} | 1.00x |\n| 2 | {med[2]:.2f} | {med[1] / med[2]:.2f}x |\n"
    )
    with atomic_write(out / "distributed_scaling.md", "w") as f:
        f.write(table)
    print(json.dumps(res, indent=2))
    print(table)


if __name__ == "__main__":
    main()
