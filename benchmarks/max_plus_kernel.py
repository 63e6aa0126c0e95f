"""One max-product layer three ways, beside the sum-product layer of a forward pass (one CPU thread).

For a single dense group of ``n`` nodes over ``n`` children and a batch of
256 rows (the layer of an HMM with ``n`` states), measured side by side,
round-robin, median of ``--repeats`` rounds, float32:

- ``compiled``: the compiled max-plus kernel (`pcircuits.kernels.native`);
- ``broadcast``: the torch form it replaces (blocked broadcast add and ``amax``);
- ``sum_layer``: the forward pass's layer (`single_group_dense_sum`: shift,
  exponential, BLAS product, logarithm);
- ``blas``: the BLAS product alone.

The compiled and broadcast results are checked bit-identical first. Writes
``max_plus_kernel.{json,md}`` (the table in ``docs/kernels.md``).

Usage::

    python benchmarks/max_plus_kernel.py [--repeats 50] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from pcircuits.atomic import atomic_write
from pcircuits.kernels import native, torch_ops

sys.path.insert(0, str(Path(__file__).parent))
from engine_hmm import timed_many  # noqa: E402  (round-robin medians, shared with the engine benchmark)

BATCH = 256


def bench(states: list[int], repeats: int) -> list[dict]:
    """One row per layer size: median microseconds of each form, and the ratios to the sum layer."""
    if not native.available():
        raise SystemExit(f"the compiled kernel is not available: {native.status()}")
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in states:
        children = torch.randn(BATCH, 1, n, generator=gen) * 2 - 30.0  # log-values of a long sequence
        log_w = torch.randn(1, n, n, generator=gen).log_softmax(-1)  # [G, n, k]
        log_w_t = log_w.transpose(1, 2).contiguous()  # [G, k, n]
        probs_t = log_w[0].exp().t().contiguous()  # [k, n]
        e = torch.exp(children[:, 0] - children[:, 0].amax(-1, keepdim=True))
        compiled = native.max_plus(children, log_w_t)
        broadcast = torch_ops.broadcast_max_plus(children, log_w)
        assert torch.equal(compiled, broadcast), "the compiled kernel and the broadcast form differ"
        t = timed_many({
            "compiled": lambda c=children, w=log_w_t: native.max_plus(c, w),
            "broadcast": lambda c=children, w=log_w: torch_ops.broadcast_max_plus(c, w),
            "sum_layer": lambda c=children, p=probs_t: torch_ops.single_group_dense_sum(c[:, 0], p),
            "blas": lambda e=e, p=probs_t: e @ p,
        }, repeats)
        t = {name: seconds * 1e6 for name, seconds in t.items()}
        rows.append({"states": n, "batch": BATCH, "microseconds": t,
                     "compiled_vs_sum_layer": t["compiled"] / t["sum_layer"],
                     "broadcast_vs_sum_layer": t["broadcast"] / t["sum_layer"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--states", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = bench(args.states, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(["benchmarks/max_plus_kernel.py", *sys.argv[1:]])
    with atomic_write(args.out / "max_plus_kernel.json", "w") as f:
        f.write(json.dumps({"command": command, "device": platform.processor() or platform.machine(),
                            "torch": torch.__version__, "kernel": native.status(), "rows": rows}, indent=2))
    lines = [
        f"CPU ({platform.machine()}, 1 thread), torch {torch.__version__}, float32, batch {BATCH}; "
        f"median of {args.repeats} interleaved rounds. `{command}`",
        "",
        "| states | compiled kernel | broadcast form | sum layer (forward) | BLAS product alone "
        "| compiled / sum layer | broadcast / sum layer |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["microseconds"]
        lines.append(
            f"| {r['states']} | {t['compiled']:.0f} us | {t['broadcast']:.0f} us | {t['sum_layer']:.0f} us "
            f"| {t['blas']:.0f} us | {r['compiled_vs_sum_layer']:.2f}x | {r['broadcast_vs_sum_layer']:.2f}x |"
        )
    with atomic_write(args.out / "max_plus_kernel.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
