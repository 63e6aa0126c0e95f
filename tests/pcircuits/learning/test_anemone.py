"""Anemone: one update against the paper's formula computed by hand, monotone full-batch runs, evidence, arguments."""

import gzip
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import pcircuits as pc
from pcircuits.learning.anemone import anemone_step
from tests.pcircuits.random_circuits import random_circuit, random_evidence

NLTCS = Path(pc.__file__).parent / "data" / "nltcs.train.data.gz"

# the tiny circuit: w_k * theta_k0(x0) * theta_k1(x1), k = 0, 1; x0 in {0, 1, 2}, x1 in {0, 1}
W = np.array([0.3, 0.7])
THETA = [
    [np.array([0.2, 0.5, 0.3]), np.array([0.8, 0.2])],
    [np.array([0.6, 0.1, 0.3]), np.array([0.25, 0.75])],
]
CATS = (3, 2)


def _tiny():
    leaves = [[pc.inputs(v, 1, pc.Categorical(CATS[v])) for v in range(2)] for _ in range(2)]
    root = pc.summate(*[pc.multiply(*row) for row in leaves], num_nodes=1)
    circuit = pc.compile(root, seed=0).to(torch.float64)
    circuit.set_group_parameters(root, torch.tensor(W[None]))
    for k in range(2):
        for v in range(2):
            circuit.set_group_parameters(leaves[k][v], torch.from_numpy(np.log(THETA[k][v])[None]))
    return circuit, root, leaves


def _read(circuit, root, leaves):
    w = circuit.group_parameters(root).detach().numpy()[0]
    th = [
        [torch.softmax(circuit.group_parameters(leaves[k][v]).detach()[0], -1).numpy() for v in range(2)]
        for k in range(2)
    ]
    return w, th


def _flows(x, missing=None, soft=None):
    """Brute force: ``F [2]`` posterior mass of each component and ``counts[k][v] [C_v]`` over the rows.

    Every completion of a row's missing entries is enumerated; soft evidence
    multiplies each value's term by ``exp(soft[b, v, value])``.
    """
    F = np.zeros(2)
    counts = [[np.zeros(CATS[v]) for v in range(2)] for _ in range(2)]
    for b, row in enumerate(x):
        choices = [range(CATS[v]) if (missing is not None and missing[b, v]) else [row[v]] for v in range(2)]
        terms = []
        for k in range(2):
            for z in itertools.product(*choices):
                t = W[k] * np.prod([THETA[k][v][z[v]] for v in range(2)])
                if soft is not None:
                    t *= np.exp(sum(soft[b, v, z[v]] for v in range(2)))
                terms.append((k, z, t))
        total = sum(t for _, _, t in terms)
        for k, z, t in terms:
            F[k] += t / total
            for v in range(2):
                counts[k][v][z[v]] += t / total
    return F, counts


def _expected_joint(F, counts, batch, alpha, pseudocount):
    """The paper's update: ``theta' ~ alpha / B (flows + pseudocount / k) + (1 - alpha) q theta``."""
    w = alpha / batch * (F + pseudocount / 2) + (1 - alpha) * 1.0 * W  # the root's top-down probability is 1
    th = [
        [alpha / batch * (counts[k][v] + pseudocount / CATS[v]) + (1 - alpha) * W[k] * THETA[k][v] for v in range(2)]
        for k in range(2)
    ]
    return w / w.sum(), [[t / t.sum() for t in row] for row in th]


def _assert_close(got, want):
    (gw, gth), (ew, eth) = got, want
    np.testing.assert_allclose(gw, ew, rtol=1e-10, atol=1e-12)
    for k in range(2):
        for v in range(2):
            np.testing.assert_allclose(gth[k][v], eth[k][v], rtol=1e-10, atol=1e-12)


X = np.array([[0, 1], [2, 0], [1, 1], [2, 1]])


@pytest.mark.parametrize("alpha, pseudocount", [(0.3, 0.0), (0.8, 0.5), (1.0, 0.1)])
def test_one_step_matches_the_hand_computed_update(alpha, pseudocount):
    circuit, root, leaves = _tiny()
    ll = anemone_step(circuit, torch.from_numpy(X), step_size=alpha, pseudocount=pseudocount)
    F, counts = _flows(X)
    _assert_close(_read(circuit, root, leaves), _expected_joint(F, counts, len(X), alpha, pseudocount))
    p = [sum(W[k] * THETA[k][0][a] * THETA[k][1][b] for k in range(2)) for a, b in X]
    np.testing.assert_allclose(ll.numpy(), np.log(p), rtol=1e-12)


