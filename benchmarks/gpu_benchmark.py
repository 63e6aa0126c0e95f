"""GPU benchmark: pcircuits (torch and Triton backends) against PyJuice.

One command on a CUDA machine (a few minutes)::

    python benchmarks/gpu_benchmark.py

and a tiny CPU smoke test (Triton through its interpreter)::

    python benchmarks/gpu_benchmark.py --quick

For each circuit it reports the time of a forward pass, a forward+backward
pass and a mini-batch EM step, and the peak GPU memory of each:

- HCLT over a random spanning tree of 784 variables with 256 categories,
  ``L`` latent states per variable (about 2.5M and 40M sum edges), batch 512;
- Poon-Domingos (PD) on a 28x28 image: rectangles on a 4-pixel grid, split
  along every grid line, 4x4 cells factorised into pixels (about 15M and 56M
  edges), batch 512;
- the CoDD-sized HMM (32 positions, 1024 states, vocabulary 126,464,
  batch 1 and 16) under soft evidence, dense and top-128, and its leaf
  (``soft_evidence_lse``) against the time to read the emission matrix once
  (a plain ``.sum()`` over it, the memory-bandwidth reference).

PyJuice (``pip install pyjuice``) is imported lazily; without it its columns
are empty and the report says why. Before timing, the log-likelihoods of
pcircuits and PyJuice are checked equal on the benchmark batch (parameters
are copied from pcircuits into the PyJuice nodes before compiling).

Writes ``benchmarks/results/gpu_<device>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

if not torch.cuda.is_available():  # Triton on CPU only runs through its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pcircuits as pc  # noqa: E402
from pcircuits import kernels  # noqa: E402
from pcircuits.learning.em import apply_statistics, expected_statistics  # noqa: E402
from pcircuits.nodes import NodeGroup  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- structures
def random_tree(num_vars: int, seed: int) -> list[tuple[int, int]]:
    """Edges of a random spanning tree of ``0..num_vars-1`` (random recursive tree)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_vars)
    return [(int(order[i]), int(order[rng.integers(0, i)])) for i in range(1, num_vars)]


def tree_order(num_vars: int, seed: int) -> tuple[list[int], dict[int, list[int]]]:
    """BFS order from variable 0 and the children of each variable in a random spanning tree."""
    adj: dict[int, list[int]] = {v: [] for v in range(num_vars)}
    for a, b in random_tree(num_vars, seed):
        adj[a].append(b)
        adj[b].append(a)
    kids: dict[int, list[int]] = {v: [] for v in range(num_vars)}
    order, seen = [0], {0}
    for v in order:
        for u in adj[v]:
            if u not in seen:
                seen.add(u)
                kids[v].append(u)
                order.append(u)
    return order, kids


def hclt_pcircuits(num_vars: int, latents: int, cats: int, seed: int = 0) -> tuple[NodeGroup, dict]:
    """HCLT over a random tree: per variable ``latents`` leaves; per tree node a sum group over leaf x children's sums.

    Returns the root and the sum group of every variable.
    """
    order, kids = tree_order(num_vars, seed)
    sums: dict[int, NodeGroup] = {}
    for v in reversed(order):
        leaf = pc.inputs(v, latents, pc.Categorical(cats))
        prod = pc.multiply(leaf, *[sums[c] for c in kids[v]])
        sums[v] = pc.summate(prod, num_nodes=1 if v == order[0] else latents)
    return sums[order[0]], sums


