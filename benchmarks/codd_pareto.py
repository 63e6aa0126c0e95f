"""Quality against backbone calls: factorized fixed-k, EB-Sampler, CoDD fixed-k and CoDD + EB-Sampler.

Two tasks, one command each (CPU, one thread)::

    python benchmarks/codd_pareto.py synthetic   # about 5 minutes
    python benchmarks/codd_pareto.py gsm8k       # about 20 minutes

* ``synthetic``: the teacher HMM of `diffusion.codd.synthetic` (16 positions,
  8 states, 12 tokens); the oracle backbone and a small trained one; one
  block over the sequence, sampling at temperature 1, ``--samples`` draws per
  seed and ``--seeds`` seeds; quality is the teacher log-likelihood of the
  samples. The prior is trained on windows of teacher samples (seed 0); tau
  is chosen on validation draws (generator seeds 100+, never used below) at 4
  tokens per step.
* ``gsm8k``: the shipped CPU backbone (``diffusion/bundled/backbone``)
  and the prior of ``benchmarks/codd_gsm8k.py``
  (``codd_gsm8k_prior.safetensors``: trained on GSM8K train answers outside
  the dev slice of `gsm8k_protocol`, its backoff fitted on the dev slice),
  greedy block diffusion (gen length 128, block 32, low-confidence
  remasking; CoDD takes the MPE of ``p_hat``), on ``--questions`` GSM8K test
  questions; quality is the validity of the ``<<a op b=c>>c`` annotations
  (and exact match, arithmetic, copy consistency). tau and the EB bounds of
  the matched-budget table are chosen on ``--val-questions`` questions of
  the GSM8K *train* dev slice (`gsm8k_protocol`), so nothing is fitted or
  chosen on GSM8K test.

Backbone calls are counted per sequence: the steps in which that sequence
committed a token (the calls it needs when decoded alone; in a batch a
finished row waits for the others). Intervals are bootstrap 95% intervals
(2000 resamples) over samples (synthetic) or questions (GSM8K, paired: the
same questions for every method).

Writes ``benchmarks/results/codd_pareto_<task>.json`` and ``.png`` (and the
plot to ``docs/assets/``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffusion.sampling import GenerationTrace, generate  # noqa: E402
from pcircuits.atomic import atomic_write  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from gsm8k_protocol import boot_diff, boot_mean, boot_ratio, gsm8k_splits  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ASSETS = ROOT / "docs" / "assets"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def calls_per_row(trace: GenerationTrace) -> np.ndarray:
    """``[B]`` backbone calls each row needs alone: the distinct steps at which it committed a token."""
    return np.array([len(set(r)) for r in trace.commit_step.tolist()], dtype=float)


# ----------------------------------------------------------------- synthetic
def _synthetic_run(teacher, bb, n: int, seed: int, k: int | None = None, gamma: float | None = None,
                   prior=None, tau: float = 1.0, sampler: str = "latent", temperature: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(teacher log-likelihoods [n], calls [n])`` of one configuration."""
    L = teacher.num_vars
    kw = {} if prior is None else {"prior": prior, "pc_temperature": tau, "sampler": sampler}
    out, trace = generate(
        bb,
        torch.zeros(n, 1, dtype=torch.long),
        gen_length=L,
        steps=L if gamma is not None else L // k,
        block_length=L,
        temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
        entropy_bound=gamma,
        return_trace=True,
        **kw,
    )
    with torch.no_grad():
        ll = teacher(out[:, 1:]).double().numpy()
    return ll, calls_per_row(trace)


