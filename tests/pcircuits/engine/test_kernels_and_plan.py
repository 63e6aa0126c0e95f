"""The max-product dense sum kernel and the cached execution plan of upward passes."""

import copy
import io
import itertools

import numpy as np
import pytest
import torch

import pcircuits as pc
from pcircuits.kernels import native, torch_ops


def _broadcast_max(children: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """The reference: every term ``children[b, g, k] + log_weights[g, n, k]`` built, then the maximum."""
    return (children.unsqueeze(2) + log_weights.unsqueeze(0)).amax(-1)


def _use_compiled_kernel(on: bool, monkeypatch) -> None:
    """Runs a test with the compiled max-plus kernel (skipped without a C compiler) or with torch alone."""
    native._reset()
    monkeypatch.setenv("PCIRCUITS_NATIVE", "1" if on else "0")
    if on and not native.available():
        pytest.skip(f"compiled kernel unavailable: {native.status()}")


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 1, 5, 3), (300, 1, 128, 64), (33, 4, 6, 9)])
@pytest.mark.parametrize("block", [1 << 18, 50])
@pytest.mark.parametrize("inner", [1 << 17, 1])
@pytest.mark.parametrize("compiled", [False, True])
def test_max_plus_equals_the_broadcast_maximum(shape, block, inner, compiled, monkeypatch):
    _use_compiled_kernel(compiled, monkeypatch)
    monkeypatch.setattr(torch_ops, "_MAX_PLUS_BLOCK", block)  # 50: several row blocks per call
    monkeypatch.setattr(torch_ops, "_MAX_PLUS_INNER", inner)  # 1: always the innermost reduction
    B, G, n, k = shape
    gen = torch.Generator().manual_seed(sum(shape))
    children = torch.randn(B, G, k, generator=gen) * 3
    log_weights = torch.log_softmax(torch.randn(G, n, k, generator=gen), -1)
    children[0, 0, :] = -torch.inf  # a row of zero-probability children
    if k > 2:
        log_weights[0, 0, :2] = -torch.inf
        children[-1, -1, 1:] = -torch.inf
    got = torch_ops.max_plus(children, log_weights)
    assert got.shape == (B, G, n)
    assert torch.equal(got, _broadcast_max(children, log_weights))
    assert bool(torch.isneginf(got[0, 0]).all())


@pytest.mark.parametrize("compiled", [False, True])
def test_max_plus_with_ties_and_float64(compiled, monkeypatch):
    _use_compiled_kernel(compiled, monkeypatch)
    gen = torch.Generator().manual_seed(3)
    children = torch.randint(-3, 1, (40, 2, 10), generator=gen).double()
    log_weights = torch.randint(-2, 1, (2, 6, 10), generator=gen).double()
    got = torch_ops.max_plus(children, log_weights)
    assert got.dtype == torch.float64
    assert torch.equal(got, _broadcast_max(children, log_weights))


def test_max_plus_gradient_reaches_one_maximiser():
    children = torch.tensor([[[0.0, 0.0, -1.0]]], requires_grad=True)
    log_weights = torch.zeros(1, 2, 3, requires_grad=True)
    torch_ops.max_plus(children, log_weights).sum().backward()
    assert torch.equal(children.grad.sum(), torch.tensor(2.0))  # one unit per output node
    assert children.grad[0, 0, 2] == 0


def _viterbi(init: np.ndarray, trans: np.ndarray, emit: np.ndarray, x: np.ndarray) -> float:
    """``max_z log p(x, z)`` of one fully observed sequence of the template ``pc.structures.hmm``, by enumeration."""
    T, H = len(x), len(init)
    best = -np.inf
    for z in itertools.product(range(H), repeat=T):
        # alpha_0 = emission of step 0; alpha_t = sum_{z_{t-1}} trans[z_t, z_{t-1}] alpha_{t-1} * emission_t
        lp = np.log(init[z[-1]]) + sum(np.log(emit[z[t], x[t]]) for t in range(T))
        lp += sum(np.log(trans[z[t], z[t - 1]]) for t in range(1, T))
        best = max(best, lp)
    return best


def test_mpe_on_a_tied_hmm_matches_enumeration_of_latent_paths():
    T, H, C = 4, 3, 4
    root = pc.structures.hmm(T, H, C)
    circuit = pc.compile(root, seed=5).double()
    alpha = root.children[0]
    trans_group, emit_group = alpha.children
    init = circuit.group_parameters(root)[0].detach().numpy()
    trans = circuit.group_parameters(trans_group).detach().numpy()
    emit = torch.softmax(circuit.group_parameters(emit_group), -1).detach().numpy()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, C, (6, T), generator=gen)
    missing = torch.rand(6, T, generator=gen) < 0.4
    missing[0] = False
    missing[1] = True
    done, value = pc.mpe(circuit, x, missing, return_log_prob=True)
    assert torch.equal(done[~missing], x[~missing])
    for b in range(x.shape[0]):
        # the best completion over all values of the missing entries, each scored by its best path
        free = [t for t in range(T) if missing[b, t]]
        best = -np.inf
        for vals in itertools.product(range(C), repeat=len(free)):
            xb = x[b].numpy().copy()
            xb[free] = vals
            best = max(best, _viterbi(init, trans, emit, xb))
        assert abs(float(value[b]) - best) < 1e-9
        assert abs(_viterbi(init, trans, emit, done[b].numpy()) - best) < 1e-9


def test_plan_is_cached_and_rebuilt_after_moving_the_circuit():
    root = pc.structures.hmm(5, 4, 3)
    circuit = pc.compile(root, seed=1)
    x = torch.randint(0, 3, (8, 5), generator=torch.Generator().manual_seed(2))
    first = circuit(x)
    plan = circuit.execution_plan()
    assert circuit.execution_plan() is plan  # built once
    assert torch.equal(circuit(x), first)
    circuit.double()
    assert circuit.execution_plan() is not plan  # the buffers moved: a new plan
    again = circuit(x)
    assert again.dtype == torch.float64
    assert torch.allclose(again, first.double(), atol=1e-5)
    # every layer output of a kept pass matches a pass without the release of outputs
    ev = circuit.prepare(x)
    kept = circuit.upward(ev)
    assert torch.equal(kept[-1], circuit.upward(ev, keep_outputs=False)[-1])
    assert len(kept) == len(circuit.layout.layers) + 1


def test_copies_and_pickles_build_their_own_plan():
    circuit = pc.compile(pc.structures.hmm(4, 3, 3), seed=2)
    x = torch.randint(0, 3, (5, 4), generator=torch.Generator().manual_seed(1))
    want = circuit(x)  # builds the plan of the original
    clone = copy.deepcopy(circuit)
    buf = io.BytesIO()
    torch.save(circuit, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for other in (clone, loaded):
        assert "_buffer_cache" not in other.__dict__  # the plan was not copied
        assert torch.equal(other(x), want)
        assert other.execution_plan() is not circuit.execution_plan()
