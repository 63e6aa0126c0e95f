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
    assert cli.main(["eval", model, str(tmp_path / "test.npy"), "--json", "--per-example", str(tmp_path / "ll.txt")]) == 0
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


@pytest.mark.parametrize("command", [[], ["fit"], ["eval"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(command + ["--help"])
    assert e.value.code == 0
    assert "usage: pcircuits" in capsys.readouterr().out


@pytest.mark.skipif(cli._sampler() is None, reason="pcircuits.queries.sampling is not available yet")
def test_sample(tmp_path, small_data, capsys):
    train = write_data(tmp_path / "train.data", small_data)
    model = str(tmp_path / "m.npz")
    assert cli.main(["fit", train, "--out", model, "--latents", "2", "--minibatch-epochs", "1", "--fullbatch-epochs", "1", "--quiet"]) == 0
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