def _synthetic_backbone(teacher, bb, a, rng) -> dict:
    from diffusion.codd.synthetic import train_synthetic_prior

    t0 = time.perf_counter()
    prior, _hist, nll = train_synthetic_prior(teacher, bb, states=a.prior_states, num_windows=2000, epochs=6, seed=0)
    res: dict = {"prior_heldout_nll": nll, "prior_seconds": time.perf_counter() - t0}
    val_seeds = [100 + s for s in range(len(a.seeds))]

    def val(tau):
        return float(
            np.mean([_synthetic_run(teacher, bb, a.samples, s, k=4, prior=prior, tau=tau)[0].mean() for s in val_seeds])
        )

    sweep = {tau: val(tau) for tau in a.taus}
    tau = max(sweep, key=sweep.get)
    res["tau_validation"] = {str(t): v for t, v in sweep.items()}
    res["tau"] = tau
    _log(f"  tau sweep (validation seeds {val_seeds}, 4 tokens/step): {sweep} -> tau {tau}")
    configs = [("factorized", dict(k=k)) for k in a.ks]
    configs += [("EB", dict(gamma=g)) for g in a.gammas]
    if tau != 1.0:  # control: the sharpening of tau alone, without the prior
        configs += [("factorized T=tau", dict(k=k, temperature=tau)) for k in a.ks]
    configs += [("CoDD", dict(k=k, prior=prior, tau=tau)) for k in a.ks]
    configs += [("CoDD+EB", dict(gamma=g, prior=prior, tau=tau)) for g in a.gammas]
    configs += [("CoDD latent_tempered", dict(k=k, prior=prior, tau=tau, sampler="latent_tempered")) for k in a.ks]
    points, raw = [], {}
    for name, cfg in configs:
        lls, calls = zip(*(_synthetic_run(teacher, bb, a.samples, s, **cfg) for s in a.seeds), strict=True)
        ll, c = np.concatenate(lls), np.concatenate(calls)
        knob = {"k": cfg["k"]} if "k" in cfg else {"gamma": cfg["gamma"]}
        pt = {"method": name, **knob, "calls": float(c.mean()), "calls_ci": boot_mean(c, rng),
              "loglik": float(ll.mean()), "loglik_ci": boot_mean(ll, rng),
              "loglik_by_seed": [float(x.mean()) for x in lls]}
        points.append(pt)
        raw[(name, knob.get("k", knob.get("gamma")))] = (ll, c)
        _log(f"  {name} {knob}: calls {pt['calls']:.2f} loglik {pt['loglik']:.3f} {pt['loglik_ci']}")
    res["points"] = points
    # CoDD against factorized at the same k (independent draws: unpaired bootstrap)
    res["codd_minus_factorized"] = {
        str(k): boot_diff(raw[("CoDD", k)][0], raw[("factorized", k)][0], rng, paired=False) for k in a.ks
    }
    # matched budget: the largest bound whose validation calls stay within the fixed-k calls
    res["matched"], res["eb_validation_calls"] = _synthetic_matched(teacher, bb, a, prior, tau, raw, rng)
    return res


def _synthetic_matched(teacher, bb, a, prior, tau, raw, rng) -> tuple[list[dict], dict]:
    """Per fixed-k budget, the smallest bound whose calls on a validation seed (100) fit it, against fixed k."""
    val_calls = {(name, g): float(_synthetic_run(teacher, bb, a.samples, 100, gamma=g, prior=p, tau=tau)[1].mean())
                 for name, p in (("EB", None), ("CoDD+EB", prior)) for g in a.gammas}
    rows = []
    for k in a.ks[1:]:
        budget = teacher.num_vars / k
        for name, p in (("EB", None), ("CoDD+EB", prior)):
            ok = [g for g in a.gammas if val_calls[(name, g)] <= budget]
            if not ok:
                continue
            g = min(ok)  # the smallest bound within the budget: the most careful one that fits
            ll, c = raw[(name, g)]
            base = raw[("CoDD" if p is not None else "factorized", k)][0]
            rows.append({"budget_calls": budget, "method": name, "gamma": g, "calls": float(c.mean()),
                         "loglik": float(ll.mean()), "minus_fixed_k": float(ll.mean() - base.mean()),
                         "minus_fixed_k_ci": boot_diff(ll, base, rng, paired=False),
                         "fixed_k": "CoDD" if p is not None else "factorized"})
    return rows, {f"{n} gamma={g}": c for (n, g), c in val_calls.items()}


def run_synthetic(a) -> dict:
    from diffusion.codd.synthetic import make_teacher, oracle_backbone, train_teacher_backbone

    import pcircuits as pc

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    T0 = time.perf_counter()
    teacher = make_teacher(16, 8, 12, seed=0)
    with torch.no_grad():
        ref = float(teacher(pc.sample(teacher, 4000, seed=0)).mean())
    res: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/codd_pareto.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
        "setup": {"length": 16, "teacher_states": 8, "vocab": 12, "prior_states": a.prior_states,
                  "samples_per_seed": a.samples, "seeds": a.seeds, "ks": a.ks, "gammas": a.gammas, "taus": a.taus,
                  "temperature": 1.0, "remasking": "low_confidence", "sampler": "latent"},
        "teacher_samples_loglik": ref,
    }
    _log("oracle backbone")
    res["oracle"] = _synthetic_backbone(teacher, oracle_backbone(teacher), a, rng)
    _log("trained backbone")
    bb, info = train_teacher_backbone(teacher, steps=a.backbone_steps, seed=0)
    info.pop("train_loss_ema_per_100_steps", None)
    res["trained"] = {"backbone": info, **_synthetic_backbone(teacher, bb, a, rng)}
    res["seconds"] = time.perf_counter() - T0
    _write(res, "synthetic")
    return res


