"""CoDD on GSM8K with the small trained backbone: factorized vs circuit-coupled decoding, held-out protocol.

One command (CPU, one thread, about 50 minutes)::

    python benchmarks/codd_gsm8k.py --model diffusion/bundled/backbone

The protocol (`gsm8k_protocol`): GSM8K train is cut once into *fit* and a
held-out *dev* slice; GSM8K test is touched only by steps (c) and (d).

a. Train a CoDD prior (homogeneous HMM, ``--window`` positions, ``--states``
   hidden states, the backbone's vocabulary) on frozen-backbone logits
   (`diffusion.codd.training.fit_prior`; full vocabulary) over the first
   ``--train-examples`` answers of *fit*; the epoch is chosen on held-out
   *fit* windows. Windows (``--mask-scope``): ``window``, `make_windows`
   (only the window's answer tokens masked, ``t ~ U(0, 1)``); ``answer``,
   `answer_window_logits` (whole answers masked at ``t ~ U(0, 1)``,
   ``--draws`` per answer, every window tiling them). Or load a trained prior
   (``--prior``).
b. With ``--backoff-bins n`` (default 10), fit the prior's backoff weights
   (`CoDDPrior.fit_backoff`, ``n`` mask-ratio bins) on whole-answer windows
   of the first half of the dev slice (``--draws`` per answer).
c. Choose gamma (``pc_frac``) and tau (``pc_temperature``) on
   ``--val-questions`` questions of the second half of the dev slice, at the
   largest tokens-per-step, by annotation validity (ties: exact match, then
   copy consistency).
d. Final numbers on GSM8K *test*, each with a bootstrap 95% interval (the
   answer or question is the unit; CoDD minus factorized is paired):

   * held-out conditional NLL per masked answer token by mask-ratio bin
     (masks drawn as in `diffusion.evaluation.loglik_by_mask_ratio`),
     factorized backbone vs CoDD (``tau = 1``, full vocabulary, backoff
     included). The answer is tiled into prior windows; the last window is
     shifted back to end at the answer's end and masked positions it shares
     with the previous tile are marginalised (scored once);
   * few-step greedy block diffusion (gen length 128, block 32,
     low-confidence remasking; CoDD takes the MPE of p_hat, so no draw is
     random) on ``--questions`` test questions at 2, 4 and 8 tokens per step:
     final-answer exact match, ``<<a op b=c>>c`` annotation validity,
     arithmetic and copy consistency;
   * wall time of the prior per denoising step next to the backbone's.

Writes ``benchmarks/results/codd_gsm8k.json``, ``codd_gsm8k.png``,
``codd_gsm8k.md`` (tables) and the prior ``codd_gsm8k_prior.safetensors``
(with ``codd_gsm8k_prior.json``, its training record).
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

import numpy as np  # noqa: E402
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
from diffusion.data import collate, encode_prompts, encode_qa  # noqa: E402
from diffusion.evaluation import DEFAULT_BINS, _close, annotation_stats, extract_final_answer  # noqa: E402
from diffusion.masking import mask_exact_ratio  # noqa: E402
from diffusion.sampling import generate, left_padding_mask  # noqa: E402
from pcircuits.atomic import atomic_write  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from gsm8k_protocol import GSM8KSplits, boot_diff, boot_mean, boot_ratio, excludes_zero, gsm8k_splits  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- (a) prior
def _placed(prior: CoDDPrior, a) -> CoDDPrior:
    """The prior on ``--device`` with ``--prior-backend``."""
    prior.to(a.device).circuit.backend = a.prior_backend
    return prior


def _nll_pairs(tok, splits: GSM8KSplits, a) -> list:
    """The test pairs of the NLL table: the first ``--nll-examples`` GSM8K test pairs that fit 256 tokens."""
    keep = [len(e.prompt) + len(e.target) <= 256 for e in encode_qa(splits.test, tok, 10**9)]
    return [ex for ex, k in zip(splits.test, keep, strict=True) if k][: a.nll_examples]


def _fits(tok, pool: list, a) -> list:
    """The pairs of ``pool`` whose answer (with its end token) fits ``--gen-length``."""
    return [ex for ex in pool if len(tok.encode(ex.answer)) + 1 <= a.gen_length]


def _qa_windows(backbone, examples: list, a, scope: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Masked windows of ``examples`` and the backbone's full-vocabulary logits on them (``scope``: see step a)."""
    tokens, answer = qa_token_matrix(examples, backbone.tokenizer)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    if scope == "answer":
        x0, masked, logits = answer_window_logits(backbone, tokens, answer, a.window, a.draws, g, progress=False)
    else:
        rows, starts, masked = make_windows(tokens, a.window, answer, a.num_windows, g)
        x0, logits, _ = backbone_window_logits(backbone, tokens, rows, starts, masked, batch_size=32, progress=False)
    seconds = time.perf_counter() - t0
    _log(f"cached backbone logits of {len(x0)} windows from {len(examples)} answers in {seconds:.0f}s")
    return x0, masked, logits, seconds


