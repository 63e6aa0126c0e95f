"""Speed of the exact queries relative to one forward pass, on a hidden Chow-Liu tree (HCLT).

The HCLT is the one of the query issue: a random tree over ``V`` binary
variables, a latent with ``H`` states per variable; per variable a group of
``H`` Bernoulli leaves, per tree node a sum group of ``H`` nodes over the
element-wise product of its own leaf group and its children's sum groups, and
a one-node root sum. It is built here with the node API (Bernoulli leaves, as
specified; ``pcircuits.structures.hclt_from_tree`` builds the same shape with
categorical leaves).

Measured (median of ``--repeats`` runs after a warm-up, float32):

- ``forward``: ``circuit(x)`` over ``B`` complete examples, no autograd;
- ``forward_missing``: ``circuit(x, missing)`` with half the entries missing;
- ``marginals``: ``pc.marginals(circuit, x, missing)`` on the same evidence;
- ``mpe``: ``pc.mpe(circuit, x, missing)`` on the same evidence;
- ``sample``: ``pc.sample(circuit, B)`` (``B`` joint samples);
- ``sample_conditional``: one conditional sample per example of the same evidence.

Before timing, the outputs are checked: marginals of missing variables sum to
1, MPE keeps observed entries, and the sampled frequencies of every variable
match its marginal ``p(X_v = 1)``.

Usage::

    python benchmarks/queries_speed.py [--vars 100] [--latents 32] [--batch 10000] [--repeats 5] \\
        [--out benchmarks/results]

Writes ``queries_speed.json``, ``queries_speed.png`` and ``queries_speed.md``
(the table shown in ``docs/benchmarks/queries.md``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import pcircuits as pc


def hclt(num_vars: int, num_latents: int, seed: int = 0) -> pc.SumGroup:
    """An HCLT over a random recursive tree (variable ``v`` hangs under a random ``u < v``)."""
    rng = np.random.default_rng(seed)
    parent = [-1] + [int(rng.integers(0, v)) for v in range(1, num_vars)]
    children: dict[int, list[int]] = {v: [] for v in range(num_vars)}
    for v in range(1, num_vars):
        children[parent[v]].append(v)
    sums: dict[int, pc.SumGroup] = {}
    root = None
    for v in reversed(range(num_vars)):  # children have larger ids than their parent
        leaf = pc.inputs(v, num_latents, pc.Bernoulli())
        prod = pc.multiply(leaf, *[sums[c] for c in children[v]])
        if v == 0:
            root = pc.summate(prod, num_nodes=1)
        else:
            sums[v] = pc.summate(prod, num_nodes=num_latents)
    return root


def timeit(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of ``fn`` after one warm-up call.

    On a shared machine the CPU time of this process is the steadier measure
    (other processes inflate wall-clock time but not it); on a GPU only the
    wall-clock time is meaningful.
    """
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def _check_outputs(circuit: pc.TensorCircuit, x: torch.Tensor, missing: torch.Tensor) -> None:
    """Asserts the queries answer correctly on ``x [B, V]`` with ``missing [B, V]`` before they are timed."""
    batch = x.shape[0]
    with torch.no_grad():
        m = pc.marginals(circuit, x, missing)
        sums = m.sum(-1)[missing]
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-4), "marginals do not sum to 1"
        assert torch.equal(m[~missing].argmax(-1), x[~missing]), "observed marginals are not one-hot"
        best = pc.mpe(circuit, x, missing)
        assert torch.equal(best[~missing], x[~missing]), "MPE changed observed entries"
        s = pc.sample(circuit, batch, seed=0)
        assert s.shape == (batch, x.shape[1]) and s.min() >= 0 and s.max() <= 1
        prior = pc.marginals(circuit, x[:1], torch.ones_like(x[:1], dtype=torch.bool))[0, :, 1]
        err = (s.float().mean(0) - prior).abs().max().item()
        assert err < 5 * 0.5 / batch**0.5 + 1e-3, f"sampled frequencies off by {err}"


def _measure(circuit: pc.TensorCircuit, x: torch.Tensor, missing: torch.Tensor, repeats: int) -> dict:
    """``{query: (wall seconds, CPU seconds)}``, medians of ``repeats`` runs."""
    batch = x.shape[0]

    def forward():
        with torch.no_grad():
            circuit(x)

    def forward_missing():
        with torch.no_grad():
            circuit(x, missing)

    return {
        "forward": timeit(forward, repeats),
        "forward_missing": timeit(forward_missing, repeats),
        "marginals": timeit(lambda: pc.marginals(circuit, x, missing), repeats),
        "mpe": timeit(lambda: pc.mpe(circuit, x, missing), repeats),
        "sample": timeit(lambda: pc.sample(circuit, batch, seed=1), repeats),
        "sample_conditional": timeit(lambda: pc.sample(circuit, 1, x=x, missing=missing, seed=1), repeats),
    }


