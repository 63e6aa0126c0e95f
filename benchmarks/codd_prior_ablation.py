"""CoDD prior variants on validation windows: where does the prior help, by mask ratio?

One command (CPU, about 20 minutes on one thread, most of it caching the backbone's logits)::

    python benchmarks/codd_prior_ablation.py --model <backbone directory>

Draws ``--windows`` fresh masked windows of GSM8K *train* answers
(`make_windows`, seed ``--seed``, so the masks differ from those a prior was
trained on), caches the frozen backbone's logits once (``--cache``), holds out
the first 10% of a fixed permutation as validation windows, and fits one
prior per variant on the rest (`fit_prior`, homogeneous HMM, window 32).
Every variant is scored on the same validation windows: the conditional NLL
per masked token of CoDD minus that of the factorized backbone, in buckets of
the window's mask ratio (negative: the prior helps). Variants:

* ``token``: the default objective (each masked token counts once);
* ``window``: each window counts once (``weighting="window"``);
* ``low_ratio``: trained only on windows masked at most 80%;
* ``half_data``: ``token`` on half of the training windows;
* ``token+smooth``: the ``token`` prior with its emissions mixed with a
  uniform distribution, for each rate in ``--smooth``.

It also reports, per bucket, the largest single-window loss, to show how
concentrated the losses are. Writes ``benchmarks/results/codd_prior_ablation.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diffusion.backbones import load_backbone  # noqa: E402
from diffusion.codd.prior import CoDDPrior  # noqa: E402
from diffusion.codd.training import backbone_window_logits, conditional_nll, fit_prior, make_windows, qa_token_matrix  # noqa: E402
from diffusion.data import load_gsm8k  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BUCKETS = [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cached_windows(a) -> dict:
    if a.cache and Path(a.cache).is_file():
        return torch.load(a.cache)
    backbone = load_backbone(a.model, dtype=torch.float32)
    tokens, answer = qa_token_matrix(load_gsm8k("train"), backbone.tokenizer)
    rows, starts, masked = make_windows(tokens, a.window, answer, a.windows, torch.Generator().manual_seed(a.seed))
    t0 = time.perf_counter()
    x0, logits, _ = backbone_window_logits(backbone, tokens, rows, starts, masked, batch_size=32)
    _log(f"cached the logits of {len(x0)} windows in {time.perf_counter() - t0:.0f} s")
    data = {"x0": x0, "masked": masked, "logits": logits.half()}
    if a.cache:
        torch.save(data, a.cache)
    return data


def smoothed(prior: CoDDPrior, rate: float) -> CoDDPrior:
    """A copy of ``prior`` whose emissions are ``(1 - rate) E + rate / V``."""
    out = copy.deepcopy(prior)
    with torch.no_grad():
        for blk in out.circuit.layout.leaf_blocks:
            p = out.circuit.params[blk.bank]
            p.copy_(torch.log((1 - rate) * torch.softmax(p, -1) + rate / p.shape[-1]))
    return out


def buckets(codd: torch.Tensor, fact: torch.Tensor, masked: torch.Tensor) -> list[dict]:
    ratio = masked.float().mean(1)
    out = []
    for lo, hi in BUCKETS:
        sel = (ratio >= lo) & ((ratio < hi) if hi < 1.0 else (ratio <= hi))
        n = int(masked[sel].sum())
        d = codd[sel] - fact[sel]
        out.append({"lo": lo, "hi": hi, "windows": int(sel.sum()), "tokens": n,
                    "nll_factorized": float(fact[sel].sum()) / max(n, 1),
                    "nll_codd": float(codd[sel].sum()) / max(n, 1),
                    "difference": float(d.sum()) / max(n, 1), "total_loss_nats": float(d.sum()),
                    "largest_window_loss_nats": float(d.max()) if len(d) else 0.0})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="backbone directory (a project backbone)")
    p.add_argument("--windows", type=int, default=3000)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--states", type=int, default=256)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--smooth", type=float, nargs="+", default=[0.02, 0.1, 0.3])
    p.add_argument("--variants", nargs="+", default=["token", "window", "low_ratio", "half_data"])
    p.add_argument("--seed", type=int, default=1, help="seed of the windows (the training runs use seed 0)")
    p.add_argument("--cache", default=None, help="file to keep the cached logits in (reused when present)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    T0 = time.perf_counter()
    data = cached_windows(a)
    x0, masked, logits = data["x0"], data["masked"], data["logits"].float()
    M = len(x0)
    perm = torch.randperm(M, generator=torch.Generator().manual_seed(0))
    n_val = int(round(0.1 * M))
    val, train = perm[:n_val], perm[n_val:]
    xv, mv, lv = x0[val], masked[val], logits[val]
    fact = conditional_nll(None, xv, mv, lv)
    args = argv if argv is not None else sys.argv[1:]
    res: dict = {"command": " ".join(["python benchmarks/codd_prior_ablation.py", *args]),
                 "model": a.model, "windows": M, "validation_windows": n_val, "states": a.states, "epochs": a.epochs,
                 "lr": a.lr, "variants": {}}  # fmt: skip
    for name in a.variants:
        tr = train
        weighting = "window" if name == "window" else "token"
        if name == "low_ratio":
            tr = tr[masked[tr].float().mean(1) <= 0.8]
        elif name == "half_data":
            tr = tr[: len(tr) // 2]
        elif name not in ("token", "window"):
            raise ValueError(f"variants: unknown variant {name!r}")
        prior = CoDDPrior.hmm(a.window, a.states, logits.shape[-1], seed=0)
        ckpt = Path(f"/tmp/codd_ablation_{name}.npz")
        t0 = time.perf_counter()
        hist = fit_prior(prior, x0[tr], masked[tr], logits[tr], epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                         valid_frac=0.1, seed=0, progress=False, checkpoint=ckpt, weighting=weighting)
        prior = CoDDPrior.load(ckpt)
        rec = {"train_windows": len(tr), "weighting": weighting, "fit_seconds": time.perf_counter() - t0,
               "history": hist,
               "buckets": buckets(conditional_nll(prior, xv, mv, lv), fact, mv)}  # fmt: skip
        res["variants"][name] = rec
        _log(f"{name}: " + " | ".join(f"{b['lo']:.1f}-{b['hi']:.1f} {b['difference']:+.4f}" for b in rec["buckets"]))
        if name == "token":
            for rate in a.smooth:
                bk = buckets(conditional_nll(smoothed(prior, rate), xv, mv, lv), fact, mv)
                res["variants"][f"token+smooth{rate}"] = {"smoothing": rate, "buckets": bk}
                _log(
                    f"token+smooth{rate}: "
                    + " | ".join(f"{b['lo']:.1f}-{b['hi']:.1f} {b['difference']:+.4f}" for b in bk)
                )
    res["seconds"] = time.perf_counter() - T0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "codd_prior_ablation.json").write_text(json.dumps(res, indent=1))
    _log(f"done in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
