"""Saving and loading circuits: bit-identical, pickle-free, versioned, validated, atomic."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

import pcircuits as pc
from pcircuits.io import load_with_extras
from tests.pcircuits.fixtures import save_v1
from tests.pcircuits.random_circuits import random_circuit, random_evidence

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ helpers
def every_family_circuit() -> pc.TensorCircuit:
    """Categorical, Bernoulli, Indicator and Gaussian leaves, a sparse sum, tied sums and leaves."""
    a = pc.inputs(0, 3, pc.Categorical(4))
    b = pc.inputs(1, 3, pc.Bernoulli())
    c = pc.inputs(2, 3, pc.Gaussian(min_std=0.01))
    d = pc.inputs(3, 2, pc.Indicator([0, 2], num_cats=3))
    a2 = pc.inputs(0, 3, pc.Categorical(4), tie_with=a)
    p1 = pc.multiply(a, b, c)
    p2 = pc.multiply(a2, b, c)
    s1 = pc.summate(p1, p2, num_nodes=2, edges=torch.tensor([[0, 0, 1], [0, 4, 5]]))
    s2 = pc.summate(p1, p2, num_nodes=2, edges=torch.tensor([[0, 0, 1], [0, 4, 5]]), tie_with=s1)
    q = pc.multiply(pc.summate(s1, s2, num_nodes=2), d)
    root = pc.summate(q, num_nodes=1)
    return pc.compile(root, seed=3)


def family_data(n: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.stack(
        [torch.randint(0, 4, (n,), generator=g).double(), torch.randint(0, 2, (n,), generator=g).double(),
         torch.randn(n, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g).double()], 1
    )


def assert_same(a: pc.TensorCircuit, b: pc.TensorCircuit) -> None:
    assert set(a.params) == set(b.params)
    for name in a.params:
        assert a.params[name].dtype == b.params[name].dtype
        assert torch.equal(a.params[name].detach(), b.params[name].detach()), name


def read_v2(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict: no `in`)
    return json.loads(meta["header"]), tensors, meta


def write_v2(path: Path, header: dict, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    meta = dict(meta or {"format": "pcircuits.circuit", "version": "2"})
    meta["header"] = json.dumps(header)
    path.write_bytes(safetensors.torch.save(tensors, metadata=meta))


def read_v1(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as f:
        payload = {k: f[k] for k in f.files}
    return json.loads(payload.pop("header").tobytes()), payload


def write_v1(path: Path, header: dict, payload: dict[str, np.ndarray]) -> None:
    np.savez(path, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **payload)


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("seed", range(8))
def test_round_trip_is_bit_identical(tmp_path, seed):
    root, kinds = random_circuit(seed, num_vars=4)
    circuit = pc.compile(root, seed=seed)
    if seed % 2:
        circuit = circuit.to(torch.float64)
    path = tmp_path / "c.safetensors"
    pc.save(circuit, path)
    loaded = pc.load(path)
    assert_same(circuit, loaded)
    x, missing, soft = random_evidence(seed, kinds, 16, soft=True)
    args = (torch.from_numpy(x), torch.from_numpy(missing))
    if soft is not None and circuit.max_cats == 3:
        args = args + (torch.from_numpy(soft),)
    assert loaded.dtype == circuit.dtype
    assert torch.equal(circuit(*args), loaded(*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_leaf_family_sparse_sums_and_ties_round_trip(tmp_path, dtype):
    circuit = every_family_circuit().to(dtype)
    pc.em(circuit, family_data().to(dtype), epochs=2, progress=False)  # trained weights, zeros included
    pc.save(circuit, tmp_path / "c.st")
    loaded = pc.load(tmp_path / "c.st")
    assert_same(circuit, loaded)
    assert loaded.backend == circuit.backend
    x = family_data()
    assert torch.equal(circuit(x.to(dtype)), loaded(x.to(dtype)))


def test_tied_hmm_round_trip(tmp_path):
    emit0 = pc.inputs(0, 3, pc.Categorical(4))
    trans = pc.summate(emit0, num_nodes=3)
    a = pc.multiply(trans, pc.inputs(1, 3, pc.Categorical(4), tie_with=emit0))
    t2 = pc.summate(a, num_nodes=3, tie_with=trans)
    root = pc.summate(pc.multiply(t2, pc.inputs(2, 3, pc.Categorical(4), tie_with=emit0)), num_nodes=1)
    circuit = pc.compile(root)
    pc.save(circuit, tmp_path / "h.st")
    loaded = pc.load(tmp_path / "h.st")
    assert loaded.num_parameters == circuit.num_parameters
    assert_same(circuit, loaded)
    x = torch.randint(0, 4, (5, 3))
    assert torch.equal(circuit(x), loaded(x))


def test_file_is_plain_safetensors_with_versioned_metadata(tmp_path):
    circuit = every_family_circuit()
    pc.save(circuit, tmp_path / "c.st", extras={"lam": torch.tensor([0.25, 1.0])})
    header, tensors, meta = read_v2(tmp_path / "c.st")
    assert meta["format"] == "pcircuits.circuit" and meta["version"] == "2"
    assert {k for k in tensors if k.startswith("param/")} == {f"param/{k}" for k in circuit.params}
    assert header["extras"] == {"lam": [2]} and tensors["extra/lam"].dtype == torch.float64
    assert b"\x80\x04" not in (tmp_path / "c.st").read_bytes()  # no pickle protocol marker
    loaded, extras = load_with_extras(tmp_path / "c.st")
    assert torch.equal(extras["lam"], torch.tensor([0.25, 1.0], dtype=torch.float64))
    assert_same(circuit, pc.load(tmp_path / "c.st"))


@pytest.mark.parametrize("extras", [{"Bad": [1.0]}, {"x": [float("nan")]}, {"x": []}, {"x": "abc"}])
def test_bad_extras_are_refused_on_save(tmp_path, extras):
    with pytest.raises(ValueError, match="extras"):
        pc.save(every_family_circuit(), tmp_path / "c.st", extras=extras)
    assert not (tmp_path / "c.st").exists()


# ------------------------------------------------------------------ version 1
def test_version_1_indicator_values_come_from_the_structure(tmp_path):
    """Version-1 files could store one group's indicator values for every group of a bank: the structure wins."""
    a0, a1 = pc.inputs(0, 1, pc.Indicator(0, num_cats=2)), pc.inputs(0, 1, pc.Indicator(1, num_cats=2))
    b0, b1 = pc.inputs(1, 1, pc.Indicator(0, num_cats=2)), pc.inputs(1, 1, pc.Indicator(1, num_cats=2))
    root = pc.summate(pc.multiply(a0, b1), pc.multiply(a1, b0), num_nodes=1)  # XOR
    circuit = pc.compile(root).to(torch.float64)
    circuit.set_group_parameters(root, torch.tensor([[0.5, 0.5]]))
    save_v1(circuit, tmp_path / "old.npz")
    header, payload = read_v1(tmp_path / "old.npz")
    bank = next(k for k in payload if k.startswith("param/leaf"))
    payload[bank] = np.zeros_like(payload[bank])  # every slot holds the first group's value, as old files could
    write_v1(tmp_path / "old.npz", header, payload)
    loaded = pc.load(tmp_path / "old.npz")
    x = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert torch.allclose(loaded(x).exp(), torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64))
    assert_same(circuit, loaded)


