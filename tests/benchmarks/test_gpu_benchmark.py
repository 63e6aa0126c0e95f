"""The GPU benchmark script: its CoDD-overhead section and its bookkeeping run on CPU at tiny sizes."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

_HAD_INTERPRET = "TRITON_INTERPRET" in os.environ
import gpu_benchmark as gb  # noqa: E402

TINY = {"hidden": 32, "layers": 1, "heads": 2, "mlp": 48, "vocab": 64}


def test_import_leaves_the_triton_interpreter_setting_alone():
    assert ("TRITON_INTERPRET" in os.environ) == _HAD_INTERPRET


@pytest.fixture(scope="module")
def codd_record():
    return gb.run_codd_overhead(TINY, [8, 16], (8, 8, 4), torch.device("cpu"), warmup=0, repeats=2, smoke=True)


def test_codd_overhead_backbone_has_the_requested_shape_in_bfloat16(codd_record):
    h, f, n, v = TINY["hidden"], TINY["mlp"], TINY["layers"], TINY["vocab"]
    # embedding + head, per layer q/k/v/o + gate/up/down + two norms, final norm
    expected = 2 * v * h + n * (4 * h * h + 3 * h * f + 2 * h) + h
    assert codd_record["backbone_params"] == expected
    assert codd_record["backbone_param_dtypes"] == ["torch.bfloat16"]
    assert [r["length"] for r in codd_record["backbone"]] == [8, 16]
    for r in codd_record["backbone"]:
        assert r["seconds"] > 0 and r["finite"] is True
        assert r["flops"] == pytest.approx(2 * (n * (4 * h * h + 3 * h * f) + h * v) * r["length"]
                                           + 4 * n * r["length"] ** 2 * h)  # fmt: skip


def test_codd_overhead_times_the_prior_with_top_k_and_full_vocabulary(codd_record):
    rows = codd_record["prior_steps"]["rows"]
    assert [r["top_k"] for r in rows] == [4, None]
    assert all(r["seconds"] > 0 and r["first_call_s"] > 0 for r in rows)
    ratios = {(q["length"], q["top_k"]): q["prior_over_backbone"] for q in codd_record["ratios"]}
    assert set(ratios) == {(L, k) for L in (8, 16) for k in (4, None)}
    for b in codd_record["backbone"]:
        for r in rows:
            assert ratios[(b["length"], r["top_k"])] == pytest.approx(r["seconds"] / b["seconds"])


def test_codd_section_is_labelled_a_smoke_test_and_lists_every_length(codd_record):
    text = "\n".join(gb._codd_section(codd_record))
    assert "smoke test" in text and "not a measurement" in text
    rows = [line for line in text.splitlines() if line.startswith("| 8 |") or line.startswith("| 16 |")]
    assert len(rows) == 2 and all(line.count("|") == 8 for line in rows)


def test_budget_skips_a_section_that_does_not_fit():
    budget = gb.Budget(100.0)
    assert budget.fits("small", 1.0)
    assert not budget.fits("large", 1e6)
    assert len(budget.skipped) == 1 and budget.skipped[0].startswith("large: skipped")


@pytest.mark.parametrize("n,cap,expected", [(1, 32, 1), (12, 32, 4), (1024, 32, 32), (1024, 1024, 1024), (96, 64, 32)])
def test_pyjuice_block_size_is_the_largest_power_of_two_dividing_n_within_the_cap(n, cap, expected):
    assert gb._block_size(n, cap) == expected
