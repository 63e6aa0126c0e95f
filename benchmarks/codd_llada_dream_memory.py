"""Memory and time of CoDD with LLaDA and Dream: measured on small stand-ins, computed for the real sizes.

Measured (CPU, one thread) on the LLaDA- and Dream-shaped remote-code stand-ins of the tests
(`tests.diffusion.fixtures.diffusion_lm_standin`: the real vocabulary size and mask id, a tiny random
model), so every quantity that scales with the vocabulary is measured at the real vocabulary:

* the bytes ``codd train-prior`` keeps per training window (``backbone_window_logits``' outputs and the
  mask flags), with top-k candidates and with the full vocabulary, against the CLI's printed estimate
  (`diffusion.codd.training.prior_cache_bytes`);
* the bytes of one backbone call's logits ``[B, N, V]``;
* the parameter bytes of an HMM prior (`CoDDPrior.hmm`) for a few numbers of hidden states;
* the wall time per denoising step of ``generate`` with and without a prior (the difference is the prior's
  cost per step; the stand-in's own forward is far cheaper than a real 7-8B model's).

Computed from the checkpoints' public config numbers (no model is loaded): weights in bfloat16, full-vocabulary
logits per batch and length, the top-k cache per window, the prior at window 32 and 1024 states, and forward
FLOPs (about 2 x parameters x tokens). Nothing is timed at real size.

Run: ``python benchmarks/codd_llada_dream_memory.py`` (about a minute on one CPU thread); writes
``benchmarks/results/codd_llada_dream_memory.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffusion import CoDDPrior, generate, load_backbone  # noqa: E402
from diffusion.codd.training import backbone_window_logits, prior_cache_bytes  # noqa: E402
from diffusion.tokenizers import as_text_tokenizer  # noqa: E402
from pcircuits.atomic import atomic_write  # noqa: E402
from tests.diffusion.fixtures import diffusion_lm_standin  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
MIB, GIB = 1024**2, 1024**3
QUESTION = "What is 2 plus 3?"
TEXTS = [QUESTION, "2 + 3 = <<2+3=5>>5\n#### 5", "What is 4 plus 1?", "4 + 1 = <<4+1=5>>5\n#### 5"]

#: Public config numbers. LLaDA-8B-Instruct: its config.json (d_model 4096, 32 layers, 32 heads and KV heads,
#: MLP 12288, vocabulary 126,464, untied head); 16,031,162,368 bytes of bfloat16 weights in its
#: model.safetensors.index.json. Dream-v0-Instruct-7B: Qwen2.5-7B's shape (hidden 3584, 28 layers, 28 heads,
#: 4 KV heads, MLP 18944, vocabulary 152,064, untied head).
REAL = {
    "llada": {"name": "LLaDA-8B-Instruct", "vocab": 126464, "hidden": 4096, "layers": 32, "heads": 32,
              "kv_heads": 32, "mlp": 12288, "qkv_bias": False},
    "dream": {"name": "Dream-v0-Instruct-7B", "vocab": 152064, "hidden": 3584, "layers": 28, "heads": 28,
              "kv_heads": 4, "mlp": 18944, "qkv_bias": True},
}


# ----------------------------------------------------------------------------------------------- measured
def _cache_bytes(backbone, window: int, windows: int, top_k: int | None) -> dict:
    """Bytes kept per window by the train-prior backbone pass, measured on the tensors it returns."""
    g = torch.Generator().manual_seed(0)
    length = window + 24
    tokens = torch.randint(0, 1000, (windows, length), generator=g)  # ids of the learnt words and fillers
    rows = torch.arange(windows)
    starts = torch.full((windows,), length - window)
    masked = torch.rand(windows, window, generator=g) < 0.5
    masked[:, 0] = True
    x0, logits, cand = backbone_window_logits(backbone, tokens, rows, starts, masked, batch_size=windows,
                                              top_k=top_k, progress=False)
    kept = x0.nbytes + masked.nbytes + logits.nbytes + (0 if cand is None else cand.nbytes)
    estimate = prior_cache_bytes(windows, window, top_k, backbone.vocab_size)
    return {"window": window, "top_k": top_k, "windows": windows, "bytes_per_window": kept / windows,
            "cli_estimate_per_window": estimate / windows, "backbone_call_logits_bytes":
            windows * length * backbone.vocab_size * 4, "backbone_call_shape": [windows, length, backbone.vocab_size]}


def _prior_bytes(window: int, states: int, vocab: int) -> dict:
    prior = CoDDPrior.hmm(window, states, vocab)
    params = sum(p.numel() * p.element_size() for p in prior.circuit.parameters())
    buffers = sum(b.numel() * b.element_size() for b in prior.circuit.buffers())
    return {"window": window, "states": states, "vocab": vocab, "parameter_bytes": params, "buffer_bytes": buffers,
            "formula_bytes": 4 * (states * vocab + states * states + states)}


def _step_times(backbone, states: list[int], window: int, gen_length: int, steps: int, full_vocab_states: int,
                repeats: int) -> list[dict]:
    """Seconds per denoising step of ``generate`` on the stand-in, without and with HMM priors."""
    tok = as_text_tokenizer(backbone.tokenizer)
    prompt = torch.tensor([tok.prompt_ids(QUESTION)])

    def run(prior) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            generate(backbone, prompt, gen_length=gen_length, steps=steps, block_length=gen_length, prior=prior)
            best = min(best, time.perf_counter() - t)
        return best / steps

    base = run(None)
    out = [{"states": 0, "top_k": None, "s_per_step": base, "prior_s_per_step": 0.0}]
    settings = [(h, 64) for h in states] + [(full_vocab_states, None)]
    for h, k in settings:
        prior = CoDDPrior.hmm(window, h, backbone.vocab_size, top_k=k)
        t = run(prior)
        out.append({"states": h, "top_k": k, "s_per_step": t, "prior_s_per_step": t - base})
    return out


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    res = {}
    for kind in ("llada", "dream"):
        path = diffusion_lm_standin(workdir, kind, TEXTS)
        backbone = load_backbone(path, trust_remote_code=True)
        res[kind] = {
            "vocab": backbone.vocab_size,
            "mask_token_id": backbone.mask_token_id,
            "standin_parameter_bytes": sum(p.numel() * p.element_size() for p in backbone.parameters()),
            "cache": [_cache_bytes(backbone, w, args.windows, k) for w in (16, 32) for k in (64, None)],
            "prior": [_prior_bytes(args.window, h, backbone.vocab_size) for h in args.states],
            "steps": _step_times(backbone, args.states, args.window, args.gen_length, args.steps,
                                 args.full_vocab_states, args.repeats),
        }
    return res


# ----------------------------------------------------------------------------------------------- computed
def parameters(c: dict) -> int:
    """Parameters of a decoder of shape ``c``: embeddings, untied head, attention, gated MLP, RMS norms."""
    d, head_dim = c["hidden"], c["hidden"] // c["heads"]
    kv = c["kv_heads"] * head_dim
    attn = d * d * 2 + 2 * d * kv + (d + 2 * kv if c["qkv_bias"] else 0)
    mlp = 3 * d * c["mlp"]
    return 2 * c["vocab"] * d + c["layers"] * (attn + mlp + 2 * d) + d


def compute(window: int = 32, states: int = 1024, top_k: int = 64) -> dict:
    out = {}
    for kind, c in REAL.items():
        n = parameters(c)
        v = c["vocab"]
        prior = 4 * (states * v + states * states + states)
        out[kind] = {
            "name": c["name"], "vocab": v, "parameters": n, "weights_bf16_bytes": 2 * n,
            "logits_bytes_per_position": {"float32": 4 * v, "bfloat16": 2 * v},
            "logits_bytes": [{"batch": b, "length": n_tok, "float32": 4 * v * b * n_tok,
                              "bfloat16": 2 * v * b * n_tok}
                             for b in (1, 8) for n_tok in (256, 512, 1024)],
            "cache_per_window": [{"window": w, "top_k": k, "bytes": prior_cache_bytes(1, w, k, v)}
                                 for w in (16, 32) for k in (top_k, None)],
            "prior": {"window": window, "states": states, "parameter_bytes": prior,
                      "adam_training_bytes": 4 * prior},
            "forward_flops_per_token": 2 * n,
        }
    return out


# ----------------------------------------------------------------------------------------------- report
def _size(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= GIB else f"{b / MIB:.2f} MiB" if b >= MIB else f"{b / 1024:.1f} KiB"


def markdown(res: dict) -> str:
    m, c = res["measured"], res["computed"]
    lines = ["# CoDD with LLaDA and Dream: memory and time", "",
             f"Written by `python benchmarks/codd_llada_dream_memory.py` ({res['seconds']:.0f} s, "
             f"{res['threads']} thread, {res['machine']}; peak RSS {_size(res['peak_rss_bytes'])}).", "",
             "## Measured on the stand-ins (real vocabulary, tiny model, CPU)", "",
             "| backbone | V | W | top-k | bytes kept per window | CLI estimate per window |",
             "|---|---|---|---|---|---|"]
    for kind, r in m.items():
        for e in r["cache"]:
            k = "V" if e["top_k"] is None else e["top_k"]
            lines.append(f"| {kind} | {r['vocab']:,} | {e['window']} | {k} | {e['bytes_per_window']:,.0f} "
                         f"({_size(e['bytes_per_window'])}) | {e['cli_estimate_per_window']:,.0f} |")
    lines += ["", "| backbone | prior W | states H | parameter bytes | 4(HV + H^2 + H) |", "|---|---|---|---|---|"]
    for kind, r in m.items():
        for e in r["prior"]:
            lines.append(f"| {kind} | {e['window']} | {e['states']} | {e['parameter_bytes']:,} "
                         f"({_size(e['parameter_bytes'])}) | {e['formula_bytes']:,} |")
    lines += ["", "| backbone | prior | s per step (stand-in + prior) | prior's share, s per step |",
              "|---|---|---|---|"]
    for kind, r in m.items():
        for e in r["steps"]:
            what = "none" if e["states"] == 0 else f"H={e['states']}, top-k {e['top_k'] or 'V (full)'}"
            lines.append(f"| {kind} | {what} | {e['s_per_step']:.3f} | {e['prior_s_per_step']:.3f} |")
    lines += ["", "## Computed for the real checkpoints (config numbers; nothing loaded or timed)", "",
              "| model | parameters | weights, bfloat16 | logits per position, fp32 / bf16 | "
              "prior W=32, H=1024 | Adam state for it (x4) | forward FLOPs per token |",
              "|---|---|---|---|---|---|---|"]
    for r in c.values():
        lp = r["logits_bytes_per_position"]
        lines.append(f"| {r['name']} | {r['parameters'] / 1e9:.2f} B | {_size(r['weights_bf16_bytes'])} | "
                     f"{_size(lp['float32'])} / {_size(lp['bfloat16'])} | {_size(r['prior']['parameter_bytes'])} | "
                     f"{_size(r['prior']['adam_training_bytes'])} | {r['forward_flops_per_token'] / 1e9:.1f} GFLOP |")
    lines += ["", "| model | batch x length | logits fp32 | logits bf16 |", "|---|---|---|---|"]
    for r in c.values():
        for e in r["logits_bytes"]:
            lines.append(f"| {r['name']} | {e['batch']} x {e['length']} | {_size(e['float32'])} | "
                         f"{_size(e['bfloat16'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", type=Path, default=OUT)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--window", type=int, default=32, help="prior window (CoDD's default: 32)")
    p.add_argument("--states", type=int, nargs="+", default=[16, 64], help="prior hidden states measured")
    p.add_argument("--full-vocab-states", type=int, default=16, help="states of the full-vocabulary prior timed")
    p.add_argument("--windows", type=int, default=8, help="windows in the measured train-prior cache")
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="generate runs per setting (the fastest is kept)")
    args = p.parse_args(argv)
    for name in ("threads", "window", "windows", "gen_length", "steps", "repeats", "full_vocab_states"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected a positive int")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(args, Path(tmp))
    res = {"threads": args.threads, "machine": f"{platform.machine()} CPU, torch {torch.__version__}",
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "measured": measured, "computed": compute(args.window),
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "seconds": time.perf_counter() - t}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.output_dir / "codd_llada_dream_memory.json", "w") as f:
        json.dump(res, f, indent=1)
    with atomic_write(args.output_dir / "codd_llada_dream_memory.md", "w") as f:
        f.write(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