def train_prior(backbone, splits: GSM8KSplits, a) -> tuple[CoDDPrior, dict]:
    """Step a: the prior fitted on the first ``--train-examples`` *fit* answers; the best held-out epoch."""
    examples = splits.fit[: a.train_examples]
    x0, masked, logits, t_logits = _qa_windows(backbone, examples, a, a.mask_scope)
    n_examples = len(examples)
    prior = _placed(CoDDPrior.hmm(a.window, a.states, backbone.vocab_size, seed=a.seed), a)
    ckpt = RESULTS / f"{a.out}_prior.safetensors"
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
        "prior_data": "GSM8K train minus the dev slice (gsm8k_protocol.gsm8k_splits)",
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
    return prior, info


def fit_backoff(backbone, prior: CoDDPrior, splits: GSM8KSplits, a) -> dict:
    """Step b: the backoff weights fitted on whole-answer windows of the dev slice's first half."""
    x0, masked, logits, secs = _qa_windows(backbone, splits.dev_backoff, a, "answer")
    prior.set_backoff(None)
    weights = prior.fit_backoff(x0, logits, masked, bins=a.backoff_bins)
    _log(f"backoff weights per mask-ratio bin (dev windows): {[round(w, 3) for w in weights]}")
    return {"backoff": weights, "backoff_data": {"data": "first half of the GSM8K train dev slice",
                                                 "mask_scope": "answer", "windows": len(x0),
                                                 "examples": len(splits.dev_backoff), "logit_cache_seconds": secs}}


# --------------------------------------------------------------------------- (b) NLL by bins
def _cond_ll(prior: CoDDPrior, x0, score, marg, logits, tau=1.0) -> torch.Tensor:
    """log p_hat(x0[score] | observed) with the ``marg`` positions summed out (full vocabulary, backoff mixed in)."""
    return prior.partial_log_prob(x0, logits, score, marg, tau)


