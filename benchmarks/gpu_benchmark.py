"""GPU benchmark: pcircuits (torch and Triton backends) against PyJuice, and the CoDD step beside an 8B backbone.

One command on a CUDA machine (within ten minutes; ``--budget-s`` sets the
limit, default 540 s)::

    python benchmarks/gpu_benchmark.py

and a CPU smoke test at tiny sizes (Triton through its interpreter)::

    python benchmarks/gpu_benchmark.py --quick

Sections, in this order (a section that would not fit in the time left is
skipped and the report says so; the report is rewritten after each section,
so a run cut short still leaves what it measured):

1. *CoDD overhead.* One denoising step of a random-weight decoder with
   LLaDA-8B's shape (hidden 4096, 32 layers, 32 heads, MLP 12,288,
   vocabulary 126,464; about 8.0B parameters) in bfloat16, created directly
   on the device, batch 1, at sequence lengths 256, 512 and 1024, beside the
   step of the CoDD prior (`CoDDPrior.marginals_and_sample`: exact marginals
   and one joint draw) of the paper's HMM (window 32, 1,024 states) with
   top-64 candidates and with the full vocabulary, and the ratios prior step
   / backbone step. The backbone is transformers' Llama with causal
   attention: LLaDA's attention is bidirectional, which has the same weight
   matrix products; only the attention-score products differ (they are 3.5%
   of the step's 15.9 TFLOP at 1,024 tokens, 0.9% at 256, and a causal
   kernel may skip up to half of them).
2. *Structures* (one of each kind first, the largest last). For each
   circuit the time of a forward pass, a forward+backward pass and a
   mini-batch EM step, and the peak GPU memory of each, for every pcircuits
   backend and PyJuice:

   - HCLT over a random spanning tree of 784 variables with 256 categories,
     ``L`` latent states per variable (about 2.5M and 40M sum edges), batch 512
     (PyJuice blocks of up to 32 nodes);
   - Poon-Domingos (PD) on a 28x28 image: rectangles on a 4-pixel grid, split
     along every grid line, 4x4 cells factorised into pixels (about 13M and
     52M edges), batch 512;
   - the CoDD-sized homogeneous HMM (32 positions, 1,024 states, vocabulary
     126,464; the emission table and the transition matrix tied across
     positions) on hard evidence, batch 512 (PyJuice blocks of up to 1,024
     nodes, as in PyJuice's own HMM example).

   PyJuice (``pip install pyjuice``) is imported lazily; without it (or
   without CUDA) its columns are empty and the report says why. Each circuit
   is rebuilt in PyJuice node group by node group (`to_pyjuice`, tied groups
   as PyJuice's tied duplicates) with the parameters of pcircuits, and the
   log-likelihoods of both are checked equal on the benchmark batch before
   anything of PyJuice is timed.
3. *HMM soft evidence.* The CoDD-sized HMM under soft evidence, dense and
   top-128, batch 1 and 16, and its leaf (``soft_evidence_lse``) against the
   time to read the emission matrix once (a plain ``.sum()`` over it, the
   memory-bandwidth reference).

With ``--quick`` every size is scaled down (the CoDD rows use a 2-layer,
hidden-256 decoder and a small vocabulary): those rows are a smoke test of
the code path, not a measurement.

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

if __name__ == "__main__" and not torch.cuda.is_available():  # Triton on CPU only runs through its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")  # (not when imported: the importer's session keeps its own setting)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pcircuits as pc  # noqa: E402
from pcircuits import kernels  # noqa: E402
from pcircuits.atomic import atomic_write  # noqa: E402
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
            pix = [(r, c) for r in range(r0 * delta, r1 * delta) for c in range(c0 * delta, c1 * delta)]
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
def _block_size(n: int, cap: int = 32) -> int:
    """The largest power of two dividing ``n`` and at most ``min(n, cap)`` (a PyJuice block size)."""
    b = 1
    while b * 2 <= min(n, cap) and n % (b * 2) == 0:
        b *= 2
    return b


def _sum_children(juice: Any, made: dict[int, Any], g: NodeGroup) -> list:
    """The PyJuice children of sum group ``g``: an input child is wrapped in a one-child product.

    PyJuice wraps input children of sums that way itself; doing it here gives
    every copy of a tied sum children of one type, which its ``duplicate``
    requires.
    """
    return [juice.multiply(made[id(c)]) if c.kind == "input" else made[id(c)] for c in g.children]


def to_pyjuice(circuit: pc.TensorCircuit, root: NodeGroup, max_block: int = 32) -> Any:
    """Rebuilds a pcircuits circuit in PyJuice group by group, copying its (normalised) parameters.

    Groups tied in pcircuits (``tie_with``, e.g. the emission leaves and
    transition sums of a homogeneous HMM) become PyJuice duplicates with
    ``tie_params=True`` of the first group of their tie class met in
    topological order; only that one receives parameters.

    Args:
        circuit: the compiled circuit (its parameters are copied).
        root: the root group ``circuit`` was compiled from.
        max_block: the largest PyJuice block size to use.

    Returns:
        The PyJuice root nodes (compile with ``juice.compile``).

    Raises:
        ValueError: a product group is not element-wise (only those are mirrored).
    """
    import pyjuice as juice
    import pyjuice.nodes.distributions as dists

    made: dict[int, Any] = {}
    source: dict[int, Any] = {}  # per tie class (keyed by its owner group): the PyJuice nodes the others duplicate
    for g in root:
        owner = getattr(g, "tied_to", None) or g
        src = source.get(id(owner))
        bs = _block_size(g.num_nodes, max_block)
        if g.kind == "input":
            if src is not None:
                ns = src.duplicate(g.var, tie_params=True)
            else:
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
            chs = _sum_children(juice, made, g)
            if src is not None:
                ns = src.duplicate(*chs, tie_params=True)
            else:
                ns = juice.summate(*chs, num_node_blocks=g.num_nodes // bs, block_size=bs)
                ns.set_params(circuit.group_parameters(g).detach().float().cpu())
        if src is None and g.kind != "product":
            source[id(owner)] = ns
        made[id(g)] = ns
    return made[id(root)]


# ----------------------------------------------------------------------------- timing
_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Prints ``msg`` with the wall-clock time and the seconds since the script was loaded."""
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


