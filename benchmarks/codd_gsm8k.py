"""CoDD on GSM8K with the small trained backbone: factorized vs circuit-coupled decoding.

One command (CPU, one thread, about 20 minutes)::

    python benchmarks/codd_gsm8k.py --model diffusion/bundled/backbone

Steps:

a. Train a CoDD prior (homogeneous HMM, ``--window`` positions, ``--states``
   hidden states, the backbone's vocabulary) on frozen-backbone logits
   (`diffusion.codd.training.fit_prior`; full vocabulary, no top-k) over the
   answers of ``--prior-data``: GSM8K *train* answers, or ``test-rest``, the
   test pairs no step below uses (for a backbone trained on all of GSM8K
   train, see `prior_examples`). Windows (``--mask-scope``): ``window``,
   `make_windows` (only the window's answer tokens masked, ``t ~ U(0, 1)``);
   ``answer``, `answer_window_logits` (whole answers masked at ``t ~ U(0, 1)``,
   ``--draws`` per answer, every window tiling them). Or load a trained
   prior (``--prior``) and, with ``--backoff-bins n``, fit its backoff
   weights (`CoDDPrior.fit_backoff`, ``n`` mask-ratio bins) on the windows of
   ``--prior-data`` / ``--mask-scope`` instead, which that prior never saw.
b. Held-out conditional NLL per masked answer token by mask-ratio bin on GSM8K
   *test* pairs (masks drawn as in `diffusion.evaluation.loglik_by_mask_ratio`),
   factorized backbone vs CoDD (``tau = 1``, full vocabulary). The answer is
   tiled into prior windows; the last window is shifted back to end at the
   answer's end and masked positions it shares with the previous tile are
   marginalised (scored once). CoDD includes the backoff when it was fitted.
c. Few-step greedy block diffusion (gen length 128, block 32, low-confidence
   remasking) on ``--questions`` test questions at 2, 4 and 8 tokens per step,
   factorized vs CoDD (same prompts, same seeds): final-answer exact match and
   ``<<a op b=c>>c`` annotation validity.
d. Wall time of the prior per denoising step (the prior's MPE and marginal
   calls inside `diffusion.generate`, timed) next to the backbone's time per step.
e. gamma (``pc_frac``) / tau (``pc_temperature``) chosen on a validation split:
   ``--val-questions`` test questions *after* the test questions (disjoint),
   at 8 tokens per step, by annotation validity (ties: exact match, then the
   number of valid annotations).

Writes ``benchmarks/results/codd_gsm8k.json``, ``codd_gsm8k.png``,
``codd_gsm8k.md`` (tables) and the prior ``codd_gsm8k_prior.npz``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from diffusion.backbones import load_backbone  # noqa: E402
from diffusion.codd.prior import CoDDPrior  # noqa: E402
from diffusion.codd.training import (  # noqa: E402
    answer_tiles,
    answer_window_logits,
    backbone_window_logits,
    conditional_nll,
    fit_prior,
    make_windows,
    mean_nll,
    qa_token_matrix,
)
from diffusion.data import collate, encode_prompts, encode_qa, load_gsm8k  # noqa: E402
from diffusion.evaluation import DEFAULT_BINS, _close, annotation_stats, extract_final_answer  # noqa: E402
from diffusion.masking import mask_exact_ratio  # noqa: E402
from diffusion.sampling import generate, left_padding_mask  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- (a) prior
def _placed(prior: CoDDPrior, a) -> CoDDPrior:
    """The prior on ``--device`` with ``--prior-backend``."""
    prior.to(a.device).circuit.backend = a.prior_backend
    return prior


def _nll_pairs(tok, a) -> list:
    """The held-out pairs of step (b): the first ``--nll-examples`` test pairs that fit 256 tokens."""
    test = load_gsm8k("test")
    keep = [len(e.prompt) + len(e.target) <= 256 for e in encode_qa(test, tok, 10**9)]
    return [ex for ex, k in zip(test, keep, strict=True) if k][: a.nll_examples]


def _generation_splits(tok, a) -> tuple[list, list]:
    """The test questions of step (c) and the validation questions of step (e) (answers within ``--gen-length``)."""
    fit = [ex for ex in load_gsm8k("test") if len(tok.encode(ex.answer)) + 1 <= a.gen_length]
    return fit[: a.questions], fit[a.questions : a.questions + a.val_questions]


def prior_examples(tok, a) -> list:
    """The QA pairs the prior is trained on (``--prior-data``).

    ``train``: GSM8K train answers. ``test-rest``: the GSM8K test pairs used by
    no evaluation here (not among the NLL pairs, the test questions or the
    validation questions), for a backbone trained on all of GSM8K train,
    whose logits on its own training answers are far sharper than on unseen
    ones (see the docs).
    """
    if a.prior_data == "train":
        return load_gsm8k("train", limit=a.train_examples)
    questions, val = _generation_splits(tok, a)
    used = {ex.question for ex in _nll_pairs(tok, a) + questions + val}
    return [ex for ex in load_gsm8k("test") if ex.question not in used][: a.train_examples]


def prior_windows(backbone, a) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, int]:
    """Masked windows and their cached backbone logits (``--mask-scope``), reused from ``--window-cache``."""
    if a.window_cache and Path(a.window_cache).is_file():
        c = torch.load(a.window_cache)
        _log(f"loaded {len(c['x0'])} cached windows from {a.window_cache}")
        return c["x0"], c["masked"], c["logits"].float(), c["seconds"], c["examples"]
    qa = prior_examples(backbone.tokenizer, a)
    tokens, answer = qa_token_matrix(qa, backbone.tokenizer)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    if a.mask_scope == "answer":
        x0, masked, logits = answer_window_logits(backbone, tokens, answer, a.window, a.draws, g, progress=False)
    else:
        rows, starts, masked = make_windows(tokens, a.window, answer, a.num_windows, g)
        x0, logits, _ = backbone_window_logits(backbone, tokens, rows, starts, masked, batch_size=32, progress=False)
    seconds = time.perf_counter() - t0
    _log(f"cached backbone logits of {len(x0)} windows from {len(qa)} answers in {seconds:.0f}s")
    if a.window_cache:
        torch.save({"x0": x0, "masked": masked, "logits": logits.half(), "seconds": seconds, "examples": len(qa)},
                   a.window_cache)
    return x0, masked, logits, seconds, len(qa)


def train_prior(backbone, a) -> tuple[CoDDPrior, dict]:
    x0, masked, logits, t_logits, n_examples = prior_windows(backbone, a)
    prior = _placed(CoDDPrior.hmm(a.window, a.states, backbone.vocab_size, seed=a.seed), a)
    ckpt = RESULTS / f"{a.out}_prior.npz"
    RESULTS.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    hist = fit_prior(prior, x0, masked, logits, epochs=a.epochs, batch_size=a.prior_batch, lr=a.lr,
                     em_epochs=a.em_epochs, valid_frac=0.1, seed=a.seed, progress=False, checkpoint=ckpt,
                     weighting=a.weighting,
                     callback=lambda ep, nll: _log(f"prior epoch {ep}: held-out window NLL/token {nll:.4f}"))
    t_fit = time.perf_counter() - t0
    prior = _placed(CoDDPrior.load(ckpt), a)  # the epoch with the best held-out NLL
    # factorized NLL of the same held-out windows (the split of fit_prior)
    perm = torch.randperm(len(x0), generator=torch.Generator().manual_seed(a.seed))
    val = perm[: int(round(0.1 * len(x0)))]
    fact = mean_nll(conditional_nll(None, x0[val], masked[val], logits[val]), masked[val], a.weighting)
    info = {
        "prior_data": a.prior_data,
        "mask_scope": a.mask_scope,
        "train_examples": n_examples,
        "windows": len(x0),
        "window": a.window,
        "states": a.states,
        "vocab": backbone.vocab_size,
        "epochs": a.epochs,
        "em_epochs": a.em_epochs,
        "lr": a.lr,
        "batch_size": a.prior_batch,
        "weighting": a.weighting,
        "heldout_window_nll_per_epoch": hist,
        "heldout_window_nll_factorized": fact,
        "best_epoch": int(min(range(len(hist)), key=hist.__getitem__)),
        "logit_cache_seconds": t_logits,
        "fit_seconds": t_fit,
    }
    ckpt.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return prior, info


# --------------------------------------------------------------------------- (b) NLL by bins
def _cond_ll(prior: CoDDPrior, x0, score, marg, logits, tau=1.0) -> torch.Tensor:
    """log p_hat(x0[score] | observed) with the ``marg`` positions summed out (full vocabulary, backoff mixed in)."""
    return prior.partial_log_prob(x0, logits, score, marg, tau)


@torch.no_grad()
def nll_by_bins(backbone, prior: CoDDPrior, a) -> list[dict]:
    tok = backbone.tokenizer
    enc = encode_qa(_nll_pairs(tok, a), tok, 10**9)
    W = prior.window
    dev = backbone.device
    gen = torch.Generator().manual_seed(a.seed)
    out = []
    for lo, hi in DEFAULT_BINS:
        fact = codd = 0.0
        count = 0
        diffs = []  # per answer: CoDD minus factorized NLL (nats), for the standard error
        for s in range(0, len(enc), 32):
            batch = collate(enc[s : s + 32], tok)
            ids, target = batch.input_ids, batch.target_mask
            b = ids.shape[0]
            r = lo + (hi - lo) * torch.rand(b, generator=gen)
            masked = mask_exact_ratio(target, r, gen)
            ids, masked = ids.to(dev), masked.to(dev)
            noisy = torch.where(masked, torch.full_like(ids, backbone.mask_token_id), ids)
            logits = backbone(noisy).float()
            logits[..., backbone.mask_token_id] = -math.inf
            lp = F.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
            fact += float(lp[masked].sum())
            count += int(masked.sum())
            per_fact = torch.where(masked, lp, torch.zeros_like(lp)).sum(1).double()
            per_codd = torch.zeros(b, dtype=torch.float64, device=dev)
            # windows tiling each answer
            rows_l, starts_l, own_l = [], [], []
            for i in range(b):
                p0 = batch.prompt_length
                for s0, own in answer_tiles(p0, p0 + int(target[i].sum()), W):
                    rows_l.append(i)
                    starts_l.append(s0)
                    own_l.append(own)  # positions before `own` belong to the previous tile
            rows_t, starts_t, own_t = (torch.tensor(v, device=dev) for v in (rows_l, starts_l, own_l))
            pos = starts_t[:, None] + torch.arange(W, device=dev)
            xw = ids[rows_t[:, None], pos]
            lw = logits[rows_t[:, None], pos]
            mw = masked[rows_t[:, None], pos]
            score_w = mw & (pos >= own_t[:, None])
            marg_w = mw & ~score_w
            lw = torch.where(mw.unsqueeze(-1), lw, torch.zeros_like(lw))
            for j in range(0, len(xw), 64):
                sl = slice(j, j + 64)
                per_codd.index_add_(0, rows_t[sl], _cond_ll(prior, xw[sl], score_w[sl], marg_w[sl], lw[sl]).double())
            codd += float(per_codd.sum())
            diffs.append((per_fact - per_codd).cpu())
        d = torch.cat(diffs)
        # standard error of the per-token difference, answers as the independent units
        se = float(d.std() * math.sqrt(len(d)) / max(count, 1)) if len(d) > 1 else math.nan
        out.append({"lo": lo, "hi": hi, "tokens": count, "answers": len(d), "nll_factorized": -fact / max(count, 1),
                    "nll_codd": -codd / max(count, 1), "difference_se": se})
        _log(f"bin {lo:.1f}-{hi:.1f}: factorized {out[-1]['nll_factorized']:.4f} codd {out[-1]['nll_codd']:.4f} "
             f"(difference {out[-1]['nll_codd'] - out[-1]['nll_factorized']:+.4f} +- {se:.4f}, {count} tokens)")
    return out


# --------------------------------------------------------------------------- (c,d) generation
class _Timed:
    """Wraps the prior's decoding calls to time them."""

    def __init__(self, prior: CoDDPrior):
        self.prior, self.seconds, self.calls = prior, 0.0, 0
        for name in ("mpe", "marginals", "sample"):
            fn = getattr(CoDDPrior, name)
            setattr(prior, name, self._wrap(fn))

    def _wrap(self, fn):
        def inner(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(self.prior, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        return inner

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def run_generation(backbone, questions, k: int, a, prior=None, timer=None, gamma=1.0, tau=1.0) -> dict:
    tok = backbone.tokenizer
    steps = a.gen_length // k
    texts = []
    if timer is not None:
        timer.reset()
    t0 = time.perf_counter()
    n_batches = 0
    for s in range(0, len(questions), a.batch_size):
        chunk = questions[s : s + a.batch_size]
        prompts = encode_prompts([e.question for e in chunk], tok)
        kw = {} if prior is None else {"prior": prior, "pc_frac": gamma, "pc_temperature": tau, "sampler": "latent"}
        out = generate(
            backbone,
            prompts,
            gen_length=a.gen_length,
            steps=steps,
            block_length=a.block_length,
            remasking="low_confidence",
            temperature=0.0,
            attention_mask=left_padding_mask(prompts, tok.pad_id),
            generator=torch.Generator().manual_seed(a.seed + s),
            **kw,
        )
        n_batches += 1
        for row in out[:, prompts.shape[1] :].tolist():
            if tok.eos_id in row:
                row = row[: row.index(tok.eos_id)]
            texts.append(tok.decode(row))
    seconds = time.perf_counter() - t0
    em = tot = valid = arith = copy = 0
    for text, ex in zip(texts, questions, strict=True):
        ref, pred = extract_final_answer(ex.answer), extract_final_answer(text)
        em += ref is not None and pred is not None and _close(ref, pred)
        st = annotation_stats(text)
        tot += st["total"]
        valid += st["valid"]
        arith += st["arith_ok"]
        copy += st["copy_ok"]
    n = len(questions)
    rec = {
        "tokens_per_step": k, "steps": steps, "exact_match": em / n, "exact_match_count": em,
        "annotation_validity": valid / max(tot, 1), "annotations": tot, "valid_annotations": valid,
        "arith_ok_rate": arith / max(tot, 1), "copy_ok_rate": copy / max(tot, 1),
        "annotations_per_answer": tot / n, "seconds": seconds,
        "seconds_per_step": seconds / (steps * n_batches), "samples": texts[:2],
    }
    if timer is not None:
        rec["prior_seconds"] = timer.seconds
        rec["prior_seconds_per_step"] = timer.seconds / (steps * n_batches)
        rec["prior_calls"] = timer.calls
    return rec


def _key(r: dict) -> tuple:
    return (r["annotation_validity"], r["exact_match"], r["valid_annotations"])


# --------------------------------------------------------------------------- outputs
def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    bins = res["nll_by_mask_ratio"]
    xs = range(len(bins))
    ax.bar([x - 0.2 for x in xs], [b["nll_factorized"] for b in bins], 0.4, label="factorized")
    ax.bar([x + 0.2 for x in xs], [b["nll_codd"] for b in bins], 0.4, label="CoDD (tau=1)")
    ax.set_xticks(list(xs), [f"{b['lo']:.1f}-{b['hi']:.1f}" for b in bins])
    ax.set_xlabel("mask ratio of the answer")
    ax.set_ylabel("held-out NLL per masked token (nats)")
    ax.set_title("GSM8K test: conditional NLL")
    ax.legend()
    ax = axes[1]
    g = res["generation"]
    ks = [r["tokens_per_step"] for r in g["factorized"]]
    ax.plot(
        ks, [r["annotation_validity"] for r in g["factorized"]], "o-", color="tab:blue", label="validity, factorized"
    )
    ax.plot(ks, [r["annotation_validity"] for r in g["codd"]], "o-", color="tab:orange", label="validity, CoDD")
    ax.plot(ks, [r["exact_match"] for r in g["factorized"]], "s--", color="tab:blue", label="exact match, factorized")
    ax.plot(ks, [r["exact_match"] for r in g["codd"]], "s--", color="tab:orange", label="exact match, CoDD")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("tokens per step")
    ax.set_ylabel("rate")
    ax.set_ylim(0, 1)
    ax.set_title(f"GSM8K test ({res['settings']['questions']} questions, greedy)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(res: dict) -> str:
    s, p = res["settings"], res["prior"]
    if "windows" in p:
        line = (
            f"Prior: homogeneous HMM, window {p['window']}, {p['states']} states, vocabulary {p['vocab']}, "
            f"{p['windows']} train windows from {p['train_examples']} GSM8K train answers, {p['epochs']} epochs "
            f"(best epoch {p['best_epoch'] + 1}: held-out train-window NLL/token "
            f"{min(p['heldout_window_nll_per_epoch']):.4f} vs factorized "
            f"{p['heldout_window_nll_factorized']:.4f}); fit {p['fit_seconds']:.0f} s."
        )
    else:
        line = "Prior: no training record beside it."
    if "loaded_from" in p:
        line += f" Loaded from `{p['loaded_from']}`."
    if p.get("backoff"):
        bd = p.get("backoff_data", {})
        line += (f" Backoff weights lambda per mask-ratio bin ({len(p['backoff'])} bins"
                 + (f", fitted on {bd['windows']} windows of {bd['examples']} {bd['prior_data']} answers" if bd else "")
                 + f"): {', '.join(f'{v:.3f}' for v in p['backoff'])}.")
    L = [
        line,
        "",
        f"**Held-out conditional NLL** (nats per masked answer token, {s['nll_examples']} GSM8K test pairs, "
        "one mask draw per pair and bin, tau = 1):",
        "",
        "| mask ratio | factorized | CoDD | difference (+- standard error) | masked tokens |",
        "|---|---|---|---|---|",
    ]
    for b in res["nll_by_mask_ratio"]:
        se = f" +- {b['difference_se']:.4f}" if "difference_se" in b else ""
        L.append(f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['nll_factorized']:.4f} | {b['nll_codd']:.4f} "
                 f"| {b['nll_codd'] - b['nll_factorized']:+.4f}{se} | {b['tokens']} |")
    sw = res["sweep"]
    L += [
        "",
        f"**gamma / tau sweep** (validation: {s['val_questions']} test questions disjoint from the test questions, "
        f"8 tokens per step; factorized validity {sw['factorized']['annotation_validity']:.3f}, "
        f"exact match {sw['factorized']['exact_match']:.3f}):",
        "",
        "| gamma | tau | annotation validity | valid / total | exact match |",
        "|---|---|---|---|---|",
    ]
    for r in sw["grid"]:
        L.append(
            f"| {r['gamma']} | {r['tau']} | {r['annotation_validity']:.3f} "
            f"| {r['valid_annotations']}/{r['annotations']} | {r['exact_match']:.3f} |"
        )
    L += [
        "",
        f"Chosen: gamma = {sw['chosen']['gamma']}, tau = {sw['chosen']['tau']}.",
        "",
        f"**Few-step generation** ({s['questions']} GSM8K test questions, gen length {s['gen_length']}, block "
        f"{s['block_length']}, greedy, low-confidence remasking; CoDD with the MPE of p_hat):",
        "",
        "| tokens/step | steps | method | exact match | annotation validity | valid / total | arithmetic holds "
        "| copy consistent | s / step (batch) | prior s / step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    g = res["generation"]
    for f, c in zip(g["factorized"], g["codd"], strict=True):
        for name, r in (("factorized", f), ("CoDD", c)):
            L.append(
                f"| {r['tokens_per_step']} | {r['steps']} | {name} | {r['exact_match']:.3f} "
                f"| {r['annotation_validity']:.3f} "
                f"| {r['valid_annotations']}/{r['annotations']} | {r['arith_ok_rate']:.3f} | {r['copy_ok_rate']:.3f} "
                f"| {r['seconds_per_step']:.3f} | {r.get('prior_seconds_per_step', 0.0):.3f} |"
            )
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "diffusion" / "bundled" / "backbone"))
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--states", type=int, default=128)
    p.add_argument("--train-examples", type=int, default=4000)
    p.add_argument("--num-windows", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--em-epochs", type=int, default=0)
    p.add_argument("--prior-data", choices=["train", "test-rest"], default="train",
                   help="answers the prior is trained on (see prior_examples)")
    p.add_argument(
        "--mask-scope",
        choices=["window", "answer"],
        default="window",
        help="window: only the window is masked (make_windows); answer: the whole answer (answer_window_logits)",
    )
    p.add_argument("--draws", type=int, default=8, help="mask draws per answer with --mask-scope answer")
    p.add_argument("--backoff-bins", type=int, default=0,
                   help="with --prior: fit its backoff weights in this many mask-ratio bins on the windows of "
                   "--prior-data / --mask-scope (0: none)")
    p.add_argument(
        "--window-cache", default=None, help="file keeping the prior's windows and logits (reused when present)"
    )
    p.add_argument("--weighting", choices=["token", "window"], default="token",
                   help="window weighting of the prior's objective (see diffusion.codd.training.fit_prior)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--prior-batch", type=int, default=64)
    p.add_argument("--nll-examples", type=int, default=100)
    p.add_argument("--questions", type=int, default=50)
    p.add_argument("--val-questions", type=int, default=24)
    p.add_argument("--gen-length", type=int, default=128)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--tokens-per-step", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--gammas", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    p.add_argument("--gen-top-k", type=int, default=64, help="top-k candidates of the prior when decoding")
    p.add_argument("--taus", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the backbone and the prior run, e.g. cpu or cuda")
    p.add_argument("--prior-backend", choices=["auto", "torch", "triton"], default="auto",
                   help="kernel backend of the prior's circuit (auto: Triton on CUDA)")
    p.add_argument("--prior", default=None, help="a trained prior (.npz) to use instead of training one in step a "
                   "(its training record is read from the .json beside it when present)")
    p.add_argument("--out", default="codd_gsm8k", help="file stem under benchmarks/results")
    a = p.parse_args(argv)
    if a.backoff_bins and not a.prior:
        p.error("--backoff-bins needs --prior: the backoff is fitted on windows the prior was not trained on")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    T0 = time.perf_counter()
    backbone = load_backbone(a.model, device=a.device, dtype=torch.float32)  # float32 even from a bf16 copy
    meta = json.loads((Path(a.model) / "codd_backbone.json").read_text())
    tok = backbone.tokenizer

    res: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python benchmarks/codd_gsm8k.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": a.device,
            **({"gpu": torch.cuda.get_device_name()} if a.device.startswith("cuda") else {}),
        },
        "backbone": {
            "path": str(a.model),
            **{k: meta.get(k) for k in ("steps", "parameters", "vocab_size", "heldout")},
        },
        "complete": False,
    }
    out_json = RESULTS / f"{a.out}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)

    def dump() -> None:
        """Writes what is measured so far (a run cut short keeps its finished stages)."""
        res["seconds"] = time.perf_counter() - T0
        out_json.write_text(json.dumps(res, indent=1))

    if a.prior:
        prior = _placed(CoDDPrior.load(a.prior), a)
        info_path = Path(a.prior).with_suffix(".json")
        prior_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        prior_info["loaded_from"] = str(a.prior)
        if a.backoff_bins:  # the loaded prior never saw these windows: all of them fit its backoff
            x0, masked, logits, secs, n_ex = prior_windows(backbone, a)
            prior.set_backoff(None)
            prior_info["backoff"] = prior.fit_backoff(x0, logits, masked, bins=a.backoff_bins)
            prior_info["backoff_data"] = {"prior_data": a.prior_data, "mask_scope": a.mask_scope, "windows": len(x0),
                                          "examples": n_ex, "logit_cache_seconds": secs}  # fmt: skip
            x0 = masked = logits = None  # release the cached logits
            prior.save(RESULTS / f"{a.out}_prior.npz")
            (RESULTS / f"{a.out}_prior.json").write_text(json.dumps(prior_info, indent=1))
            _log(f"backoff weights per mask-ratio bin ({a.prior_data} windows): {prior_info['backoff']}")
    else:
        prior, prior_info = train_prior(backbone, a)
    res["machine"]["prior_backend"] = prior.circuit.resolve_backend()
    res["prior"] = prior_info
    dump()
    bins = nll_by_bins(backbone, prior, a)
    res["nll_by_mask_ratio"] = bins
    dump()
    prior.top_k = a.gen_top_k  # candidate restriction for decoding (the NLL above uses the full vocabulary)

    questions, val = _generation_splits(tok, a)
    timer = _Timed(prior)
    res["settings"] = {"questions": len(questions), "val_questions": len(val), "nll_examples": a.nll_examples,
                       "gen_length": a.gen_length, "block_length": a.block_length, "remasking": "low_confidence",
                       "temperature": 0.0, "sampler": "latent (greedy: MPE of p_hat)", "gen_top_k": a.gen_top_k,
                       "batch_size": a.batch_size, "seed": a.seed}

    # (e) validation sweep at the largest tokens-per-step
    kmax = max(a.tokens_per_step)
    sweep = {"factorized": run_generation(backbone, val, kmax, a), "grid": []}
    res["sweep"] = sweep
    for gamma in a.gammas:
        for tau in a.taus:
            r = run_generation(backbone, val, kmax, a, prior, timer, gamma, tau)
            r.update(gamma=gamma, tau=tau)
            sweep["grid"].append(r)
            _log(f"val gamma={gamma} tau={tau}: validity {r['annotation_validity']:.3f} ({r['valid_annotations']}/"
                 f"{r['annotations']}) EM {r['exact_match']:.3f}")
    best = max(sweep["grid"], key=_key)
    sweep["chosen"] = {"gamma": best["gamma"], "tau": best["tau"]}
    _log(f"chosen gamma={best['gamma']} tau={best['tau']} (factorized on validation: validity "
         f"{sweep['factorized']['annotation_validity']:.3f} ({sweep['factorized']['valid_annotations']}/"
         f"{sweep['factorized']['annotations']}))")
    dump()

    # (c, d) test generation
    gen: dict = {"factorized": [], "codd": []}
    res["generation"] = gen
    for k in a.tokens_per_step:
        f = run_generation(backbone, questions, k, a)
        c = run_generation(backbone, questions, k, a, prior, timer, best["gamma"], best["tau"])
        gen["factorized"].append(f)
        gen["codd"].append(c)
        _log(f"k={k}: factorized EM {f['exact_match']:.3f} validity {f['annotation_validity']:.3f} "
             f"({f['valid_annotations']}/{f['annotations']}) {f['seconds_per_step']:.3f}s/step | CoDD EM "
             f"{c['exact_match']:.3f} validity {c['annotation_validity']:.3f} ({c['valid_annotations']}/"
             f"{c['annotations']}) {c['seconds_per_step']:.3f}s/step, prior {c['prior_seconds_per_step']:.3f}s/step")
        dump()

    lt08 = [b for b in bins if b["hi"] <= 0.8 + 1e-9]
    k8 = [i for i, r in enumerate(gen["factorized"]) if r["tokens_per_step"] == 8]
    res["targets"] = {
        "nll_codd_below_factorized_all_bins_below_0.8": all(b["nll_codd"] < b["nll_factorized"] for b in lt08),
        "validity_8tps_codd_above_factorized": (
            None
            if not k8
            else gen["codd"][k8[0]]["annotation_validity"] > gen["factorized"][k8[0]]["annotation_validity"]
        ),
    }
    res["complete"] = True
    dump()
    _plot(res, RESULTS / f"{a.out}.png")
    (RESULTS / f"{a.out}.md").write_text(_table(res))
    _log(f"done in {res['seconds']:.0f}s; targets {res['targets']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
