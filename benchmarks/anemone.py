"""Anemone against full-batch EM, plain mini-batch EM and Adam, under equal compute budgets.

One command (one torch thread, about 15 minutes of CPU)::

    PYTHONPATH=. python benchmarks/anemone.py --data-dir /work/shared/data/debd

* **DEBD** (nltcs, plants, dna): one HCLT per data set (`pcircuits.structures.hclt`
  on the train split), compiled once with seed 0, so every optimizer starts
  from the same structure and the same parameters. Each optimizer trains
  for the same CPU-time budget; the test (and validation) log-likelihood is
  measured at regular points of the budget (the measuring is not counted).
  Step sizes / learning rates are chosen on the **validation** split from a
  short run (a quarter of the budget) per grid value; test data choose nothing.
* **CoDD prior training** (`diffusion.codd.training.fit_prior`): the
  synthetic task's teacher HMM and its oracle backbone
  (`diffusion.codd.synthetic`); an HMM prior trained with Adam or Anemone
  on the same 2,000 masked training windows, the step chosen on 500
  validation windows, the held-out conditional NLL per masked token
  measured on 1,000 other windows against CPU time.

Writes ``benchmarks/results/anemone.json``, ``docs/assets/anemone.png`` and
the table of ``docs/benchmarks/anemone.md`` (between its markers);
``--report-only`` redraws the plot and the table from the JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pcircuits as pc  # noqa: E402
from pcircuits.atomic import atomic_write  # noqa: E402
from pcircuits.datasets import load_debd  # noqa: E402
from pcircuits.learning.anemone import anemone_step  # noqa: E402
from pcircuits.learning.em import apply_statistics, expected_statistics  # noqa: E402

#: latent states, mini-batch size and CPU-seconds budget per optimizer.
DEBD = {
    "nltcs": {"latents": 32, "batch": 512, "budget": 40.0},
    "plants": {"latents": 32, "batch": 512, "budget": 60.0},
    "dna": {"latents": 16, "batch": 256, "budget": 30.0},
}
#: step sizes (EM variants) / learning rates (Adam) tried on the validation split.
GRID = {"fullbatch_em": [1.0], "minibatch_em": [0.05, 0.15, 0.4], "anemone": [0.3, 0.6, 0.9], "adam": [0.01, 0.05, 0.2]}
PSEUDOCOUNT = 0.1
CODD_GRID = {"adam": [0.03, 0.1, 0.3], "anemone": [0.3, 0.6, 0.9]}
CODD_BUDGET = 20.0
TUNE_FRACTION = 0.25
POINTS = 12

PAGE = ROOT / "docs" / "benchmarks" / "anemone.md"
PLOT = ROOT / "docs" / "assets" / "anemone.png"
RESULTS = ROOT / "benchmarks" / "results" / "anemone.json"
BEGIN, END = "<!-- anemone-table:begin -->", "<!-- anemone-table:end -->"
NAMES = {"fullbatch_em": "full-batch EM", "minibatch_em": "mini-batch EM", "anemone": "Anemone", "adam": "Adam"}


# --------------------------------------------------------------------------- DEBD
@torch.no_grad()
def mean_ll(circuit: pc.TensorCircuit, x: torch.Tensor, chunk: int = 4096) -> float:
    """Mean log-likelihood (nats per example) of ``x [N, V]``."""
    return float(sum(circuit(x[i : i + chunk]).double().sum() for i in range(0, len(x), chunk)) / len(x))


def make_updates(
    name: str, knob: float, circuit: pc.TensorCircuit, train: torch.Tensor, batch: int
) -> Callable[[], None]:
    """A closure doing one update of ``name`` (one epoch for full-batch EM, one batch otherwise)."""
    next_batch = _batches(train, batch)
    if name == "fullbatch_em":
        return _fullbatch_em_update(circuit, train)
    if name == "minibatch_em":

        def update() -> None:
            _, s = expected_statistics(circuit, circuit.prepare(next_batch()))
            apply_statistics(circuit, s, PSEUDOCOUNT, knob)

        return update
    if name == "anemone":

        def step() -> None:
            anemone_step(circuit, next_batch(), step_size=knob, pseudocount=PSEUDOCOUNT)

        return step
    if name == "adam":
        return _adam_update(circuit, knob, next_batch)
    raise ValueError(f"name: unknown optimizer {name!r}")


def _batches(train: torch.Tensor, batch: int) -> Callable[[], torch.Tensor]:
    """The next mini-batch of ``train``, epoch after epoch; the same order for every mini-batch optimizer."""
    gen = torch.Generator().manual_seed(0)
    order: list[torch.Tensor] = []

    def next_batch() -> torch.Tensor:
        if not order:
            order.extend(torch.randperm(len(train), generator=gen).split(batch))
        return train[order.pop(0)]

    return next_batch


def _fullbatch_em_update(circuit: pc.TensorCircuit, train: torch.Tensor) -> Callable[[], None]:
    """One full-batch EM epoch: the statistics of ``train`` in chunks of 4096 rows, then a full step."""

    def update() -> None:
        acc = None
        for i in range(0, len(train), 4096):
            _, s = expected_statistics(circuit, circuit.prepare(train[i : i + 4096]))
            acc = s if acc is None else _add_statistics(acc, s)
        apply_statistics(circuit, acc, PSEUDOCOUNT, 1.0)

    return update


def _add_statistics(a: tuple[dict, dict], b: tuple[dict, dict]) -> tuple[dict, dict]:
    """Bank-wise sums of two ``(sum flows, leaf statistics)`` pairs."""
    return {k: a[0][k] + v for k, v in b[0].items()}, {k: a[1][k] + v for k, v in b[1].items()}


def _adam_update(
    circuit: pc.TensorCircuit, lr: float, next_batch: Callable[[], torch.Tensor]
) -> Callable[[], None]:
    """One Adam step on the negative mean log-likelihood of the next mini-batch."""
    opt = torch.optim.Adam(circuit.parameters(), lr=lr)

    def update() -> None:
        loss = -circuit(next_batch()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return update


def train_for(
    update: Callable[[], None], budget: float, measure: Callable[[], dict[str, float]], points: int
) -> list[dict[str, float]]:
    """Runs ``update`` for ``budget`` CPU seconds; ``measure()`` at ``points`` even points (time not counted)."""
    curve = [{"seconds": 0.0, "updates": 0, **measure()}]
    spent, updates, nxt = 0.0, 0, budget / points
    while spent < budget:
        t0 = time.process_time()
        update()
        spent += time.process_time() - t0
        updates += 1
        if spent >= nxt or spent >= budget:
            curve.append({"seconds": spent, "updates": updates, **measure()})
            nxt = spent + budget / points
    return curve


def debd_dataset(name: str, data_dir: str, scale: float) -> dict:
    cfg = DEBD[name]
    d = {k: torch.from_numpy(v) for k, v in load_debd(name, data_dir=data_dir).items()}
    root = pc.structures.hclt(d["train"].numpy(), cfg["latents"])
    init = pc.compile(root, seed=0)
    state = {k: v.detach().clone() for k, v in init.state_dict().items()}
    budget = cfg["budget"] * scale

    def fresh() -> pc.TensorCircuit:
        c = pc.compile(root, seed=0)
        c.load_state_dict(state)
        return c

    out = {
        "config": cfg | {"budget": budget},
        "num_vars": int(d["train"].shape[1]),
        "num_parameters": init.num_parameters,
        "initial": {"valid": mean_ll(init, d["valid"]), "test": mean_ll(init, d["test"])},
        "optimizers": {},
    }
    for opt, grid in GRID.items():
        tuning = {}
        if len(grid) > 1:
            for knob in grid:
                c = fresh()
                curve = train_for(make_updates(opt, knob, c, d["train"], cfg["batch"]), budget * TUNE_FRACTION,
                                  lambda: {}, 1)
                tuning[str(knob)] = mean_ll(c, d["valid"])
                print(
                    f"  {name} {opt} {knob}: valid {tuning[str(knob)]:.4f} ({curve[-1]['updates']} updates)", flush=True
                )
            knob = float(max(tuning, key=tuning.get))
        else:
            knob = grid[0]
        c = fresh()
        curve = train_for(make_updates(opt, knob, c, d["train"], cfg["batch"]), budget,
                          lambda c=c: {"valid": mean_ll(c, d["valid"]), "test": mean_ll(c, d["test"])}, POINTS)
        best = max(curve, key=lambda p: p["valid"])
        out["optimizers"][opt] = {"knob": knob, "tuning_valid": tuning, "curve": curve, "final_test": curve[-1]["test"],
                                  "final_valid": curve[-1]["valid"], "best_valid_test": best["test"]}
        print(f"{name} {opt} ({knob}): test {curve[-1]['test']:.4f} after {curve[-1]['updates']} updates", flush=True)
    return out


# --------------------------------------------------------------------------- CoDD
class _Stop(Exception):
    """Raised from `fit_prior`'s callback when the budget is spent."""


