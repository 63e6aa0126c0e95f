"""Data-parallel EM on 2 gloo processes equals single-process EM; helpers; EM checkpoints and resume."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import pcircuits as pc
from pcircuits import distributed as pdist
from tests.pcircuits.fixtures import TIMEOUT_S, WORLD, nltcs, spawn


def _circuit(seed: int) -> pc.TensorCircuit:
    """Two levels of sums over 6 fully factorised Bernoulli products of NLTCS's 16 variables (float64)."""
    comps = [pc.multiply(*[pc.inputs(v, 1, pc.Bernoulli()) for v in range(16)]) for _ in range(6)]
    inner = pc.summate(*comps, num_nodes=2)
    return pc.compile(pc.summate(inner, num_nodes=1), seed=seed).to(torch.float64)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """201 NLTCS rows (odd, so shares and the last mini-batch of 50 are uneven) and 10% missing entries."""
    x = nltcs(201)
    g = torch.Generator().manual_seed(3)
    return x, torch.rand(x.shape, generator=g) < 0.1


def _params(c: pc.TensorCircuit) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in c.params.items()}


def _runs(distributed: bool | None, ckpt: Path) -> dict[str, object]:
    """Full-batch, mini-batch and checkpointed-then-resumed EM; the circuit seed differs per rank on purpose."""
    seed = 1 + pdist.rank(bool(distributed))  # rank 1 starts elsewhere: rank 0's parameters must win
    x, missing = _data()
    out: dict[str, object] = {}
    c = _circuit(seed)
    out["full_ll"] = pc.em(c, x, epochs=3, missing=missing, chunk_size=37, progress=False, distributed=distributed)
    out["full"] = _params(c)
    c = _circuit(seed)
    out["mini_ll"] = pc.em(c, x, epochs=2, batch_size=50, step_size=0.5, progress=False, distributed=distributed)
    out["mini"] = _params(c)
    c = _circuit(seed)
    pc.em(c, x, epochs=1, batch_size=50, step_size=0.5, progress=False, checkpoint=ckpt, distributed=distributed)
    c = _circuit(seed + 10)  # a fresh process would rebuild the circuit; resume restores the parameters
    out["resumed_ll"] = pc.em(c, x, epochs=2, batch_size=50, step_size=0.5, progress=False, checkpoint=ckpt,
                              resume=True, distributed=distributed)
    out["resumed"] = _params(c)
    out["files"] = sorted(p.name for p in ckpt.iterdir())
    return out