# --------------------------------------------------------------------- gsm8k
def _gsm8k_run(
    bb, questions, a, k: int | None = None, gamma: float | None = None, prior=None, tau: float = 1.0
) -> dict:
    """Per-question arrays of one configuration."""
    from diffusion.data import encode_prompts
    from diffusion.evaluation import _close, annotation_stats, extract_final_answer
    from diffusion.sampling import left_padding_mask

    tok = bb.tokenizer
    texts, calls = [], []
    t0 = time.perf_counter()
    for s in range(0, len(questions), a.batch_size):
        chunk = questions[s : s + a.batch_size]
        prompts = encode_prompts([e.question for e in chunk], tok)
        kw = {} if prior is None else {"prior": prior, "pc_temperature": tau, "sampler": "latent"}
        out, trace = generate(
            bb,
            prompts,
            gen_length=a.gen_length,
            steps=a.gen_length if gamma is not None else a.gen_length // k,
            block_length=a.block_length,
            remasking="low_confidence",
            temperature=0.0,
            attention_mask=left_padding_mask(prompts, tok.pad_id),
            entropy_bound=gamma,
            return_trace=True,
            **kw,
        )
        calls.extend(calls_per_row(trace).tolist())
        for row in out[:, prompts.shape[1] :].tolist():
            if tok.eos_id in row:
                row = row[: row.index(tok.eos_id)]
            texts.append(tok.decode(row))
    rec = {"calls": np.array(calls), "total": [], "valid": [], "arith": [], "copy": [], "em": []}
    for text, ex in zip(texts, questions, strict=True):
        st = annotation_stats(text)
        ref, pred = extract_final_answer(ex.answer), extract_final_answer(text)
        rec["total"].append(st["total"])
        rec["valid"].append(st["valid"])
        rec["arith"].append(st["arith_ok"])
        rec["copy"].append(st["copy_ok"])
        rec["em"].append(float(ref is not None and pred is not None and _close(ref, pred)))
    for key in ("total", "valid", "arith", "copy", "em"):
        rec[key] = np.array(rec[key], dtype=float)
    rec["seconds"] = time.perf_counter() - t0
    rec["sample"] = texts[0]
    return rec


