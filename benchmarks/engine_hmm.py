"""Engine speed on hidden Markov models, measured side by side on CPU.

(a) A homogeneous HMM built with the public node API and compiled by the
    generic engine, against a hand-written torch forward algorithm on the
    same parameters (forward, and forward+backward w.r.t. all parameters).
(b) An inhomogeneous HMM in pcircuits and in libcirkit (``cirkit.templates.pgms.hmm``,
    folded and optimised), parameters copied from cirkit into pcircuits and
    outputs compared before timing.

(c) With ``--scale``: construction cost of long HMMs (the homogeneous
    template ``pc.structures.hmm`` with 4 states and 4 categories, 10,000 and
    30,000 steps, ~2 layers per step): peak resident memory and the times to
    build the node groups, compile them and run one forward pass of a batch
    of 8, each length measured in a fresh Python process.

Usage::

    python benchmarks/engine_hmm.py [--repeats 20] [--threads 1] [--out benchmarks/results]
    python benchmarks/engine_hmm.py --scale [--scale-steps 10000 30000]
    python benchmarks/engine_hmm.py --sizes [--states 32 128 512] [--lengths 32 256] [--repeats 20] [--budget 60]

Writes ``engine_hmm.json``, ``engine_hmm.png`` and ``engine_hmm.md`` (the table
shown in ``docs/benchmarks/engine.md``); with ``--scale`` only
``engine_hmm_scale.json`` and ``engine_hmm_scale.md``; with ``--sizes`` only
``engine_hmm_sizes.json`` and ``engine_hmm_sizes.md``.

(d) With ``--sizes``: forward against the hand-written forward algorithm,
    and ``pc.mpe`` against a forward pass on the same circuit and batch (with
    and without 30% missing values), over numbers of hidden states and
    lengths; MPE values are checked against a hand-written Viterbi recursion
    first.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import pcircuits as pc
from pcircuits.atomic import atomic_write

T, H, C, B = 32, 128, 1000, 256


def homogeneous_hmm(T: int, H: int, C: int) -> pc.SumGroup:
    """alpha_t = (A alpha_{t-1}) * emission(x_t); tied transitions and emissions."""
    emit0 = pc.inputs(0, H, pc.Categorical(C))
    alpha, trans = emit0, None
    for t in range(1, T):
        s = pc.summate(alpha, num_nodes=H, tie_with=trans)
        trans = trans or s
        alpha = pc.multiply(s, pc.inputs(t, H, pc.Categorical(C), tie_with=emit0))
    return pc.summate(alpha, num_nodes=1)


def inhomogeneous_hmm_like_cirkit(T: int, H: int, C: int) -> tuple[pc.SumGroup, list, list]:
    """The structure of ``cirkit.templates.pgms.hmm``: the chain runs from the last variable to the first."""
    leaves = [pc.inputs(v, H, pc.Categorical(C)) for v in range(T)]
    sums = [pc.summate(leaves[T - 1], num_nodes=H)]
    for i in reversed(range(T - 1)):
        sums.append(pc.summate(pc.multiply(sums[-1], leaves[i]), num_nodes=1 if i == 0 else H))
    return sums[-1], leaves, sums


class HandWrittenHMM(torch.nn.Module):
    """The forward algorithm in log space with max-shifted matrix products."""

    def __init__(self, init_logits: torch.Tensor, trans_logits: torch.Tensor, emit_logits: torch.Tensor):
        super().__init__()
        self.init_logits = torch.nn.Parameter(init_logits.clone())  # [H]
        self.trans_logits = torch.nn.Parameter(trans_logits.clone())  # [H_next, H_prev]
        self.emit_logits = torch.nn.Parameter(emit_logits.clone())  # [H, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_e = torch.log_softmax(self.emit_logits, -1)
        A = torch.softmax(self.trans_logits, -1)
        em = log_e.t().contiguous()[x]  # [B, T, H]; a contiguous table makes the gather a row copy
        la = em[:, 0]
        for t in range(1, x.shape[1]):
            m = la.amax(-1, keepdim=True)
            la = torch.log(torch.exp(la - m) @ A.t()) + m + em[:, t]
        return torch.logsumexp(la + torch.log_softmax(self.init_logits, -1), -1)


def timed(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b``, run alternately so drifts in machine speed hit both."""
    for fn in (fn_a, fn_b, fn_a, fn_b):
        fn()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def forward_backward(module, *args):
    def run():
        module.zero_grad(set_to_none=True)
        module(*args).sum().backward()

    return run