@torch.no_grad()
def nll_by_bins(backbone, prior: CoDDPrior, pairs: list, a, rng: np.random.Generator) -> list[dict]:
    """NLL per masked answer token by mask-ratio bin, factorized and CoDD, with bootstrap intervals over answers."""
    tok = backbone.tokenizer
    enc = encode_qa(pairs, tok, 10**9)
    W = prior.window
    dev = backbone.device
    gen = torch.Generator().manual_seed(a.seed)
    out = []
    for lo, hi in DEFAULT_BINS:
        per_answer = []  # per answer: (factorized log-lik, CoDD log-lik, masked tokens)
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
            per_answer.append(torch.stack([per_fact.cpu(), per_codd.cpu(), masked.sum(1).double().cpu()], 1))
        fact_ll, codd_ll, tokens = torch.cat(per_answer).numpy().T
        count = int(tokens.sum())
        rec = {"lo": lo, "hi": hi, "tokens": count, "answers": len(tokens),
               "nll_factorized": float(-fact_ll.sum() / max(count, 1)),
               "nll_codd": float(-codd_ll.sum() / max(count, 1)),
               "nll_factorized_ci": [-v for v in boot_ratio(fact_ll, tokens, rng)[::-1]],
               "nll_codd_ci": [-v for v in boot_ratio(codd_ll, tokens, rng)[::-1]],
               # CoDD minus factorized NLL per token, paired over answers
               "difference_ci": boot_ratio(fact_ll - codd_ll, tokens, rng)}
        out.append(rec)
        _log(f"bin {lo:.1f}-{hi:.1f}: factorized {rec['nll_factorized']:.4f} codd {rec['nll_codd']:.4f} (difference "
             f"{rec['nll_codd'] - rec['nll_factorized']:+.4f}, 95% CI {rec['difference_ci']}, {count} tokens)")
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
    per_q: dict[str, list] = {"em": [], "total": [], "valid": [], "arith": [], "copy": []}
    for text, ex in zip(texts, questions, strict=True):
        ref, pred = extract_final_answer(ex.answer), extract_final_answer(text)
        st = annotation_stats(text)
        per_q["em"].append(int(ref is not None and pred is not None and _close(ref, pred)))
        per_q["total"].append(st["total"])
        per_q["valid"].append(st["valid"])
        per_q["arith"].append(st["arith_ok"])
        per_q["copy"].append(st["copy_ok"])
    n = len(questions)
    em, tot, valid = sum(per_q["em"]), sum(per_q["total"]), sum(per_q["valid"])
    rec = {
        "tokens_per_step": k, "steps": steps, "exact_match": em / n, "exact_match_count": em,
        "annotation_validity": valid / max(tot, 1), "annotations": tot, "valid_annotations": valid,
        "arith_ok_rate": sum(per_q["arith"]) / max(tot, 1), "copy_ok_rate": sum(per_q["copy"]) / max(tot, 1),
        "annotations_per_answer": tot / n, "seconds": seconds,
        "seconds_per_step": seconds / (steps * n_batches), "samples": texts[:2], "per_question": per_q,
    }
    if timer is not None:
        rec["prior_seconds"] = timer.seconds
        rec["prior_seconds_per_step"] = timer.seconds / (steps * n_batches)
        rec["prior_calls"] = timer.calls
    return rec


def intervals(f: dict, c: dict, rng: np.random.Generator) -> dict:
    """Bootstrap 95% intervals of each method's rates and of CoDD minus factorized (paired over questions)."""
    F_, C_ = ({k: np.asarray(v, dtype=float) for k, v in r["per_question"].items()} for r in (f, c))
    out = {}
    for name, q in (("factorized", F_), ("codd", C_)):
        out[name] = {"validity": boot_ratio(q["valid"], q["total"], rng),
                     "copy": boot_ratio(q["copy"], q["total"], rng),
                     "arith": boot_ratio(q["arith"], q["total"], rng), "exact_match": boot_mean(q["em"], rng)}
    out["codd_minus_factorized"] = {
        key: boot_ratio(C_[key], C_["total"], rng, (F_[key], F_["total"])) for key in ("valid", "copy", "arith")
    }
    out["codd_minus_factorized"]["exact_match"] = boot_diff(C_["em"], F_["em"], rng, paired=True)
    out["codd_minus_factorized"]["annotations_per_answer"] = boot_diff(C_["total"], F_["total"], rng, paired=True)
    return out


def _key(r: dict) -> tuple:
    """Validation ranking: annotation validity, then exact match, then copy consistency.

    Copy consistency breaks ties because on a weak backbone validity and
    exact match are often 0 for every setting.
    """
    return (r["annotation_validity"], r["exact_match"], r["copy_ok_rate"])


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


def _ci(c: list[float], fmt: str = "{:.3f}") -> str:
    return "[" + ", ".join(fmt.format(v) for v in c) + "]"


def _sig(c: list[float]) -> str:
    return "yes" if excludes_zero(c) else "**no**"


