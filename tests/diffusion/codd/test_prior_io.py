"""CoDD prior files: one atomic artefact (circuit + backoff), old .npz + sidecar priors still load, all validated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import pcircuits as pc
from diffusion.codd.prior import CoDDPrior
from tests.pcircuits.fixtures import save_v1

ROOT = Path(__file__).resolve().parents[3]
BACKOFF = [0.25, 0.5, 0.875, 1.0]


def small_prior(backoff: list[float] | None = BACKOFF) -> CoDDPrior:
    prior = CoDDPrior.hmm(window=4, num_latents=3, vocab_size=5, homogeneous=False, seed=1)
    prior.set_backoff(backoff)
    return prior


def query(prior: CoDDPrior) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (6, 4), generator=g)
    logits = torch.randn(6, 4, 5, generator=g)
    masked = torch.rand(6, 4, generator=g) < 0.5
    return prior.log_prob(x, logits, masked)


def assert_same_prior(a: CoDDPrior, b: CoDDPrior) -> None:
    for name in a.circuit.params:
        assert torch.equal(a.circuit.params[name].detach(), b.circuit.params[name].detach())
    assert (a.backoff is None) == (b.backoff is None)
    if a.backoff is not None:
        assert b.backoff.dtype == a.backoff.dtype and torch.equal(a.backoff, b.backoff)
    assert torch.equal(query(a), query(b))


@pytest.mark.parametrize("backoff", [BACKOFF, None, [0.3]])
def test_round_trip_is_bit_identical_without_sidecar(tmp_path, backoff):
    prior = small_prior(backoff)
    prior.save(tmp_path / "p.st")
    loaded = CoDDPrior.load(tmp_path / "p.st", top_k=3)
    assert loaded.top_k == 3
    loaded.top_k = None
    assert_same_prior(prior, loaded)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.st"]  # no sidecar, no temporary file


def test_prior_file_is_a_circuit_file(tmp_path):
    prior = small_prior()
    prior.save(tmp_path / "p.st")
    circuit = pc.load(tmp_path / "p.st")  # the circuit alone, the backoff ignored
    assert torch.equal(circuit(torch.zeros(2, 4, dtype=torch.long)), prior.circuit(torch.zeros(2, 4, dtype=torch.long)))


def test_save_removes_a_stale_sidecar_and_new_files_ignore_sidecars(tmp_path):
    path = tmp_path / "p.npz"
    side = tmp_path / "p.npz.backoff.json"
    side.write_text(json.dumps({"backoff": [0.1, 0.2]}))
    small_prior(None).save(path)
    assert not side.exists()
    side.write_text(json.dumps({"backoff": [0.1, 0.2]}))  # copied in by hand next to a new file
    assert CoDDPrior.load(path).backoff is None
    small_prior().save(path)
    assert not side.exists()
    assert torch.equal(CoDDPrior.load(path).backoff, torch.tensor(BACKOFF, dtype=torch.float64))


def save_v1_prior(prior: CoDDPrior, path: Path) -> None:
    """The prior writer of earlier versions: a version-1 circuit archive plus a JSON sidecar."""
    save_v1(prior.circuit, path)
    if prior.backoff is not None:
        Path(str(path) + ".backoff.json").write_text(json.dumps({"backoff": prior.backoff.tolist()}))


@pytest.mark.parametrize("backoff", [BACKOFF, None])
def test_old_npz_and_sidecar_priors_still_load(tmp_path, backoff):
    prior = small_prior(backoff)
    save_v1_prior(prior, tmp_path / "old.npz")
    assert_same_prior(prior, CoDDPrior.load(tmp_path / "old.npz"))


def test_committed_old_prior_loads():
    path = ROOT / "benchmarks" / "results" / "codd_gsm8k_prior.npz"
    if not path.is_file():
        pytest.skip("benchmark prior not present")
    prior = CoDDPrior.load(path)
    assert prior.window >= 1 and prior.vocab_size >= 2


def _run_limited(script: str, limit: int) -> subprocess.CompletedProcess:
    code = "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    code += f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n" + textwrap.dedent(script)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def big_prior() -> CoDDPrior:
    p = CoDDPrior.hmm(window=8, num_latents=64, vocab_size=50, homogeneous=False)
    p.set_backoff([0.5, 1.0])
    return p


def test_interrupted_save_keeps_previous_prior(tmp_path):
    old = small_prior()
    path = tmp_path / "prior.st"
    old.save(path)
    before = path.read_bytes()
    big_prior().save(tmp_path / "big.st")  # the size the interrupted save needs
    size = (tmp_path / "big.st").stat().st_size
    (tmp_path / "big.st").unlink()
    assert size > 4 * len(before)
    script = f"""
        from tests.diffusion.codd.test_prior_io import big_prior
        big_prior().save({str(path)!r})
        """
    failed = _run_limited(script, size // 2)
    assert failed.returncode != 0 and "File too large" in failed.stderr
    assert path.read_bytes() == before
    assert_same_prior(old, CoDDPrior.load(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.st"]


def _v2_with_extras(tmp_path: Path, extras: dict) -> Path:
    path = tmp_path / "bad.st"
    pc.save(small_prior(None).circuit, path, extras=extras)
    return path


def _v1_with_sidecar(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.npz"
    save_v1(small_prior(None).circuit, path)
    Path(str(path) + ".backoff.json").write_text(text)
    return path


BAD = {
    "backoff_above_one": lambda t: _v2_with_extras(t, {"codd_backoff": [0.5, 1.5]}),
    "backoff_negative": lambda t: _v2_with_extras(t, {"codd_backoff": [-0.1]}),
    "backoff_two_dimensional": lambda t: _v2_with_extras(t, {"codd_backoff": [[0.5, 1.0]]}),
    "unknown_extra": lambda t: _v2_with_extras(t, {"payload": [1.0]}),
    "sidecar_nan": lambda t: _v1_with_sidecar(t, '{"backoff": [NaN, 0.5]}'),
    "sidecar_infinity": lambda t: _v1_with_sidecar(t, '{"backoff": [Infinity]}'),
    "sidecar_above_one": lambda t: _v1_with_sidecar(t, '{"backoff": [0.5, 2]}'),
    "sidecar_empty_list": lambda t: _v1_with_sidecar(t, '{"backoff": []}'),
    "sidecar_strings": lambda t: _v1_with_sidecar(t, '{"backoff": ["0.5"]}'),
    "sidecar_not_object": lambda t: _v1_with_sidecar(t, "[0.5]"),
    "sidecar_not_json": lambda t: _v1_with_sidecar(t, "backoff = 0.5"),
    "sidecar_huge": lambda t: _v1_with_sidecar(t, '{"backoff": [' + "0.5," * 400_000 + "0.5]}"),
    "sidecar_bools": lambda t: _v1_with_sidecar(t, '{"backoff": [true]}'),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_prior_files_raise_value_error_naming_path(tmp_path, case):
    path = BAD[case](tmp_path)
    with pytest.raises(ValueError) as err:
        CoDDPrior.load(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg, msg


def test_a_circuit_that_is_not_a_prior_is_refused(tmp_path):
    root = pc.summate(pc.multiply(pc.inputs(0, 2, pc.Gaussian()), pc.inputs(1, 2, pc.Categorical(3))), num_nodes=1)
    pc.save(pc.compile(root), tmp_path / "g.st")
    with pytest.raises(ValueError, match="not a CoDD prior"):
        CoDDPrior.load(tmp_path / "g.st")


# ------------------------------------------------------------------------------- checkpoint directories
class FakeBackbone:
    """What `save_pretrained` / `from_pretrained` read of a `diffusion.backbones.Backbone`."""

    def __init__(self, vocab_size: int = 5, mask_token_id: int = 4):
        self.vocab_size, self.mask_token_id = vocab_size, mask_token_id


TRAINING = {"lr": 0.05, "epochs": 3, "data": "gsm8k", "top_k": None, "nested": {"seed": [1, 2]}}


@pytest.mark.parametrize("backoff", [BACKOFF, [1 / 3, 0.1], None])
def test_checkpoint_round_trip_is_bit_identical(tmp_path, backoff):
    prior = small_prior(backoff)
    prior.top_k = 3
    out = prior.save_pretrained(tmp_path / "ckpt", backbone=FakeBackbone(), training=TRAINING)
    assert out == tmp_path / "ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary directory left
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "prior.safetensors"]
    loaded = CoDDPrior.from_pretrained(out, backbone=FakeBackbone())
    assert_same_prior(prior, loaded)
    if backoff is not None:  # float64 weights survive both the file and the JSON exactly
        assert loaded.backoff.dtype == torch.float64 and loaded.backoff.tolist() == backoff
    assert loaded.top_k == 3 and CoDDPrior.from_pretrained(out, top_k=None).top_k is None
    assert torch.equal(query(prior), query(loaded))
    config = json.loads((out / "config.json").read_text())
    assert config == {
        "format": "codd-prior", "format_version": 1, "window": 4, "states": 3, "vocab_size": 5, "top_k": 3,
        "backoff": backoff, "backbone": {"vocab_size": 5, "mask_token_id": 4}, "training": TRAINING,
    }
    # saved again from the loaded prior: the same config bytes and the same tensors (safetensors' header
    # metadata order is not fixed, so the circuit files are compared tensor by tensor)
    again = loaded.save_pretrained(tmp_path / "again", backbone=FakeBackbone(), training=TRAINING)
    assert (out / "config.json").read_bytes() == (again / "config.json").read_bytes()
    first, second = (load_file(d / "prior.safetensors") for d in (out, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_load_accepts_a_checkpoint_directory(tmp_path):
    prior = small_prior()
    prior.top_k = 2
    prior.save_pretrained(tmp_path / "ckpt")
    loaded = CoDDPrior.load(tmp_path / "ckpt")
    assert_same_prior(prior, loaded)
    assert loaded.top_k == 2 and CoDDPrior.load(tmp_path / "ckpt", top_k=4).top_k == 4
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["backbone"] is None


@pytest.mark.parametrize(("backbone", "names"), [
    (FakeBackbone(vocab_size=7, mask_token_id=4), ["vocab_size=7", "5 tokens"]),
    (FakeBackbone(vocab_size=5, mask_token_id=0), ["mask_token_id=4", "mask_token_id=0"]),
])
def test_a_mismatched_backbone_is_refused(tmp_path, backbone, names):
    small_prior().save_pretrained(tmp_path / "ckpt", backbone=FakeBackbone())
    with pytest.raises(ValueError, match="^backbone") as err:
        CoDDPrior.from_pretrained(tmp_path / "ckpt", backbone=backbone)
    assert all(n in str(err.value) for n in names), str(err.value)


def test_without_a_recorded_backbone_only_the_vocabulary_is_checked(tmp_path):
    small_prior().save_pretrained(tmp_path / "ckpt")
    CoDDPrior.from_pretrained(tmp_path / "ckpt", backbone=FakeBackbone(5, 0))
    with pytest.raises(ValueError, match="^backbone.*vocab_size=6"):
        CoDDPrior.from_pretrained(tmp_path / "ckpt", backbone=FakeBackbone(6, 0))


def test_save_pretrained_refuses_bad_arguments(tmp_path):
    prior = small_prior()
    with pytest.raises(ValueError, match="^backbone"):
        prior.save_pretrained(tmp_path / "a", backbone=FakeBackbone(vocab_size=9))
    with pytest.raises(TypeError, match="^backbone"):
        prior.save_pretrained(tmp_path / "a", backbone=object())
    with pytest.raises(ValueError, match="^training"):
        prior.save_pretrained(tmp_path / "a", training={"dtype": torch.float32})
    with pytest.raises(ValueError, match="^training"):
        prior.save_pretrained(tmp_path / "a", training={1: "int key"})
    with pytest.raises(TypeError, match="^training"):
        prior.save_pretrained(tmp_path / "a", training=[1])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="^path"):
        prior.save_pretrained(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def _edit_config(edit):
    def make(ckpt: Path) -> None:
        path = ckpt / "config.json"
        config = json.loads(path.read_text())
        edit(config)
        path.write_text(json.dumps(config))
    return make


BAD_CONFIG = {
    "missing key": _edit_config(lambda c: c.pop("states")),
    "unknown key": _edit_config(lambda c: c.update(hidden=3)),
    "window wrong type": _edit_config(lambda c: c.update(window="4")),
    "window a bool": _edit_config(lambda c: c.update(window=True)),
    "window inconsistent": _edit_config(lambda c: c.update(window=5)),
    "states inconsistent": _edit_config(lambda c: c.update(states=2)),
    "vocab inconsistent": _edit_config(lambda c: c.update(vocab_size=6, backbone=None)),
    "backoff inconsistent": _edit_config(lambda c: c.update(backoff=[0.5])),
    "backoff out of range": _edit_config(lambda c: c.update(backoff=[1.5])),
    "top_k too large": _edit_config(lambda c: c.update(top_k=5)),
    "format": _edit_config(lambda c: c.update(format="other")),
    "version": _edit_config(lambda c: c.update(format_version=2)),
    "backbone keys": _edit_config(lambda c: c.update(backbone={"vocab_size": 5})),
    "backbone vocab": _edit_config(lambda c: c.update(backbone={"vocab_size": 6, "mask_token_id": 0})),
    "training type": _edit_config(lambda c: c.update(training=[1])),
    "not an object": lambda ckpt: (ckpt / "config.json").write_text("[1, 2]"),
    "not json": lambda ckpt: (ckpt / "config.json").write_text("{window: 4"),
    "no config": lambda ckpt: (ckpt / "config.json").unlink(),
    "no circuit": lambda ckpt: (ckpt / "prior.safetensors").unlink(),
    "bad circuit": lambda ckpt: (ckpt / "prior.safetensors").write_bytes(b"\0" * 64),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIG))
def test_malformed_checkpoints_raise_value_error_naming_the_path(tmp_path, case):
    ckpt = tmp_path / "ckpt"
    small_prior().save_pretrained(ckpt, backbone=FakeBackbone())
    CoDDPrior.from_pretrained(ckpt)  # valid before the edit
    BAD_CONFIG[case](ckpt)
    with pytest.raises(ValueError, match="^path") as err:
        CoDDPrior.from_pretrained(ckpt)
    assert str(ckpt) in str(err.value)


def test_an_interrupted_checkpoint_save_keeps_the_previous_directory(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    old = small_prior()
    old.save_pretrained(ckpt, training={"run": 1})
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    new = CoDDPrior.hmm(window=4, num_latents=3, vocab_size=5, homogeneous=False, seed=7)

    save = CoDDPrior.save

    def broken_save(self, path):  # the circuit file is written, then the save fails
        save(self, path)
        raise OSError("disk full")

    monkeypatch.setattr(CoDDPrior, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        new.save_pretrained(ckpt, training={"run": 2})
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # the temporary directory is gone
    assert_same_prior(old, CoDDPrior.from_pretrained(ckpt))