def test_node_step_is_its_share_of_the_batch_flow_against_its_top_down_probability():
    # theta' = (1 - eta) theta + eta * theta_batch with eta = alpha F / B / (alpha F / B + (1 - alpha) q)
    circuit, root, leaves = _tiny()
    alpha = 0.4
    anemone_step(circuit, torch.from_numpy(X), step_size=alpha, pseudocount=0.0)
    F, counts = _flows(X)
    _, th = _read(circuit, root, leaves)
    for k in range(2):
        eta = alpha * F[k] / len(X) / (alpha * F[k] / len(X) + (1 - alpha) * W[k])
        for v in range(2):
            want = (1 - eta) * THETA[k][v] + eta * counts[k][v] / counts[k][v].sum()
            np.testing.assert_allclose(th[k][v], want, rtol=1e-10)


def test_one_step_with_missing_values_and_soft_evidence_matches_brute_force():
    rng = np.random.default_rng(0)
    missing = np.array([[False, True], [True, False], [True, True], [False, False]])
    soft = np.log(rng.uniform(0.1, 1.0, size=(4, 2, 3)))
    soft[:, 1, 2] = 0.0  # variable 1 has two categories; the padded column is never read
    circuit, root, leaves = _tiny()
    anemone_step(
        circuit, torch.from_numpy(X), torch.from_numpy(missing), torch.from_numpy(soft), step_size=0.6, pseudocount=0.2
    )
    F, counts = _flows(X, missing, soft)
    _assert_close(_read(circuit, root, leaves), _expected_joint(F, counts, len(X), 0.6, 0.2))


def test_conditional_step_matches_the_hand_computed_update():
    # masked entries are scored given the observed ones and the soft evidence:
    # theta' = theta + alpha / B * g / (alpha / B * F+_n + (1 - alpha) q_n),
    # g = (F+ - theta F+_n) - (F- - theta F-_n)
    rng = np.random.default_rng(1)
    masked = np.array([[True, False], [False, True], [True, True], [True, False]])
    soft = np.log(rng.uniform(0.05, 1.0, size=(4, 2, 3)))
    soft[:, 1, 2] = -np.inf  # off the two categories of variable 1
    soft = np.where(masked[..., None], soft, 0.0)
    alpha, B = 0.2, len(X)
    circuit, root, leaves = _tiny()
    ll = anemone_step(
        circuit, torch.from_numpy(X), torch.from_numpy(masked), torch.from_numpy(soft), step_size=alpha,
        pseudocount=0.0, objective="conditional",
    )
    Fp, cp = _flows(X)
    Fm, cm = _flows(X, masked, soft)
    a = alpha / B
    g = (Fp - W * Fp.sum()) - (Fm - W * Fm.sum())
    want_w = W + a * g / (a * Fp.sum() + (1 - alpha) * 1.0)
    want_th = [
        [
            THETA[k][v]
            + a * ((cp[k][v] - THETA[k][v] * Fp[k]) - (cm[k][v] - THETA[k][v] * Fm[k]))
            / (a * Fp[k] + (1 - alpha) * W[k])
            for v in range(2)
        ]
        for k in range(2)
    ]
    for k in range(2):  # the step was not shortened: every weight keeps more than half its value
        for v in range(2):
            assert (want_th[k][v] > 0.5 * THETA[k][v]).all()
    _assert_close(_read(circuit, root, leaves), (want_w, want_th))
    # the returned objective: log p(x) + sum_masked w(x) - log sum_{x_masked} p(x_obs, x_masked) prod w
    for b, (x0, x1) in enumerate(X):
        num = sum(W[k] * THETA[k][0][x0] * THETA[k][1][x1] for k in range(2))
        choices = [range(3) if masked[b, 0] else [x0], range(2) if masked[b, 1] else [x1]]
        den = sum(
            W[k] * THETA[k][0][z0] * THETA[k][1][z1] * np.exp(soft[b, 0, z0] + soft[b, 1, z1])
            for k in range(2) for z0 in choices[0] for z1 in choices[1]
        )
        want = np.log(num) + soft[b, 0, x0] + soft[b, 1, x1] - np.log(den)
        assert float(ll[b]) == pytest.approx(want, rel=1e-10)


