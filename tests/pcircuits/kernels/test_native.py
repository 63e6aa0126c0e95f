"""The compiled CPU max-plus kernel: equal to the broadcast form bit for bit, safe to load, and optional."""

import os
import stat
import time

import pytest
import torch

import pcircuits as pc
from pcircuits.kernels import native, torch_ops
from tests.pcircuits.queries.helpers import evidence, random_circuit


@pytest.fixture
def kernel(monkeypatch):
    """The compiled kernel, loaded afresh under the test's environment (skipped without a C compiler)."""
    native._reset()
    monkeypatch.setenv("PCIRCUITS_NATIVE", "1")
    if native._compiler() is None:
        pytest.skip("no C compiler on this machine")
    yield
    native._reset()


def _reference(children: torch.Tensor, weights_t: torch.Tensor) -> torch.Tensor:
    return (children.unsqueeze(-1) + weights_t.unsqueeze(0)).amax(2)


def test_a_machine_with_a_compiler_uses_the_kernel(kernel):
    assert native.available(), native.status()
    assert native.status().startswith("in use: compiled with")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (8, 1, 64, 64), (13, 2, 70, 129), (256, 1, 128, 128), (9, 3, 5, 1)])
def test_bit_identical_to_the_broadcast_maximum(kernel, dtype, shape):
    B, G, k, n = shape
    gen = torch.Generator().manual_seed(sum(shape))
    children = (torch.randn(B, G + 1, k, generator=gen, dtype=dtype) * 3)[:, 1:]  # rows not contiguous
    weights_t = torch.randn(G, k, n, generator=gen, dtype=dtype).log_softmax(1)
    children[0, 0] = -float("inf")  # a row with no finite child
    weights_t[-1, :, -1] = -float("inf")  # a node with no finite weight
    got = native.max_plus(children, weights_t)
    assert got is not None and got.shape == (B, G, n) and got.dtype == dtype
    assert torch.equal(got, _reference(children, weights_t))
    assert bool(torch.isneginf(got[0, 0]).all()) and bool(torch.isneginf(got[:, -1, -1]).all())


def test_rows_split_over_threads_give_the_same_result(kernel):
    gen = torch.Generator().manual_seed(0)
    children = torch.randn(203, 1, 256, generator=gen)
    weights_t = torch.randn(1, 256, 160, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        got = native.max_plus(children, weights_t)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, _reference(children, weights_t))


def test_not_used_where_it_does_not_apply(kernel):
    a = torch.randn(4, 1, 3)
    w = torch.randn(1, 3, 2)
    assert native.max_plus(a.half(), w.half()) is None  # dtype
    assert native.max_plus(a, w.double()) is None  # mixed dtypes
    assert native.max_plus(a.requires_grad_(), w) is None  # autograd
    assert native.max_plus(torch.randn(0, 1, 3), w) is None  # empty


def test_switched_off_by_the_environment(monkeypatch):
    native._reset()
    monkeypatch.setenv("PCIRCUITS_NATIVE", "0")
    try:
        assert not native.available()
        assert native.status() == "not in use: turned off by PCIRCUITS_NATIVE=0"
        children, weights = torch.randn(5, 1, 4), torch.randn(1, 3, 4)
        assert torch.equal(torch_ops.max_plus(children, weights), _reference(children, weights.transpose(1, 2)))
    finally:
        native._reset()


def test_no_compiler_means_torch_alone(monkeypatch):
    native._reset()
    monkeypatch.setenv("PCIRCUITS_NATIVE", "1")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    try:
        assert not native.available()
        assert "is not an executable C compiler" in native.status()
    finally:
        native._reset()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_cache_directory_others_can_write_is_refused(kernel, exec_tmp_path, monkeypatch):
    shared = exec_tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("PCIRCUITS_CACHE_DIR", str(shared))
    with pytest.warns(RuntimeWarning, match="writable by other users"):
        assert not native.available()
    assert "writable by other users" in native.status()
    assert list(shared.iterdir()) == []  # nothing compiled into it


def test_compiles_into_a_new_private_directory_atomically(kernel, exec_tmp_path, monkeypatch):
    cache = exec_tmp_path / "a" / "b"
    monkeypatch.setenv("PCIRCUITS_CACHE_DIR", str(cache))
    assert native.available(), native.status()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    files = [p.name for p in cache.iterdir()]
    assert len(files) == 1 and files[0].startswith("max_plus-") and not files[0].endswith(".tmp")
    native._reset()  # a second process finds the library and does not compile again
    mtime = (cache / files[0]).stat().st_mtime_ns
    assert native.available() and (cache / files[0]).stat().st_mtime_ns == mtime


def test_a_library_that_computes_wrong_values_is_not_used(kernel, exec_tmp_path, monkeypatch):
    """A library that fails the check against torch on first load is refused with a warning, never used."""
    monkeypatch.setenv("PCIRCUITS_CACHE_DIR", str(exec_tmp_path / "cache"))
    broken = native._SOURCE.replace("acc[r][j] > t ? acc[r][j] : t", "acc[r][j] < t ? acc[r][j] : t")
    assert broken != native._SOURCE
    monkeypatch.setattr(native, "_SOURCE", broken)
    with pytest.warns(RuntimeWarning, match="disagrees with torch"):
        assert not native.available()
    assert native.max_plus(torch.randn(4, 1, 3), torch.randn(1, 3, 2)) is None


