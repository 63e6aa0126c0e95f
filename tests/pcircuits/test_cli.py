"""The ``pcircuits`` command line and the DEBD data loader."""

import gzip
import json

import numpy as np
import pytest
import torch

import pcircuits as pc
from pcircuits import cli
from pcircuits.datasets import load_debd, read_data_file


def write_data(path, arr):
    np.savetxt(path, arr, fmt="%d", delimiter=",")
    return str(path)


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, 600)
    return (rng.random((600, 5)) < np.where(z[:, None] == 1, 0.85, 0.15)).astype(np.int64)


def test_bundled_nltcs_and_gzip(tmp_path):
    d = load_debd("nltcs")
    assert set(d) == {"train", "valid", "test"}
    assert d["train"].shape == (16181, 16) and d["test"].shape[1] == 16
    assert set(np.unique(d["valid"])) <= {0, 1}
    arr = np.array([[0, 1, 1], [1, 0, 1]])
    with gzip.open(tmp_path / "x.train.data.gz", "wt") as f:
        f.write("0,1,1\n1,0,1\n")
    assert np.array_equal(load_debd("x", "train", data_dir=tmp_path), arr)
    np.save(tmp_path / "x.npy", arr)
    assert np.array_equal(read_data_file(tmp_path / "x.npy"), arr)


@pytest.mark.parametrize(
    "content, match",
    [("0,1\n1,0,1\n", "line 2"), ("a,b\n", "comma-separated"), ("", "no examples")],
)
def test_read_data_file_errors(tmp_path, content, match):
    p = tmp_path / "bad.data"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_data_file(p)
    with pytest.raises(ValueError, match="path"):
        read_data_file(tmp_path / "missing.data")
    with pytest.raises(ValueError, match="split"):
        load_debd("nltcs", "training")


