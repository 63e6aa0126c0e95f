"""Data-parallel prior training on 2 gloo processes equals the single-process run.

Tolerances. ``codd train-prior`` trains a float32 circuit with Adam: the two
ranks sum their halves of each batch's gradient in another order than one
process does, so gradients differ by a few float32 ulps (~1e-7 relative), and
Adam's normalised steps carry that into the parameters at about the same
relative size per step (measured: 4e-6 on logits of size 13 after 10 steps
and one EM epoch). The test allows 1e-5 relative plus 1e-5 absolute (about a
hundred ulps) and checks that the parameters moved far more than that. In
float64 (`fit_prior` called directly) the same comparison holds to 1e-9.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import pcircuits as pc
from diffusion import CoDDPrior
from diffusion.cli import main
from diffusion.codd.training import fit_prior
from diffusion.data import BUNDLED_DATA_DIR
from tests.pcircuits.fixtures import TIMEOUT_S, WORLD, spawn

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "model"
    assert main([
        "train-backbone", "--data", str(BUNDLED_DATA_DIR), "--output", str(out), "--vocab-size", "300",
        "--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "32", "--batch-size", "4",
        "--max-steps", "1", "--eval-examples", "2", "--train-limit", "20", "--no-progress",
    ]) == 0
    return out


def _train_prior_args(model: Path, output: Path) -> list[str]:
    # 32 windows: 3 held out, 29 trained in batches of 8 (the last, of 5, splits 3 + 2); one EM epoch first
    return ["train-prior", str(model), "--data", str(BUNDLED_DATA_DIR), "--output", str(output), "--window", "8",
            "--states", "3", "--windows", "32", "--top-k", "8", "--epochs", "2", "--batch-size", "8",
            "--em-epochs", "1", "--examples", "20", "--no-progress"]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="the torchrun script is not installed beside this Python")
def test_codd_train_prior_with_torchrun_on_two_processes_equals_one_process(tiny_model, tmp_path, capsys):
    capsys.readouterr()
    assert main(_train_prior_args(tiny_model, tmp_path / "one.npz")) == 0
    ref = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    path = os.pathsep.join([str(Path(__file__).parents[3]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # each rank's stdout goes to its own file (--redirects 1), so the ranks' JSON lines cannot interleave
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(WORLD), "--log-dir", str(tmp_path / "logs"),
           "--redirects", "1", "-m", "diffusion.cli", *_train_prior_args(tiny_model, tmp_path / "two.npz")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    logs = sorted((tmp_path / "logs").rglob("stdout.log"))
    results = [json.loads(f.read_text().strip().splitlines()[-1]) for f in logs]
    assert len(results) == WORLD  # every rank reports the same all-reduced held-out NLL
    for res in results:
        np.testing.assert_allclose(res["heldout_nll"], ref["heldout_nll"], rtol=1e-5)
    one, two = CoDDPrior.load(tmp_path / "one.npz"), CoDDPrior.load(tmp_path / "two.npz")
    init = CoDDPrior.hmm(8, 3, 300, seed=0, top_k=8)
    for name, p in one.circuit.params.items():
        p, q = p.detach(), two.circuit.params[name].detach()
        np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
        # training moved it far beyond the tolerance
        assert (p - init.circuit.params[name].detach()).abs().max() > 1e-2, name
    assert sorted(q.name for q in tmp_path.iterdir() if q.suffix == ".npz") == ["one.npz", "two.npz"]


def _windows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """23 random windows of 6 tokens over 12 symbols, their masks and float64 logits."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(12, (23, 6), generator=g)
    masked = torch.rand(23, 6, generator=g) < 0.6
    masked[:, 0] = True
    logits = torch.randn(23, 6, 12, generator=g, dtype=torch.float64) * 2
    return x0, masked, logits


def _fit(ckpt: Path, distributed: bool | None, seed: int) -> tuple[list[float], dict[str, np.ndarray]]:
    prior = CoDDPrior.hmm(6, 4, 12, seed=seed)
    prior.circuit.to(torch.float64)
    x0, masked, logits = _windows()
    hist = fit_prior(prior, x0, masked, logits, epochs=3, batch_size=5, lr=0.05, valid_frac=0.2, em_epochs=1,
                     checkpoint=ckpt, progress=False, weighting="window", distributed=distributed)
    return hist, {k: v.detach().numpy().copy() for k, v in prior.circuit.params.items()}


def _fit_worker(rank: int, store: str, outdir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        hist, params = _fit(Path(outdir) / "two.npz", True, seed=rank)  # rank 1's own init must be replaced by rank 0's
        np.savez(Path(outdir) / f"rank{rank}.npz", **params)
        (Path(outdir) / f"rank{rank}.json").write_text(json.dumps(hist))
    finally:
        dist.destroy_process_group()


def test_fit_prior_in_float64_on_two_processes_equals_one_process(tmp_path):
    spawn(_fit_worker, (str(tmp_path / "store"), str(tmp_path)))
    hist, params = _fit(tmp_path / "one.npz", None, seed=0)
    for rank in range(WORLD):
        np.testing.assert_allclose(json.loads((tmp_path / f"rank{rank}.json").read_text()), hist, rtol=1e-12)
        got = np.load(tmp_path / f"rank{rank}.npz")
        for k, v in params.items():
            np.testing.assert_allclose(got[k], v, rtol=0, atol=1e-9, err_msg=f"rank {rank} {k}")
    one, two = pc.load(tmp_path / "one.npz"), pc.load(tmp_path / "two.npz")  # rank 0 wrote the best epoch
    for k, v in one.params.items():
        np.testing.assert_allclose(two.params[k].detach().numpy(), v.detach().numpy(), rtol=0, atol=1e-9)