def _worker(rank: int, store: str, outdir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        out = _runs(True, Path(outdir) / "ckpt")
        flat = {f"{run}/{k}": v for run in ("full", "mini", "resumed") for k, v in out[run].items()}
        np.savez(Path(outdir) / f"rank{rank}.npz", **flat)
        meta = {k: out[k] for k in ("full_ll", "mini_ll", "resumed_ll", "files")}
        bad = _data()[0].clone()
        if rank == 1:
            bad[-1, 0] = 5  # not a Bernoulli value, in rank 1's share only: both ranks must raise, none hang
        try:
            pc.em(_circuit(1), bad, progress=False, distributed=True)
            meta["bad_data"] = "no error"
        except ValueError as err:
            meta["bad_data"] = str(err)
        (Path(outdir) / f"rank{rank}.json").write_text(json.dumps(meta))
    finally:
        dist.destroy_process_group()


def test_em_on_two_gloo_processes_equals_one_process(tmp_path):
    spawn(_worker, (str(tmp_path / "store"), str(tmp_path)))
    ref_dir = tmp_path / "single"
    ref_dir.mkdir()
    ref = _runs(None, ref_dir / "ckpt")
    for rank in range(WORLD):
        got = np.load(tmp_path / f"rank{rank}.npz")
        meta = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for run in ("full", "mini", "resumed"):
            for k, v in ref[run].items():
                np.testing.assert_allclose(got[f"{run}/{k}"], v, rtol=0, atol=1e-6, err_msg=f"rank {rank} {run} {k}")
                # and the parameters moved: the comparison is not between two untouched circuits
                assert not np.allclose(v, _params(_circuit(1))[k])
        for key in ("full_ll", "mini_ll", "resumed_ll"):
            np.testing.assert_allclose(meta[key], ref[key], rtol=1e-9, err_msg=f"rank {rank} {key}")
    assert meta["files"] == ref["files"] == ["circuit-000002.safetensors", "em_state.json"]
    bad_data = json.loads((tmp_path / "rank0.json").read_text())["bad_data"]
    assert bad_data == "checking data failed on rank 1 (see that rank's error)"
    assert "rows 101..200" in meta["bad_data"], meta["bad_data"]
    # the resumed run equals the uninterrupted one
    for k, v in ref["mini"].items():
        np.testing.assert_array_equal(ref["resumed"][k], v)
    assert ref["resumed_ll"] == ref["mini_ll"]


# --- helpers without a process group ---------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 7, 50])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_partitions_the_range_evenly(n, world):
    parts = [list(range(n))[pdist.shard(n, r, world)] for r in range(world)]
    assert [i for part in parts for i in part] == list(range(n))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_shard_and_active_check_their_arguments(monkeypatch):
    with pytest.raises(ValueError, match="rank"):
        pdist.shard(5, 2, 2)
    with pytest.raises(ValueError, match="world"):
        pdist.shard(5, 0, 0)
    assert not pdist.active(None) and not pdist.active(False)
    assert pdist.rank() == 0 and pdist.world_size() == 1
    with pytest.raises(ValueError, match="distributed=True"):
        pdist.active(True)
    with pytest.raises(TypeError, match="distributed"):
        pdist.active("yes")
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        pdist.init()
    with pytest.raises(ValueError, match="distributed=True"):
        pc.em(_circuit(1), _data()[0], progress=False, distributed=True)


# --- checkpoints and resume in one process ----------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 40])
def test_resume_after_an_interruption_gives_the_uninterrupted_result(tmp_path, batch_size):
    x, missing = _data()
    ref = _circuit(1)
    ref_ll = pc.em(ref, x, epochs=4, batch_size=batch_size, missing=missing, progress=False)
    c = _circuit(1)
    first = pc.em(c, x, epochs=2, batch_size=batch_size, missing=missing, progress=False, checkpoint=tmp_path / "ck")
    state = json.loads((tmp_path / "ck" / "em_state.json").read_text())
    assert state["epochs_done"] == 2 and state["history"] == first
    saved = pc.load(tmp_path / "ck" / state["circuit"])  # the checkpoint is an ordinary circuit file
    for k, v in c.params.items():
        assert torch.equal(saved.params[k], v)
    c = _circuit(7)
    ll = pc.em(c, x, epochs=4, batch_size=batch_size, missing=missing, progress=False, checkpoint=tmp_path / "ck",
               resume=True)
    assert ll == ref_ll
    for k, v in ref.params.items():
        assert torch.equal(c.params[k], v), k
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["circuit-000004.safetensors", "em_state.json"]
    again = pc.em(c, x, epochs=4, batch_size=batch_size, missing=missing, progress=False, checkpoint=tmp_path / "ck",
                  resume=True)
    assert again == ref_ll  # all epochs done: nothing left to run


def test_resume_without_a_state_starts_from_the_circuit(tmp_path):
    x, _ = _data()
    a, b = _circuit(1), _circuit(1)
    assert pc.em(a, x, epochs=2, progress=False) == pc.em(b, x, epochs=2, progress=False, checkpoint=tmp_path / "new",
                                                        resume=True)
    for k, v in a.params.items():
        assert torch.equal(b.params[k], v)


def test_checkpoint_errors_name_the_problem(tmp_path):
    x, _ = _data()
    c = _circuit(1)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        pc.em(c, x, progress=False, resume=True)
    with pytest.raises(TypeError, match="resume"):
        pc.em(c, x, progress=False, checkpoint=tmp_path / "ck", resume=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        pc.em(c, x, progress=False, checkpoint=tmp_path / "file")
    with pytest.raises(ValueError, match="parent directory"):
        pc.em(c, x, progress=False, checkpoint=tmp_path / "no" / "ck")
    pc.em(c, x, epochs=2, batch_size=50, progress=False, checkpoint=tmp_path / "ck")
    before = _params(c)
    with pytest.raises(ValueError, match="batch_size=50"):
        pc.em(c, x, epochs=3, batch_size=60, progress=False, checkpoint=tmp_path / "ck", resume=True)
    with pytest.raises(ValueError, match="examples=201"):
        pc.em(c, x[:200], epochs=3, batch_size=50, progress=False, checkpoint=tmp_path / "ck", resume=True)
    with pytest.raises(ValueError, match="more than epochs=1"):
        pc.em(c, x, epochs=1, batch_size=50, progress=False, checkpoint=tmp_path / "ck", resume=True)
    other = pc.compile(pc.summate(*[pc.multiply(*[pc.inputs(v, 1, pc.Bernoulli()) for v in range(16)])
                                    for _ in range(3)], num_nodes=1), seed=0).to(torch.float64)
    with pytest.raises(ValueError, match="parameter banks"):
        pc.em(other, x, epochs=3, batch_size=50, progress=False, checkpoint=tmp_path / "ck", resume=True)
    (tmp_path / "ck" / "em_state.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a version-1 EM checkpoint"):
        pc.em(c, x, epochs=3, batch_size=50, progress=False, checkpoint=tmp_path / "ck", resume=True)
    after = _params(c)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)  # failed resumes leave the circuit unchanged


def test_broadcast_moves_the_version_so_cached_leaf_tables_refresh(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store1'}", rank=0, world_size=1)
    try:
        c = _circuit(0)
        x, _ = _data()
        before = c(x[:8])
        name = next(iter(c.params))
        with torch.no_grad():
            c.leaf_table(0)  # cache the table of the first leaf bank
            version = c.params[name]._version
            pdist.broadcast_tensors([c.params[name]], src=0)
        assert c.params[name]._version > version
        assert torch.equal(c(x[:8]), before)
    finally:
        dist.destroy_process_group()