def _repo_path(path: str) -> str:
    """``path`` relative to the repository when it lies inside it (results stay valid in any checkout)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def _validity(r: dict) -> float:
    return float(r["valid"].sum() / max(r["total"].sum(), 1))


def run_gsm8k(a) -> dict:
    from diffusion.backbones import load_backbone
    from diffusion.codd.prior import CoDDPrior

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    T0 = time.perf_counter()
    bb = load_backbone(a.model, device="cpu", dtype=torch.float32)
    tok = bb.tokenizer
    prior = CoDDPrior.load(a.prior, top_k=a.gen_top_k)
    splits = gsm8k_splits(a.dev_size, directory=a.gsm8k_dir)
    pool = splits.test

    def fits(exs: list) -> list:
        return [ex for ex in exs if len(tok.encode(ex.answer)) + 1 <= a.gen_length]

    test, val = fits(pool)[: a.questions], fits(splits.dev_questions)[: a.val_questions]
    res: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/codd_pareto.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
        "setup": {"model": _repo_path(a.model), "prior": _repo_path(a.prior), "prior_top_k": a.gen_top_k,
                  "questions": len(test), "val_questions": len(val),
                  "gen_length": a.gen_length, "block_length": a.block_length, "ks": a.ks, "gammas": a.gammas,
                  "taus": a.taus, "decoding": "greedy, low_confidence; CoDD: MPE of p_hat (sampler latent)",
                  "test_questions": "the first questions of GSM8K test whose answer fits gen_length",
                  "test_pool": len(pool),
                  "val_questions_from": "the second half of the GSM8K train dev slice (gsm8k_protocol)"},
    }
    # knobs on the validation questions
    vk = max(a.ks)
    sweep = {}
    for tau in a.taus:
        r = _gsm8k_run(bb, val, a, k=vk, prior=prior, tau=tau)
        sweep[tau] = (_validity(r), float(r["copy"].sum() / max(r["total"].sum(), 1)))
        _log(f"val CoDD k={vk} tau={tau}: validity {sweep[tau][0]:.3f} copy {sweep[tau][1]:.3f}")
    tau = max(sweep, key=lambda t: (sweep[t], -abs(t - 1.0)))
    res["tau_validation"] = {str(t): {"validity": v[0], "copy_consistency": v[1]} for t, v in sweep.items()}
    res["tau"] = tau
    val_calls = {}
    for name, p in (("EB", None), ("CoDD+EB", prior)):
        for g in a.gammas:
            val_calls[(name, g)] = float(_gsm8k_run(bb, val, a, gamma=g, prior=p, tau=tau)["calls"].mean())
            _log(f"val {name} gamma={g}: calls {val_calls[(name, g)]:.1f}")
    res["eb_validation_calls"] = {f"{n} gamma={g}": c for (n, g), c in val_calls.items()}
    # evaluation
    configs = [("factorized", dict(k=k)) for k in a.ks] + [("EB", dict(gamma=g)) for g in a.gammas]
    configs += [("CoDD", dict(k=k, prior=prior, tau=tau)) for k in a.ks]
    configs += [("CoDD+EB", dict(gamma=g, prior=prior, tau=tau)) for g in a.gammas]
    raw, points = {}, []
    for name, cfg in configs:
        r = _gsm8k_run(bb, test, a, **cfg)
        knob = {"k": cfg["k"]} if "k" in cfg else {"gamma": cfg["gamma"]}
        raw[(name, knob.get("k", knob.get("gamma")))] = r
        base = raw.get(("factorized", cfg["k"])) if "k" in cfg and name == "CoDD" else None
        pt = {"method": name, **knob, "calls": float(r["calls"].mean()), "calls_ci": boot_mean(r["calls"], rng),
              "validity": _validity(r), "validity_ci": boot_ratio(r["valid"], r["total"], rng),
              "valid": int(r["valid"].sum()), "annotations": int(r["total"].sum()),
              "copy_consistency": float(r["copy"].sum() / max(r["total"].sum(), 1)),
              "copy_consistency_ci": boot_ratio(r["copy"], r["total"], rng),
              "arith_holds": float(r["arith"].sum() / max(r["total"].sum(), 1)),
              "exact_match": float(r["em"].mean()), "seconds": r["seconds"], "sample": r["sample"]}
        if base is not None:
            pt["validity_minus_factorized_ci"] = boot_ratio(r["valid"], r["total"], rng, (base["valid"], base["total"]))
            pt["copy_minus_factorized_ci"] = boot_ratio(r["copy"], r["total"], rng, (base["copy"], base["total"]))
        points.append(pt)
        _log(
            f"{name} {knob}: calls {pt['calls']:.1f} validity {pt['validity']:.3f} ({pt['valid']}/{pt['annotations']}) "
            f"{pt['validity_ci']} copy {pt['copy_consistency']:.3f} EM {pt['exact_match']:.3f} [{r['seconds']:.0f}s]"
        )
    res["points"] = points
    matched = []
    for k in a.ks:
        budget = a.gen_length / k
        for name, fixed in (("EB", "factorized"), ("CoDD+EB", "CoDD")):
            ok = [g for g in a.gammas if val_calls[(name, g)] <= budget]
            if not ok:
                continue
            g = min(ok)
            r, base = raw[(name, g)], raw[(fixed, k)]
            matched.append(
                {
                    "budget_calls": budget,
                    "method": name,
                    "gamma": g,
                    "fixed_k": fixed,
                    "calls": float(r["calls"].mean()),
                    "validity": _validity(r),
                    "validity_minus_fixed_k_ci": boot_ratio(
                        r["valid"], r["total"], rng, (base["valid"], base["total"])
                    ),
                    "copy_minus_fixed_k_ci": boot_ratio(r["copy"], r["total"], rng, (base["copy"], base["total"])),
                }
            )
    res["matched"] = matched
    res["seconds"] = time.perf_counter() - T0
    _write(res, "gsm8k")
    return res


# ---------------------------------------------------------------------- output
STYLE = {
    "factorized": ("o-", "tab:blue"),
    "factorized T=tau": ("o:", "tab:gray"),
    "EB": ("s--", "tab:cyan"),
    "CoDD": ("o-", "tab:orange"),
    "CoDD+EB": ("s--", "tab:red"),
    "CoDD latent_tempered": ("^:", "tab:brown"),
}


def _panels(res: dict, task: str) -> list[tuple[str, dict, str, str, float | None]]:
    """``(title, results, key, y label, reference line)`` per panel of the plot."""
    if task == "synthetic":
        ll, ref = "teacher log-likelihood of a sample", res["teacher_samples_loglik"]
        return [
            ("oracle backbone", res["oracle"], "loglik", ll, ref),
            ("trained backbone", res["trained"], "loglik", ll, ref),
        ]
    n = res["setup"]["questions"]
    return [(f"GSM8K, {n} test questions", res, "validity", "annotation validity", None),
            (f"GSM8K, {n} test questions", res, "copy_consistency", "copy consistency of the annotations", None)]


def _write(res: dict, task: str, json_too: bool = True) -> None:
    """Writes the JSON (``json_too``) and the plot of a run."""
    RESULTS.mkdir(exist_ok=True)
    if json_too:
        with atomic_write(RESULTS / f"codd_pareto_{task}.json", "w") as f:
            f.write(json.dumps(res, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    panels = _panels(res, task)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (title, r, key, ylabel, ref) in zip(axes[0], panels, strict=True):
        for method, (fmt, color) in STYLE.items():
            pts = sorted((p for p in r["points"] if p["method"] == method), key=lambda p: p["calls"])
            if not pts:
                continue
            x = [p["calls"] for p in pts]
            y = [p[key] for p in pts]
            lo = [p[key] - p[f"{key}_ci"][0] for p in pts]
            hi = [p[f"{key}_ci"][1] - p[key] for p in pts]
            label = method.replace("tau", str(r["tau"])) if "T=tau" in method else method
            label += f" (tau={r['tau']})" if "CoDD" in method else ""
            ax.errorbar(x, y, yerr=[lo, hi], fmt=fmt, color=color, capsize=3, ms=4, label=label)
        if ref is not None:
            ax.axhline(ref, color="gray", ls=":", label="teacher samples")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("backbone calls per sequence")
        ax.set_title(title)
        ax.set_ylabel(ylabel + " (95% bootstrap CI)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    for path in (RESULTS / f"codd_pareto_{task}.png", ASSETS / f"codd_pareto_{task}.png"):
        with atomic_write(path) as f:
            f.write(buf.getvalue())


def _ci(c: list[float], fmt: str = "{:.3f}") -> str:
    return "[" + fmt.format(c[0]) + ", " + fmt.format(c[1]) + "]"


def _sig(c: list[float]) -> str:
    return "yes" if c[0] > 0 or c[1] < 0 else "**no**"


def tables(task: str) -> str:
    """Markdown tables of ``codd_pareto_<task>.json`` (also written to ``codd_pareto_<task>.md``)."""
    res = json.loads((RESULTS / f"codd_pareto_{task}.json").read_text())
    out: list[str] = []
    if task == "synthetic":
        for name in ("oracle", "trained"):
            r = res[name]
            head = (f"**{name} backbone** (tau = {r['tau']}, chosen on validation draws: "
                    + ", ".join(f"{t}: {v:.3f}" for t, v in r["tau_validation"].items()) + ")")
            out += [
                head,
                "",
                "| method | k / gamma | calls per sequence | teacher log-likelihood | 95% CI |",
                "|---|---|---|---|---|",
            ]
            for p in r["points"]:
                knob = f"k={p['k']}" if "k" in p else f"gamma={p['gamma']}"
                out.append(f"| {p['method']} | {knob} | {p['calls']:.2f} | {p['loglik']:.3f} | {_ci(p['loglik_ci'])} |")
            out += ["", "| k | CoDD minus factorized (95% CI) | significant |", "|---|---|---|"]
            for k, c in r["codd_minus_factorized"].items():
                out.append(f"| {k} | {_ci(c)} | {_sig(c)} |")
            out += [
                "",
                "| budget (calls) | method | gamma (validation) | calls "
                "| minus fixed-k at the budget (95% CI) | significant |",
                "|---|---|---|---|---|---|",
            ]
            for m in r["matched"]:
                out.append(
                    f"| {m['budget_calls']:g} | {m['method']} vs {m['fixed_k']} | {m['gamma']} | {m['calls']:.2f} "
                    f"| {m['minus_fixed_k']:+.3f} {_ci(m['minus_fixed_k_ci'])} | {_sig(m['minus_fixed_k_ci'])} |"
                )
            out.append("")
    else:
        head = (f"tau = {res['tau']} (validation: "
                + ", ".join(f"{t}: validity {v['validity']:.3f}" for t, v in res["tau_validation"].items()) + ")")
        out += [
            head,
            "",
            (
                "| method | k / gamma | calls per sequence | annotation validity (valid/total) | 95% CI "
                "| copy consistent | arithmetic holds | exact match "
                "| CoDD minus factorized: validity (95% CI) | copy consistency (95% CI) |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in res["points"]:
            knob = f"k={p['k']}" if "k" in p else f"gamma={p['gamma']}"
            d = _ci(p["validity_minus_factorized_ci"]) + " " + _sig(p["validity_minus_factorized_ci"]) \
                if "validity_minus_factorized_ci" in p else ""
            dc = _ci(p["copy_minus_factorized_ci"]) + " " + _sig(p["copy_minus_factorized_ci"]) \
                if "copy_minus_factorized_ci" in p else ""
            out.append(
                f"| {p['method']} | {knob} | {p['calls']:.1f} | {p['validity']:.3f} ({p['valid']}/{p['annotations']}) "
                f"| {_ci(p['validity_ci'])} | {p['copy_consistency']:.3f} | {p['arith_holds']:.3f} "
                f"| {p['exact_match']:.3f} | {d} | {dc} |"
            )
        out += [
            "",
            (
                "| budget (calls) | method | gamma (validation) | calls "
                "| validity minus fixed-k (95% CI) | significant "
                "| copy consistency minus fixed-k (95% CI) |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for m in res["matched"]:
            out.append(f"| {m['budget_calls']:g} | {m['method']} vs {m['fixed_k']} | {m['gamma']} | {m['calls']:.1f} "
                       f"| {_ci(m['validity_minus_fixed_k_ci'])} | {_sig(m['validity_minus_fixed_k_ci'])} "
                       f"| {_ci(m['copy_minus_fixed_k_ci'])} |")
    _write(res, task, json_too=False)  # the plot, redrawn from the JSON
    text = "\n".join(out) + "\n"
    with atomic_write(RESULTS / f"codd_pareto_{task}.md", "w") as f:
        f.write(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="task", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--samples", type=int, default=300, help="draws per seed")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    s.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    s.add_argument("--gammas", type=float, nargs="+", default=[1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0])
    s.add_argument("--taus", type=float, nargs="+", default=[0.5, 0.7, 1.0])
    s.add_argument("--prior-states", type=int, default=32)
    s.add_argument("--backbone-steps", type=int, default=1000)
    g = sub.add_parser("gsm8k")
    g.add_argument("--model", default=str(ROOT / "diffusion" / "bundled" / "backbone"))
    g.add_argument("--prior", default=str(ROOT / "benchmarks" / "results" / "codd_gsm8k_prior.safetensors"),
                   help="the prior of benchmarks/codd_gsm8k.py (trained on GSM8K train outside the dev slice)")
    g.add_argument("--dev-size", type=int, default=600, help="the dev slice of GSM8K train (as in codd_gsm8k.py)")
    g.add_argument("--questions", type=int, default=32)
    g.add_argument("--val-questions", type=int, default=16)
    g.add_argument("--gen-length", type=int, default=128)
    g.add_argument("--block-length", type=int, default=32)
    g.add_argument("--gen-top-k", type=int, default=64)
    g.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    g.add_argument("--gammas", type=float, nargs="+", default=[4.0, 8.0, 16.0, 32.0])
    g.add_argument(
        "--gsm8k-dir", default=None, help="directory of GSM8K train/test.jsonl (default: the project's resolution)"
    )
    g.add_argument("--taus", type=float, nargs="+", default=[0.5, 1.0])
    g.add_argument("--batch-size", type=int, default=32)
    t = sub.add_parser("tables", help="write the markdown tables of a finished run")
    t.add_argument("which", choices=["synthetic", "gsm8k"])
    a = p.parse_args(argv)
    if a.task == "tables":
        print(tables(a.which))
        return 0
    (run_synthetic if a.task == "synthetic" else run_gsm8k)(a)
    tables(a.task)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