def pd_pcircuits(side: int, latents: int, cats: int, delta: int = 4) -> tuple[NodeGroup, list]:
    """Poon-Domingos on a ``side x side`` image: rectangles on a ``delta`` grid, split at every grid line.

    Cells of ``delta x delta`` pixels are the product of their pixels' leaf
    groups under a sum; every larger rectangle is a sum over all its binary
    splits (element-wise products of the two halves). Returns the root and a
    build trace used to mirror the circuit in PyJuice.
    """
    cells = side // delta
    trace: list = []
    memo: dict[tuple[int, int, int, int], NodeGroup] = {}

    def region(r0: int, r1: int, c0: int, c1: int) -> NodeGroup:
        key = (r0, r1, c0, c1)
        if key in memo:
            return memo[key]
        top = (r0, r1, c0, c1) == (0, cells, 0, cells)
        n = 1 if top else latents
        if r1 - r0 == 1 and c1 - c0 == 1:
            pix = [
                (r, c) for r in range(r0 * delta, r1 * delta) for c in range(c0 * delta, c1 * delta)
            ]
            lv = [pc.inputs(r * side + c, latents, pc.Categorical(cats)) for r, c in pix]
            prods = [pc.multiply(*lv)]
            trace.append(("cell", key, lv, prods))
        else:
            prods, parts = [], []
            for r in range(r0 + 1, r1):
                parts.append((region(r0, r, c0, c1), region(r, r1, c0, c1)))
            for c in range(c0 + 1, c1):
                parts.append((region(r0, r1, c0, c), region(r0, r1, c, c1)))
            prods = [pc.multiply(a, b) for a, b in parts]
            trace.append(("split", key, parts, prods))
        s = pc.summate(*prods, num_nodes=n)
        trace.append(("sum", key, prods, s))
        memo[key] = s
        return s

    return region(0, cells, 0, cells), trace


def hmm_pcircuits(length: int, states: int, vocab: int) -> NodeGroup:
    """An HMM as a circuit: emission leaves tied across positions, transition sums tied across steps."""
    emit = pc.inputs(length - 1, states, pc.Categorical(vocab))
    layer: NodeGroup = emit
    trans = None
    for t in range(length - 2, -1, -1):
        s = pc.summate(layer, num_nodes=states, tie_with=trans)  # p(x_{t+1:} | z_t)
        trans = trans or s
        layer = pc.multiply(pc.inputs(t, states, pc.Categorical(vocab), tie_with=emit), s)
    return pc.summate(layer, num_nodes=1)


# ----------------------------------------------------------------------------- PyJuice mirror
def _block_size(n: int) -> int:
    b = 1
    while b * 2 <= min(n, 32) and n % (b * 2) == 0:
        b *= 2
    return b


