"""The one-layer max-plus benchmark: checks the compiled kernel against the broadcast form, then times four forms."""

import sys
from pathlib import Path

import pytest

from pcircuits.kernels import native

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import max_plus_kernel as mpk  # noqa: E402


def test_bench_rows_hold_every_form_and_their_ratios():
    if not native.available():
        pytest.skip(native.status())
    (row,) = mpk.bench([16], repeats=2)
    assert row["states"] == 16 and row["batch"] == mpk.BATCH
    assert set(row["microseconds"]) == {"compiled", "broadcast", "sum_layer", "blas"}
    assert all(t > 0 for t in row["microseconds"].values())
    t = row["microseconds"]
    assert row["compiled_vs_sum_layer"] == pytest.approx(t["compiled"] / t["sum_layer"])
