"""The ``pcircuits`` command: learn, evaluate and sample circuits from data files.

Data files are DEBD-style text (comma-separated integers, one example per
line, optionally gzipped) or ``.npy`` arrays of shape ``[N, V]``.

Examples::

    pcircuits fit train.data --valid valid.data --out model.npz --learner hclt --latents 32
    pcircuits eval model.npz test.data
    pcircuits sample model.npz -n 10 --out samples.data
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["main", "build_parser"]


def _sampler() -> Callable | None:
    """``pcircuits.queries.sampling.sample`` when that module exists, else ``None``."""
    try:
        from .queries.sampling import sample
    except ImportError:
        return None
    return sample


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pcircuits`` command."""
    p = argparse.ArgumentParser(prog="pcircuits", description="Learn, evaluate and sample probabilistic circuits.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    fmt = argparse.ArgumentDefaultsHelpFormatter

    f = sub.add_parser("fit", help="learn a structure and parameters from a data file", formatter_class=fmt,
                       description="Learn a circuit (structure and parameters) from a data file and save it.")
    f.add_argument("data", help="training data: comma-separated 0/1 (or category) file, .gz, or .npy")
    f.add_argument("--out", "-o", required=True, help="where to save the circuit (.npz)")
    f.add_argument("--valid", help="validation data for early stopping (same formats)")
    f.add_argument("--learner", choices=["hclt", "learnspn"], default="hclt", help="structure learner")
    f.add_argument("--latents", type=int, default=16, help="HCLT: latent states per variable")
    f.add_argument("--components", type=int, default=1, help="HCLT: number of HCLTs in an equal-weight mixture")
    f.add_argument("--mixture", choices=["separate", "joint"], default="separate", help="HCLT: train mixture components alone or jointly")
    f.add_argument("--softening", type=float, default=0.0, help="HCLT: data-softening rate (0: the data as is)")
    f.add_argument("--patience", type=int, default=None, help="HCLT: stop after this many epochs without a better valid LL")
    f.add_argument("--minibatch-epochs", type=int, default=5, help="HCLT: mini-batch EM epochs")
    f.add_argument("--fullbatch-epochs", type=int, default=20, help="HCLT: full-batch EM epochs")
    f.add_argument("--batch-size", type=int, default=512, help="HCLT: mini-batch size")
    f.add_argument("--pseudocount", type=float, default=0.1, help="EM (HCLT) or leaf (LearnSPN) smoothing")
    f.add_argument("--min-instances", type=int, default=None, help="LearnSPN: smallest slice to split")
    f.add_argument("--max-nodes", type=int, default=None, help="LearnSPN: size budget")
    f.add_argument("--time-budget", type=float, default=None, help="seconds of learning")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="log-likelihood of a saved circuit on a data file", formatter_class=fmt,
                       description="Print the mean log-likelihood (nats per example) of a data file under a saved circuit.")
    e.add_argument("model", help="a circuit saved by 'pcircuits fit' or pcircuits.save (.npz)")
    e.add_argument("data", help="data file (comma-separated, .gz or .npy)")
    e.add_argument("--batch-size", type=int, default=4096, help="examples per pass")
    e.add_argument("--per-example", help="also write every example's log-likelihood to this file (one per line)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    if _sampler() is not None:
        s = sub.add_parser("sample", help="draw samples from a saved circuit", formatter_class=fmt,
                           description="Draw independent samples from a saved circuit.")
        s.add_argument("model", help="a saved circuit (.npz)")
        s.add_argument("--num-samples", "-n", type=int, default=10, help="number of samples")
        s.add_argument("--out", "-o", help="write samples here (.npy, or comma-separated text); default: print them")
        s.add_argument("--seed", type=int, default=0)
    return p


def _load_data(path: str, arg: str) -> np.ndarray:
    from .datasets import read_data_file

    try:
        return read_data_file(path)
    except ValueError as err:
        raise ValueError(f"{arg}: {str(err).removeprefix('path: ')}") from None


def _load_model(path: str):
    from .io import load

    try:
        return load(path)
    except ValueError as err:
        raise ValueError(f"model: {str(err).removeprefix('path: ')}") from None


def _fit(args: argparse.Namespace) -> int:
    from .io import save
    from .learning.chow_liu import learn_hclt
    from .learning.learnspn import learn_spn

    train = _load_data(args.data, "data")
    valid = _load_data(args.valid, "--valid") if args.valid else None
    if valid is not None and valid.shape[1] != train.shape[1]:
        raise ValueError(f"--valid: has {valid.shape[1]} columns, the training data {train.shape[1]}")
    if not Path(args.out).parent.exists():
        raise ValueError(f"--out: folder {str(Path(args.out).parent)!r} does not exist")
    progress = False if args.quiet else None
    if args.learner == "hclt":
        res = learn_hclt(train, args.latents, valid=valid, num_components=args.components, mixture=args.mixture, minibatch_epochs=args.minibatch_epochs,
                         batch_size=args.batch_size, fullbatch_epochs=args.fullbatch_epochs, pseudocount=args.pseudocount,
                         softening=args.softening, time_budget=args.time_budget, patience=args.patience if valid is not None else None,
                         seed=args.seed, progress=progress)
    else:
        res = learn_spn(train, min_instances=args.min_instances, pseudocount=max(args.pseudocount, 1e-6),
                        max_nodes=args.max_nodes, time_budget=args.time_budget, seed=args.seed, progress=progress)
    c = res.circuit
    save(c, args.out)
    with torch.no_grad():
        tr = float(c(torch.from_numpy(train)).double().mean())
        va = float(c(torch.from_numpy(valid)).double().mean()) if valid is not None else None
    print(f"saved {args.out}: {args.learner}, {c.num_nodes} nodes, {c.num_edges} edges, {c.num_parameters} parameters, {res.seconds:.1f}s")
    print(f"train LL {tr:.4f}" + (f", valid LL {va:.4f}" if va is not None else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .queries import log_likelihood

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    c = _load_model(args.model)
    x = _load_data(args.data, "data")
    if x.shape[1] != c.num_vars:
        raise ValueError(f"data: has {x.shape[1]} columns, the circuit has {c.num_vars} variables")
    with torch.no_grad():
        ll = log_likelihood(c, torch.from_numpy(x), batch_size=args.batch_size).double()
    mean = float(ll.mean())
    if args.per_example:
        np.savetxt(args.per_example, ll.numpy(), fmt="%.6f")
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "num_examples": len(x), "mean_ll": mean}))
    else:
        print(f"{mean:.6f}  mean log-likelihood (nats per example) of {len(x)} examples")
    return 0


def _sample(args: argparse.Namespace) -> int:
    sample = _sampler()
    assert sample is not None
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be at least 1, got {args.num_samples}")
    c = _load_model(args.model)
    with torch.no_grad():
        xs = sample(c, args.num_samples, seed=args.seed)
    arr = xs.detach().cpu().numpy()
    if arr.dtype.kind == "f" and not c.has_continuous:
        arr = arr.astype(np.int64)
    if args.out and args.out.endswith(".npy"):
        np.save(args.out, arr)
    elif args.out:
        np.savetxt(args.out, arr, fmt="%d" if arr.dtype.kind in "iu" else "%.6g", delimiter=",")
    else:
        np.savetxt(sys.stdout, arr, fmt="%d" if arr.dtype.kind in "iu" else "%.6g", delimiter=",")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 success, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    handlers = {"fit": _fit, "eval": _eval, "sample": _sample}
    try:
        return handlers[args.command](args)
    except ValueError as err:
        print(f"pcircuits {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