def _prior_line(p: dict) -> str:
    if "windows" in p:
        line = (
            f"Prior: homogeneous HMM, window {p['window']}, {p['states']} states, vocabulary {p['vocab']}, "
            f"{p['windows']} windows from {p['train_examples']} GSM8K train answers outside the dev slice, "
            f"{p['epochs']} epochs (best epoch {p['best_epoch'] + 1}: held-out train-window NLL/token "
            f"{min(p['heldout_window_nll_per_epoch']):.4f} vs factorized "
            f"{p['heldout_window_nll_factorized']:.4f}); fit {p['fit_seconds']:.0f} s."
        )
    else:
        line = "Prior: no training record beside it."
    if "loaded_from" in p:
        line += f" Loaded from `{p['loaded_from']}`."
    if p.get("backoff"):
        bd = p["backoff_data"]
        line += (f" Backoff weights lambda per mask-ratio bin ({len(p['backoff'])} bins, fitted on {bd['windows']} "
                 f"windows of {bd['examples']} answers of the dev slice): "
                 f"{', '.join(f'{v:.3f}' for v in p['backoff'])}.")
    return line


def _nll_table(res: dict) -> list[str]:
    s = res["settings"]
    L = [
        f"**Held-out conditional NLL** (nats per masked answer token, {s['nll_examples']} GSM8K test pairs, one mask "
        "draw per pair and bin, tau = 1; bootstrap 95% intervals over answers, the difference paired):",
        "",
        "| mask ratio | factorized | CoDD | CoDD minus factorized (95% CI) | significant | masked tokens |",
        "|---|---|---|---|---|---|",
    ]
    for b in res["nll_by_mask_ratio"]:
        L.append(f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['nll_factorized']:.4f} {_ci(b['nll_factorized_ci'], '{:.3f}')} "
                 f"| {b['nll_codd']:.4f} {_ci(b['nll_codd_ci'], '{:.3f}')} "
                 f"| {b['nll_codd'] - b['nll_factorized']:+.4f} {_ci(b['difference_ci'], '{:+.4f}')} "
                 f"| {_sig(b['difference_ci'])} | {b['tokens']} |")
    return L


def _sweep_table(res: dict) -> list[str]:
    s, sw = res["settings"], res["sweep"]
    L = [
        f"**gamma / tau sweep** (validation: {s['val_questions']} questions of the GSM8K train dev slice, "
        f"{max(r['tokens_per_step'] for r in res['generation']['factorized'])} tokens per step; factorized validity "
        f"{sw['factorized']['annotation_validity']:.3f}, exact match {sw['factorized']['exact_match']:.3f}):",
        "",
        "| gamma | tau | annotation validity | valid / total | exact match |",
        "|---|---|---|---|---|",
    ]
    for r in sw["grid"]:
        L.append(
            f"| {r['gamma']} | {r['tau']} | {r['annotation_validity']:.3f} "
            f"| {r['valid_annotations']}/{r['annotations']} | {r['exact_match']:.3f} |"
        )
    return L + ["", f"Chosen: gamma = {sw['chosen']['gamma']}, tau = {sw['chosen']['tau']}."]