def test_full_step_size_is_the_batch_em_optimum():
    data = torch.randint(0, 2, (50, 4), generator=torch.Generator().manual_seed(0))
    comps = [pc.multiply(*[pc.inputs(v, 1, pc.Bernoulli()) for v in range(4)]) for _ in range(3)]
    c1 = pc.compile(pc.summate(*comps, num_nodes=1), seed=3).to(torch.float64)
    c2 = pc.compile(pc.summate(*comps, num_nodes=1), seed=3).to(torch.float64)
    anemone_step(c1, data, step_size=1.0, pseudocount=0.3)
    pc.em(c2, data, step_size=1.0, pseudocount=0.3, progress=False)
    for k in c1.params:
        assert torch.allclose(c1.params[k], c2.params[k], atol=1e-10), k


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.3, 0.7, 1.0]))
def test_full_batch_anemone_never_decreases_the_likelihood(seed, alpha):
    # the update maximises alpha * Q(theta') / N - (1 - alpha) KL(theta || theta'), so Q and the likelihood rise
    root, kinds = random_circuit(seed)
    circuit = pc.compile(root, seed=seed).to(torch.float64)
    x, missing, soft = random_evidence(seed, kinds, batch=30, missing_rate=0.3, soft=True)
    x, missing, soft = torch.from_numpy(x), torch.from_numpy(missing), torch.from_numpy(soft)[..., : circuit.max_cats]
    hist = pc.anemone(circuit, x, epochs=5, batch_size=30, step_size=alpha, pseudocount=0.0, missing=missing,
                      soft_evidence=soft, shuffle=False, progress=False)
    hist.append(float(circuit(x, missing, soft).mean()))
    finite = [h for h in hist if np.isfinite(h)]
    assert all(b >= a - 1e-9 for a, b in zip(finite, finite[1:], strict=False)), hist


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1))
@example(365444549)  # alpha = 1 and a sum node with no flow from the observed rows: it must keep its weights
def test_conditional_step_keeps_every_weight_above_half_its_value(seed):
    root, kinds = random_circuit(seed, allow_gaussian=False)
    circuit = pc.compile(root, seed=seed).to(torch.float64)
    x, masked, soft = random_evidence(seed, kinds, batch=20, missing_rate=0.5, soft=True)
    before = {k: torch.exp(v.detach()) for k, v in circuit.sum_log_weights().items()}
    anemone_step(
        circuit,
        torch.from_numpy(x),
        torch.from_numpy(masked),
        torch.from_numpy(soft)[..., : circuit.max_cats],
        step_size=1.0,
        pseudocount=0.0,
        objective="conditional",
    )
    for k, v in circuit.sum_log_weights().items():
        assert (torch.exp(v.detach()) >= 0.5 * before[k] - 1e-12).all(), k


def _nltcs():
    with gzip.open(NLTCS, "rt") as f:
        return torch.tensor([[int(v) for v in line.strip().split(",")] for line in f if line.strip()])


def test_mini_batch_anemone_improves_on_real_data():
    data = _nltcs()[:4000]
    comps = [pc.multiply(*[pc.inputs(v, 1, pc.Bernoulli()) for v in range(16)]) for _ in range(8)]
    circuit = pc.compile(pc.summate(*comps, num_nodes=1), seed=0)
    with torch.no_grad():
        before = float(circuit(data).mean())
    hist = pc.anemone(circuit, data, epochs=3, batch_size=256, step_size=0.5, progress=False)
    with torch.no_grad():
        after = float(circuit(data).mean())
    assert after > before + 1.0
    assert hist[-1] > hist[0]


def test_conditional_training_lowers_the_conditional_nll():
    circuit, _, _ = _tiny()
    g = torch.Generator().manual_seed(0)
    x = torch.stack([torch.randint(0, 3, (200,), generator=g), torch.randint(0, 2, (200,), generator=g)], 1)
    x[:, 1] = (x[:, 0] > 0).long()  # x1 is a function of x0
    masked = torch.zeros(200, 2, dtype=torch.bool)
    masked[:, 1] = True
    hist = pc.anemone(circuit, x, epochs=6, batch_size=50, step_size=0.5, missing=masked, objective="conditional",
                      progress=False)
    assert hist[-1] > hist[0] + 0.1