@pytest.mark.parametrize("learner", ["hclt", "learnspn"])
def test_fit_then_eval(tmp_path, small_data, capsys, learner):
    train = write_data(tmp_path / "train.data", small_data[:400])
    valid = write_data(tmp_path / "valid.data", small_data[400:500])
    np.save(tmp_path / "test.npy", small_data[500:])
    model = str(tmp_path / "m.npz")
    args = ["fit", train, "--valid", valid, "--out", model, "--learner", learner, "--latents", "3",
            "--minibatch-epochs", "1", "--fullbatch-epochs", "2", "--quiet"]
    assert cli.main(args) == 0
    assert "saved" in capsys.readouterr().out
    assert (
        cli.main(["eval", model, str(tmp_path / "test.npy"), "--json", "--per-example", str(tmp_path / "ll.txt")]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    want = pc.load(model)(torch.from_numpy(small_data[500:])).detach().double()
    assert out["num_examples"] == 100
    assert out["mean_ll"] == pytest.approx(float(want.mean()), abs=1e-6)
    assert np.allclose(np.loadtxt(tmp_path / "ll.txt"), want.numpy(), atol=1e-5)


def test_errors_name_the_file(tmp_path, small_data, capsys):
    (tmp_path / "junk.data").write_text("hello,world\n")
    assert cli.main(["fit", str(tmp_path / "junk.data"), "--out", str(tmp_path / "m.npz")]) == 2
    assert "data:" in capsys.readouterr().err
    assert cli.main(["eval", str(tmp_path / "none.npz"), str(tmp_path / "junk.data")]) == 2
    assert "model: no such file" in capsys.readouterr().err
    (tmp_path / "fake.npz").write_bytes(b"not a zip")
    assert cli.main(["eval", str(tmp_path / "fake.npz"), str(tmp_path / "junk.data")]) == 2
    assert "model:" in capsys.readouterr().err
    train = write_data(tmp_path / "t.data", small_data[:50])
    assert cli.main(["fit", train, "--valid", str(tmp_path / "nope.data"), "--out", str(tmp_path / "m.npz")]) == 2
    assert "--valid" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["fit"], ["eval"], ["sample"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(command + ["--help"])
    assert e.value.code == 0
    assert "usage: pcircuits" in capsys.readouterr().out


def test_sample(tmp_path, small_data, capsys):
    train = write_data(tmp_path / "train.data", small_data)
    model = str(tmp_path / "m.npz")
    assert (
        cli.main(
            [
                "fit",
                train,
                "--out",
                model,
                "--latents",
                "2",
                "--minibatch-epochs",
                "1",
                "--fullbatch-epochs",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert cli.main(["sample", model, "-n", "7", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (7, 5) and set(np.unique(s)) <= {0, 1}
    assert cli.main(["sample", model, "-n", "7", "--out", str(tmp_path / "s.data")]) == 0
    assert np.array_equal(np.loadtxt(tmp_path / "s.data", delimiter=",", dtype=np.int64), s)  # same seed, same samples
    # samples follow the model: their mean matches the circuit's marginals P(x_v = 1)
    assert cli.main(["sample", model, "-n", "4000", "--seed", "1", "--out", str(tmp_path / "big.npy")]) == 0
    c = pc.load(model).to(torch.float64)
    ones = torch.eye(5, dtype=torch.long)
    p1 = c(ones, ~torch.eye(5, dtype=torch.bool)).detach().exp().numpy()
    assert np.abs(np.load(tmp_path / "big.npy").mean(0) - p1).max() < 0.05
    assert cli.main(["sample", model, "-n", "0"]) == 2
    assert "--num-samples" in capsys.readouterr().err


# --- every user error: exit 2, one line on stderr, nothing changed ------------------------------------------


def snapshot(folder):
    """Every file under ``folder`` (relative path -> bytes) and every folder: what a failed command must not change."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, small_data):
    """A model, its data, broken model files, an existing output and a folder, shared by the error cases."""
    d = tmp_path_factory.mktemp("cli_errors")
    write_data(d / "data.csv", small_data[:200])
    write_data(d / "three.csv", small_data[:20, :3])
    (d / "junk.data").write_text("hello,world\n")
    assert cli.main(["fit", str(d / "data.csv"), "--out", str(d / "m.npz"), "--latents", "2", "--minibatch-epochs", "1",
                     "--fullbatch-epochs", "1", "--quiet"]) == 0
    (d / "empty.npz").write_bytes(b"")
    (d / "trunc.npz").write_bytes((d / "m.npz").read_bytes()[:300])
    (d / "old.npy").write_bytes(b"an existing output")
    (d / "folder").mkdir()
    return d


SAMPLE_CASES = [
    ["sample", "{d}/m.npz", "-o", "{d}/missing/dir/x.npy"],
    ["sample", "{d}/m.npz", "-o", "{d}/m.npz"],
    ["sample", "{d}/m.npz", "-o", "{d}/m.npz", "--force"],
    ["sample", "{d}/m.npz", "-o", "{d}/old.npy"],
    ["sample", "{d}/m.npz", "-o", "{d}/folder", "--force"],
    ["sample", "{d}/m.npz", "-n", "0"],
    ["sample", "{d}/m.npz", "-n", "-3"],
    ["sample", "{d}/m.npz", "-n", "many"],
    ["sample", "{d}/m.npz", "--seed", "-1"],
    ["sample", "{d}/empty.npz", "-o", "{d}/new.npy"],
    ["sample", "{d}/data.csv"],
]

ERROR_CASES = [
    [],
    ["bogus"],
    ["eval"],
    ["eval", "{d}/m.npz"],
    ["eval", "{d}/m.npz", "{d}/data.csv", "--unknown-flag"],
    ["eval", "{d}/none.npz", "{d}/data.csv"],
    ["eval", "{d}/data.csv", "{d}/data.csv"],  # a CSV given as a model
    ["eval", "{d}/empty.npz", "{d}/data.csv"],
    ["eval", "{d}/trunc.npz", "{d}/data.csv"],
    ["eval", "{d}/folder", "{d}/data.csv"],
    ["eval", "{d}/m.npz", "{d}/none.data"],
    ["eval", "{d}/m.npz", "{d}/folder"],
    ["eval", "{d}/m.npz", "{d}/junk.data"],
    ["eval", "{d}/m.npz", "{d}/three.csv"],
    ["eval", "{d}/m.npz", "{d}/data.csv", "--batch-size", "0"],
    ["eval", "{d}/m.npz", "{d}/data.csv", "--batch-size", "1.5"],
    ["eval", "{d}/m.npz", "{d}/data.csv", "--per-example", "{d}/missing/ll.txt"],
    ["eval", "{d}/m.npz", "{d}/data.csv", "--per-example", "{d}/old.npy"],
    ["eval", "{d}/m.npz", "{d}/data.csv", "--per-example", "{d}/data.csv", "--force"],
    ["eval", "{d}/m.npz", "{d}/data.csv", "--per-example", "{d}/m.npz", "--force"],
    ["eval", "{d}/m.npz", "{d}/data.csv", "--per-example", "{d}/folder", "--force"],
    ["fit", "{d}/data.csv"],
    ["fit", "{d}/data.csv", "-o", "{d}/m.npz"],
    ["fit", "{d}/data.csv", "-o", "{d}/data.csv", "--force"],
    ["fit", "{d}/data.csv", "--valid", "{d}/three.csv", "-o", "{d}/three.csv", "--force"],
    ["fit", "{d}/data.csv", "-o", "{d}/missing/m.npz"],
    ["fit", "{d}/data.csv", "-o", "{d}", "--force"],
    ["fit", "{d}/junk.data", "-o", "{d}/new.npz"],
    ["fit", "{d}/none.data", "-o", "{d}/new.npz"],
    ["fit", "{d}/data.csv", "--valid", "{d}/three.csv", "-o", "{d}/new.npz"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--learner", "nope"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--latents", "0"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--components", "-1"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--softening", "0.5"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--pseudocount", "nan"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--pseudocount", "-1"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--time-budget", "0"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--time-budget", "inf"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--threads", "0"],
    ["fit", "{d}/data.csv", "-o", "{d}/new.npz", "--patience", "0"],
] + SAMPLE_CASES


def run_cli(main, argv):
    """``main(argv)``'s exit status, whether it returns it or raises ``SystemExit``."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("argv", ERROR_CASES, ids=lambda a: " ".join(a).replace("{d}/", "") or "no-args")
def test_every_user_error_is_one_line_and_exit_2(workdir, capsys, argv):
    before = snapshot(workdir)
    capsys.readouterr()
    status = run_cli(cli.main, [a.format(d=workdir) for a in argv])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith("pcircuits") and ": error: " in lines[0]
    assert "Traceback" not in err and "pickle" not in err
    assert out == ""
    assert snapshot(workdir) == before


def test_entry_point_prints_one_line_without_traceback(workdir):
    """The real process: usage error and a refused self-overwrite, each one line on stderr and exit 2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    before = snapshot(workdir)
    for argv in (["eval"], ["eval", str(workdir / "empty.npz"), str(workdir / "data.csv")]):
        res = subprocess.run([sys.executable, "-m", "pcircuits.cli", *argv], capture_output=True, text=True, env=env)
        assert res.returncode == 2 and res.stdout == ""
        assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert snapshot(workdir) == before


def test_force_replaces_an_output_atomically(workdir, tmp_path, capsys):
    out = tmp_path / "s.npy"
    out.write_bytes(b"old")
    assert cli.main(["sample", str(workdir / "m.npz"), "-n", "3", "-o", str(out)]) == 2
    assert out.read_bytes() == b"old"
    assert cli.main(["sample", str(workdir / "m.npz"), "-n", "3", "-o", str(out), "--force"]) == 0
    assert np.load(out).shape == (3, 5)
    ll = tmp_path / "ll.txt"
    ll.write_text("old\n")
    assert (
        cli.main(["eval", str(workdir / "m.npz"), str(workdir / "data.csv"), "--per-example", str(ll), "--force"]) == 0
    )
    assert len(np.loadtxt(ll)) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ll.txt", "s.npy"]  # no temporary file left behind