def _generation_tables(res: dict) -> list[str]:
    s, g = res["settings"], res["generation"]
    L = [
        f"**Few-step generation** ({s['questions']} GSM8K test questions, gen length {s['gen_length']}, block "
        f"{s['block_length']}, greedy, low-confidence remasking; CoDD with the MPE of p_hat; bootstrap 95% intervals "
        "over questions):",
        "",
        "| tokens/step | steps | method | exact match | annotation validity (95% CI) | valid / total "
        "| arithmetic holds | copy consistent (95% CI) | s / step (batch) | prior s / step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f, c, iv in zip(g["factorized"], g["codd"], g["intervals"], strict=True):
        for name, r, key in (("factorized", f, "factorized"), ("CoDD", c, "codd")):
            L.append(
                f"| {r['tokens_per_step']} | {r['steps']} | {name} | {r['exact_match']:.3f} "
                f"| {r['annotation_validity']:.3f} {_ci(iv[key]['validity'])} "
                f"| {r['valid_annotations']}/{r['annotations']} | {r['arith_ok_rate']:.3f} "
                f"| {r['copy_ok_rate']:.3f} {_ci(iv[key]['copy'])} "
                f"| {r['seconds_per_step']:.3f} | {r.get('prior_seconds_per_step', 0.0):.3f} |"
            )
    L += [
        "",
        "**CoDD minus factorized** (paired over the same questions; bootstrap 95% intervals; "
        "significant = the interval excludes 0):",
        "",
        "| tokens/step | annotation validity | copy consistency | arithmetic holds | exact match "
        "| annotations per answer |",
        "|---|---|---|---|---|---|",
    ]
    for f, iv in zip(g["factorized"], g["intervals"], strict=True):
        d = iv["codd_minus_factorized"]
        cells = [f"{_ci(d[m], '{:+.3f}')} {_sig(d[m])}" for m in ("valid", "copy", "arith", "exact_match")]
        cells.append(f"{_ci(d['annotations_per_answer'], '{:+.2f}')} {_sig(d['annotations_per_answer'])}")
        L.append(f"| {f['tokens_per_step']} | " + " | ".join(cells) + " |")
    return L


def _table(res: dict) -> str:
    L = [_prior_line(res["prior"]), "", *_nll_table(res), "", *_sweep_table(res), "", *_generation_tables(res)]
    return "\n".join(L) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "diffusion" / "bundled" / "backbone"))
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--states", type=int, default=128)
    p.add_argument("--train-examples", type=int, default=4000, help="prior training answers (from the fit part)")
    p.add_argument("--num-windows", type=int, default=4000)
    p.add_argument("--dev-size", type=int, default=600,
                   help="held-out slice of GSM8K train: half fits the backoff, half validates the knobs")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--em-epochs", type=int, default=0)
    p.add_argument(
        "--mask-scope",
        choices=["window", "answer"],
        default="window",
        help="window: only the window is masked (make_windows); answer: the whole answer (answer_window_logits)",
    )
    p.add_argument("--draws", type=int, default=4, help="mask draws per answer (whole-answer windows)")
    p.add_argument("--backoff-bins", type=int, default=10,
                   help="fit the backoff weights in this many mask-ratio bins on the dev slice (0: none)")
    p.add_argument("--weighting", choices=["token", "window"], default="token",
                   help="window weighting of the prior's objective (see diffusion.codd.training.fit_prior)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--prior-batch", type=int, default=64)
    p.add_argument("--nll-examples", type=int, default=200)
    p.add_argument("--questions", type=int, default=200)
    p.add_argument("--val-questions", type=int, default=40)
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
    p.add_argument("--prior", default=None, help="a prior trained on GSM8K train answers outside the dev slice, "
                   "used instead of step a (its training record is read from the .json beside it when present)")
    p.add_argument("--out", default="codd_gsm8k", help="file stem under benchmarks/results")
    return p


def _prior_for(backbone, splits: GSM8KSplits, a) -> tuple[CoDDPrior, dict]:
    """Steps a and b: the trained (or loaded) prior with its backoff fitted on the dev slice."""
    if a.prior:
        prior = _placed(CoDDPrior.load(a.prior), a)
        info_path = Path(a.prior).with_suffix(".json")
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        info["loaded_from"] = str(a.prior)
    else:
        prior, info = train_prior(backbone, splits, a)
    if a.backoff_bins:
        info.update(fit_backoff(backbone, prior, splits, a))
    prior.save(RESULTS / f"{a.out}_prior.safetensors")
    _write_text(RESULTS / f"{a.out}_prior.json", json.dumps(info, indent=1))
    return prior, info


