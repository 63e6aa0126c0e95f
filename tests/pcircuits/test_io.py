"""Saving and loading circuits: bit-identical, pickle-free, versioned."""

import json
import zipfile

import numpy as np
import pytest
import torch

import pcircuits as pc
from tests.pcircuits.random_circuits import random_circuit, random_evidence


@pytest.mark.parametrize("seed", range(8))
def test_round_trip_is_bit_identical(tmp_path, seed):
    root, kinds = random_circuit(seed, num_vars=4)
    circuit = pc.compile(root, seed=seed)
    if seed % 2:
        circuit = circuit.to(torch.float64)
    path = tmp_path / "c.npz"
    pc.save(circuit, path)
    loaded = pc.load(path)
    x, missing, soft = random_evidence(seed, kinds, 16, soft=True)
    args = (torch.from_numpy(x), torch.from_numpy(missing))
    if soft is not None and circuit.max_cats == 3:
        args = args + (torch.from_numpy(soft),)
    assert loaded.dtype == circuit.dtype
    assert torch.equal(circuit(*args), loaded(*args))


def test_tied_hmm_round_trip(tmp_path):
    emit0 = pc.inputs(0, 3, pc.Categorical(4))
    trans = pc.summate(emit0, num_nodes=3)
    a = pc.multiply(trans, pc.inputs(1, 3, pc.Categorical(4), tie_with=emit0))
    t2 = pc.summate(a, num_nodes=3, tie_with=trans)
    root = pc.summate(pc.multiply(t2, pc.inputs(2, 3, pc.Categorical(4), tie_with=emit0)), num_nodes=1)
    circuit = pc.compile(root)
    pc.save(circuit, tmp_path / "h.npz")
    loaded = pc.load(tmp_path / "h.npz")
    assert loaded.num_parameters == circuit.num_parameters
    x = torch.randint(0, 4, (5, 3))
    assert torch.equal(circuit(x), loaded(x))


def test_file_has_no_pickle_and_loads_with_allow_pickle_false(tmp_path):
    root, _ = random_circuit(3, num_vars=3)
    pc.save(pc.compile(root), tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as f:
        for k in f.files:
            assert f[k].dtype != object
    with zipfile.ZipFile(tmp_path / "c.npz") as z:
        for name in z.namelist():
            assert b"\x80\x04" not in z.read(name)[:2]  # no pickle protocol header


def test_unknown_version_and_foreign_files_are_rejected(tmp_path):
    root, _ = random_circuit(3, num_vars=2)
    path = tmp_path / "c.npz"
    pc.save(pc.compile(root), path)
    with np.load(path, allow_pickle=False) as f:
        payload = {k: f[k] for k in f.files}
    header = json.loads(payload["header"].tobytes())
    header["version"] = 99
    payload["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v99.npz", **payload)
    with pytest.raises(ValueError, match="version 99"):
        pc.load(tmp_path / "v99.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a pcircuits"):
        pc.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="no such file"):
        pc.load(tmp_path / "absent.npz")
