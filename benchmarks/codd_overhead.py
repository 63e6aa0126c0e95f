"""Wall time of the CoDD prior per denoising step, measured at a small and at the paper's scale.

Times one soft-evidence pass of the prior (marginals: upward + backward, and a
joint sample: upward + downward) on CPU with batch 1, one thread, for

* the small scale used in the synthetic / GSM8K benchmarks, and
* the paper's scale: a 32-token window, 1024 hidden states and a
  126,464-token vocabulary (the 1024 x 126464 float32 emission table is
  518 MB), with the full vocabulary and with top-k candidates.

Run: ``python benchmarks/codd_overhead.py``; writes ``benchmarks/results/codd_overhead.json``.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import torch

from diffusion import CoDDPrior

OUT = Path(__file__).parent / "results"


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(sorted(ts)[len(ts) // 2])


def measure(window: int, states: int, vocab: int, top_k: int | None, repeats: int = 3) -> dict:
    torch.manual_seed(0)
    t = time.perf_counter()
    prior = CoDDPrior.hmm(window, states, vocab, top_k=top_k)
    build = time.perf_counter() - t
    x = torch.zeros(1, window, dtype=torch.long)
    logits = torch.randn(1, window, vocab)
    masked = torch.ones(1, window, dtype=torch.bool)
    masked[0, : window // 4] = False
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        marg = _time(lambda: prior.marginals(x, logits, masked), repeats)
        samp = _time(lambda: prior.sample(x, logits, masked, method="latent", generator=g), repeats)
    res = {"window": window, "states": states, "vocab": vocab, "top_k": top_k, "build_s": build,
           "marginals_s": marg, "sample_s": samp, "per_step_s": marg + samp}
    prior = None  # drop the reference (the closures above share its cell)
    gc.collect()
    return res


def main() -> dict:
    torch.set_num_threads(1)
    rows = [measure(16, 32, 13, None, 10), measure(32, 64, 2048, None, 5), measure(32, 64, 2048, 64, 5)]
    for r in rows:
        print(json.dumps(r), flush=True)
    paper = []
    for k in (64, None):
        try:
            r = measure(32, 1024, 126464, k, 2)
            r["measured"] = True
        except (RuntimeError, MemoryError) as e:  # fall back to a smaller vocabulary, extrapolated linearly
            r = measure(32, 1024, 16384, k, 2)
            r.update({"measured": False, "extrapolated_from_vocab": 16384, "error": str(e)[:200]})
            if k is None:
                for key in ("marginals_s", "sample_s", "per_step_s"):
                    r[key] *= 126464 / 16384
        print(json.dumps(r), flush=True)
        paper.append(r)
    res = {"threads": 1, "device": "cpu", "batch": 1, "small": rows, "paper_scale": paper,
           "torch": torch.__version__, "python": sys.version.split()[0]}
    OUT.mkdir(exist_ok=True)
    (OUT / "codd_overhead.json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