@pytest.mark.parametrize("seed", range(4))
def test_version_1_files_still_load_bit_identical(tmp_path, seed):
    root, _ = random_circuit(seed, num_vars=3)
    circuit = pc.compile(root, seed=seed)
    save_v1(circuit, tmp_path / "old.npz")
    assert_same(circuit, pc.load(tmp_path / "old.npz"))
    family = every_family_circuit().to(torch.float64)
    save_v1(family, tmp_path / "fam.npz")
    assert_same(family, pc.load(tmp_path / "fam.npz"))
    header, payload = read_v1(tmp_path / "fam.npz")  # numpy may write Fortran-ordered members
    write_v1(tmp_path / "fortran.npz", header, {k: np.asfortranarray(v) for k, v in payload.items()})
    with zipfile.ZipFile(tmp_path / "fortran.npz") as z:
        assert b"'fortran_order': True" in z.read(next(n for n in z.namelist() if n.startswith("edges/")))[:128]
    loaded = pc.load(tmp_path / "fortran.npz")
    assert_same(family, loaded)
    assert torch.equal(family(family_data()), loaded(family_data()))


def test_committed_version_1_prior_loads():
    path = ROOT / "benchmarks" / "results" / "codd_gsm8k_prior.npz"
    if not path.is_file():
        pytest.skip("benchmark prior not present")
    with zipfile.ZipFile(path) as z:
        assert "header.npy" in z.namelist()  # a genuine version-1 archive
    circuit = pc.load(path)
    with np.load(path, allow_pickle=False) as f:
        for name, p in circuit.params.items():
            assert np.array_equal(f[f"param/{name}"], p.detach().numpy())