def codd_prior(scale: float) -> dict:
    from diffusion.codd.prior import CoDDPrior
    from diffusion.codd.synthetic import make_teacher, oracle_backbone, teacher_windows
    from diffusion.codd.training import conditional_nll, fit_prior, mean_nll

    teacher = make_teacher(16, 8, 12, seed=0)
    bb = oracle_backbone(teacher)
    train = teacher_windows(teacher, bb, 2000, seed=0)
    valid = teacher_windows(teacher, bb, 500, seed=1)
    test = teacher_windows(teacher, bb, 1000, seed=2)

    def nll(prior, w) -> float:
        return mean_nll(conditional_nll(prior, *w), w[1])

    def run(opt: str, lr: float, budget: float, measure: Callable) -> tuple:
        prior = CoDDPrior.hmm(16, 32, bb.vocab_size, seed=0)
        t0 = time.process_time()
        excluded = [0.0]
        curve = [{"seconds": 0.0, **measure(prior)}]

        def callback(ep: int, _: float) -> None:
            t1 = time.process_time()
            spent = t1 - t0 - excluded[0]
            curve.append({"seconds": spent, "epochs": ep + 1, **measure(prior)})
            excluded[0] += time.process_time() - t1
            if spent >= budget:
                raise _Stop

        with contextlib.suppress(_Stop):
            fit_prior(prior, *train, epochs=10_000, batch_size=64, lr=lr, valid_frac=0.05, seed=0, progress=False,
                      callback=callback, optimizer=opt)
        return prior, curve

    out = {"factorized": {"valid": nll(None, valid), "test": nll(None, test)}, "budget": CODD_BUDGET * scale,
           "optimizers": {}}
    for opt, grid in CODD_GRID.items():
        tuning = {}
        for lr in grid:
            prior, _ = run(opt, lr, CODD_BUDGET * scale * TUNE_FRACTION, lambda p: {})
            tuning[str(lr)] = nll(prior, valid)
            print(f"  codd {opt} {lr}: valid {tuning[str(lr)]:.4f}", flush=True)
        lr = float(min(tuning, key=tuning.get))
        _, curve = run(opt, lr, CODD_BUDGET * scale, lambda p: {"test": nll(p, test)})
        out["optimizers"][opt] = {"knob": lr, "tuning_valid": tuning, "curve": curve, "final_test": curve[-1]["test"],
                                  "best_test_seen": min(p["test"] for p in curve)}
        print(
            f"codd {opt} ({lr}): test NLL {curve[-1]['test']:.4f} after {curve[-1].get('epochs', 0)} epochs", flush=True
        )
    return out