class Budget:
    """The time left to a run: a section starts only if its estimate fits (``fits``), else it is recorded as skipped."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.end - time.perf_counter()

    def fits(self, what: str, needs: float) -> bool:
        """Whether ``needs`` seconds are left; if not, logs and records ``what`` as skipped."""
        if self.left() >= needs:
            return True
        self.skipped.append(f"{what}: skipped, {self.left():.0f} s left of the budget and it needs about {needs:.0f} s")
        log(self.skipped[-1])
        return False


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


def run_structure(
    name: str, root: NodeGroup, batch: int, cats: int, device, backends, args, pyjuice_ok: bool, pj_block: int = 32
) -> dict:
    """Benchmarks one structure on every pcircuits backend and on PyJuice (blocks of at most ``pj_block`` nodes)."""
    log(f"[{name}] compiling")
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
        log(f"[{name}] pcircuits/{b}")
        rec["pcircuits"][b] = bench_pcircuits(circuit, x, device, args.warmup, args.repeats)
    circuit.load_state_dict(start)
    if len(lls) > 1:
        ref = lls[backends[0]]
        rec["max_abs_diff_backends"] = max(float((v - ref).abs().max()) for v in lls.values())
    if pyjuice_ok and device.type == "cuda":
        import pyjuice as juice

        def mirror():
            circuit.backend = backends[0]
            pj_root = to_pyjuice(circuit, root, max_block=pj_block)
            log(f"[{name}] pyjuice compiling")
            pjc = (getattr(juice, "compile", None) or juice.TensorCircuit)(pj_root)
            pjc.to(device)
            with torch.no_grad():
                pj_ll = pjc(x).reshape(-1).double().cpu()
            diff = float((pj_ll - lls[backends[0]]).abs().max())
            log(f"[{name}] pyjuice max |ll diff| = {diff:.3g}")
            equal = diff < 1e-3 * max(1.0, float(lls[backends[0]].abs().max()))
            if not equal:  # timing a different function would compare nothing
                return {"error": f"log-likelihoods differ by {diff:.3g}: not timed",
                        "max_abs_ll_diff_vs_pcircuits": diff}  # fmt: skip
            res = bench_pyjuice(pjc, x, device, args.warmup, args.repeats)
            res["max_abs_ll_diff_vs_pcircuits"] = diff
            res["outputs_equal"] = equal
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
    log("[hmm] compiling")
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
            log(f"[hmm] B={B} {kind}: {json.dumps({k: v.get('seconds') for k, v in run['leaf'].items()})}")
            rec["runs"].append(run)
            soft = None
    circuit = None  # drop the reference (the closures above share its cell) before emptying the cache
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rec


# ----------------------------------------------------------------------------- CoDD overhead
LLADA_8B = {"hidden": 4096, "layers": 32, "heads": 32, "mlp": 12288, "vocab": 126464}
QUICK_BACKBONE = {"hidden": 256, "layers": 2, "heads": 4, "mlp": 768, "vocab": 2048}


def build_backbone(shape: dict, max_len: int, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> Any:
    """A random-weight Llama-style decoder of ``shape`` made directly on ``device`` in ``dtype``.

    The parameters are created in ``dtype`` on ``device`` (default dtype and
    default device set while the model is built), so no float32 copy of the
    weights ever exists.

    Args:
        shape: ``hidden``, ``layers``, ``heads``, ``mlp`` (SwiGLU width) and ``vocab``.
        max_len: the longest sequence it will see.
        device, dtype: where and in what the weights live.

    Returns:
        A ``transformers`` ``LlamaForCausalLM`` in eval mode: ids ``[B, L]`` to logits ``[B, L, V]``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["mlp"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"],
        max_position_embeddings=max_len, tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    prev = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def backbone_flops(shape: dict, length: int) -> float:
    """FLOPs of one forward pass over ``length`` tokens: weight products plus attention scores (no causal saving)."""
    h, f, n = shape["hidden"], shape["mlp"], shape["layers"]
    per_token = 2 * n * (4 * h * h + 3 * h * f) + 2 * h * shape["vocab"]
    return float(per_token * length + n * 4 * length * length * h)


def time_backbone(model: Any, shape: dict, lengths: list[int], device, warmup: int, repeats: int) -> list[dict]:
    """Median seconds of one forward pass (one denoising step) at batch 1 for each sequence length."""
    rows = []
    gen = torch.Generator().manual_seed(3)
    for L in lengths:
        ids = torch.randint(0, shape["vocab"], (1, L), generator=gen).to(device)

        def step(ids=ids):
            with torch.inference_mode():
                return model(input_ids=ids, use_cache=False).logits  # [1, L, V]

        row: dict[str, Any] = {"length": L, **_guard(lambda step=step: measure(step, device, warmup, repeats))}
        if "seconds" in row:
            row["finite"] = bool(torch.isfinite(step()).all())
            row["flops"] = backbone_flops(shape, L)
            row["tflops_per_s"] = row["flops"] / row["seconds"] / 1e12
        log(f"[codd] backbone L={L}: {row.get('seconds', row.get('error'))}")
        rows.append(row)
    return rows


def _prior_inputs(window: int, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [1, W]``, ``logits [1, W, V]`` (float32), ``masked [1, W]`` (the first quarter observed), on ``device``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(vocab, (1, window), generator=g)
    logits = torch.randn(1, window, vocab, generator=g) * 2.0
    masked = torch.ones(1, window, dtype=torch.bool)
    masked[0, : window // 4] = False
    return x.to(device), logits.to(device), masked.to(device)


def time_prior(window: int, states: int, vocab: int, top_k: int, device, warmup: int, repeats: int) -> list[dict]:
    """The prior's step (`CoDDPrior.marginals_and_sample`) with ``top_k`` candidates and with the full vocabulary.

    One homogeneous HMM prior is built (on the CPU, then moved) and shared by
    both rows. Each row records the first call (which normalises the
    emission table) apart from the median of the later ones.
    """
    from diffusion import CoDDPrior

    t = time.perf_counter()
    full = CoDDPrior.hmm(window, states, vocab, top_k=None).to(device)
    build_s = time.perf_counter() - t
    x, logits, masked = _prior_inputs(window, vocab, device)
    rows = []
    for prior in (CoDDPrior(full.circuit, window, vocab, top_k=top_k), full):
        gen = torch.Generator(device=device).manual_seed(1)

        def step(prior=prior, gen=gen):
            return prior.marginals_and_sample(x, logits, masked, 1.0, "latent", gen)

        t = time.perf_counter()
        step()
        _sync(device)
        row: dict[str, Any] = {"top_k": prior.top_k, "first_call_s": time.perf_counter() - t, "build_s": build_s}
        row.update(_guard(lambda step=step: measure(step, device, warmup, repeats)))
        log(f"[codd] prior top_k={prior.top_k}: {row.get('seconds', row.get('error'))}")
        rows.append(row)
    return rows


def run_codd_overhead(
    shape: dict, lengths: list[int], prior: tuple[int, int, int], device, warmup: int, repeats: int, smoke: bool
) -> dict:
    """One denoising step of a random-weight backbone of ``shape`` beside the CoDD prior's step.

    Args:
        shape: the backbone's shape (see `build_backbone`); its ``vocab`` is the prior's too.
        lengths: sequence lengths of the backbone step (batch 1).
        prior: ``(window, states, top_k)`` of the homogeneous HMM prior.
        device: where both run.
        warmup, repeats: runs before timing and timed runs (the median is kept).
        smoke: the sizes are not the paper's (recorded, and the report says so).

    Returns:
        The record: backbone rows per length, prior rows (top-k and full
        vocabulary) and ``ratios`` (prior step / backbone step per length).
    """
    window, states, top_k = prior
    rec: dict[str, Any] = {
        "smoke_test": smoke, "backbone_shape": shape, "dtype": "bfloat16",
        "prior": {"window": window, "states": states, "vocab": shape["vocab"], "top_k": top_k},
    }  # fmt: skip
    log(f"[codd] building the backbone {shape}")
    t = time.perf_counter()
    model = build_backbone(shape, max(lengths), device)
    rec["backbone_build_s"] = time.perf_counter() - t
    rec["backbone_params"] = sum(p.numel() for p in model.parameters())
    rec["backbone_param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    rec["backbone"] = time_backbone(model, shape, lengths, device, warmup, repeats)
    model = None  # free the backbone before the prior's tables are made
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rec["prior_steps"] = _guard(
        lambda: {"rows": time_prior(window, states, shape["vocab"], top_k, device, warmup, repeats)}
    )
    rec["ratios"] = [
        {"length": b["length"], "top_k": p["top_k"], "prior_over_backbone": p["seconds"] / b["seconds"]}
        for b in rec["backbone"]
        if "seconds" in b
        for p in rec["prior_steps"].get("rows", [])
        if "seconds" in p
    ]
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
        "| batch | evidence | "
        + " | ".join(f"leaf {b}" for b in backends)
        + " | leaf torch top-k gather | "
        + " | ".join(f"engine fwd {b}" for b in backends)
        + " |",
        "|" + "---|" * (3 + 2 * len(backends)),
    ]
    for r in h["runs"]:
        leaf = " | ".join(_fmt(r["leaf"].get(b)) for b in backends)
        engine = " | ".join(_fmt(r["engine"].get(b)) for b in backends)
        lines.append(
            f"| {r['batch']} | {r['evidence']} | {leaf} | {_fmt(r['leaf'].get('torch_gather_topk'))} | {engine} |"
        )
    return lines


def _codd_section(c: dict) -> list[str]:
    """The section of the CoDD-overhead record: backbone and prior steps and their ratios."""
    sh, pr = c["backbone_shape"], c["prior"]
    title = "## CoDD overhead: one denoising step"
    if c["smoke_test"]:
        title += " (smoke test at scaled-down sizes, not a measurement)"
    lines = ["", title, ""]
    if "error" in c:
        return lines + [f"Failed: {c['error']}"]
    lines += [
        f"Backbone: random-weight Llama-style decoder, hidden {sh['hidden']}, {sh['layers']} layers, "
        f"{sh['heads']} heads, MLP {sh['mlp']}, vocabulary {sh['vocab']:,} ({c['backbone_params'] / 1e9:.3f}B "
        f"parameters, {', '.join(c['backbone_param_dtypes'])}, built in {c['backbone_build_s']:.1f} s), batch 1, "
        "causal SDPA attention (the same weight products as bidirectional attention). Prior: homogeneous HMM, "
        f"window {pr['window']}, {pr['states']:,} states, float32; its step is `CoDDPrior.marginals_and_sample` "
        "(marginals and one joint draw, a quarter of the window observed). Times in ms (median).",
        "",
    ]
    prior_rows = c.get("prior_steps", {}).get("rows", [])
    if "error" in c.get("prior_steps", {}):
        lines += [f"Prior failed: {c['prior_steps']['error']}", ""]
    for r in prior_rows:
        which = f"top-{r['top_k']}" if r["top_k"] else "full vocabulary"
        lines.append(
            f"- prior {which}: step {_fmt(r)} ms, first call {r['first_call_s'] * 1e3:.1f} ms "
            f"(normalises the table), build {r['build_s']:.2f} s"
        )
    head = "| length | backbone step | backbone TFLOP/s | " + " | ".join(
        f"prior {'top-' + str(r['top_k']) if r['top_k'] else 'full'} | ratio" for r in prior_rows
    )
    lines += ["", head + " |", "|" + "---|" * (3 + 2 * len(prior_rows))]
    for b in c["backbone"]:
        cells = [str(b["length"]), _fmt(b), f"{b['tflops_per_s']:.3g}" if "tflops_per_s" in b else b.get("error", "-")]
        for r in prior_rows:
            ratio = next((q["prior_over_backbone"] for q in c["ratios"]
                          if q["length"] == b["length"] and q["top_k"] == r["top_k"]), None)  # fmt: skip
            cells += [_fmt(r), "-" if ratio is None else f"{ratio:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
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
    fig.suptitle(res["device"] + (" (--quick: a smoke test, not a measurement)" if res.get("quick") else ""))
    fig.tight_layout()
    with atomic_write(RESULTS / f"{stem}.png") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_report(res: dict, stem: str, plot: bool = True) -> None:
    """Writes ``{stem}.json``, ``{stem}.md`` and (with ``plot``) ``{stem}.png`` under benchmarks/results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with atomic_write(RESULTS / f"{stem}.json", "w") as f:
        f.write(json.dumps(res, indent=2) + "\n")
    lines = [
        f"# GPU benchmark: {res['device']}",
        "",
        f"torch {res['torch']}, triton {res['triton']}, pyjuice {res['pyjuice']}; "
        f"median of {res['repeats']} runs after {res['warmup']} warm-up runs; "
        "times in ms, peak memory in GiB above the resident circuit.",
        "",
    ]
    if res.get("quick"):
        lines += ["> `--quick`: every size is scaled down; this report is a smoke test of the code paths, "
                  "not a measurement.", ""]  # fmt: skip
    if res.get("pyjuice_note"):
        lines += [f"> {res['pyjuice_note']}", ""]
    cols = [("pcircuits", b) for b in res["backends"]] + [("pyjuice", None)]
    lines += _structure_table(res, cols)
    if res.get("codd_overhead"):
        lines += _codd_section(res["codd_overhead"])
    for h in res.get("hmm", []):
        lines += _hmm_section(h, res["backends"])
    lines += _errors(res)
    if res.get("skipped"):
        lines += ["", "Skipped for time:", ""] + [f"- {w}" for w in res["skipped"]]
    with atomic_write(RESULTS / f"{stem}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    if not plot:
        return
    try:
        _plot(res, cols, stem)
    except Exception as e:  # noqa: BLE001
        print(f"plot skipped: {e}")


def plan(quick: bool) -> dict:
    """The sizes of a run: structures ``(name, build, batch, categories, PyJuice block cap)``, HMM and CoDD sizes,
    and the seconds each section is budgeted to need before it starts."""
    if quick:
        return {
            "structures": [("HCLT V=12 L=8", lambda: hclt_pcircuits(12, 8, 5)[0], 16, 5, 32),
                           ("PD 8x8 L=4", lambda: pd_pcircuits(8, 4, 5)[0], 16, 5, 32),
                           ("HMM T=4 n=16 V=300", lambda: hmm_pcircuits(4, 16, 300), 16, 300, 16)],
            "hmm": (4, 16, 300, [1, 2], 8),
            "codd": (QUICK_BACKBONE, [32, 64], (8, 32, 8)),
            "needs": {"structure": 5, "codd": 20, "hmm": 10},
        }  # fmt: skip
    # sum edges: HCLT ~ 783 L^2 (L=56: 2.5M, L=224: 39M);
    # PD on 28x28 with a 4-pixel grid ~ 3,185 L^2 (L=64: 13M, L=128: 52M);
    # the HMM: PyJuice's own HMM example uses blocks of up to 1,024 nodes
    return {
        "structures": [("HCLT 2.5M", lambda: hclt_pcircuits(784, 56, 256)[0], 512, 256, 32),
                       ("PD 13M", lambda: pd_pcircuits(28, 64, 256)[0], 512, 256, 32),
                       ("HMM T=32 n=1024 V=126464", lambda: hmm_pcircuits(32, 1024, 126464), 512, 126464, 1024),
                       ("HCLT 40M", lambda: hclt_pcircuits(784, 224, 256)[0], 512, 256, 32),
                       ("PD 52M", lambda: pd_pcircuits(28, 128, 256)[0], 512, 256, 32)],
        "hmm": (32, 1024, 126464, [1, 16], 128),
        "codd": (LLADA_8B, [256, 512, 1024], (32, 1024, 64)),
        "needs": {"structure": 60, "codd": 120, "hmm": 60},
    }  # fmt: skip


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    ap.add_argument(
        "--precision",
        choices=["ieee", "tf32", "bf16"],
        default="ieee",
        help="matrix-product precision of the Triton kernels",
    )
    ap.add_argument("--skip-hmm", action="store_true", help="skip the HMM soft-evidence section")
    ap.add_argument("--skip-pyjuice", action="store_true")
    ap.add_argument("--skip-structures", action="store_true", help="skip the structures section")
    ap.add_argument("--skip-codd", action="store_true", help="skip the CoDD-overhead section")
    ap.add_argument("--budget-s", type=float, default=540.0, help="a section starts only if it fits in what is left")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None, help="file stem under benchmarks/results (default gpu_<device>)")
    args = ap.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    if args.warmup < 0 or args.repeats < 1 or args.budget_s <= 0:
        ap.error("--warmup must be >= 0, --repeats >= 1 and --budget-s > 0")
    return args


def _header(args: argparse.Namespace, device: torch.device, backends: list[str]) -> dict:
    """The run's description: device, versions, settings and whether PyJuice can run."""
    dev_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    pj, note = (None, "PyJuice skipped (--skip-pyjuice)") if args.skip_pyjuice else _pyjuice_module()
    if pj is not None and device.type != "cuda":
        note = "PyJuice columns need a CUDA device"
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    return {
        "device": dev_name, "torch": torch.__version__, "triton": triton_version,
        "pyjuice": getattr(pj, "__version__", None), "pyjuice_note": note, "pyjuice_ok": pj is not None,
        "backends": backends, "precision": args.precision, "quick": args.quick, "warmup": args.warmup,
        "repeats": args.repeats, "budget_s": args.budget_s, "threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "structures": [], "hmm": [], "skipped": [],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    budget = Budget(args.budget_s)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = ["torch"] + (["triton"] if "triton" in kernels.BACKENDS else [])
    if "triton" in backends:
        kernels.BACKENDS["triton"].set_precision(args.precision)
    res = _header(args, device, backends)
    sizes = plan(args.quick)
    needs = sizes["needs"]
    reserve = 0 if args.skip_hmm else needs["hmm"]  # the structures leave time for the last section
    stem = args.out or "gpu_" + re.sub(r"[^a-z0-9]+", "_", res["device"].lower()).strip("_")
    log(f"{res['device']}, budget {args.budget_s:.0f} s, writing benchmarks/results/{stem}.*")
    if not args.skip_codd and budget.fits("CoDD overhead", needs["codd"]):
        shape, lengths, prior = sizes["codd"]
        smoke = args.quick or device.type != "cuda"
        res["codd_overhead"] = _guard(
            lambda: run_codd_overhead(shape, lengths, prior, device, args.warmup, args.repeats, smoke)
        )
        res["codd_overhead"].setdefault("smoke_test", smoke)
        res["codd_overhead"].setdefault("backbone_shape", shape)
        res["codd_overhead"].setdefault("prior", {})
        write_report(res | {"skipped": budget.skipped}, stem, plot=False)
    for name, build, batch, cats, pj_block in [] if args.skip_structures else sizes["structures"]:
        if not budget.fits(f"structure {name}", needs["structure"] + reserve):
            continue
        rec = _guard(
            lambda name=name, build=build, batch=batch, cats=cats, pj_block=pj_block: run_structure(
                name, build(), batch, cats, device, backends, args, res["pyjuice_ok"], pj_block
            )
        )
        rec.setdefault("name", name)
        rec.setdefault("batch", batch)
        rec.setdefault("num_edges", 0)
        res["structures"].append(rec)
        write_report(res | {"skipped": budget.skipped}, stem, plot=False)
    if not args.skip_hmm and budget.fits("HMM soft evidence", needs["hmm"]):
        h = _guard(lambda: run_hmm(*sizes["hmm"], device=device, backends=backends, args=args))
        if "error" in h:
            log(f"[hmm] {h['error']}")
            res["hmm_error"] = h
        else:
            res["hmm"].append(h)
    res["skipped"] = budget.skipped
    res["wall_s"] = time.perf_counter() - _T0
    write_report(res, stem)
    log(f"done in {res['wall_s']:.0f} s")
    print((RESULTS / f"{stem}.md").read_text())
    return res


if __name__ == "__main__":
    main()
