"""The ``pcircuits`` command: learn, evaluate and sample circuits from data files.

Data files are DEBD-style text (comma-separated integers, one example per
line, optionally gzipped) or ``.npy`` arrays of shape ``[N, V]``.

Examples:
    ```bash
    pcircuits fit train.data --valid valid.data --out model.safetensors --learner hclt --latents 32
    pcircuits eval model.safetensors test.data
    pcircuits sample model.safetensors -n 10 --out samples.data
    ```

Like other Unix tools, every command reports a user error (a bad option, an
unreadable file, an output it must not write) as one line
``pcircuits COMMAND: error: ...`` on stderr and exits with status 2. No
command replaces an existing output unless ``--force`` is given, and none
ever replaces one of its own inputs. Outputs are written atomically
(`pcircuits.atomic.atomic_write`): a failed write leaves the old file intact.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write

__all__ = [
    "main",
    "build_parser",
    "OneLineArgumentParser",
    "int_at_least",
    "float_in",
    "check_output",
    "report_error",
    "run_quietly_on_broken_pipe",
    "parse_or_status",
    "USER_ERRORS",
]


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose usage errors are one line on stderr.

    ``prog: error: message`` and exit status 2, as argparse does, but without
    the usage block in front (``--help`` still prints it). Subparsers made by
    ``add_subparsers`` inherit the class.
    """

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer ``>= low``; anything else is a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(
    low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An argparse ``type=``: a finite float in the interval from ``low`` to ``high``.

    Args:
        low: the lower bound.
        high: the upper bound (``inf`` for none).
        low_open: exclude ``low`` itself.
        high_open: exclude ``high`` itself.
    """
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or math.isinf(high) else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        inside = math.isfinite(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not inside:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0.0, low_open=True)
nonnegative_float = float_in(0.0)


def _overlap(out: Path, given: Path) -> str | None:
    """How an existing output path meets an existing input: ``"is"``, ``"holds"``, ``"lies inside"`` or None."""
    if os.path.samefile(out, given):
        return "is"
    ro, rg = out.resolve(), given.resolve()
    if rg.is_relative_to(ro):
        return "holds"
    if ro.is_relative_to(rg):
        return "lies inside"
    return None


def check_output(path: str | os.PathLike, arg: str, inputs: Sequence[str | os.PathLike | None], force: bool,
                 directory: bool = False) -> None:
    """Refuses an output path that would destroy something.

    An existing output is replaced only with ``force``; an output that is one
    of the command's inputs (same file, or a directory holding it or held by
    it) is refused even with ``force``. A new output file needs an existing
    folder (a new output directory is created with its parents).

    Args:
        path: the output (file, or directory when ``directory``).
        arg: the option's name for messages (``--out``).
        inputs: the command's input paths (``None`` and non-paths are skipped).
        force: the ``--force`` flag.
        directory: the output is a directory.

    Raises:
        ValueError: naming ``arg`` and what is wrong.
    """
    out = Path(path)
    if out.exists():
        if directory and not out.is_dir():
            raise ValueError(f"{arg}: {os.fspath(path)!r} exists and is not a directory")
        if not directory and out.is_dir():
            raise ValueError(f"{arg}: {os.fspath(path)!r} is a directory, expected a file path")
        for given in inputs:
            if given is None or not os.path.exists(given):
                continue
            how = _overlap(out, Path(given))
            if how is not None:
                raise ValueError(f"{arg}: {os.fspath(path)!r} {how} the input {os.fspath(given)!r}; "
                                 "an input is never overwritten, even with --force")
        if not force:
            raise ValueError(f"{arg}: {os.fspath(path)!r} exists; pass --force to overwrite it")
    elif not directory and not out.absolute().parent.is_dir():
        raise ValueError(f"{arg}: folder {os.fspath(out.parent)!r} does not exist")


def report_error(prog: str, err: BaseException) -> int:
    """Prints ``prog: error: <one line>`` to stderr and returns the exit status 2."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    print(f"{prog}: error: {one_line(text)}", file=sys.stderr)
    return 2


