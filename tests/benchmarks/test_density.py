"""The density benchmark: its saved circuits reproduce the reported numbers, and the script runs end to end."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pcircuits as pc
from pcircuits.datasets import load_debd

ROOT = Path(__file__).resolve().parents[2]
DEBD = ROOT.parent / "shared" / "data" / "debd"
RESULTS = ROOT / "benchmarks" / "results" / "density.json"
sys.path.insert(0, str(ROOT / "benchmarks"))

import density  # noqa: E402

needs_debd = pytest.mark.skipif(not DEBD.is_dir(), reason="needs ../shared/data/debd")


def _results() -> dict:
    return json.loads(RESULTS.read_text())["results"] if RESULTS.is_file() else {}


@needs_debd
@pytest.mark.parametrize("name", sorted(_results()))
def test_saved_circuit_reproduces_reported_test_ll(name):
    rec = _results()[name]
    circuit = pc.load(ROOT / rec["model_file"])
    test = load_debd(name, "test", data_dir=DEBD)
    assert density.mean_ll(circuit, test) == pytest.approx(rec["test_ll"], abs=1e-4)
    assert circuit.num_parameters == rec["num_parameters"]


@needs_debd
@pytest.mark.parametrize("name", sorted(_results()))
def test_learnspn_beats_the_factorized_model(name):
    rec = _results()[name]
    if rec.get("learnspn") is None:
        pytest.skip("this row was run without LearnSPN")
    assert rec["learnspn"]["test_ll"] > rec["factorized"]["test_ll"] + 1.0


def test_factorized_ll_matches_a_direct_count():
    rng = np.random.default_rng(0)
    splits = {k: (rng.random((n, 5)) < 0.3).astype(np.int64) for k, n in (("train", 200), ("valid", 50), ("test", 50))}
    p1 = (splits["train"].sum(0) + 1) / (200 + 2)
    t = splits["test"]
    expected = float((t * np.log(p1) + (1 - t) * np.log(1 - p1)).sum(1).mean())
    assert density.factorized_ll(splits)["test_ll"] == pytest.approx(expected)


@needs_debd
def test_script_runs_a_tiny_grid_and_saves_loadable_circuits(tmp_path):
    argv = [
        "--data-dir", str(DEBD), "--datasets", "nltcs", "--out-dir", str(tmp_path), "--docs-page", "",
        "--latents", "2", "--components", "1", "2", "--pseudocounts", "0.1", "--minibatch-epochs", "1",
        "--fullbatch-epochs", "1", "--spn-time-budget", "2", "--jobs", "1",
    ]
    assert density.main(argv) == 0
    rec = json.loads((tmp_path / "density.json").read_text())["results"]["nltcs"]
    assert [t["model"] for t in rec["trials"]][:2] == [
        "HCLT(latents=2, pseudocount=0.1)",
        "2 x HCLT(latents=2, pseudocount=0.1)",
    ]
    assert rec["valid_ll"] == pytest.approx(max(t["valid_ll"] for t in rec["trials"]), abs=1e-4)
    circuit = pc.load(tmp_path / "density_models" / "nltcs.npz")
    with torch.no_grad():
        test = load_debd("nltcs", "test", data_dir=DEBD)
        assert density.mean_ll(circuit, test) == pytest.approx(rec["test_ll"], abs=1e-5)
    assert "| nltcs |" in (tmp_path / "density.md").read_text()


@needs_debd
def test_redo_retrains_only_the_named_data_sets(tmp_path):
    argv = [
        "--data-dir", str(DEBD), "--datasets", "nltcs", "--out-dir", str(tmp_path), "--docs-page", "",
        "--latents", "2", "--pseudocounts", "0.1", "--minibatch-epochs", "1", "--fullbatch-epochs", "1",
        "--learners", "hclt", "--jobs", "1",
    ]
    assert density.main(argv) == 0
    path = tmp_path / "density.json"
    saved = json.loads(path.read_text())
    saved["results"]["other"] = dict(saved["results"]["nltcs"], dataset="other")
    path.write_text(json.dumps(saved))
    assert density.main(argv + ["--latents", "3", "--redo"]) == 0
    saved = json.loads(path.read_text())
    assert sorted(saved["results"]) == ["nltcs", "other"]
    assert saved["results"]["nltcs"]["latents"] == 3 and saved["results"]["other"]["latents"] == 2
    replaced = saved["meta"]["replaced_results"]["nltcs"]
    assert len(replaced) == 1 and replaced[0]["model"] == "HCLT(latents=2, pseudocount=0.1)"
    assert saved["meta"]["earlier_runs"][-1]["grid"]["latents"] == [2]