def _markdown(args: argparse.Namespace, circuit: pc.TensorCircuit, dev: torch.device, timings: dict, ratios: dict,
              which: int) -> list[str]:
    """The lines of ``queries_speed.md``: the setup sentence and the table of seconds and ratios."""
    return [
        f"HCLT over {args.vars} binary variables with {args.latents} latent states "
        f"({circuit.num_nodes} nodes, {circuit.num_edges} edges), batch {args.batch}, float32, "
        f"{dev} ({torch.get_num_threads()} threads), median of {args.repeats} runs; "
        f"seconds and ratios are {'wall-clock' if which == 0 else 'process CPU'} time "
        f"(wall-clock for {'GPU' if which == 0 else 'CPU'} runs{'' if which == 0 else ' is in the JSON'}).",
        "",
        "| query | seconds | ratio to its forward pass |",
        "|---|---:|---:|",
        f"| forward, complete evidence | {timings['forward']:.4f} | 1.00 |",
        f"| forward, 50% missing | {timings['forward_missing']:.4f} | 1.00 |",
        f"| marginals (50% missing) | {timings['marginals']:.4f} "
        f"| {ratios['marginals / forward_missing']:.2f} (target ≤ 3) |",
        f"| MPE (50% missing) | {timings['mpe']:.4f} | {ratios['mpe / forward_missing']:.2f} |",
        f"| {args.batch} joint samples | {timings['sample']:.4f} | {ratios['sample / forward']:.2f} (target ≤ 5) |",
        f"| one conditional sample per example | {timings['sample_conditional']:.4f} | "
        f"{ratios['sample_conditional / forward_missing']:.2f} |",
        "",
    ]


def _plot(args: argparse.Namespace, dev: torch.device, timings: dict, which: int, out: Path) -> None:
    """Horizontal bars of the query times, into ``out/queries_speed.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(timings)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(
        names, [timings[n] * 1000 for n in names], color=["#888", "#888", "#1f77b4", "#2ca02c", "#d62728", "#9467bd"]
    )
    ax.invert_yaxis()
    ax.set_xlabel(f"milliseconds (median {'wall-clock' if which == 0 else 'process CPU'} time)")
    ax.set_title(f"Queries on an HCLT ({args.vars} vars, {args.latents} latents), batch {args.batch}, {dev}")
    fig.tight_layout()
    fig.savefig(out / "queries_speed.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vars", type=int, default=100)
    ap.add_argument("--latents", type=int, default=32)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest CPU-time ratios)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(args.device)

    circuit = pc.compile(hclt(args.vars, args.latents), seed=0).to(dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (args.batch, args.vars), generator=g).to(dev)
    missing = (torch.rand(args.batch, args.vars, generator=g) < 0.5).to(dev)
    _check_outputs(circuit, x, missing)
    measured = _measure(circuit, x, missing, args.repeats)
    which = 0 if dev.type == "cuda" else 1  # ratios from wall-clock time on GPU, CPU time on CPU
    timings = {k: v[which] for k, v in measured.items()}
    ratios = {
        "marginals / forward_missing": timings["marginals"] / timings["forward_missing"],
        "marginals / forward": timings["marginals"] / timings["forward"],
        "mpe / forward_missing": timings["mpe"] / timings["forward_missing"],
        "sample / forward": timings["sample"] / timings["forward"],
        "sample_conditional / forward_missing": timings["sample_conditional"] / timings["forward_missing"],
    }
    result = {
        "circuit": {
            "structure": "HCLT (random recursive tree, Bernoulli leaves)",
            "num_vars": args.vars,
            "num_latents": args.latents,
            "num_nodes": circuit.num_nodes,
            "num_edges": circuit.num_edges,
        },
        "batch": args.batch,
        "repeats": args.repeats,
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "seconds_wall": {k: v[0] for k, v in measured.items()},
        "seconds_cpu": {k: v[1] for k, v in measured.items()},
        "ratios_from": "wall-clock" if which == 0 else "process CPU time",
        "ratios": ratios,
        "targets": {"marginals / forward": 3.0, "sample / forward": 5.0},
    }
    (out / "queries_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = _markdown(args, circuit, dev, timings, ratios, which)
    (out / "queries_speed.md").write_text("\n".join(lines))
    _plot(args, dev, timings, which, out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