USER_ERRORS = (ValueError, TypeError, OSError)
"""Exceptions that ``main`` reports as one line (exit 2) instead of a traceback."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pcircuits`` command."""
    p = OneLineArgumentParser(prog="pcircuits", description="Learn, evaluate and sample probabilistic circuits.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_fit_parser(sub)
    _add_eval_parser(sub)
    _add_sample_parser(sub)
    return p


def _add_fit_parser(sub: "argparse._SubParsersAction") -> None:
    """The ``fit`` subcommand: learner choice and the knobs of HCLT and LearnSPN."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    f = sub.add_parser("fit", help="learn a structure and parameters from a data file", formatter_class=fmt,
                       description="Learn a circuit (structure and parameters) from a data file and save it.")
    f.add_argument("data", help="training data: comma-separated 0/1 (or category) file, .gz, or .npy")
    f.add_argument("--out", "-o", required=True, help="where to save the circuit (a .safetensors file)")
    f.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    f.add_argument("--valid", help="validation data for early stopping (same formats)")
    f.add_argument("--learner", choices=["hclt", "learnspn"], default="hclt", help="structure learner")
    f.add_argument("--latents", type=positive_int, default=16, help="HCLT: latent states per variable")
    f.add_argument(
        "--components", type=positive_int, default=1, help="HCLT: number of HCLTs in an equal-weight mixture"
    )
    f.add_argument(
        "--mixture",
        choices=["separate", "joint"],
        default="separate",
        help="HCLT: train mixture components alone or jointly",
    )
    f.add_argument("--softening", type=float_in(0.0, 0.5, high_open=True), default=0.0,
                   help="HCLT: data-softening rate in [0, 0.5) (0: the data as is)")
    f.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        help="HCLT: stop after this many epochs without a better valid LL",
    )
    f.add_argument("--minibatch-epochs", type=nonnegative_int, default=5, help="HCLT: mini-batch EM epochs")
    f.add_argument("--fullbatch-epochs", type=nonnegative_int, default=20, help="HCLT: full-batch EM epochs")
    f.add_argument("--batch-size", type=positive_int, default=512, help="HCLT: mini-batch size")
    f.add_argument("--pseudocount", type=nonnegative_float, default=0.1, help="EM (HCLT) or leaf (LearnSPN) smoothing")
    f.add_argument("--min-instances", type=positive_int, default=None, help="LearnSPN: smallest slice to split")
    f.add_argument("--max-nodes", type=positive_int, default=None, help="LearnSPN: size budget")
    f.add_argument("--time-budget", type=positive_float, default=None, help="seconds of learning")
    f.add_argument("--seed", type=nonnegative_int, default=0)
    f.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    f.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_eval_parser(sub: "argparse._SubParsersAction") -> None:
    """The ``eval`` subcommand: mean (and optionally per-example) log-likelihood of a data file."""
    e = sub.add_parser(
        "eval",
        help="log-likelihood of a saved circuit on a data file",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Print the mean log-likelihood (nats per example) of a data file under a saved circuit.",
    )
    e.add_argument(
        "model",
        help="a circuit saved by 'pcircuits fit' or pcircuits.save (.safetensors; version-1 .npz files also load)",
    )
    e.add_argument("data", help="data file (comma-separated, .gz or .npy)")
    e.add_argument("--batch-size", type=positive_int, default=4096, help="examples per pass")
    e.add_argument("--per-example", help="also write every example's log-likelihood to this file (one per line)")
    e.add_argument("--force", action="store_true", help="overwrite --per-example if it exists")
    e.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_sample_parser(sub: "argparse._SubParsersAction") -> None:
    """The ``sample`` subcommand: independent samples from a saved circuit."""
    s = sub.add_parser("sample", help="draw samples from a saved circuit",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Draw independent samples from a saved circuit.")
    s.add_argument("model", help="a saved circuit (.safetensors or a version-1 .npz)")
    s.add_argument("--num-samples", "-n", type=positive_int, default=10, help="number of samples")
    s.add_argument("--out", "-o", help="write samples here (.npy, or comma-separated text); default: print them")
    s.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    s.add_argument("--seed", type=nonnegative_int, default=0)


def _load_data(path: str, arg: str) -> np.ndarray:
    from .datasets import read_data_file

    try:
        return read_data_file(path)
    except ValueError as err:
        raise ValueError(f"{arg}: {str(err).removeprefix('path: ')}") from None


def _load_model(path: str):
    """The circuit saved at ``path``; every way the file can be unreadable becomes one ``ValueError``."""
    from .io import load

    try:
        return load(path)
    except (ValueError, TypeError, OSError, EOFError, KeyError, IndexError, zipfile.BadZipFile) as err:
        text = str(err).removeprefix("path: ")
        if not isinstance(err, ValueError) or "pickle" in text:  # never pass on numpy's advice to unpickle
            text = f"{path!r} is not a readable pcircuits circuit file ({type(err).__name__})"
        raise ValueError(f"model: {text}") from None


def _write_table(path: str, arr: np.ndarray) -> None:
    """Writes ``arr`` to ``path`` atomically: ``.npy`` when the name says so, else comma-separated text."""
    with atomic_write(path, "wb") as f:
        if path.endswith(".npy"):
            np.save(f, arr)
        else:
            np.savetxt(f, arr, fmt="%d" if arr.dtype.kind in "iu" else "%.6g", delimiter=",")


def _fit(args: argparse.Namespace) -> int:
    from .io import save
    from .learning.hclt import learn_hclt
    from .learning.learnspn import learn_spn

    check_output(args.out, "--out", [args.data, args.valid], args.force)
    train = _load_data(args.data, "data")
    valid = _load_data(args.valid, "--valid") if args.valid else None
    if valid is not None and valid.shape[1] != train.shape[1]:
        raise ValueError(f"--valid: has {valid.shape[1]} columns, the training data {train.shape[1]}")
    progress = False if args.quiet else None
    if args.learner == "hclt":
        res = learn_hclt(
            train,
            args.latents,
            valid=valid,
            num_components=args.components,
            mixture=args.mixture,
            minibatch_epochs=args.minibatch_epochs,
            batch_size=args.batch_size,
            fullbatch_epochs=args.fullbatch_epochs,
            pseudocount=args.pseudocount,
            softening=args.softening,
            time_budget=args.time_budget,
            patience=args.patience if valid is not None else None,
            seed=args.seed,
            progress=progress,
        )
    else:
        res = learn_spn(train, min_instances=args.min_instances, pseudocount=max(args.pseudocount, 1e-6),
                        max_nodes=args.max_nodes, time_budget=args.time_budget, seed=args.seed, progress=progress)
    c = res.circuit
    save(c, args.out)
    with torch.no_grad():
        tr = float(c(torch.from_numpy(train)).double().mean())
        va = float(c(torch.from_numpy(valid)).double().mean()) if valid is not None else None
    print(
        f"saved {args.out}: {args.learner}, {c.num_nodes} nodes, {c.num_edges} edges, "
        f"{c.num_parameters} parameters, {res.seconds:.1f}s"
    )
    print(f"train LL {tr:.4f}" + (f", valid LL {va:.4f}" if va is not None else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .queries import log_likelihood

    if args.per_example:
        check_output(args.per_example, "--per-example", [args.model, args.data], args.force)
    c = _load_model(args.model)
    x = _load_data(args.data, "data")
    if x.shape[1] != c.num_vars:
        raise ValueError(f"data: has {x.shape[1]} columns, the circuit has {c.num_vars} variables")
    with torch.no_grad():
        ll = log_likelihood(c, torch.from_numpy(x), batch_size=args.batch_size).double()
    mean = float(ll.mean())
    if args.per_example:
        with atomic_write(args.per_example, "wb") as f:
            np.savetxt(f, ll.numpy(), fmt="%.6f")
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "num_examples": len(x), "mean_ll": mean}))
    else:
        print(f"{mean:.6f}  mean log-likelihood (nats per example) of {len(x)} examples")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .queries.sampling import sample

    if args.out:
        check_output(args.out, "--out", [args.model], args.force)
    c = _load_model(args.model)
    with torch.no_grad():
        xs = sample(c, args.num_samples, seed=args.seed)
    arr = xs.detach().cpu().numpy()
    if arr.dtype.kind == "f" and not c.has_continuous:
        arr = arr.astype(np.int64)
    if args.out:
        _write_table(args.out, arr)
    else:
        np.savetxt(sys.stdout, arr, fmt="%d" if arr.dtype.kind in "iu" else "%.6g", delimiter=",")
    return 0


def run_quietly_on_broken_pipe(status: int) -> int:
    """After stdout's reader went away (``cmd | head``): silence the final flush, as Unix tools do."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return status


def parse_or_status(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """``parser.parse_args(argv)``, or the exit status of a usage error (its one line is already on stderr).

    ``--help`` and ``--version`` still end in ``SystemExit(0)``, as argparse does.
    """
    try:
        return parser.parse_args(argv)
    except SystemExit as stop:
        if stop.code in (0, None):
            raise
        return int(stop.code) if isinstance(stop.code, int) else 2


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 success, 2 bad input).

    Every user error, from argparse or found while running (bad files, bad
    values, an output it must not write), is one line
    ``pcircuits[ COMMAND]: error: ...`` on stderr and returns 2.
    """
    parser = build_parser()
    args = parse_or_status(parser, argv)
    if isinstance(args, int):
        return args
    prog = f"pcircuits {args.command}"
    try:
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        handlers = {"fit": _fit, "eval": _eval, "sample": _sample}
        return handlers[args.command](args)
    except BrokenPipeError:
        return run_quietly_on_broken_pipe(1)
    except USER_ERRORS as err:
        return report_error(prog, err)


if __name__ == "__main__":
    raise SystemExit(main())