def _choose_knobs(backbone, prior: CoDDPrior, val: list, timer: _Timed, a) -> dict:
    """Step c: the gamma / tau sweep on the dev questions at the largest tokens-per-step."""
    kmax = max(a.tokens_per_step)
    sweep = {"factorized": run_generation(backbone, val, kmax, a), "grid": []}
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
         f"{sweep['factorized']['annotation_validity']:.3f})")
    return sweep


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    T0 = time.perf_counter()
    backbone = load_backbone(a.model, device=a.device, dtype=torch.float32)  # float32 even from a bf16 copy
    meta = json.loads((Path(a.model) / "codd_backbone.json").read_text())
    tok = backbone.tokenizer
    splits = gsm8k_splits(a.dev_size)
    val = _fits(tok, splits.dev_questions, a)[: a.val_questions]
    questions = _fits(tok, splits.test, a)[: a.questions]
    nll_pairs = _nll_pairs(tok, splits, a)

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
        "protocol": {
            "fit": len(splits.fit), "dev_backoff": len(splits.dev_backoff), "dev_questions": len(val),
            "test_nll_pairs": len(nll_pairs), "test_questions": len(questions),
            "split": "GSM8K train cut by a seeded permutation (gsm8k_protocol.SPLIT_SEED) into fit and a dev slice; "
                     "GSM8K test for the final numbers only",
        },
        "complete": False,
    }
    out_json = RESULTS / f"{a.out}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)

    def dump() -> None:
        """Writes what is measured so far (a run cut short keeps its finished stages)."""
        res["seconds"] = time.perf_counter() - T0
        _write_text(out_json, json.dumps(res, indent=1))

    prior, res["prior"] = _prior_for(backbone, splits, a)
    res["machine"]["prior_backend"] = prior.circuit.resolve_backend()
    dump()
    bins = nll_by_bins(backbone, prior, nll_pairs, a, rng)
    res["nll_by_mask_ratio"] = bins
    dump()
    prior.top_k = a.gen_top_k  # candidate restriction for decoding (the NLL above uses the full vocabulary)

    timer = _Timed(prior)
    res["settings"] = {"questions": len(questions), "val_questions": len(val), "nll_examples": len(nll_pairs),
                       "gen_length": a.gen_length, "block_length": a.block_length, "remasking": "low_confidence",
                       "temperature": 0.0, "sampler": "latent (greedy: MPE of p_hat)", "gen_top_k": a.gen_top_k,
                       "batch_size": a.batch_size, "seed": a.seed}
    res["sweep"] = sweep = _choose_knobs(backbone, prior, val, timer, a)
    dump()

    gen: dict = {"factorized": [], "codd": [], "intervals": []}
    res["generation"] = gen
    for k in a.tokens_per_step:
        f = run_generation(backbone, questions, k, a)
        c = run_generation(backbone, questions, k, a, prior, timer, sweep["chosen"]["gamma"], sweep["chosen"]["tau"])
        gen["factorized"].append(f)
        gen["codd"].append(c)
        gen["intervals"].append(intervals(f, c, rng))
        _log(f"k={k}: factorized EM {f['exact_match']:.3f} validity {f['annotation_validity']:.3f} "
             f"({f['valid_annotations']}/{f['annotations']}) copy {f['copy_ok_rate']:.3f} | CoDD EM "
             f"{c['exact_match']:.3f} validity {c['annotation_validity']:.3f} ({c['valid_annotations']}/"
             f"{c['annotations']}) copy {c['copy_ok_rate']:.3f}; CoDD - factorized "
             f"{gen['intervals'][-1]['codd_minus_factorized']}")
        dump()

    res["significant"] = {
        "nll_bins_codd_better": [b["lo"] for b in bins if b["difference_ci"][1] < 0],
        "nll_bins_codd_worse": [b["lo"] for b in bins if b["difference_ci"][0] > 0],
        "generation": {
            str(k): {m: excludes_zero(iv["codd_minus_factorized"][m]) for m in iv["codd_minus_factorized"]}
            for k, iv in zip(a.tokens_per_step, gen["intervals"], strict=True)
        },
    }
    res["complete"] = True
    dump()
    _plot(res, RESULTS / f"{a.out}.png")
    _write_text(RESULTS / f"{a.out}.md", _table(res))
    _log(f"done in {res['seconds']:.0f}s; significant {res['significant']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
