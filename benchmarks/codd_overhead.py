"""Wall time of the CoDD prior per denoising step, beside a hand-written HMM and the FLOP-based limit.

One *step* is what `diffusion.generate` asks of a prior at every denoising
step with a temperature above 0: the exact marginals of ``p_hat`` (the
remasking confidences) and one joint draw (the latent path, then the tokens
given it), i.e. `CoDDPrior.marginals_and_sample` (one upward pass, its
backward pass and one downward pass). Batch 1, one CPU thread.

Beside it, a *reference* written here in plain torch on the same HMM (its
transition matrix, root weights and emission table read through
`TensorCircuit.group_parameters`) and the same inputs: the top-``k``
candidates and soft evidence from the logits, the emission evidence (a row
gather per masked position, or one matrix product with the full vocabulary),
a scaled forward-backward over the chain, the token marginals, and a backward
sampling pass (the path, then each token given its state). Before anything
is timed, the marginals of the two are checked equal, the reference's
``log p_hat`` of the drawn tokens is checked equal to `CoDDPrior.log_prob`,
and, at the small scales, the empirical law of 2048 joint draws of each is
checked against the exact marginals. Reference and prior are timed
interleaved (one of each per repeat) so that load on a shared machine hits
both alike.

FLOP count of a step (``W`` positions, ``M`` of them masked, ``H`` states,
``K`` candidates or the vocabulary ``V``): ``4 W H^2`` for the transition
products (forward and backward) and ``4 M H K`` for the emission evidence
and the token marginals. The *limit* is that count over the single-thread
rate of ``torch.mm`` on the same shapes, measured in the same run:
``[1, H] x [H, H]`` for the transitions and ``[M, K] x [K, H]`` for the
emissions.

Rows: small scales (window 16 / 32, 32 / 64 states, vocabulary 13 / 2048,
full and top-64) and the paper's scale (window 32, 1,024 states,
126,464-token vocabulary; the float32 emission table is 518 MB), top-64 and
full vocabulary. The paper-scale top-64 and full rows share one prior (so
one build); the run holds the parameters, the prior's cached log table, its
cached exponentiated table (full vocabulary only) and the reference's table:
about 2.1 GB.

Run: ``python benchmarks/codd_overhead.py [--repeats N]``; writes
``benchmarks/results/codd_overhead.json`` and ``benchmarks/results/codd_overhead.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffusion import CoDDPrior
from pcircuits.atomic import atomic_write
from pcircuits.nodes import topological_order

OUT = Path(__file__).parent / "results"
PAPER = (32, 1024, 126464)
TARGETS = {"top64_ratio": 5.0, "full_step_s": 0.4, "build_s": 2.0}


# ------------------------------------------------------------------------------------------ reference
@dataclass
class ReferenceHMM:
    """The prior's HMM as plain tensors: ``alpha_0(z) = E(x_0 | z)``, ``alpha_t = E(x_t | .) * (T @ alpha_{t-1})``,
    ``Z = root . alpha_{W-1}`` (the circuit's recursion).

    Attributes:
        trans: ``[H, H]`` transition probabilities, row ``z_t``, column ``z_{t-1}``.
        root: ``[H]`` root weights over ``z_{W-1}``.
        emit_t: ``[V, H]`` emission probabilities, one row per token (category-major, for row gathers).
    """

    trans: torch.Tensor
    root: torch.Tensor
    emit_t: torch.Tensor

    @classmethod
    def of(cls, prior: CoDDPrior) -> ReferenceHMM:
        """A homogeneous HMM prior's parameters, read from its groups (named by `pcircuits.structures.hmm`)."""
        c = prior.circuit
        by = {g.name: g for g in topological_order(c.root) if getattr(g, "name", None)}
        with torch.no_grad():
            trans = c.group_parameters(by["trans1"]).float().contiguous()
            root = c.group_parameters(by["hmm_root"])[0].float()
            emit_t = torch.log_softmax(c.group_parameters(by["emit0"]).float(), -1).t().contiguous()
        return cls(trans, root, emit_t.exp_())


def ref_evidence(
    logits: torch.Tensor, masked: torch.Tensor, top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(q [W, K] probabilities, cand [W, K] or None)`` of the soft evidence (top-``k`` or the whole vocabulary)."""
    z, cand = (logits, None) if top_k is None else logits.topk(top_k, -1)
    return torch.softmax(z, -1), cand


def ref_leaves(hmm: ReferenceHMM, x: torch.Tensor, masked: torch.Tensor, q: torch.Tensor, cand) -> torch.Tensor:
    """``S [W, H]``: emission evidence ``sum_c E(c | z) q(c)`` at masked positions, ``E(x | z)`` at observed ones."""
    S = hmm.emit_t[x]  # [W, H]
    m = masked.nonzero(as_tuple=True)[0]
    if cand is None:
        S[m] = q[m] @ hmm.emit_t  # [M, V] x [V, H]
    else:
        S[m] = torch.bmm(q[m].unsqueeze(1), hmm.emit_t[cand[m]])[:, 0]  # [M, 1, K] x [M, K, H]
    return S


def ref_forward_backward(hmm: ReferenceHMM, S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scaled forward-backward: ``(a [W, H] normalised forward messages, gamma [W, H] state posteriors, log Z)``."""
    W = S.shape[0]
    a = torch.empty_like(S)
    logz = torch.zeros((), dtype=S.dtype)
    prev = S[0]
    for t in range(W):
        cur = S[0] if t == 0 else S[t] * (hmm.trans @ prev)
        s = cur.sum()
        logz = logz + torch.log(s)
        prev = a[t] = cur / s
    tail = hmm.root @ prev
    logz = logz + torch.log(tail)
    gamma = torch.empty_like(S)
    b = hmm.root.clone()  # backward message into alpha_t (up to scale)
    for t in range(W - 1, -1, -1):
        g = a[t] * b
        gamma[t] = g / g.sum()
        if t:
            b = hmm.trans.t() @ (b * S[t])
            b = b / b.sum()
    return a, gamma, logz


def ref_marginals(hmm, x, masked, q, cand, S, gamma) -> torch.Tensor:
    """``[W, V]`` token marginals: ``q(c) sum_z gamma(z) E(c | z) / S(z)`` at masked positions, one-hot elsewhere."""
    W, V = x.shape[0], hmm.emit_t.shape[0]
    post = torch.zeros(W, V, dtype=S.dtype)
    post[torch.arange(W), x] = 1.0
    m = masked.nonzero(as_tuple=True)[0]
    r = gamma[m] / S[m]  # [M, H]
    if cand is None:
        post[m] = (r @ hmm.emit_t.t()) * q[m]  # [M, H] x [H, V]
    else:
        w = torch.bmm(hmm.emit_t[cand[m]], r.unsqueeze(-1))[..., 0]  # [M, K]
        post[m] = 0.0
        post[m.unsqueeze(1), cand[m]] = w * q[m]
    return post


def ref_sample(hmm, x, masked, q, cand, a, generator) -> torch.Tensor:
    """Backward sampling: ``z_{W-1} ~ root * a``, ``z_{t-1} ~ T[z_t, :] * a_{t-1}``, then each masked token
    given its state."""
    W = x.shape[0]
    z = torch.empty(W, dtype=torch.long)
    z[W - 1] = torch.multinomial(hmm.root * a[W - 1], 1, generator=generator)[0]
    for t in range(W - 1, 0, -1):
        z[t - 1] = torch.multinomial(hmm.trans[z[t]] * a[t - 1], 1, generator=generator)[0]
    out = x.clone()
    m = masked.nonzero(as_tuple=True)[0]
    if cand is None:
        p = hmm.emit_t.t()[z[m]] * q[m]  # [M, V]
        out[m] = torch.multinomial(p, 1, generator=generator)[:, 0]
    else:
        p = hmm.emit_t[cand[m], z[m].unsqueeze(1)] * q[m]  # [M, K]
        out[m] = cand[m].gather(1, torch.multinomial(p, 1, generator=generator))[:, 0]
    return out


def ref_step(hmm, x, logits, masked, top_k, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference step on one window: ``(marginals [W, V], tokens [W], log Z)``."""
    q, cand = ref_evidence(logits, masked, top_k)
    S = ref_leaves(hmm, x, masked, q, cand)
    a, gamma, logz = ref_forward_backward(hmm, S)
    return ref_marginals(hmm, x, masked, q, cand, S, gamma), ref_sample(hmm, x, masked, q, cand, a, generator), logz


def ref_log_prob(hmm, x0, logits, masked, top_k) -> float:
    """``log p_hat(x0 | observed)`` by the forward algorithm: numerator with ``x0`` observed over ``Z``."""
    q, cand = ref_evidence(logits, masked, top_k)
    logz = ref_forward_backward(hmm, ref_leaves(hmm, x0, masked, q, cand))[2]
    none = torch.zeros_like(masked)
    num = ref_forward_backward(hmm, ref_leaves(hmm, x0, none, q, cand))[2]
    m = masked.nonzero(as_tuple=True)[0]
    if cand is None:
        wx = torch.log(q[m, x0[m]]).sum()
    else:
        hit = cand[m] == x0[m].unsqueeze(1)
        wx = torch.log((q[m] * hit).sum(1)).sum()
    return float(num + wx - logz)


# ------------------------------------------------------------------------------------------ checks
def _inputs(window: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [1, W]`` (random observed tokens), ``logits [1, W, V]``, ``masked [1, W]`` (first quarter observed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(vocab, (1, window), generator=g)
    logits = torch.randn(1, window, vocab, generator=g) * 2.0
    masked = torch.ones(1, window, dtype=torch.bool)
    masked[0, : window // 4] = False
    return x, logits, masked


def check(prior: CoDDPrior, hmm: ReferenceHMM, x, logits, masked, law: bool) -> dict:
    """Checks prior against reference on one window; raises ``AssertionError`` on disagreement."""
    top_k = prior.top_k
    post, tok = prior.marginals_and_sample(x, logits, masked, 1.0, "latent", torch.Generator().manual_seed(1))
    ref_post, ref_tok, _ = ref_step(hmm, x[0], logits[0], masked[0], top_k, torch.Generator().manual_seed(1))
    dmarg = float((post[0] - ref_post).abs().max())
    assert dmarg < 2e-4, f"marginals differ by {dmarg}"
    lp = float(prior.log_prob(tok, logits, masked)[0])
    lp_ref = ref_log_prob(hmm, tok[0], logits[0], masked[0], top_k)
    assert math.isfinite(lp) and abs(lp - lp_ref) <= 1e-3 * max(1.0, abs(lp_ref)), f"log p_hat {lp} vs {lp_ref}"
    out = {"max_abs_marginal_diff": dmarg, "log_p_hat_of_draw": lp, "log_p_hat_of_draw_reference": lp_ref}
    if law:  # 2048 joint draws of each against the exact marginals
        n = 2048
        _, draws = prior.marginals_and_sample(
            x.expand(n, -1), logits.expand(n, -1, -1), masked.expand(n, -1), 1.0, "latent",
            torch.Generator().manual_seed(2),
        )
        g = torch.Generator().manual_seed(3)
        ref_draws = torch.stack([ref_step(hmm, x[0], logits[0], masked[0], top_k, g)[1] for _ in range(n)])
        for name, d in (("prior", draws), ("reference", ref_draws)):
            freq = torch.zeros_like(ref_post).scatter_add_(1, d.t(), torch.ones(d.t().shape)) / n
            dev = float((freq - ref_post).abs().max())
            assert dev < 0.06, f"{name} draws deviate from the marginals by {dev}"  # sd <= 0.011
            out[f"law_max_dev_{name}"] = dev
    return out


# ------------------------------------------------------------------------------------------ timing
def _median(ts: list[float]) -> float:
    return float(sorted(ts)[len(ts) // 2])


def mm_rate(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Single-thread FLOP/s of ``torch.mm`` ``[m, k] x [k, n]`` (median of ``repeats``)."""
    a, b = torch.rand(m, k), torch.rand(k, n)
    reps = max(1, int(2e8 // max(1, 2 * m * k * n)))  # calls per timing, so each timing lasts ~ milliseconds
    torch.mm(a, b)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        ts.append((time.perf_counter() - t) / reps)
    return 2 * m * k * n / _median(ts)


def flops(window: int, masked: int, states: int, width: int) -> dict:
    """FLOPs of a step: transitions ``4 W H^2`` and emissions ``4 M H K``."""
    return {"transitions": 4 * window * states * states, "emissions": 4 * masked * states * width}


def time_interleaved(prior, hmm, x, logits, masked, repeats: int) -> dict:
    """Median seconds of the prior's step and of the reference's, one of each per repeat."""
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    ours, ref = [], []
    for _ in range(repeats + 1):  # the first round warms the reference up
        t = time.perf_counter()
        prior.marginals_and_sample(x, logits, masked, 1.0, "latent", g1)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        ref_step(hmm, x[0], logits[0], masked[0], prior.top_k, g2)
        ref.append(time.perf_counter() - t)
    return {"step_s": _median(ours[1:]), "reference_s": _median(ref[1:])}


def measure(prior: CoDDPrior, build_s: float | None, repeats: int, law: bool, scale: str) -> dict:
    W, V, H = prior.window, prior.vocab_size, max(int(b.num_nodes) for b in prior.circuit.leaf_blocks())
    x, logits, masked = _inputs(W, V)
    hmm = ReferenceHMM.of(prior)
    with torch.no_grad():
        t = time.perf_counter()  # the first call normalises (and for the full vocabulary exponentiates) the table
        prior.marginals_and_sample(x, logits, masked, 1.0, "latent", torch.Generator().manual_seed(0))
        first = time.perf_counter() - t
        checks = check(prior, hmm, x, logits, masked, law)
        times = time_interleaved(prior, hmm, x, logits, masked, repeats)
        times["first_call_s"] = first
    M = int(masked.sum())
    width = V if prior.top_k is None else prior.top_k
    fl = flops(W, M, H, width)
    rates = {"transitions": mm_rate(1, H, H), "emissions": mm_rate(M, width, H)}
    limit = sum(fl[k] / rates[k] for k in fl)
    row = {
        "scale": scale, "window": W, "states": H, "vocab": V, "top_k": prior.top_k, "masked": M,
        "build_s": build_s, **times, "ratio_to_reference": times["step_s"] / times["reference_s"],
        "flops": sum(fl.values()), "flops_by_part": fl, "mm_flops_per_s": rates, "flop_limit_s": limit,
        "ratio_to_limit": times["step_s"] / limit, "checks": checks,
    }
    del hmm
    return row


def build(window: int, states: int, vocab: int, top_k: int | None) -> tuple[CoDDPrior, float]:
    torch.manual_seed(0)
    t = time.perf_counter()
    prior = CoDDPrior.hmm(window, states, vocab, top_k=top_k)
    return prior, time.perf_counter() - t


def paper_rows(repeats: int) -> tuple[list[dict], list[float]]:
    """The paper-scale rows (top-64, then full) on one prior; a second build is timed after the first is freed."""
    prior, first_build = build(*PAPER, None)
    top64 = CoDDPrior(prior.circuit, PAPER[0], PAPER[2], top_k=64)  # the same circuit: one parameter table
    rows = [measure(top64, first_build, repeats, False, "paper")]
    print(json.dumps(rows[-1]), flush=True)
    rows.append(measure(prior, first_build, repeats, False, "paper"))
    print(json.dumps(rows[-1]), flush=True)
    del prior, top64
    gc.collect()
    _, again = build(*PAPER, None)
    gc.collect()
    return rows, [first_build, again]


def markdown(res: dict) -> str:
    lines = [
        "| scale | window | states | vocabulary | candidates | build (s) | step (ms) | reference (ms) | ratio "
        "| FLOPs | FLOP limit (ms) | step / limit | max marginal diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        build_s = "" if r["build_s"] is None else f"{r['build_s']:.2f}"
        lines.append(
            f"| {r['scale']} | {r['window']} | {r['states']} | {r['vocab']} | "
            f"{'full' if r['top_k'] is None else r['top_k']} | {build_s} | {1e3 * r['step_s']:.1f} | "
            f"{1e3 * r['reference_s']:.1f} | {r['ratio_to_reference']:.2f} | {r['flops']:.3g} | "
            f"{1e3 * r['flop_limit_s']:.1f} | {r['ratio_to_limit']:.1f} | {r['checks']['max_abs_marginal_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per row (median); default 5")
    parser.add_argument("--small-only", action="store_true", help="skip the paper-scale rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for W, H, V, k in ((16, 32, 13, None), (32, 64, 2048, None), (32, 64, 2048, 64)):
        prior, b = build(W, H, V, k)
        rows.append(measure(prior, b, max(args.repeats, 10), True, "small"))
        print(json.dumps(rows[-1]), flush=True)
    builds = []
    if not args.small_only:
        paper, builds = paper_rows(args.repeats)
        rows += paper
    res = {
        "what": "one CoDD step (marginals + joint latent-path sample, CoDDPrior.marginals_and_sample) vs a "
        "hand-written torch HMM forward-backward + backward sampling on the same inputs",
        "threads": 1, "device": "cpu", "batch": 1, "repeats": args.repeats, "rows": rows,
        "paper_builds_s": builds, "targets": TARGETS,
        "load_average_at_end": os.getloadavg(), "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "python": sys.version.split()[0],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    OUT.mkdir(exist_ok=True)
    with atomic_write(OUT / "codd_overhead.json", "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    with atomic_write(OUT / "codd_overhead.md", "w") as f:
        f.write(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