# --------------------------------------------------------------------------- report
def table(res: dict) -> str:
    lines = ["| data set | optimizer | step / lr (valid) | test LL at budget | test LL at best valid | updates |",
             "|---|---|---|---|---|---|"]
    for name, r in res["debd"].items():
        best = max(round(o["final_test"], 3) for o in r["optimizers"].values())
        for opt, o in r["optimizers"].items():
            mark = "**" if round(o["final_test"], 3) == best else ""
            lines.append(
                f"| {name} ({r['config']['budget']:.0f} s) | {NAMES[opt]} | {o['knob']:g} "
                f"| {mark}{o['final_test']:.3f}{mark} "
                f"| {o['best_valid_test']:.3f} | {o['curve'][-1]['updates']} |"
            )
    c = res["codd"]
    lines += [
        "",
        f"CoDD prior (synthetic task, oracle backbone, {c['budget']:.0f} s each; factorized backbone: "
        f"{c['factorized']['test']:.4f} nats per masked token):",
        "",
        "| optimizer | step / lr (valid) | held-out NLL per masked token at budget | lowest seen | epochs |",
        "|---|---|---|---|---|",
    ]
    best = min(round(o["final_test"], 4) for o in c["optimizers"].values())
    for opt, o in c["optimizers"].items():
        mark = "**" if round(o["final_test"], 4) == best else ""
        lines.append(f"| {NAMES[opt]} | {o['knob']:g} | {mark}{o['final_test']:.4f}{mark} | {o['best_test_seen']:.4f} "
                     f"| {o['curve'][-1].get('epochs', 0)} |")
    return "\n".join(lines) + "\n"


def plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(res["debd"].items())
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 3.6))
    for ax, (name, r) in zip(axes, panels, strict=False):  # the last axis is CoDD's
        for opt, o in r["optimizers"].items():
            ax.plot(
                [p["seconds"] for p in o["curve"]],
                [p["test"] for p in o["curve"]],
                marker=".",
                label=f"{NAMES[opt]} ({o['knob']:g})",
            )
        finals = [o["final_test"] for o in r["optimizers"].values()]
        lo = min(p["test"] for o in r["optimizers"].values() for p in o["curve"][1:])
        ax.set_ylim(lo - 0.05 * (max(finals) - lo + 1e-3), max(finals) + 0.15 * (max(finals) - lo + 1e-3))
        ax.set_title(f"{name} (HCLT, {r['config']['latents']} latents)")
        ax.set_xlabel("CPU seconds (1 thread)")
        ax.set_ylabel("test log-likelihood")
        ax.legend(fontsize=7)
    ax = axes[-1]
    c = res["codd"]
    for opt, o in c["optimizers"].items():
        ax.plot(
            [p["seconds"] for p in o["curve"]],
            [p["test"] for p in o["curve"]],
            marker=".",
            label=f"{NAMES[opt]} ({o['knob']:g})",
        )
    ax.axhline(c["factorized"]["test"], color="gray", ls="--", label="factorized backbone")
    ax.set_title("CoDD prior (synthetic, oracle backbone)")
    ax.set_xlabel("CPU seconds (1 thread)")
    ax.set_ylabel("held-out NLL per masked token")
    ax.legend(fontsize=7)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(PLOT) as f:
        fig.savefig(f, format="png", dpi=110)


def write_page(text: str) -> None:
    page = PAGE.read_text() if PAGE.exists() else ""
    if BEGIN not in page:
        print(f"{PAGE} has no {BEGIN} marker; table not written there", flush=True)
        return
    head, rest = page.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    with atomic_write(PAGE, "w") as f:
        f.write(f"{head}{BEGIN}\n{text}{END}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="/work/shared/data/debd")
    ap.add_argument("--datasets", nargs="+", default=list(DEBD))
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every budget (e.g. 0.1 for a smoke run)")
    ap.add_argument("--output", default=str(RESULTS))
    ap.add_argument("--report-only", action="store_true", help="redraw the plot and the docs table from the JSON file")
    args = ap.parse_args()
    if args.report_only:
        res = json.loads(RESULTS.read_text())
        plot(res)
        write_page(table(res))
        return
    torch.set_num_threads(1)
    t0 = time.time()
    res = {"meta": {"command": "PYTHONPATH=. python benchmarks/anemone.py " + " ".join(sys.argv[1:]),
                    "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                    "threads": 1, "clock": "process CPU time (time.process_time), measuring excluded",
                    "pseudocount": PSEUDOCOUNT, "grid": GRID, "codd_grid": CODD_GRID, "tune_fraction": TUNE_FRACTION},
           "debd": {}}
    for name in args.datasets:
        res["debd"][name] = debd_dataset(name, args.data_dir, args.scale)
    res["codd"] = codd_prior(args.scale)
    res["meta"]["wall_seconds"] = time.time() - t0
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "w") as f:
        json.dump(res, f, indent=1)
    text = table(res)
    print(text)
    if out == RESULTS:
        plot(res)
        write_page(text)


if __name__ == "__main__":
    main()