def bench_homogeneous(repeats: int) -> dict:
    root = homogeneous_hmm(T, H, C)
    circuit = pc.compile(root, seed=0)
    alpha = root.children[0]
    trans_group, emit_group = alpha.children
    hand = HandWrittenHMM(
        circuit.group_parameters(root)[0].log().detach(),
        circuit.group_parameters(trans_group).log().detach(),
        torch.log_softmax(circuit.group_parameters(emit_group), -1).detach(),
    )
    x = torch.randint(0, C, (B, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        err = (circuit(x) - hand(x)).abs().max().item()
    assert err < 1e-3, f"outputs differ by {err}"
    with torch.no_grad():
        fwd_pc, fwd_hand = timed(lambda: circuit(x), lambda: hand(x), repeats)
    fb_pc, fb_hand = timed(forward_backward(circuit, x), forward_backward(hand, x), repeats)
    return {
        "circuit": f"homogeneous HMM T={T} H={H} C={C} batch={B}",
        "max_abs_diff": err,
        "forward_s": {"pcircuits": fwd_pc, "hand_written": fwd_hand, "ratio": fwd_pc / fwd_hand},
        "forward_backward_s": {"pcircuits": fb_pc, "hand_written": fb_hand, "ratio": fb_pc / fb_hand},
    }


def bench_cirkit(repeats: int) -> dict:
    try:
        import cirkit.templates.pgms as pgms
        from cirkit.pipeline import PipelineContext
        from cirkit.pipeline import compile as cirkit_compile
    except ImportError:
        return {"skipped": "libcirkit is not installed (pip install libcirkit)"}
    import importlib.metadata

    sym = pgms.hmm(list(range(T)), num_latent_states=H, input_layer_kwargs={"num_categories": C})
    ctx = PipelineContext(backend="torch", semiring="lse-sum", fold=True, optimize=True)
    ck = cirkit_compile(sym, ctx)
    root, leaves, sums = inhomogeneous_hmm_like_cirkit(T, H, C)
    circuit = pc.compile(root, seed=0)
    # copy cirkit's parameters: one folded categorical layer (fold f covers variable scope_idx[f]),
    # then the sum layers in chain order (variable T-1 first)
    cat = next(layer for layer in ck.layers if type(layer).__name__ == "TorchCategoricalLayer")
    probs = cat.probs().detach()  # [T, H, C]
    for f, v in enumerate(cat.scope_idx[:, 0].tolist()):
        circuit.set_group_parameters(leaves[v], probs[f].log())
    weights = [layer.weight().detach() for layer in ck.layers if hasattr(layer, "weight") and layer.weight is not None]
    assert len(weights) == len(sums), (len(weights), len(sums))
    for s, w in zip(sums, weights, strict=True):
        circuit.set_group_parameters(s, w[0])
    x = torch.randint(0, C, (B, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = circuit(x)
        theirs = ck(x).reshape(-1)
    err = (ours - theirs).abs().max().item()
    assert err < 1e-3, f"outputs differ by {err}"
    with torch.no_grad():
        fwd_pc, fwd_ck = timed(lambda: circuit(x), lambda: ck(x), repeats)
    fb_pc, fb_ck = timed(forward_backward(circuit, x), forward_backward(ck, x), repeats)
    return {
        "circuit": f"inhomogeneous HMM T={T} H={H} C={C} batch={B}",
        "libcirkit_version": importlib.metadata.version("libcirkit"),
        "max_abs_diff": err,
        "forward_s": {"pcircuits": fwd_pc, "libcirkit": fwd_ck, "speedup": fwd_ck / fwd_pc},
        "forward_backward_s": {"pcircuits": fb_pc, "libcirkit": fb_ck, "speedup": fb_ck / fb_pc},
    }


def hand_written_viterbi(hand: HandWrittenHMM, x: torch.Tensor, missing: torch.Tensor | None) -> torch.Tensor:
    """``max_{z, x_missing} log p(x, z)`` of each row by the Viterbi recursion (the check of ``pc.mpe``)."""
    log_e = torch.log_softmax(hand.emit_logits, -1)  # [H, C]
    log_a = torch.log_softmax(hand.trans_logits, -1)  # [H_next, H_prev]
    em = log_e.t()[x]  # [B, T, H]
    if missing is not None:  # a missing emission takes its best category
        em = torch.where(missing.unsqueeze(-1), log_e.amax(-1), em)
    la = em[:, 0]
    for t in range(1, x.shape[1]):
        la = (la.unsqueeze(1) + log_a.unsqueeze(0)).amax(-1) + em[:, t]
    return (la + torch.log_softmax(hand.init_logits, -1)).amax(-1)


def timed_many(fns: dict, repeats: int) -> dict:
    """Median seconds of every function of ``fns``, run round-robin so drifts in machine speed hit all."""
    for fn in fns.values():
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_sizes(states: list[int], lengths: list[int], repeats: int, budget_s: float) -> list[dict]:
    """Forward vs the hand-written forward algorithm, and ``pc.mpe`` vs forward, per (length, states).

    One circuit and batch per size; all five timed functions run round-robin
    and each gets its median. Outputs are checked first: the log-likelihoods
    against the hand-written recursion, and the MPE values (``return_log_prob``)
    against a hand-written Viterbi recursion, with and without 30% missing
    values. The number of rounds is ``repeats``, fewer (at least 5) where one
    round would exceed ``budget_s / repeats``.
    """
    rows = []
    for steps in lengths:
        for h in states:
            root = homogeneous_hmm(steps, h, C)
            circuit = pc.compile(root, seed=0)
            trans_group, emit_group = root.children[0].children
            hand = HandWrittenHMM(
                circuit.group_parameters(root)[0].log().detach(),
                circuit.group_parameters(trans_group).log().detach(),
                torch.log_softmax(circuit.group_parameters(emit_group), -1).detach(),
            )
            gen = torch.Generator().manual_seed(0)
            x = torch.randint(0, C, (B, steps), generator=gen)
            miss = torch.rand(B, steps, generator=gen) < 0.3
            with torch.no_grad():
                fwd_err = (circuit(x) - hand(x)).abs().max().item()
                assert fwd_err < 1e-3 * steps / 32, f"forward outputs differ by {fwd_err}"
                mpe_err = 0.0
                for m in (None, miss):
                    _, value = pc.mpe(circuit, x, m, return_log_prob=True)
                    err = (value - hand_written_viterbi(hand, x, m)).abs().max().item()
                    assert err < 1e-3 * steps / 32, f"MPE values differ from Viterbi by {err}"
                    mpe_err = max(mpe_err, err)
                fns = {
                    "forward": lambda circuit=circuit, x=x: circuit(x),
                    "hand_written": lambda hand=hand, x=x: hand(x),
                    "mpe": lambda circuit=circuit, x=x: pc.mpe(circuit, x),
                    "forward_missing": lambda circuit=circuit, x=x, miss=miss: circuit(x, miss),
                    "mpe_missing": lambda circuit=circuit, x=x, miss=miss: pc.mpe(circuit, x, miss),
                }
                t0 = time.perf_counter()
                for fn in fns.values():
                    fn()
                one_round = time.perf_counter() - t0
                rounds = max(5, min(repeats, int(budget_s / max(one_round, 1e-9))))
                t = timed_many(fns, rounds)
            rows.append({
                "steps": steps, "states": h, "categories": C, "batch": B, "rounds": rounds,
                "forward_max_abs_diff": fwd_err, "mpe_value_max_abs_diff": mpe_err, "seconds": t,
                "forward_vs_hand_written": t["forward"] / t["hand_written"],
                "mpe_vs_forward": t["mpe"] / t["forward"],
                "mpe_vs_forward_missing": t["mpe_missing"] / t["forward_missing"],
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def write_sizes(rows: list[dict], out: Path, command: str) -> None:
    """Writes ``engine_hmm_sizes.json`` and the table ``engine_hmm_sizes.md``."""
    result = {
        "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "command": command,
        "runs": rows,
    }
    with atomic_write(out / "engine_hmm_sizes.json", "w") as f:
        f.write(json.dumps(result, indent=2))
    ms = lambda s: f"{1000 * s:.1f} ms"  # noqa: E731
    lines = [
        f"Device: {result['device']}, torch {result['torch']}. Homogeneous HMM, {C:,} categories, batch {B}; "
        "medians over the rounds shown, the five passes of a size run round-robin. "
        "30% missing: a fixed random mask, the same for both sides.",
        "",
        "| steps | states | rounds | forward | hand-written | ratio | MPE | MPE / forward "
        "| forward, 30% missing | MPE, 30% missing | MPE / forward, 30% missing |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["seconds"]
        lines.append(
            f"| {r['steps']} | {r['states']} | {r['rounds']} | {ms(t['forward'])} | {ms(t['hand_written'])} "
            f"| {r['forward_vs_hand_written']:.2f}x | {ms(t['mpe'])} | {r['mpe_vs_forward']:.2f}x "
            f"| {ms(t['forward_missing'])} | {ms(t['mpe_missing'])} | {r['mpe_vs_forward_missing']:.2f}x |"
        )
    with atomic_write(out / "engine_hmm_sizes.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_child(steps: int) -> dict:
    """Builds, compiles and runs one HMM of ``steps`` steps in this (fresh) process."""
    states, cats, batch = 4, 4, 8
    torch.set_num_threads(1)
    base = _rss_mb()
    t0 = time.perf_counter()
    root = pc.structures.hmm(steps, states, cats)
    t1 = time.perf_counter()
    after_build = _rss_mb()
    circuit = pc.compile(root)
    t2 = time.perf_counter()
    after_compile = _rss_mb()
    x = torch.randint(0, cats, (batch, steps), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ll = circuit(x)
    t3 = time.perf_counter()
    assert bool(torch.isfinite(ll).all()), "forward pass gave a non-finite log-likelihood"
    return {
        "steps": steps, "states": states, "categories": cats, "batch": batch,
        "layers": len(circuit.layout.layers) + 1, "nodes": circuit.num_nodes,
        "build_s": t1 - t0, "compile_s": t2 - t1, "forward_s": t3 - t2,
        "rss_after_import_mb": base, "peak_rss_after_build_mb": after_build,
        "peak_rss_after_compile_mb": after_compile, "peak_rss_mb": _rss_mb(),
    }


def bench_scale(steps_list: list[int], out: Path) -> list[dict]:
    """Runs :func:`scale_child` for every length in a fresh interpreter; writes the JSON and table."""
    rows = []
    for steps in steps_list:
        cmd = [sys.executable, __file__, "--scale-child", str(steps)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = {
        "device": f"CPU ({platform.processor() or platform.machine()}, 1 thread)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "runs": rows,
    }
    with atomic_write(out / "engine_hmm_scale.json", "w") as f:
        f.write(json.dumps(result, indent=2))
    lines = [
        f"Device: {result['device']}, torch {result['torch']}, Python {result['python']}. "
        "One fresh process per length; peak RSS from `resource.getrusage` (includes about "
        f"{rows[0]['rss_after_import_mb']:.0f} MiB for importing torch and pcircuits).",
        "",
        "| HMM (states x categories) | steps | layers | build | compile | forward (batch 8) | peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['states']} x {r['categories']} | {r['steps']:,} | {r['layers']:,} | {r['build_s']:.2f} s "
            f"| {r['compile_s']:.1f} s | {r['forward_s']:.2f} s | {r['peak_rss_mb']:,.0f} MiB |"
        )
    with atomic_write(out / "engine_hmm_scale.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 gives the steadiest ratios)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--scale", action="store_true", help="only measure construction memory and time of long HMMs")
    parser.add_argument("--scale-steps", type=int, nargs="+", default=[10_000, 30_000], help="HMM lengths for --scale")
    parser.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--sizes", action="store_true", help="only the forward and MPE table over sizes")
    parser.add_argument("--states", type=int, nargs="+", default=[32, 128, 512], help="hidden states for --sizes")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 256], help="HMM lengths for --sizes")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of timing per size for --sizes")
    args = parser.parse_args()
    if args.scale_child is not None:
        print(json.dumps(scale_child(args.scale_child)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.scale:
        bench_scale(args.scale_steps, args.out)
        return
    torch.set_num_threads(args.threads)
    if args.sizes:
        rows = bench_sizes(args.states, args.lengths, args.repeats, args.budget)
        write_sizes(rows, args.out, "python " + " ".join(["benchmarks/engine_hmm.py", *sys.argv[1:]]))
        return
    result = {
        "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "homogeneous_vs_hand_written": bench_homogeneous(args.repeats),
        "inhomogeneous_vs_libcirkit": bench_cirkit(args.repeats),
    }
    with atomic_write(args.out / "engine_hmm.json", "w") as f:
        f.write(json.dumps(result, indent=2))
    lines = _markdown(result, args.repeats)
    with atomic_write(args.out / "engine_hmm.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(result, args.out)


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def _markdown_row(res: dict, key: str, label: str, peer: str, ratio: str) -> str:
    """One table row: ``res[key]`` timed for pcircuits and ``peer``, with the ratio entry ``ratio``."""
    r = res[key]
    suffix = "x the time" if ratio == "ratio" else "x faster"
    return f"| {label} | {_ms(r['pcircuits'])} | {_ms(r[peer])} | {r[ratio]:.2f}{suffix} |"


def _markdown(result: dict, repeats: int) -> list[str]:
    """The lines of ``engine_hmm.md``: device and the pcircuits vs peer timing table."""
    a, b = result["homogeneous_vs_hand_written"], result["inhomogeneous_vs_libcirkit"]
    lines = [
        f"Device: {result['device']}, torch {result['torch']}. Median of {repeats} runs, the two sides alternating.",
        "",
        "| comparison | pass | pcircuits | peer | ratio |",
        "|---|---|---|---|---|",
        _markdown_row(a, "forward_s", f"{a['circuit']} vs hand-written forward algorithm | forward", "hand_written",
                      "ratio"),
        _markdown_row(a, "forward_backward_s", "| forward+backward", "hand_written", "ratio"),
    ]
    if "skipped" not in b:
        lines += [
            _markdown_row(b, "forward_s", f"{b['circuit']} vs libcirkit {b['libcirkit_version']} | forward",
                          "libcirkit", "speedup"),
            _markdown_row(b, "forward_backward_s", "| forward+backward", "libcirkit", "speedup"),
        ]
    return lines


def _plot(result: dict, out: Path) -> None:
    """Bar chart of the two comparisons, into ``out`` and ``docs/assets``."""
    a, b = result["homogeneous_vs_hand_written"], result["inhomogeneous_vs_libcirkit"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    panels = [("homogeneous HMM", a, "hand_written"), ("inhomogeneous HMM", b, "libcirkit")]
    for ax, (title, res, peer) in zip(axes, panels, strict=True):
        if "skipped" in res:
            continue
        keys = ["forward_s", "forward_backward_s"]
        xs = range(len(keys))
        ax.bar([i - 0.2 for i in xs], [1000 * res[k]["pcircuits"] for k in keys], 0.4, label="pcircuits")
        ax.bar([i + 0.2 for i in xs], [1000 * res[k][peer] for k in keys], 0.4, label=peer.replace("_", "-"))
        ax.set_xticks(list(xs), ["forward", "forward+backward"])
        ax.set_ylabel("ms per batch")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    assets = Path(__file__).parent.parent / "docs" / "assets"
    assets.mkdir(exist_ok=True)
    for target in (out / "engine_hmm.png", assets / "engine_hmm.png"):
        with atomic_write(target) as f:
            fig.savefig(f, format="png", dpi=120)


if __name__ == "__main__":
    main()
