"""GSM8K benchmark of a small masked diffusion backbone: likelihood bound and the factorization barrier.

One command (CPU, one thread)::

    python benchmarks/diffusion_gsm8k.py

1. If ``--model`` (default ``runs/gsm8k_backbone``) holds no backbone yet, train
   one with the documented settings (``codd train-backbone --output
   runs/gsm8k_backbone --max-minutes 30 --eval-every 200``).
2. Evaluate it on held-out GSM8K (test split): the negative-ELBO perplexity
   bound, the conditional log-likelihood by mask-ratio bins, and few-step block
   diffusion at 1, 2, 4 and 8 tokens per step (exact match of the final
   answer, validity of ``<<a op b=c>>c`` calculator annotations, tokens/s).
3. Write ``benchmarks/results/diffusion_gsm8k.json``, the plot
   ``docs/diffusion/gsm8k_factorization.png`` and the results page
   ``docs/diffusion/gsm8k-benchmark.md`` (tables generated from the JSON), and
   copy the backbone to ``diffusion/bundled/backbone`` when it is
   smaller than 15 MB.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diffusion.backbones import load_backbone  # noqa: E402
from diffusion.data import load_gsm8k  # noqa: E402
from diffusion.evaluation import evaluate_backbone  # noqa: E402
from diffusion.training import TrainConfig, train_backbone  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "diffusion"
SHIP_LIMIT_BYTES = 15 * 1024 * 1024


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _lineage(model: Path) -> list[dict]:
    """Training stages of a backbone, oldest first (following ``init_from``)."""
    stages = []
    seen = set()
    cur: Path | None = model
    while cur is not None and (cur / "codd_backbone.json").is_file() and cur.resolve() not in seen:
        seen.add(cur.resolve())
        meta = json.loads((cur / "codd_backbone.json").read_text())
        log = json.loads((cur / "training_log.json").read_text()) if (cur / "training_log.json").is_file() else {}
        cfg = meta.get("train_config", {})
        stages.append({"dir": str(cur), "steps": meta.get("steps"), "max_minutes": cfg.get("max_minutes"),
                       "lr": cfg.get("lr"), "min_target_length": cfg.get("min_target_length"),
                       "heldout": meta.get("heldout"), "log": log})
        cur = Path(cfg["init_from"]) if cfg.get("init_from") else None
    return stages[::-1]


def _combined_log(stages: list[dict]) -> dict | None:
    train, held, offset = [], [], 0
    for st in stages:
        log = st["log"] or {}
        train += [dict(r, step=r["step"] + offset) for r in log.get("train", [])]
        held += [dict(h, step=h["step"] + offset) for h in log.get("heldout", [])]
        offset += st["steps"] or 0
    return {"train": train, "heldout": held} if train else None


def _plot(res: dict, train_log: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gen = res["generation"]
    ks = [g["tokens_per_step"] for g in gen]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    axes = axes.ravel()
    ax = axes[0]
    ax.plot(ks, [g["annotation_validity"] for g in gen], "o-", label="annotation valid")
    ax.plot(ks, [g["wellformed_rate"] for g in gen], "v-", label="annotation well-formed")
    ax.plot(ks, [g["arith_ok_rate"] for g in gen], "s--", label="arithmetic holds")
    ax.plot(ks, [g["copy_ok_rate"] for g in gen], "^--", label="number after >> equals c")
    ax.plot(ks, [g["exact_match"] for g in gen], "d-", label="final answer exact match")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("tokens committed per step")
    ax.set_ylabel("rate (per annotation / per question)")
    ax.set_ylim(0, 1)
    ax.set_title("Factorization barrier (greedy, low-confidence)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(ks, [g["annotations_per_answer"] for g in gen], "o-", label="<<...>> spans")
    ax.plot(ks, [g["wellformed_per_answer"] for g in gen], "v-", label="well-formed")
    ax.plot(ks, [g["valid_per_answer"] for g in gen], "s-", label="valid")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("tokens committed per step")
    ax.set_ylabel("annotations per answer")
    ax.set_title("Calculator annotations per answer")
    ax.legend(fontsize=8)
    ax = axes[2]
    bins = res["loglik_by_mask_ratio"]
    ax.bar([f"{b['lo']:.1f}-{b['hi']:.1f}" for b in bins], [-b["loglik"] for b in bins], color="tab:gray")
    ax.set_xlabel("mask ratio of the answer")
    ax.set_ylabel("NLL per masked token (nats)")
    ax.set_title("Conditional NLL by mask ratio")
    ax = axes[3]
    if not train_log:
        ax.axis("off")
    else:
        tr = train_log.get("train", [])
        ax.plot([r["step"] for r in tr], [r["ema"] for r in tr], label="train loss (EMA)")
        held = train_log.get("heldout", [])
        ax.plot([h["step"] for h in held], [h["nll"] for h in held], "o-", label="held-out bound")
        ax.set_xlabel("step")
        ax.set_ylabel("nats / token (1/t-weighted)")
        ax.set_title("Training")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _machine() -> dict:
    """Where the evaluation ran (platform, torch, threads, and the GPU's name on CUDA)."""
    info = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _machine_line(m: dict, device: str) -> str:
    if str(device).startswith("cuda"):
        return f"{m.get('gpu', 'a CUDA GPU')} ({m['platform']}, torch {m['torch']})"
    return f"{m['platform']}, torch {m['torch']}, {m['threads']} thread(s), CPU shared with other jobs"


def _page(res: dict, meta: dict, cmd: str, json_name: str) -> str:
    s = res["settings"]
    e = res["elbo"]
    tc = meta.get("train_config", {})
    arch = res["architecture"]
    lines = [
        "# GSM8K benchmark (generated)",
        "",
        "This page is written by `benchmarks/diffusion_gsm8k.py` from",
        f"`benchmarks/results/{json_name}`; do not edit it by hand.",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {_machine_line(res['machine'], res.get('device', 'cpu'))}.",
        "",
        "## Backbone",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {arch['model_type']} encoder, d={arch['hidden_size']}, {arch['num_hidden_layers']} layers, "
        f"{arch['num_attention_heads']} heads, MLP {arch['intermediate_size']} |",
        f"| parameters | {meta.get('parameters', 0) / 1e6:.2f} M |",
        f"| tokenizer | {tc.get('tokenizer')} (vocabulary {meta.get('vocab_size')}) |",
        f"| batch | {tc.get('batch_size')} sequences, answers padded to >= {tc.get('min_target_length')} tokens |",
        "",
        "Training stages (each a `codd train-backbone` run, the later ones with `--init-from` the previous):",
        "",
        "| stage | steps | budget (min) | peak lr | min target length | held-out NLL bound | perplexity bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, st in enumerate(res.get("training_stages", []), 1):
        h = st.get("heldout") or {}
        lines.append(
            f"| {i} | {st['steps']} | {st['max_minutes']} | {st['lr']} | {st.get('min_target_length') or 'none'} "
            f"| {h.get('nll', float('nan')):.3f} | {h.get('ppl_bound', float('nan')):.2f} |"
        )
    lines += [
        "",
        "(The training-time bound uses 2 mask draws on 200 held-out pairs; the table below uses 4.)",
        "",
        "## Likelihood",
        "",
        f"Held-out negative ELBO on {s['likelihood_examples']} GSM8K test pairs ({e['tokens']} answer tokens, "
        "4 stratified mask draws each):",
        "",
        "| NLL bound (nats/token) | perplexity bound |",
        "|---|---|",
        f"| {e['nll']:.3f} | {e['ppl_bound']:.2f} |",
        "",
        "Conditional log-likelihood of masked answer tokens by mask ratio:",
        "",
        "| mask ratio | log-likelihood (nats/token) | perplexity | masked tokens |",
        "|---|---|---|---|",
    ]
    for b in res["loglik_by_mask_ratio"]:
        lines.append(f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['loglik']:.3f} | {b['ppl']:.2f} | {b['tokens']} |")
    lines += [
        "",
        "## Few-step generation",
        "",
        f"{s['questions']} held-out questions whose reference answer fits in {s['max_answer_tokens']} tokens; "
        f"gen length {s['gen_length']}, block length {s['block_length']}, remasking `{s['remasking']}`, "
        f"temperature {s['temperature']}.",
        "",
        "| tokens/step | steps | exact match | annotation validity (valid/total) | well-formed | arithmetic holds "
        "| copy consistent | annotations/answer | well-formed/answer | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in res["generation"]:
        lines.append(
            f"| {g['tokens_per_step']} | {g['steps']} | {g['exact_match']:.3f} "
            f"| {g['annotation_validity']:.3f} ({g['annotations_valid']}/{g['annotations_total']}) "
            f"| {g['wellformed_rate']:.3f} | {g['arith_ok_rate']:.3f} | {g['copy_ok_rate']:.3f} "
            f"| {g['annotations_per_answer']:.2f} | {g['wellformed_per_answer']:.2f} | {g['tokens_per_second']:.1f} |"
        )
    lines += [
        "",
        f"![factorization barrier]({res.get('plot', 'gsm8k_factorization.png')})",
        "",
        "## Samples",
        "",
    ]
    for g in res["generation"]:
        if g["samples"]:
            lines += [
                f"**{g['tokens_per_step']} token(s) per step**, first question:",
                "",
                "```text",
                g["samples"][0],
                "```",
                "",
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "runs" / "gsm8k_backbone"))
    p.add_argument("--train-minutes", type=float, default=30.0)
    p.add_argument("--questions", type=int, default=50)
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--tokens-per-step", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--max-answer-tokens", type=int, default=None, help="question filter (default: gen length)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-ship", action="store_true", help="do not copy the backbone to benchmarks/results")
    p.add_argument("--device", default="cpu", help="where the backbone runs, e.g. cpu or cuda (default: %(default)s)")
    p.add_argument("--tag", default="", help="suffix of the output names (JSON, plot, docs page), e.g. _gpu")
    p.add_argument(
        "--stages-from",
        default=None,
        help="an earlier results JSON of the same backbone whose training stages to report, for a copy (such as "
        "diffusion/bundled/backbone) whose --init-from directories are gone; only evaluation is rerun",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = Path(a.model)
    if not (model / "codd_backbone.json").is_file():
        print(f"no backbone in {model}; training one for {a.train_minutes} min", flush=True)
        train_backbone(
            TrainConfig(output_dir=str(model), max_minutes=a.train_minutes, eval_every=200, num_threads=a.threads,
                        device=a.device)
        )
    backbone = load_backbone(model, device=a.device, dtype=torch.float32)  # float32 even from a bf16 copy
    meta = json.loads((model / "codd_backbone.json").read_text())
    stages = _lineage(model)
    train_log = _combined_log(stages)
    if a.stages_from:
        stages = json.loads(Path(a.stages_from).read_text())["training_stages"]
        train_log = None  # the per-step logs stay with the original training directories
    t0 = time.perf_counter()
    res = evaluate_backbone(
        backbone,
        load_gsm8k("test"),
        examples=a.examples,
        questions=a.questions,
        tokens_per_step=a.tokens_per_step,
        gen_length=a.gen_length,
        block_length=a.block_length,
        batch_size=a.batch_size,
        max_answer_tokens=a.max_answer_tokens,
    )
    res["eval_seconds"] = time.perf_counter() - t0
    res["machine"] = _machine()
    res["device"] = a.device
    json_name, plot_name = f"diffusion_gsm8k{a.tag}.json", f"gsm8k_factorization{a.tag}.png"
    res["plot"] = plot_name
    res["backbone"] = {k: meta.get(k) for k in ("steps", "parameters", "vocab_size", "heldout", "train_config")}
    cfg = backbone.model.config
    res["architecture"] = {
        k: getattr(cfg, k, None)
        for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    }
    res["training_stages"] = [{k: v for k, v in st.items() if k != "log"} for st in stages]
    RESULTS.mkdir(parents=True, exist_ok=True)
    DOCS.mkdir(parents=True, exist_ok=True)
    (RESULTS / json_name).write_text(json.dumps(res, indent=1))
    _plot(res, train_log, DOCS / plot_name)
    cmd = " ".join(["python benchmarks/diffusion_gsm8k.py", *(argv if argv is not None else sys.argv[1:])])
    (DOCS / f"gsm8k-benchmark{a.tag}.md").write_text(_page(res, meta, cmd, json_name))
    if not a.no_ship and model.resolve() != (ROOT / "diffusion" / "bundled" / "backbone").resolve():
        size = _dir_size(model)
        if size < SHIP_LIMIT_BYTES:
            dest = ROOT / "diffusion" / "bundled" / "backbone"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(model, dest)
            print(f"copied backbone ({size / 1e6:.1f} MB) to {dest}")
        else:
            print(f"backbone is {size / 1e6:.1f} MB (> 15 MB); kept in {model}")
    print(
        json.dumps(
            {
                "elbo": res["elbo"],
                "generation": [{k: v for k, v in g.items() if k != "samples"} for g in res["generation"]],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