@pytest.mark.parametrize("seed", range(4))
def test_mpe_is_the_same_with_and_without_the_kernel(seed, monkeypatch):
    """End to end on random DAG circuits (every leaf type, missing values, soft evidence): MPE agrees exactly."""
    root, kinds = random_circuit(seed)
    circuit = pc.compile(root, seed=seed).double()
    x, miss, soft = evidence(seed, kinds, batch=9, soft=seed % 2 == 0)
    runs = []
    for switch in ("0", "1"):
        native._reset()
        monkeypatch.setenv("PCIRCUITS_NATIVE", switch)
        runs.append(pc.mpe(circuit, x, miss, soft, return_log_prob=True))
    native._reset()
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_runs_the_threaded_kernel(kernel):
    """After fork the parent's worker threads are gone; the child starts its own instead of waiting on them."""
    gen = torch.Generator().manual_seed(1)
    children, weights_t = torch.randn(64, 1, 256, generator=gen), torch.randn(1, 256, 160, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        want = native.max_plus(children, weights_t).numpy()  # the parent's pool exists now
        assert (want == _reference(children, weights_t).numpy()).all()
        pid = os.fork()
        if pid == 0:  # child: exit 0 only if the threaded call returns the right values
            # (compared with numpy: torch's own OpenMP regions are not usable in a forked child)
            ok = bool((native.max_plus(children, weights_t).numpy() == want).all())
            os._exit(0 if ok else 1)
        deadline = time.monotonic() + 60
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the threaded kernel")
        status = done[1]
    finally:
        torch.set_num_threads(threads)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


_X86 = __import__("platform").machine().lower() in ("x86_64", "amd64")


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(("-O3", "-march=native", "-mno-avx512f", "-shared", "-fPIC"), id="avx2-tiles",
                     marks=pytest.mark.skipif(not _X86, reason="x86 flag")),
        pytest.param(("-O3", "-shared", "-fPIC"), id="portable-loops"),
    ],
)
def test_every_code_path_of_the_kernel_is_exact(kernel, exec_tmp_path, monkeypatch, flags):
    """The tiles for another instruction set, and the portable loops, give the broadcast values too."""
    monkeypatch.setenv("PCIRCUITS_CACHE_DIR", str(exec_tmp_path / "cache"))
    monkeypatch.setattr(native, "_FLAGS", flags)
    assert native.available(), native.status()  # compiled with these flags and passed its own check
    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(7)
        children = torch.randn(37, 2, 150, generator=gen, dtype=dtype)
        weights_t = torch.randn(2, 150, 131, generator=gen, dtype=dtype)
        assert torch.equal(native.max_plus(children, weights_t), _reference(children, weights_t))


def test_a_compiler_that_writes_nothing_falls_back_with_a_reason(kernel, exec_tmp_path, monkeypatch):
    """``CC=true`` exits 0 without writing a library: no crash, a warning, torch computes, status says why."""
    monkeypatch.setenv("PCIRCUITS_CACHE_DIR", str(exec_tmp_path / "cache"))
    monkeypatch.setenv("CC", "true")
    with pytest.warns(RuntimeWarning, match="wrote no library"):
        assert not native.available()
    assert "wrote no library" in native.status()
    assert native.max_plus(torch.randn(4, 1, 3), torch.randn(1, 3, 2)) is None


def test_a_corrupted_cached_library_is_rebuilt(kernel, exec_tmp_path, monkeypatch):
    """A cached file that does not load (truncated by a full disk, say) is compiled again, not left in the way."""
    cache = exec_tmp_path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv("PCIRCUITS_CACHE_DIR", str(cache))
    lib = native._library_path(cache, native._compiler())
    lib.write_bytes(b"not a shared library")
    assert native.available(), native.status()
    assert lib.read_bytes()[:4] != b"not "


def test_compiler_command_with_arguments_and_a_home_relative_cache(kernel, exec_tmp_path, monkeypatch):
    """``CC`` may carry arguments (``ccache gcc``, ``gcc -O2``); ``~`` in the cache directory is the home."""
    monkeypatch.setenv("HOME", str(exec_tmp_path))
    monkeypatch.setenv("PCIRCUITS_CACHE_DIR", "~/kernels")
    monkeypatch.setenv("CC", f"{native._compiler()[0]} -Wall")
    assert native.available(), native.status()
    assert (exec_tmp_path / "kernels").is_dir() and "-Wall" in native.status()


def test_nan_is_left_to_torch_which_propagates_it(kernel):
    """A NaN (e.g. a parameter after a diverged training run) gives NaN as in torch, never a finite maximum."""
    children = torch.tensor([[[float("nan"), 0.0, 1.0]]])
    weights_t = torch.zeros(1, 3, 2)
    assert native.max_plus(children, weights_t) is None
    assert bool(torch_ops.max_plus(children, weights_t.transpose(1, 2)).isnan().all())
    assert native.argmax_plus(children[0], None, torch.zeros(1, 3), torch.tensor([0])) is None
    assert native.max_plus(torch.tensor([[[float("inf"), 0.0]]]), torch.zeros(1, 2, 1)) is None  # +inf too


def test_mpe_of_a_circuit_with_a_nan_parameter_matches_torch(monkeypatch):
    """A parameter gone NaN (a diverged run writing ``.data``) gives MPE NaN values with or without the kernel."""
    circuit = pc.compile(pc.structures.hmm(6, 16, 5), seed=0)
    bank = next(iter(circuit.params))
    with torch.no_grad():
        circuit.params[bank].view(-1)[3] = float("nan")
    circuit.clear_leaf_tables()
    x = torch.randint(0, 5, (4, 6), generator=torch.Generator().manual_seed(0))
    miss = torch.zeros(4, 6, dtype=torch.bool)
    miss[:, ::2] = True
    runs = []
    for switch in ("0", "1"):
        native._reset()
        monkeypatch.setenv("PCIRCUITS_NATIVE", switch)
        runs.append(pc.mpe(circuit, x, miss, return_log_prob=True))
    native._reset()
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.allclose(runs[0][1], runs[1][1], equal_nan=True)
    assert bool(runs[0][1].isnan().any())