def to_pyjuice(circuit: pc.TensorCircuit, root: NodeGroup) -> Any:
    """Rebuilds a pcircuits circuit in PyJuice node by node, copying its (normalised) parameters."""
    import pyjuice as juice
    import pyjuice.nodes.distributions as dists

    made: dict[int, Any] = {}
    for g in root:
        bs = _block_size(g.num_nodes)
        if g.kind == "input":
            ns = juice.inputs(
                g.var,
                num_node_blocks=g.num_nodes // bs,
                block_size=bs,
                dist=dists.Categorical(num_cats=g.dist.num_cats),
            )
            probs = torch.softmax(circuit.group_parameters(g).detach().double(), -1).float().cpu()
            ns.set_params(probs.reshape(-1))
        elif g.kind == "product":
            if not all(int(e) == i for i in range(g.num_nodes) for e in g.edges[i]):
                raise ValueError("only element-wise products are mirrored")
            ns = juice.multiply(*[made[id(c)] for c in g.children])
        else:
            ns = juice.summate(*[made[id(c)] for c in g.children], num_node_blocks=g.num_nodes // bs, block_size=bs)
            ns.set_params(circuit.group_parameters(g).detach().float().cpu())
        made[id(g)] = ns
    return made[id(root)]


# ----------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> dict[str, float | None]:
    """Median seconds of ``fn`` and its peak memory above the memory in use before it (GiB, CUDA only)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30
    return {"seconds": float(np.median(times)), "peak_gib": peak}


def _guard(fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except torch.cuda.OutOfMemoryError as e:  # report and go on
        gc.collect()
        torch.cuda.empty_cache()
        return {"error": f"out of memory: {str(e).splitlines()[0]}"}
    except Exception as e:  # noqa: BLE001 - a failing column must not end the run
        return {"error": f"{type(e).__name__}: {e}"[:300], "trace": traceback.format_exc()[-1500:]}


def bench_pcircuits(
    circuit: pc.TensorCircuit, x: torch.Tensor, device, warmup, repeats, soft=None, missing=None
) -> dict:
    ev = circuit.prepare(x, missing, soft)
    out: dict[str, Any] = {}

    def fwd():
        with torch.no_grad():
            return circuit.upward(ev)[-1]

    def fwd_bwd():
        circuit.zero_grad(set_to_none=True)
        ll = circuit.upward(ev)[-1][:, 0]
        ll.sum().backward()

    def em_step():
        _, stats = expected_statistics(circuit, ev)
        apply_statistics(circuit, stats, pseudocount=0.1, step_size=0.01)

    out["forward"] = _guard(lambda: measure(fwd, device, warmup, repeats))
    out["forward_backward"] = _guard(lambda: measure(fwd_bwd, device, warmup, repeats))
    circuit.zero_grad(set_to_none=True)
    out["em_step"] = _guard(lambda: measure(em_step, device, warmup, repeats))
    return out


def bench_pyjuice(pjc: Any, x: torch.Tensor, device, warmup, repeats) -> dict:
    out: dict[str, Any] = {}

    def fwd():
        with torch.no_grad():
            return pjc(x)

    def fwd_bwd():
        pjc(x)
        pjc.backward(x, flows_memory=0.0)

    def em_step():
        pjc(x)
        pjc.backward(x, flows_memory=0.0)
        pjc.mini_batch_em(step_size=0.01, pseudocount=0.1)

    out["forward"] = _guard(lambda: measure(fwd, device, warmup, repeats))
    out["forward_backward"] = _guard(lambda: measure(fwd_bwd, device, warmup, repeats))
    out["em_step"] = _guard(lambda: measure(em_step, device, warmup, repeats))
    return out


def _pyjuice_module():
    try:
        import pyjuice  # noqa: F401

        return pyjuice, None
    except Exception as e:  # noqa: BLE001
        return None, f"PyJuice not available ({type(e).__name__}: {e}); pip install pyjuice to fill its columns"


def run_structure(name: str, root: NodeGroup, batch: int, cats: int, device, backends, args, pyjuice_ok: bool) -> dict:
    """Benchmarks one structure on every pcircuits backend and on PyJuice."""
    print(f"[{name}] compiling", flush=True)
    t0 = time.perf_counter()
    circuit = pc.compile(root, seed=0, backend="torch").to(device)
    compile_s = time.perf_counter() - t0
    num_vars = circuit.num_vars
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, cats, (batch, num_vars), generator=gen).to(device)
    rec: dict[str, Any] = {"name": name, "batch": batch, "num_vars": num_vars, "num_edges": circuit.num_edges,
                           "num_nodes": circuit.num_nodes, "compile_seconds": compile_s, "pcircuits": {}}  # fmt: skip
    lls = {}
    for b in backends:  # every backend's log-likelihoods first: the EM timings below change the parameters
        circuit.backend = b
        with torch.no_grad():
            lls[b] = circuit(x).double().cpu()
    start = {k: v.detach().clone() for k, v in circuit.state_dict().items()}
    for b in backends:
        circuit.backend = b
        circuit.load_state_dict(start)  # each backend is timed from the same parameters
        print(f"[{name}] pcircuits/{b}", flush=True)
        rec["pcircuits"][b] = bench_pcircuits(circuit, x, device, args.warmup, args.repeats)
    circuit.load_state_dict(start)
    if len(lls) > 1:
        ref = lls[backends[0]]
        rec["max_abs_diff_backends"] = max(float((v - ref).abs().max()) for v in lls.values())
    if pyjuice_ok and device.type == "cuda":
        import pyjuice as juice

        def mirror():
            circuit.backend = backends[0]
            pj_root = to_pyjuice(circuit, root)
            pjc = juice.compile(pj_root)
            pjc.to(device)
            with torch.no_grad():
                pj_ll = pjc(x).reshape(-1).double().cpu()
            diff = float((pj_ll - lls[backends[0]]).abs().max())
            print(f"[{name}] pyjuice max |ll diff| = {diff:.3g}", flush=True)
            res = bench_pyjuice(pjc, x, device, args.warmup, args.repeats)
            res["max_abs_ll_diff_vs_pcircuits"] = diff
            res["outputs_equal"] = diff < 1e-3 * max(1.0, float(lls[backends[0]].abs().max()))
            del pjc
            return res

        rec["pyjuice"] = _guard(mirror)
    elif pyjuice_ok:
        rec["pyjuice"] = {"error": "PyJuice needs a CUDA device"}
    circuit = None  # drop the reference (the closures above share its cell) before emptying the cache
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


def run_hmm(length: int, states: int, vocab: int, batches: list[int], topk: int, device, backends, args) -> dict:
    """The CoDD-sized HMM: engine passes under dense and top-k soft evidence.

    Also times the leaf kernel against one read of the emission matrix.
    """
    rec: dict[str, Any] = {
        "name": f"HMM T={length} n={states} V={vocab}",
        "length": length,
        "states": states,
        "vocab": vocab,
        "runs": [],
    }
    gen = torch.Generator().manual_seed(2)
    table = torch.log_softmax(torch.randn(1, states, vocab, generator=gen), -1).to(device)
    rec["emission_read"] = measure(lambda: table.sum(), device, args.warmup, args.repeats)
    rec["emission_gib"] = table.numel() * table.element_size() / 2**30
    print("[hmm] compiling", flush=True)
    root = hmm_pcircuits(length, states, vocab)
    circuit = pc.compile(root, seed=0, backend="torch").to(device)
    rec["num_edges"] = circuit.num_edges
    for B in batches:
        for kind in ("dense", f"top{topk}"):
            soft = torch.randn(B, length, vocab, generator=gen) * 3
            idx = soft.topk(topk, -1).indices.to(device)
            if kind != "dense":
                soft = torch.full_like(soft, -math.inf).scatter(-1, idx.cpu(), soft.gather(-1, idx.cpu()))
            soft = soft.to(device)
            run: dict[str, Any] = {"batch": B, "evidence": kind, "leaf": {}, "engine": {}}
            for b in backends:
                mod = kernels.BACKENDS[b]
                def leaf(mod=mod, soft=soft):
                    return mod.soft_evidence_lse(soft, table)

                run["leaf"][b] = _guard(lambda leaf=leaf: measure(leaf, device, args.warmup, args.repeats))
                if kind != "dense" and b == backends[0]:
                    # reference for sparse evidence: gather the top-k table columns, then logsumexp
                    def gathered(idx=idx, soft=soft):
                        cols = table[0][:, idx]  # [n, B, T, k]
                        return torch.logsumexp(cols + soft.gather(-1, idx).unsqueeze(0), -1)

                    run["leaf"]["torch_gather_topk"] = _guard(
                        lambda gathered=gathered: measure(gathered, device, args.warmup, args.repeats)
                    )
                circuit.backend = b
                x = torch.zeros(B, length, dtype=torch.long, device=device)
                miss = torch.ones(B, length, dtype=torch.bool, device=device)

                def fwd(x=x, miss=miss, soft=soft):
                    with torch.no_grad():
                        return circuit(x, miss, soft)

                run["engine"][b] = _guard(lambda fwd=fwd: measure(fwd, device, args.warmup, args.repeats))
            print(
                f"[hmm] B={B} {kind}: {json.dumps({k: v.get('seconds') for k, v in run['leaf'].items()})}", flush=True
            )
            rec["runs"].append(run)
            soft = None
    circuit = None  # drop the reference (the closures above share its cell) before emptying the cache
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


# ----------------------------------------------------------------------------- report
def _fmt(r: dict | None, key: str = "seconds", scale: float = 1e3) -> str:
    if not r:
        return "-"
    if "error" in r:
        return "err"
    v = r.get(key)
    return "-" if v is None else f"{v * scale:.1f}" if key == "seconds" else f"{v:.2f}"


def _lib_result(s: dict, lib: str, b: str | None) -> Any:
    """The results of library ``lib`` (and backend ``b`` of pcircuits) on structure record ``s``."""
    r = s.get(lib, {})
    return r.get(b, {}) if b else r


def _structure_table(res: dict, cols: list[tuple[str, str | None]]) -> list[str]:
    """The markdown table of the structures: times per op and library, peak memory, the two checks."""
    head = (
        "| structure | edges | batch | "
        + " | ".join(f"{op} {('pc/' + b) if b else 'pyjuice'}" for op in ("fwd", "fwd+bwd", "EM") for _, b in cols)
        + " | peak GiB EM "
        + " | ".join(("pc/" + b) if b else "pyjuice" for _, b in cols)
        + " | max abs ll diff, backends | ll check (PyJuice) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in res["structures"]:
        cells = []
        for op in ("forward", "forward_backward", "em_step"):
            for lib, b in cols:
                r = _lib_result(s, lib, b)
                cells.append(_fmt(r.get(op) if isinstance(r, dict) else None))
        for lib, b in cols:
            r = _lib_result(s, lib, b)
            cells.append(_fmt(r.get("em_step") if isinstance(r, dict) else None, "peak_gib"))
        pj = s.get("pyjuice", {})
        check = (
            f"{pj['max_abs_ll_diff_vs_pcircuits']:.2g}"
            if "max_abs_ll_diff_vs_pcircuits" in pj
            else pj.get("error", "-")[:40]
        )
        diff = f"{s['max_abs_diff_backends']:.2g}" if "max_abs_diff_backends" in s else "-"
        lines.append(
            f"| {s['name']} | {s['num_edges']:,} | {s['batch']} | " + " | ".join(cells) + f" | {diff} | {check} |"
        )
    return lines


def _hmm_section(h: dict, backends: list[str]) -> list[str]:
    """The section of one HMM record: the emission-read time and a table of leaf and engine times."""
    lines = [
        "",
        f"## {h['name']} ({h['num_edges']:,} edges)",
        "",
        f"Reading the emission matrix once ({h['emission_gib']:.2f} GiB, `table.sum()`): "
        f"{_fmt(h['emission_read'])} ms.",
        "",
        "| batch | evidence | " + " | ".join(f"leaf {b}" for b in backends) + " | leaf torch top-k gather | "
        + " | ".join(f"engine fwd {b}" for b in backends) + " |",
        "|" + "---|" * (3 + 2 * len(backends)),
    ]
    for r in h["runs"]:
        leaf = " | ".join(_fmt(r["leaf"].get(b)) for b in backends)
        engine = " | ".join(_fmt(r["engine"].get(b)) for b in backends)
        lines.append(
            f"| {r['batch']} | {r['evidence']} | {leaf} | {_fmt(r['leaf'].get('torch_gather_topk'))} | {engine} |"
        )
    return lines


def _errors(res: dict) -> list[str]:
    """Bullet lines of the pcircuits runs that failed (none: no lines)."""
    errors = [
        (s["name"], "pcircuits", b, op, r["error"])
        for s in res["structures"]
        for b, ops in s.get("pcircuits", {}).items()
        for op, r in ops.items()
        if isinstance(r, dict) and "error" in r
    ]
    if not errors:
        return []
    return ["", "Errors:", ""] + [f"- {n} {lib}/{b} {op}: {e}" for n, lib, b, op, e in errors]


def _plot(res: dict, cols: list[tuple[str, str | None]], stem: str) -> None:
    """Bar charts (log scale) of the three ops over the structures, one bar per library and backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = ("forward", "forward_backward", "em_step")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = [s["name"] for s in res["structures"]]
    width = 0.8 / len(cols)
    for ax, op in zip(axes, ops, strict=True):
        for j, (lib, b) in enumerate(cols):
            vals = []
            for s in res["structures"]:
                r = _lib_result(s, lib, b)
                r = r.get(op, {}) if isinstance(r, dict) else {}
                vals.append(r.get("seconds", np.nan) * 1e3 if isinstance(r, dict) and "seconds" in r else np.nan)
            ax.bar(np.arange(len(names)) + j * width, vals, width, label=f"pcircuits/{b}" if b else "pyjuice")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=20, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(op)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{res['device']}")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=110)


def write_report(res: dict, stem: str) -> None:
    """Writes ``{stem}.json``, ``{stem}.md`` and ``{stem}.png`` under benchmarks/results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2))
    lines = [
        f"# GPU benchmark: {res['device']}",
        "",
        f"torch {res['torch']}, triton {res['triton']}, pyjuice {res['pyjuice']}; "
        f"median of {res['repeats']} runs after {res['warmup']} warm-up runs; "
        "times in ms, peak memory in GiB above the resident circuit.",
        "",
    ]
    if res.get("pyjuice_note"):
        lines += [f"> {res['pyjuice_note']}", ""]
    cols = [("pcircuits", b) for b in res["backends"]] + [("pyjuice", None)]
    lines += _structure_table(res, cols)
    for h in res.get("hmm", []):
        lines += _hmm_section(h, res["backends"])
    lines += _errors(res)
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    try:
        _plot(res, cols, stem)
    except Exception as e:  # noqa: BLE001
        print(f"plot skipped: {e}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument(
        "--precision",
        choices=["ieee", "tf32", "bf16"],
        default="ieee",
        help="matrix-product precision of the Triton kernels",
    )
    ap.add_argument("--skip-hmm", action="store_true")
    ap.add_argument("--skip-pyjuice", action="store_true")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None, help="file stem under benchmarks/results (default gpu_<device>)")
    args = ap.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    backends = ["torch"] + (["triton"] if "triton" in kernels.BACKENDS else [])
    if "triton" in backends:
        kernels.BACKENDS["triton"].set_precision(args.precision)
    pj, note = (None, "PyJuice skipped (--skip-pyjuice)") if args.skip_pyjuice else _pyjuice_module()
    if pj is not None and device.type != "cuda":
        note = "PyJuice columns need a CUDA device"
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    res: dict[str, Any] = {
        "device": dev_name, "torch": torch.__version__, "triton": triton_version,
        "pyjuice": getattr(pj, "__version__", None), "pyjuice_note": note, "backends": backends,
        "precision": args.precision, "quick": args.quick, "warmup": args.warmup, "repeats": args.repeats,
        "structures": [], "hmm": [],
    }  # fmt: skip
    if args.quick:
        plan = [("HCLT V=12 L=8", lambda: hclt_pcircuits(12, 8, 5)[0], 16, 5),
                ("PD 8x8 L=4", lambda: pd_pcircuits(8, 4, 5)[0], 16, 5)]  # fmt: skip
        hmm = (4, 16, 300, [1, 2], 8)
    else:
        # sum edges: HCLT ~ 783 L^2 (L=56: 2.5M, L=224: 39M);
        # PD on 28x28 with a 4-pixel grid ~ 3,185 L^2 (L=64: 13M, L=128: 52M)
        plan = [("HCLT 2.5M", lambda: hclt_pcircuits(784, 56, 256)[0], 512, 256),
                ("HCLT 40M", lambda: hclt_pcircuits(784, 224, 256)[0], 512, 256),
                ("PD 13M", lambda: pd_pcircuits(28, 64, 256)[0], 512, 256),
                ("PD 52M", lambda: pd_pcircuits(28, 128, 256)[0], 512, 256)]  # fmt: skip
        hmm = (32, 1024, 126464, [1, 16], 128)
    for name, build, batch, cats in plan:
        rec = _guard(
            lambda name=name, build=build, batch=batch, cats=cats: run_structure(
                name, build(), batch, cats, device, backends, args, pj is not None
            )
        )
        rec.setdefault("name", name)
        rec.setdefault("batch", batch)
        rec.setdefault("num_edges", 0)
        res["structures"].append(rec)
    if not args.skip_hmm:
        h = _guard(lambda: run_hmm(*hmm, device=device, backends=backends, args=args))
        if "error" in h:
            print(f"[hmm] {h['error']}")
            res["hmm_error"] = h
        else:
            res["hmm"].append(h)
    stem = args.out or "gpu_" + re.sub(r"[^a-z0-9]+", "_", dev_name.lower()).strip("_")
    write_report(res, stem)
    print((RESULTS / f"{stem}.md").read_text())
    return res


if __name__ == "__main__":
    main()