def _bernoulli_mixture():
    comps = [pc.multiply(*[pc.inputs(v, 1, pc.Bernoulli()) for v in range(3)]) for _ in range(2)]
    return pc.compile(pc.summate(*comps, num_nodes=1), seed=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": 1.5}, "step_size"),
        ({"step_size": float("nan")}, "step_size"),
        ({"pseudocount": -1.0}, "pseudocount"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"objective": "marginal"}, "objective"),
        ({"objective": "conditional"}, "missing"),
        ({"missing": torch.zeros(2, 3, dtype=torch.bool)}, "missing"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, name):
    circuit = _bernoulli_mixture()
    before = {k: v.detach().clone() for k, v in circuit.params.items()}
    with pytest.raises(ValueError, match=name):
        pc.anemone(circuit, torch.zeros(4, 3), progress=False, **kwargs)
    for k, v in before.items():
        assert torch.equal(v, circuit.params[k].detach())


def test_bad_step_arguments_raise_value_errors_naming_them():
    circuit = _bernoulli_mixture()
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="weights"):
        anemone_step(circuit, x, weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="weights"):
        anemone_step(circuit, x, weights=torch.ones(3))
    with pytest.raises(ValueError, match="objective"):
        anemone_step(circuit, x, objective="joint ")
    gauss = pc.compile(pc.summate(pc.inputs(0, 2, pc.Gaussian()), num_nodes=1), seed=0)
    with pytest.raises(ValueError, match="objective: 'conditional' trains sum weights and discrete leaves only"):
        anemone_step(gauss, torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool), objective="conditional")
    with pytest.raises(TypeError, match="batch_size"):
        pc.anemone(circuit, x, batch_size=2.5)


def test_failed_run_restores_the_circuit():
    leaf = pc.inputs(0, 2, pc.Gaussian())
    circuit = pc.compile(pc.summate(leaf, num_nodes=1), seed=0)
    before = {k: v.detach().clone() for k, v in circuit.params.items()}
    x = torch.tensor([[0.0], [1.0], [2.0], [1.5e19], [1.5e19], [1.5e19]])  # the second batch overflows float32
    with pytest.raises(ValueError, match="left unchanged"):
        pc.anemone(circuit, x, batch_size=3, shuffle=False, progress=False)
    for k, v in before.items():
        assert torch.equal(v, circuit.params[k].detach())


# --- the CoDD prior's conditional objective (diffusion.codd.training.fit_prior, optimizer="anemone") ---


def _codd_windows(num):
    from diffusion.codd.synthetic import make_teacher, oracle_backbone, teacher_windows

    teacher = make_teacher(length=8, states=4, vocab=6, seed=0)
    bb = oracle_backbone(teacher)
    return bb, teacher_windows(teacher, bb, num, seed=0), teacher_windows(teacher, bb, 200, seed=1)


@pytest.mark.parametrize("top_k", [None, 3])
def test_fit_prior_with_anemone_lowers_the_heldout_conditional_nll(top_k):
    from diffusion.codd.prior import CoDDPrior
    from diffusion.codd.training import conditional_nll, fit_prior, mean_nll

    bb, (x0, masked, logits), (xv, mv, lv) = _codd_windows(300)
    prior = CoDDPrior.hmm(8, 8, bb.vocab_size, seed=0, top_k=top_k)
    before = mean_nll(conditional_nll(prior, xv, mv, lv), mv)
    hist = fit_prior(prior, x0, masked, logits, epochs=3, batch_size=32, lr=0.5, valid_frac=0.0, progress=False,
                     optimizer="anemone")
    after = mean_nll(conditional_nll(prior, xv, mv, lv), mv)
    assert after < before - 0.02, (before, after, hist)


def test_fit_prior_refuses_an_unknown_optimizer_or_a_step_size_above_one():
    from diffusion.codd.prior import CoDDPrior
    from diffusion.codd.training import fit_prior

    bb, (x0, masked, logits), _ = _codd_windows(20)
    prior = CoDDPrior.hmm(8, 4, bb.vocab_size, seed=0)
    with pytest.raises(ValueError, match="optimizer"):
        fit_prior(prior, x0, masked, logits, optimizer="sgd", progress=False)
    with pytest.raises(ValueError, match="lr"):
        fit_prior(prior, x0, masked, logits, optimizer="anemone", lr=2.0, progress=False)