# ------------------------------------------------------------------ atomicity
def _save_under_fsize_limit(script: str, limit: int) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises OSError(EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        """
    ) + textwrap.dedent(script)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_save_interrupted_by_file_size_limit_keeps_previous_file(tmp_path):
    from pcircuits.structures import hmm

    small = every_family_circuit()
    path = tmp_path / "model.st"
    pc.save(small, path)
    before = path.read_bytes()
    pc.save(pc.compile(hmm(8, 64, 50)), tmp_path / "big.st")  # the size the interrupted save needs
    big_size = (tmp_path / "big.st").stat().st_size
    (tmp_path / "big.st").unlink()
    assert big_size > 4 * len(before)
    script = f"""
        import pcircuits as pc
        from pcircuits.structures import hmm
        pc.save(pc.compile(hmm(8, 64, 50)), {str(path)!r})
        """
    failed = _save_under_fsize_limit(script, big_size // 2)
    assert failed.returncode != 0 and "File too large" in failed.stderr
    assert path.read_bytes() == before
    assert_same(small, pc.load(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.st"]  # no temporary file left


# ------------------------------------------------------------------ malformed files
def _v2_file(tmp_path: Path, edit) -> Path:
    """A saved circuit whose header/tensors were changed by ``edit(header, tensors, meta)``."""
    circuit = every_family_circuit()
    src = tmp_path / "src.st"
    pc.save(circuit, src)
    header, tensors, meta = read_v2(src)
    out = edit(header, tensors, meta)
    path = tmp_path / "bad.st"
    if isinstance(out, bytes):
        path.write_bytes(out)
    else:
        write_v2(path, header, tensors, meta)
    return path


def _v1_file(tmp_path: Path, edit) -> Path:
    circuit = every_family_circuit()
    src = tmp_path / "src.npz"
    save_v1(circuit, src)
    header, payload = read_v1(src)
    edit(header, payload)
    path = tmp_path / "bad.npz"
    write_v1(path, header, payload)
    return path


def _bank(family: str) -> str:
    """Member name of the bank of ``family`` (``"sum_dense"`` for the dense sums) in `every_family_circuit`."""
    for name, spec in every_family_circuit().layout.banks.items():
        kind = spec.kind if spec.kind == "sum" else type(spec.dist).__name__
        if kind == family or (family == "sum_dense" and name.startswith("sum_dense")):
            return f"param/{name}"
    raise AssertionError(family)


def _set(tensors, family: str, value, index=(0, 0, 0)):
    name = _bank(family)
    t = tensors[name].clone()
    t[index] = value
    tensors[name] = t


def _edit_gaussian(value, column: int):
    return lambda h, t, m: _set(t, "Gaussian", value, (0, 0, column))


def _structure(fn):
    def edit(h, t, m):
        fn(h["structure"]["groups"])

    return edit


def _first(groups, kind):
    return next(g for g in groups if g["kind"] == kind)


def _huge_tensor_header() -> bytes:
    table = {
        "__metadata__": {"format": "pcircuits.circuit", "version": "2", "header": "{}"},
        "param/leaf0": {"dtype": "F32", "shape": [100_000, 100_000, 10], "data_offsets": [0, 400_000_000_000]},
    }
    head = json.dumps(table).encode()
    return struct.pack("<Q", len(head)) + head + b"\0" * 64


V2_CASES = {
    "empty": lambda h, t, m: b"",
    "truncated_header": lambda h, t, m: safetensors.torch.save(t, metadata={**m, "header": json.dumps(h)})[:50],
    "truncated_data": lambda h, t, m: safetensors.torch.save(t, metadata={**m, "header": json.dumps(h)})[:-7],
    "random_bytes": lambda h, t, m: np.random.default_rng(0).bytes(4096),
    "csv": lambda h, t, m: b"a,b,c\n1,2,3\n4,5,6\n",
    "huge_header_length": lambda h, t, m: struct.pack("<Q", 2**62) + b"{}",
    "header_not_json": lambda h, t, m: struct.pack("<Q", 8) + b"{nojson}",
    "header_deeply_nested": lambda h, t, m: safetensors.torch.save(
        t, metadata={**m, "header": "[" * 100_000 + "]" * 100_000}
    ),
    "header_duplicate_keys": lambda h, t, m: safetensors.torch.save(
        t, metadata={**m, "header": '{"backend": "auto", "backend": "torch"}'}
    ),
    "too_many_categories": _structure(
        lambda g: g[0].update(dist={"type": "Indicator", "config": {"value": 0, "num_cats": 10**12}})
    ),
    "header_not_utf8": lambda h, t, m: struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc",
    "huge_declared_tensor": lambda h, t, m: _huge_tensor_header(),
    "wrong_version": lambda h, t, m: m.update(version="3"),
    "wrong_marker": lambda h, t, m: m.update(format="other"),
    "no_metadata": lambda h, t, m: safetensors.torch.save(t),
    "inner_header_not_json": lambda h, t, m: safetensors.torch.save(t, metadata={**m, "header": "{"}),
    "nan_sum_weight": lambda h, t, m: _set(t, "sum_dense", float("nan")),
    "posinf_sum_weight": lambda h, t, m: _set(t, "sum_dense", float("inf")),
    "sum_row_without_mass": lambda h, t, m: _set(t, "sum_dense", float("-inf"), (0, 0)),
    "nan_categorical": lambda h, t, m: _set(t, "Categorical", float("nan")),
    "categorical_row_without_mass": lambda h, t, m: _set(t, "Categorical", float("-inf"), (0, 0)),
    "gaussian_inf_log_std": _edit_gaussian(float("-inf"), 1),
    "gaussian_nan_mean": _edit_gaussian(float("nan"), 0),
    "indicator_not_integer": lambda h, t, m: _set(t, "Indicator", 0.5, (0, 0, 0)),
    "indicator_differs_from_config": lambda h, t, m: _set(t, "Indicator", 1.0, (0, 0, 0)),
    "unexpected_member": lambda h, t, m: t.update({"code/x": torch.zeros(3)}),
    "missing_param": lambda h, t, m: t.pop(next(k for k in t if k.startswith("param/"))),
    "missing_edges": lambda h, t, m: t.pop(next(k for k in t if k.startswith("edges/"))),
    "param_wrong_shape": lambda h, t, m: t.update(
        {k: v[..., :1].contiguous() for k, v in t.items() if k.startswith("param/sum")}
    ),
    "param_transposed": lambda h, t, m: t.update(
        {_bank("sum_dense"): t[_bank("sum_dense")].transpose(1, 2).contiguous()}
    ),
    "param_renamed": lambda h, t, m: t.update({"param/leaf99": t.pop(_bank("Categorical"))}),
    "param_int_dtype": lambda h, t, m: t.update({k: v.long() for k, v in t.items() if k.startswith("param/sum")}),
    "mixed_param_dtypes": lambda h, t, m: t.update({k: v.double() for k, v in t.items() if k.startswith("param/sum")}),
    "edges_out_of_range": lambda h, t, m: t.update({k: v + 100 for k, v in t.items() if k.startswith("edges/")}),
    "edges_float": lambda h, t, m: t.update({k: v.float() for k, v in t.items() if k.startswith("edges/")}),
    "edges_wrong_shape": lambda h, t, m: t.update({k: v.reshape(-1) for k, v in t.items() if k.startswith("edges/")}),
    "edges_name_not_a_group": lambda h, t, m: t.update({"edges/99": torch.zeros(2, 1, dtype=torch.long)}),
    "extra_declared_missing": lambda h, t, m: h.update(extras={"lam": [2]}),
    "extra_bad_name": lambda h, t, m: h.update(extras={"../x": [1]}),
    "extra_nan": lambda h, t, m: (
        h.update(extras={"lam": [1]}),
        t.update({"extra/lam": torch.tensor([float("nan")], dtype=torch.float64)}),
    ),
    "bad_backend": lambda h, t, m: h.update(backend="cuda-magic"),
    "structure_missing": lambda h, t, m: h.pop("structure"),
    "groups_empty": lambda h, t, m: h["structure"].update(groups=[]),
    "root_not_last": lambda h, t, m: h["structure"].update(root=0),
    "unknown_kind": _structure(lambda g: g[0].update(kind="lambda")),
    "child_points_forward": _structure(lambda g: _first(g, "product").update(children=[len(g) - 1])),
    "child_not_int": _structure(lambda g: _first(g, "product").update(children=["0"])),
    "num_nodes_bool": _structure(lambda g: g[0].update(num_nodes=True)),
    "num_nodes_zero": _structure(lambda g: g[0].update(num_nodes=0)),
    "num_nodes_float": _structure(lambda g: g[0].update(num_nodes=3.0)),
    "num_nodes_huge": _structure(lambda g: g[0].update(num_nodes=2**40)),
    "var_negative": _structure(lambda g: g[0].update(var=-1)),
    "var_beyond_inputs": _structure(lambda g: g[0].update(var=10**12)),
    "unknown_distribution": _structure(lambda g: g[0].update(dist={"type": "os.system", "config": {}})),
    "bad_distribution_args": _structure(
        lambda g: g[0].update(dist={"type": "Categorical", "config": {"num_cats": -3}})
    ),
    "unexpected_distribution_arg": _structure(lambda g: g[0].update(dist={"type": "Categorical", "config": {"x": 1}})),
    "tie_to_product": _structure(lambda g: g[-1].update(tie=g.index(_first(g, "product")))),
    "tie_forward": _structure(lambda g: g[0].update(tie=5)),
    "not_smooth": _structure(lambda g: g[0].update(var=1)),
    "input_with_children": _structure(lambda g: g[1].update(children=[0])),
}


@pytest.mark.parametrize("case", sorted(V2_CASES))
def test_malformed_v2_file_raises_value_error_naming_path(tmp_path, case):
    path = _v2_file(tmp_path, V2_CASES[case])
    with pytest.raises(ValueError) as err:
        pc.load(path)
    _check_message(err.value, path)


def _npy_bytes(shape_text: str, descr: str = "<f4", data: bytes = b"\0" * 16) -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}".encode()
    header += b" " * (64 - (10 + len(header)) % 64 - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def _zip(members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


def _replace_member(path: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(path) as z:
        members = {k: z.read(k) for k in z.namelist()}
    members[name] = data
    path.write_bytes(_zip(members))


V1_CASES = {
    "wrong_version": lambda h, p: h.update(version=99),
    "wrong_marker": lambda h, p: h.update(format="numpy"),
    "nan_weights": lambda h, p: [np.copyto(v, np.nan) for k, v in p.items() if k.startswith("param/sum")],
    "object_member": lambda h, p: p.update({"param/x": np.array([{"a": 1}], dtype=object)}),
    "unexpected_member": lambda h, p: p.update({"junk": np.zeros(3)}),
    "big_endian_param": lambda h, p: p.update({k: v.astype(">f4") for k, v in p.items() if k.startswith("param/sum")}),
    "edges_int32": lambda h, p: p.update({k: v.astype(np.int32) for k, v in p.items() if k.startswith("edges/")}),
    "header_not_json": None,
    "huge_declared_member": None,
    "compressed_member": None,
    "npy_not_in_zip": None,
    "zip_of_text": None,
    "pickle_member": None,
}


@pytest.mark.parametrize("case", sorted(V1_CASES))
def test_malformed_v1_file_raises_value_error_naming_path(tmp_path, case):
    edit = V1_CASES[case]
    if edit is not None:
        path = _v1_file(tmp_path, edit) if case != "object_member" else _object_member_file(tmp_path)
    else:
        path = tmp_path / "bad.npz"
        save_v1(every_family_circuit(), path)
        if case == "header_not_json":
            _replace_member(path, "header.npy", _npy_bytes("(4,)", "|u1", b"{{{{"))
        elif case == "huge_declared_member":
            name = next(n for n in zipfile.ZipFile(path).namelist() if n.startswith("param/sum"))
            _replace_member(path, name, _npy_bytes("(100000, 100000, 10)"))
        elif case == "compressed_member":
            with zipfile.ZipFile(path) as z:
                members = {k: z.read(k) for k in z.namelist()}
            path.write_bytes(_zip(members, zipfile.ZIP_DEFLATED))
        elif case == "npy_not_in_zip":
            np.save(path.with_suffix(".npy"), np.zeros(4))
            path = path.with_suffix(".npy")
        elif case == "zip_of_text":
            path.write_bytes(_zip({"readme.txt": b"hello", "data.csv": b"1,2"}))
        elif case == "pickle_member":
            path.write_bytes(_zip({"header.npy": _npy_bytes("(1,)", "|O", b"\x80\x04N.")}))
    with pytest.raises(ValueError) as err:
        pc.load(path)
    _check_message(err.value, path)


def _object_member_file(tmp_path: Path) -> Path:
    path = tmp_path / "bad.npz"
    save_v1(every_family_circuit(), path)
    with zipfile.ZipFile(path) as z:
        members = {k: z.read(k) for k in z.namelist()}
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    members["param/x.npy"] = buf.getvalue()
    path.write_bytes(_zip(members))
    return path


@pytest.mark.parametrize("cut", [0, 1, 10, 100, 1000, -300, -30, -1])
@pytest.mark.parametrize("version", [1, 2])
def test_truncated_files_raise_value_error(tmp_path, cut, version):
    path = tmp_path / "c.bin"
    (save_v1 if version == 1 else pc.save)(every_family_circuit(), path)
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError) as err:
        pc.load(path)
    _check_message(err.value, path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        pc.load(tmp_path / "absent.st")
    with pytest.raises(ValueError, match="not a regular file"):
        pc.load(tmp_path)


def _check_message(err: ValueError, path: Path) -> None:
    msg = str(err)
    assert repr(str(path)) in msg, msg
    assert "\n" not in msg and "pickle" not in msg.lower(), msg


# ------------------------------------------------------------------ huge declared arrays
HUGE_SCRIPT = """
import os, resource, sys, time, tracemalloc
import pcircuits as pc

def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

# any attempt to allocate the declared arrays fails (MemoryError is not the ValueError expected)
limit = vm_size() + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for path in sys.argv[1:]:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        pc.load(path)
        print("LOADED", path)
    except ValueError as e:
        print("VALUEERROR", time.perf_counter() - t0, tracemalloc.get_traced_memory()[1], e)
    tracemalloc.stop()
"""


def _simple_file(tmp_path: Path, edit_groups) -> Path:
    """A two-variable circuit (input, input, product, root sum) whose groups ``edit_groups`` changes."""
    root = pc.summate(pc.multiply(pc.inputs(0, 2, pc.Categorical(3)), pc.inputs(1, 2, pc.Categorical(3))), num_nodes=1)
    pc.save(pc.compile(root), tmp_path / "src.st")
    header, tensors, meta = read_v2(tmp_path / "src.st")
    edit_groups(header["structure"]["groups"])
    header["structure"]["root"] = len(header["structure"]["groups"]) - 1
    write_v2(tmp_path / "bad.st", header, tensors, meta)
    return tmp_path / "bad.st"


def _huge_structure_file(tmp_path: Path) -> Path:
    # a group of 2**26 nodes over 1000 categories: 6.7e10 parameters the file does not hold
    big = {"type": "Categorical", "config": {"num_cats": 1000}}
    return _simple_file(tmp_path, lambda g: g[0].update(num_nodes=2**26, dist=big))


def _huge_ties_file(tmp_path: Path) -> Path:
    # eight groups tied to a group of 2**27 nodes: no parameters of their own, 2**30 nodes in all
    def edit(groups):
        groups[0]["num_nodes"] = 2**27
        groups[-1:-1] = [dict(groups[0], tie=0) for _ in range(8)]

    return _simple_file(tmp_path, edit)


EXPECTED_REFUSAL = {
    "v2_tensor": "do not fit its shape",
    "v2_structure": "the structure needs 671088640",
    "v2_ties": "nodes in all groups together",
    "v1_member": "not its stored size",
}


def test_huge_declared_arrays_are_refused_fast_without_allocating(tmp_path):
    paths = {}
    for kind in EXPECTED_REFUSAL:
        (tmp_path / kind).mkdir()
    paths["v2_tensor"] = tmp_path / "v2_tensor" / "huge.st"
    paths["v2_tensor"].write_bytes(_huge_tensor_header())
    paths["v2_structure"] = _huge_structure_file(tmp_path / "v2_structure")
    paths["v2_ties"] = _huge_ties_file(tmp_path / "v2_ties")
    paths["v1_member"] = tmp_path / "v1_member" / "huge.npz"
    save_v1(every_family_circuit(), paths["v1_member"])
    name = next(n for n in zipfile.ZipFile(paths["v1_member"]).namelist() if n.startswith("param/sum"))
    _replace_member(paths["v1_member"], name, _npy_bytes("(100000, 100000, 10)"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [str(paths[k]) for k in EXPECTED_REFUSAL]
    out = subprocess.run(
        [sys.executable, "-c", HUGE_SCRIPT, *args], capture_output=True, text=True, env=env, timeout=120
    )
    lines = out.stdout.splitlines()
    assert len(lines) == len(EXPECTED_REFUSAL), out.stdout + out.stderr
    for kind, line in zip(EXPECTED_REFUSAL, lines, strict=True):
        assert line.startswith("VALUEERROR"), line
        _, seconds, peak, message = line.split(" ", 3)
        assert EXPECTED_REFUSAL[kind] in message and str(paths[kind]) in message, message
        assert float(seconds) < 1.0, (kind, seconds)
        assert int(peak) < 16 * 2**20, (kind, peak)  # bytes traced by tracemalloc during the load
