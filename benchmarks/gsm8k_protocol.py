"""The evaluation protocol shared by the GSM8K CoDD benchmarks: splits and bootstrap intervals.

Splits (nothing fitted or chosen on the final test data):

* GSM8K **train** is cut once, by a seeded permutation, into the *fit* part
  (the prior's training answers) and a held-out *dev* slice of
  ``dev_size`` pairs. The first half of the dev slice fits the prior's
  backoff weights; the second half gives the validation questions on which
  gamma (``pc_frac``), tau (``pc_temperature``) and the EB bounds are chosen.
* GSM8K **test** is used only for the final numbers: NLL by mask-ratio bin
  and few-step generation.

The shipped CPU backbone was trained on all of GSM8K train, so the dev slice
is unseen by the prior and the knobs but not by the backbone; retraining the
backbone without it needs a GPU (``benchmarks/gsm8k_gpu.sh``).

Intervals are percentile bootstrap 95% intervals (``BOOT`` resamples) with
the question (or answer) as the unit; comparisons between methods are paired:
one resample of the shared questions serves both methods.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusion.data import QAExample, load_gsm8k  # noqa: E402
from pcircuits.atomic import atomic_write  # noqa: E402

BOOT = 2000
"""Bootstrap resamples per interval."""
SPLIT_SEED = 20261201
"""Seed of the permutation that cuts GSM8K train into fit and dev."""


@dataclass(frozen=True)
class GSM8KSplits:
    """The protocol's splits (each a list of QA pairs)."""

    fit: list[QAExample]
    """GSM8K train minus the dev slice: the prior's training answers."""
    dev_backoff: list[QAExample]
    """First half of the dev slice: the backoff's windows."""
    dev_questions: list[QAExample]
    """Second half of the dev slice: validation questions for the knobs."""
    test: list[QAExample]
    """GSM8K test: final evaluation only."""


def gsm8k_splits(dev_size: int = 600, directory: str | None = None) -> GSM8KSplits:
    """Cuts GSM8K train into fit and a held-out dev slice of ``dev_size`` pairs (seed `SPLIT_SEED`).

    Raises:
        ValueError: if ``dev_size`` is not in ``[2, len(train) - 1]``.
    """
    train = load_gsm8k("train", directory=directory)
    if not 2 <= dev_size < len(train):
        raise ValueError(f"dev_size: expected an int in [2, {len(train) - 1}], got {dev_size}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    dev_idx = perm[:dev_size]
    dev_set = set(dev_idx)
    dev = [train[i] for i in dev_idx]
    half = dev_size // 2
    return GSM8KSplits(
        fit=[ex for i, ex in enumerate(train) if i not in dev_set],
        dev_backoff=dev[:half],
        dev_questions=dev[half:],
        test=load_gsm8k("test", directory=directory),
    )


def boot_mean(x: np.ndarray, rng: np.random.Generator) -> list[float]:
    """Bootstrap 95% interval of the mean of ``x [n]``."""
    idx = rng.integers(0, len(x), size=(BOOT, len(x)))
    m = x[idx].mean(1)
    return [float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))]


def boot_diff(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, paired: bool) -> list[float]:
    """Bootstrap 95% interval of ``mean(a) - mean(b)`` (paired: one resample of the shared items)."""
    ia = rng.integers(0, len(a), size=(BOOT, len(a)))
    ib = ia if paired else rng.integers(0, len(b), size=(BOOT, len(b)))
    d = a[ia].mean(1) - b[ib].mean(1)
    return [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]


def boot_ratio(num: np.ndarray, den: np.ndarray, rng: np.random.Generator, base: tuple | None = None) -> list[float]:
    """Bootstrap 95% interval of ``sum(num) / sum(den)`` over items.

    With ``base = (num_b, den_b)``, of the difference to the same ratio of
    ``base`` on the same resample (paired).
    """
    idx = rng.integers(0, len(num), size=(BOOT, len(num)))
    r = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1)
    if base is not None:
        r = r - base[0][idx].sum(1) / np.maximum(base[1][idx].sum(1), 1)
    return [float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))]


def excludes_zero(ci: list[float]) -> bool:
    """Whether a 95% interval excludes 0 (the difference is significant at 5%)."""
    return ci[0] > 0 or ci[1] < 0


def write_fit_dir(directory: str, dev_size: int = 600) -> tuple[int, int]:
    """Writes a GSM8K-style directory for backbone training that never sees the dev slice or GSM8K test.

    ``train.jsonl`` holds the *fit* part; ``test.jsonl`` (the held-out set
    `codd train-backbone --data DIR` uses for its bound and ``--keep-best``)
    holds the dev slice, so neither the weights nor the checkpoint choice
    touch GSM8K test. Returns ``(fit pairs, dev pairs)``.
    """
    splits = gsm8k_splits(dev_size)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", splits.fit), ("test", splits.dev_backoff + splits.dev_questions)):
        with atomic_write(out / f"{name}.jsonl", "w") as fh:
            for ex in rows:
                fh.write(json.dumps({"question": ex.question, "answer": ex.answer}) + "\n")
    return len(splits.fit), dev_size


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the backbone-training directory of the GSM8K protocol.")
    parser.add_argument("directory", help="where train.jsonl (fit) and test.jsonl (the dev slice) are written")
    parser.add_argument("--dev-size", type=int, default=600)
    args = parser.parse_args()
    n_fit, n_dev = write_fit_dir(args.directory, args.dev_size)
    print(f"wrote {n_fit} fit pairs (train.jsonl) and {n_dev} dev pairs (test.jsonl) to {args.directory}")
