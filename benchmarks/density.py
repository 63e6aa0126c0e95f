"""Density-estimation benchmark on the binary DEBD data sets.

One command trains and evaluates every data set::

    python benchmarks/density.py --data-dir ../shared/data/debd

For each data set it trains HCLTs (:func:`pcircuits.learning.learn_hclt`)
for every point of the grid (latents x mixture components x pseudocount x
softening) and a LearnSPN (:func:`pcircuits.learning.learn_spn`), picks the
model with the best *validation* log-likelihood, evaluates it on
train/valid/test beside LearnSPN and a fully factorized model, saves it with
:func:`pcircuits.save`, and writes a JSON file and a markdown table beside
the reference numbers. ``--jobs`` data sets are trained at once, one process
each. The run is resumable: data sets already in the JSON file are skipped
(``--redo`` retrains the ``--datasets`` among them and keeps the other rows,
with a summary of each replaced row in ``meta["replaced_results"]``).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

import pcircuits as pc
from pcircuits.datasets import DEBD_DATASETS, load_debd
from pcircuits.learning.hclt import learn_hclt
from pcircuits.learning.learnspn import learn_spn

#: Test log-likelihoods of HCLT (Liu & Van den Broeck, NeurIPS 2021), nats per example.
REFERENCE = {
    "nltcs": -6.00,
    "plants": -14.37,
    "baudio": -39.77,
    "jester": -52.46,
    "bnetflix": -56.28,
    "accidents": -26.75,
    "pumsb_star": -23.56,
    "dna": -79.14,
    "bbc": -250.41,
}

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- density-table:begin -->", "<!-- density-table:end -->"


def mean_ll(circuit: pc.TensorCircuit, x: np.ndarray, chunk: int = 4096) -> float:
    """Mean log-likelihood (nats per example) of ``x`` ``[N, V]``."""
    t = torch.from_numpy(x)
    with torch.no_grad():
        return float(torch.cat([circuit(t[i : i + chunk]) for i in range(0, len(t), chunk)]).double().mean())


def factorized_ll(splits: dict[str, np.ndarray], pseudocount: float = 1.0) -> dict[str, float]:
    """Train/valid/test log-likelihoods of the fully factorized model (Laplace-smoothed marginals)."""
    train = splits["train"]
    cats = int(max(int(x.max()) for x in splits.values())) + 1
    counts = np.stack([(train == c).sum(0) for c in range(cats)], 1) + pseudocount  # [V, cats]
    log_p = np.log(counts / counts.sum(1, keepdims=True))
    cols = np.arange(train.shape[1])
    return {f"{k}_ll": float(log_p[cols, x].sum(1).mean()) for k, x in splits.items()}


def run_settings(args: argparse.Namespace) -> dict:
    """The grid and training schedule of a run, as recorded in the JSON file."""
    return {
        "grid": {
            "learners": list(args.learners),
            "latents": list(args.latents),
            "components": list(args.components),
            "pseudocounts": list(args.pseudocounts),
            "softenings": list(args.softenings),
            "spn_time_budget": args.spn_time_budget,
        },
        "schedule": {
            "minibatch_epochs": args.minibatch_epochs,
            "fullbatch_epochs": args.fullbatch_epochs,
            "batch_size": args.batch_size,
            "step_size": args.step_size,
            "time_budget_per_config": args.time_budget,
            "dataset_budget": args.dataset_budget,
            "patience": args.patience,
        },
    }


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    """Grid search on validation for one data set; returns its JSON record."""
    print(f"{name}: training", flush=True)
    splits = load_debd(name, data_dir=args.data_dir)
    t0 = time.perf_counter()
    trials, best = [], None
    # cheapest grid points first; time a point leaves unused goes to the later ones
    grid = (
        itertools.product(args.latents, args.components, args.pseudocounts, args.softenings)
        if "hclt" in args.learners
        else []
    )
    grid = sorted(grid, key=lambda g: (g[0] ** 2 * g[1], g))  # cost per epoch ~ components * latents^2
    spent = 0.0
    for i, (latents, comps, pcount, soft) in enumerate(grid):
        budget = args.time_budget
        if args.dataset_budget is not None:
            share = max(1.0, (args.dataset_budget - spent) / (len(grid) - i))
            budget = share if budget is None else min(budget, share)
        res = learn_hclt(
            splits["train"],
            latents,
            valid=splits["valid"],
            num_components=comps,
            minibatch_epochs=args.minibatch_epochs,
            batch_size=args.batch_size,
            step_size=args.step_size,
            fullbatch_epochs=args.fullbatch_epochs,
            pseudocount=pcount,
            softening=soft,
            time_budget=budget,
            patience=args.patience,
            seed=args.seed,
            progress=args.progress,
        )
        spent += res.seconds
        valid = max(res.valid_ll)
        label = f"latents={latents}, pseudocount={pcount}" + (f", softening={soft}" if soft else "")
        label = f"{comps} x HCLT({label})" if comps > 1 else f"HCLT({label})"
        trial = {
            "learner": "hclt",
            "model": label,
            "latents": latents,
            "components": comps,
            "pseudocount": pcount,
            "softening": soft,
            "valid_ll": valid,
            "epochs": res.info["epochs"],
            "seconds": res.seconds,
        }
        trials.append(trial)
        print(f"  {name} {label}: valid {valid:.4f} ({res.info['epochs']} epochs, {res.seconds:.0f}s)", flush=True)
        if best is None or valid > best[0]["valid_ll"]:
            best = (trial, res.circuit)
    learnspn = None
    if "learnspn" in args.learners:
        res = learn_spn(splits["train"], time_budget=args.spn_time_budget, seed=args.seed, progress=args.progress)
        valid = mean_ll(res.circuit, splits["valid"])
        trial = {
            "learner": "learnspn",
            "model": "LearnSPN",
            "valid_ll": valid,
            "seconds": res.seconds,
            **{k: res.info[k] for k in ("sum", "product", "leaf", "budget_hit")},
        }
        trials.append(trial)
        learnspn = {
            "train_ll": mean_ll(res.circuit, splits["train"]),
            "valid_ll": valid,
            "test_ll": mean_ll(res.circuit, splits["test"]),
            "seconds": res.seconds,
            "num_nodes": res.circuit.num_nodes,
        }
        print(f"  {name} LearnSPN: valid {valid:.4f} ({res.seconds:.0f}s)", flush=True)
        if best is None or valid > best[0]["valid_ll"]:
            best = (trial, res.circuit)
    if best is None:
        raise ValueError("learners: nothing to train")
    trial, circuit = best
    record = {
        "dataset": name,
        "num_vars": int(splits["train"].shape[1]),
        "model": trial["model"],
        "learner": trial["learner"],
        "latents": trial.get("latents"),
        "components": trial.get("components"),
        "pseudocount": trial.get("pseudocount"),
        "softening": trial.get("softening"),
        "train_ll": mean_ll(circuit, splits["train"]),
        "valid_ll": mean_ll(circuit, splits["valid"]),
        "test_ll": mean_ll(circuit, splits["test"]),
        "reference_test_ll": REFERENCE.get(name),
        "wall_seconds": time.perf_counter() - t0,
        "num_nodes": circuit.num_nodes,
        "num_edges": circuit.num_edges,
        "num_parameters": circuit.num_parameters,
        "trials": trials,
        "learnspn": learnspn,
        "factorized": factorized_ll(splits),
        **run_settings(args),
    }
    if record["reference_test_ll"] is not None:
        record["test_minus_reference"] = record["test_ll"] - record["reference_test_ll"]
    models = Path(args.out_dir) / "density_models"
    models.mkdir(parents=True, exist_ok=True)
    pc.save(circuit, models / f"{name}.npz")
    record["model_file"] = os.path.relpath(models / f"{name}.npz", Path.cwd())
    return record


def markdown_table(results: dict) -> str:
    """The results as a markdown table (data sets in benchmark order)."""
    lines = [
        "| data set | vars | model (chosen on valid) | train LL | valid LL | test LL | reference test LL | test - ref "
        "| LearnSPN test LL | factorized test LL | wall time (s) | nodes | edges | params |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [n for n in DEBD_DATASETS if n in results] + sorted(set(results) - set(DEBD_DATASETS))
    for n in order:
        r = results[n]
        ref = r.get("reference_test_ll")
        diff = r.get("test_minus_reference")
        spn = "" if r.get("learnspn") is None else f"{r['learnspn']['test_ll']:.2f}"
        fact = "" if r.get("factorized") is None else f"{r['factorized']['test_ll']:.2f}"
        lines.append(
            f"| {n} | {r['num_vars']} | {r['model']} | {r['train_ll']:.2f} | {r['valid_ll']:.2f} "
            f"| {r['test_ll']:.2f} | "
            f"{'' if ref is None else f'{ref:.2f}'} | {'' if diff is None else f'{diff:+.2f}'} | "
            f"{spn} | {fact} | {r['wall_seconds']:.0f} | "
            f"{r['num_nodes']} | {r['num_edges']} | {r['num_parameters']} |"
        )
    missing = [n for n in DEBD_DATASETS if n not in results]
    if missing:
        lines.append("")
        lines.append(
            f"Not yet run: {', '.join(missing)} (reference test LL: "
            + ", ".join(f"{n} {REFERENCE[n]:.2f}" for n in missing)
            + ")."
        )
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, meta: dict, args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "density.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    table = markdown_table(results)
    (out / "density.md").write_text("# Density estimation (test log-likelihood, nats per example)\n\n" + table)
    if args.docs_page:
        page = Path(args.docs_page)
        if page.exists() and BEGIN in page.read_text():
            text = page.read_text()
            head, rest = text.split(BEGIN, 1)
            tail = rest.split(END, 1)[1] if END in rest else ""
            page.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data-dir",
        default=str(HERE.parent.parent / "shared" / "data" / "debd"),
        help="folder with NAME/NAME.{train,valid,test}.data",
    )
    p.add_argument("--datasets", nargs="+", default=list(DEBD_DATASETS), help="data sets to run, in order")
    p.add_argument(
        "--out-dir", default=str(HERE / "results"), help="where density.json, density.md and density_models/ go"
    )
    p.add_argument(
        "--docs-page",
        default=str(HERE.parent / "docs" / "benchmarks" / "density.md"),
        help="page whose table to update ('' for none)",
    )
    p.add_argument(
        "--learners",
        nargs="+",
        choices=["hclt", "learnspn"],
        default=["hclt", "learnspn"],
        help="learners competing on validation",
    )
    p.add_argument("--spn-time-budget", type=float, default=90.0, help="seconds of LearnSPN structure learning")
    p.add_argument("--latents", type=int, nargs="+", default=[16, 32, 64], help="grid of latent states per variable")
    p.add_argument("--components", type=int, nargs="+", default=[1], help="grid of mixture sizes (HCLTs per model)")
    p.add_argument("--pseudocounts", type=float, nargs="+", default=[0.1], help="grid of EM pseudocounts")
    p.add_argument(
        "--softenings", type=float, nargs="+", default=[0.0], help="grid of data-softening rates (0: the data as is)"
    )
    p.add_argument("--minibatch-epochs", type=int, default=5)
    p.add_argument("--fullbatch-epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--step-size", type=float, default=0.2)
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds per grid point (at most; default: no cap beyond the data set's budget)",
    )
    p.add_argument(
        "--dataset-budget",
        type=float,
        default=1000.0,
        help="seconds of HCLT training per data set, split evenly over the grid points still to run "
        "(cheapest first, so time a point leaves unused goes to the later ones)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop a grid point after this many epochs without a better validation log-likelihood",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per job")
    p.add_argument("--jobs", type=int, default=2, help="data sets trained at once, one process each")
    p.add_argument(
        "--redo", action="store_true", help="retrain the --datasets already in the JSON file (the other rows are kept)"
    )
    p.add_argument("--progress", action="store_true", help="show tqdm bars")
    return p


def _earlier_results(json_path: Path, args: argparse.Namespace) -> tuple[dict, list, dict]:
    """``(results, earlier runs, replaced rows)`` kept from an existing ``density.json`` (empty when none)."""
    results, earlier, replaced = {}, [], {}
    if not json_path.exists():
        return results, earlier, replaced
    old = json.loads(json_path.read_text())
    results = old.get("results", {})
    if "meta" in old:  # keep how the data sets already done were run
        prev = dict(old["meta"])
        earlier = prev.pop("earlier_runs", [])
        replaced = prev.pop("replaced_results", {})
        prev["datasets_done"] = sorted(results)
        earlier.append(prev)
    if args.redo:  # retrain only the data sets asked for; keep a summary of the rows they replace
        for name in args.datasets:
            if name in results:
                r = results.pop(name)
                keep = ("model", "train_ll", "valid_ll", "test_ll", "wall_seconds", "trials", "grid", "schedule")
                replaced.setdefault(name, []).append({k: r[k] for k in keep if k in r})
    return results, earlier, replaced


def _run_pool(todo: list[str], args: argparse.Namespace, results: dict, meta: dict) -> None:
    """Trains the data sets ``todo`` in ``args.jobs`` processes, writing the outputs after each one ends."""
    t0 = time.perf_counter()
    with ProcessPoolExecutor(
        args.jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=torch.set_num_threads,
        initargs=(args.threads,),
    ) as pool:
        running = {pool.submit(run_dataset, name, args): name for name in todo}
        for future in as_completed(running):
            name = running[future]
            results[name] = r = future.result()
            print(
                f"{name}: test {r['test_ll']:.3f} (reference {r['reference_test_ll']}) in {r['wall_seconds']:.0f}s",
                flush=True,
            )
            meta["run_wall_seconds"] = time.perf_counter() - t0
            write_outputs(results, meta, args)
    meta["run_wall_seconds"] = time.perf_counter() - t0
    write_outputs(results, meta, args)


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not Path(args.data_dir).is_dir():
        p.error(f"--data-dir: no such folder {args.data_dir!r}")
    results, earlier, replaced = _earlier_results(Path(args.out_dir) / "density.json", args)
    meta = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "torch": torch.__version__,
        "machine": (
            f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, {args.threads} torch thread(s)"
        ).strip(),
        **run_settings(args),
    }
    if earlier:
        meta["earlier_runs"] = earlier
    if replaced:
        meta["replaced_results"] = replaced
    todo = []
    for name in args.datasets:
        if name in results:
            print(f"{name}: already done (test {results[name]['test_ll']:.3f}), skipping", flush=True)
        else:
            todo.append(name)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    # the largest training files first, so the longest data sets do not start last
    todo.sort(key=lambda n: -sum(f.stat().st_size for f in (Path(args.data_dir) / n).glob("*.train.data")))
    _run_pool(todo, args, results, meta)
    print(f"{len(todo)} data sets in {meta['run_wall_seconds'] / 60:.1f} min ({args.jobs} jobs)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
