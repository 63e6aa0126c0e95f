"""The leaf contract, checked for every registered distribution family.

Every family in :data:`pcircuits.distributions.base.DISTRIBUTIONS` must have a
factory in :data:`FACTORIES` below; the tests are parametrized over the
registry, so registering a new leaf without a factory fails
:func:`test_every_registered_family_has_a_factory` (naming it), and a family
with a factory is checked by every test here. Adding a leaf is one file in
``pcircuits/distributions/`` plus one factory here.

A factory builds a :class:`LeafCase`: a small instance, raw parameters chosen
by the test, and the family's probability (or density) written out
independently in numpy from its documented parametrisation. Every reference
below comes from that formula or from enumeration, never from the
distribution's own methods.

Shapes: ``n`` nodes of the instance, ``P`` raw parameters per node, ``C``
categories, ``K`` evaluated values, ``B`` rows, ``G`` groups.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid

import pcircuits as pc
from pcircuits.distributions.base import DISTRIBUTIONS, Distribution

#: probability of values ``x [K]`` under raw parameters ``[n, P]``: ``[K, n]`` (a density for continuous families)
Reference = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LeafCase:
    """A small instance of one family with everything the contract tests need.

    Attributes:
        dist: the instance under test.
        params: ``[n, P]`` float64 raw parameters (valid, chosen by the test).
        prob: the family's probability or density, written in numpy.
        same: an instance built from equal arguments (equal signature).
        different: instances whose arguments change the distribution (or what
            learning does to it); each needs a different signature.
    """

    dist: Distribution
    params: torch.Tensor
    prob: Reference
    same: Distribution
    different: list[Distribution] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return self.params.shape[0]

    def table(self) -> np.ndarray:
        """``[n, C]`` reference probabilities of a discrete family."""
        return self.prob(self.params.numpy(), np.arange(self.dist.num_cats)).T


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of logits that may hold ``-inf``."""
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _categorical() -> LeafCase:
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.0, 0.5, 0.3, 0.2]])
    with np.errstate(divide="ignore"):
        logits = np.log(probs)  # a -inf logit: a category of probability 0
    return LeafCase(
        pc.Categorical(4),
        torch.from_numpy(logits),
        lambda p, x: _softmax(p)[:, x].T,
        same=pc.Categorical(4),
        different=[pc.Categorical(3), pc.Categorical(5)],
    )


def _bernoulli() -> LeafCase:
    def prob(p: np.ndarray, x: np.ndarray) -> np.ndarray:
        one = 1.0 / (1.0 + np.exp(-p[:, 0]))  # [n]
        return np.where(x[:, None] == 1, one, 1.0 - one)

    params = torch.tensor([[-1.5], [0.3], [2.0]], dtype=torch.float64)
    return LeafCase(pc.Bernoulli(), params, prob, same=pc.Bernoulli())


def _gaussian() -> LeafCase:
    def prob(p: np.ndarray, x: np.ndarray) -> np.ndarray:
        mean, std = p[:, 0], np.exp(p[:, 1])
        z = (x[:, None] - mean) / std
        return np.exp(-0.5 * z * z) / (std * math.sqrt(2 * math.pi))

    params = torch.tensor([[0.0, 0.0], [1.5, math.log(0.5)], [-2.0, math.log(2.0)]], dtype=torch.float64)
    # min_std bounds what EM may learn, so groups that differ in it must not share one bank
    return LeafCase(pc.Gaussian(0.01), params, prob, same=pc.Gaussian(min_std=0.01), different=[pc.Gaussian(0.1)])


def _indicator() -> LeafCase:
    values = [0, 2, 1]
    return LeafCase(
        pc.Indicator(values, num_cats=3),
        torch.tensor(values, dtype=torch.float64).unsqueeze(-1),
        lambda p, x: (x[:, None] == p[:, 0]).astype(float),
        same=pc.Indicator(list(values), num_cats=3),
        # the indicated values are the distribution: [X = 2] is not [X = 1]
        different=[
            pc.Indicator([0, 2, 2], num_cats=3),
            pc.Indicator([1, 2, 1], num_cats=3),
            pc.Indicator(values, num_cats=4),
        ],
    )


#: one factory per registered family name
FACTORIES: dict[str, Callable[[], LeafCase]] = {
    "Categorical": _categorical,
    "Bernoulli": _bernoulli,
    "Gaussian": _gaussian,
    "Indicator": _indicator,
}

FAMILIES = sorted(DISTRIBUTIONS)


def leaf_case(name: str) -> LeafCase:
    """The factory's case for registered family ``name``; fails the test when the family has none."""
    if name not in FACTORIES:
        pytest.fail(f"registered distribution {name!r} has no factory in {__name__}.FACTORIES (no contract coverage)")
    case = FACTORIES[name]()
    assert type(case.dist) is DISTRIBUTIONS[name]
    return case


def _discrete_families() -> list[str]:
    return [n for n in FAMILIES if DISTRIBUTIONS[n].discrete]


def _log_prob(case: LeafCase, x: torch.Tensor, missing=None, soft=None, params=None) -> torch.Tensor:
    """Log-values ``[K, n]`` of one group (``G = 1``) at values ``x [K]``."""
    p = case.params if params is None else params
    out = case.dist.log_prob(p.unsqueeze(0), x.unsqueeze(1), missing, soft)
    assert out.shape == (x.shape[0], 1, p.shape[0])
    return out[:, 0]


def _values(case: LeafCase) -> torch.Tensor:
    """``[K]`` values to evaluate: all categories, or a few reals."""
    if case.dist.discrete:
        return torch.arange(case.dist.num_cats)
    return torch.tensor([-3.0, -0.5, 0.0, 0.7, 2.5], dtype=torch.float64)


# ------------------------------------------------------------------------------------------ registry
def test_every_registered_family_has_a_factory():
    missing = sorted(set(DISTRIBUTIONS) - set(FACTORIES))
    assert not missing, f"registered distributions without a contract factory in {__name__}.FACTORIES: {missing}"
    unknown = sorted(set(FACTORIES) - set(DISTRIBUTIONS))
    assert not unknown, f"factories for unregistered names: {unknown}"


def test_a_family_without_a_factory_fails_by_name(monkeypatch):
    class Unlisted(pc.Bernoulli):
        pass

    monkeypatch.setitem(DISTRIBUTIONS, "Unlisted", Unlisted)
    with pytest.raises(pytest.fail.Exception, match="'Unlisted' has no factory"):
        leaf_case("Unlisted")
    with pytest.raises(AssertionError, match="Unlisted"):
        test_every_registered_family_has_a_factory()


@pytest.mark.parametrize("name", FAMILIES)
def test_log_prob_matches_the_family_formula(name):
    case = leaf_case(name)
    x = _values(case)
    want = case.prob(case.params.numpy(), x.numpy())
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(_log_prob(case, x).numpy(), np.log(want), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("name", FAMILIES)
def test_normalised(name):
    """Discrete: the values of all categories sum to 1 per node; continuous: the density integrates to 1."""
    case = leaf_case(name)
    if case.dist.discrete:
        total = _log_prob(case, torch.arange(case.dist.num_cats)).exp().sum(0)
        np.testing.assert_allclose(total.numpy(), 1.0, rtol=1e-12)
    else:
        grid = torch.linspace(-60.0, 60.0, 200_001, dtype=torch.float64)
        dens = _log_prob(case, grid).exp()  # [K, n]
        total = torch.trapezoid(dens, grid, dim=0)
        np.testing.assert_allclose(total.numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name", _discrete_families())
def test_values_outside_the_domain_have_probability_zero(name):
    """A variable may be wider than this leaf (other leaves of it have more categories)."""
    case = leaf_case(name)
    C = case.dist.num_cats
    out = _log_prob(case, torch.tensor([C, C + 3]))
    assert torch.all(out == -math.inf)


# ------------------------------------------------------------------------------------------- missing
@pytest.mark.parametrize("name", FAMILIES)
def test_missing_value_marginalises_to_probability_one(name):
    case = leaf_case(name)
    x = _values(case)
    missing = torch.ones(x.shape[0], 1, dtype=torch.bool)
    out = _log_prob(case, x, missing=missing)
    np.testing.assert_allclose(out.numpy(), 0.0, atol=1e-12)
    # only the marked rows are marginalised
    missing[0, 0] = False
    out = _log_prob(case, x, missing=missing)
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(out[0].numpy(), np.log(case.prob(case.params.numpy(), x[:1].numpy())[0]), atol=1e-12)
    np.testing.assert_allclose(out[1:].numpy(), 0.0, atol=1e-12)


# ------------------------------------------------------------------------------------- soft evidence
def _soft_weights(C: int, rows: int, seed: int) -> np.ndarray:
    """``[rows, C]`` log-weights with an excluded value (``-inf``) and a huge one."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, C)) * 3
    w[0, 0] = -math.inf
    w[1, -1] = 700.0  # exp overflows float64 unless the leaf stays in log space
    return w


@pytest.mark.parametrize("name", _discrete_families())
def test_soft_evidence_against_enumeration(name):
    """Observed: ``log p(x) + log w(x)``; missing: ``log sum_c p(c) w(c)``, enumerated here."""
    case = leaf_case(name)
    C, table = case.dist.num_cats, case.table()  # [n, C]
    x = torch.arange(C).repeat(2)  # every value, observed then missing
    K = x.shape[0]
    logw = _soft_weights(C, K, seed=0)
    missing = torch.zeros(K, 1, dtype=torch.bool)
    missing[C:] = True
    out = _log_prob(case, x, missing=missing, soft=torch.from_numpy(logw).unsqueeze(1))
    with np.errstate(divide="ignore"):
        log_table = np.log(table)
    for k in range(K):
        if missing[k]:
            terms = log_table + logw[k]  # [n, C]
            m = terms.max(-1, keepdims=True)
            want = (m + np.log(np.exp(terms - m).sum(-1, keepdims=True)))[:, 0]
        else:
            want = log_table[:, int(x[k])] + logw[k, int(x[k])]
        np.testing.assert_allclose(out[k].numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", _discrete_families())
def test_max_log_prob_against_enumeration(name):
    case = leaf_case(name)
    table = case.table()
    logw = _soft_weights(case.dist.num_cats, 4, seed=1)
    with np.errstate(divide="ignore"):
        want = (np.log(table)[None] + logw[:, None]).max(-1)  # [B, n]
        plain = np.log(table).max(-1)
    got = case.dist.max_log_prob(case.params.unsqueeze(0), torch.from_numpy(logw).unsqueeze(1))
    np.testing.assert_allclose(got[:, 0].numpy(), want, rtol=1e-12)
    got = case.dist.max_log_prob(case.params.unsqueeze(0), None)
    np.testing.assert_allclose(torch.broadcast_to(got, (1, 1, case.num_nodes))[0, 0].numpy(), plain, rtol=1e-12)


# ----------------------------------------------------------------------------------- sample and mode
N = 40_000


def _frequencies(draws: torch.Tensor, C: int, n: int) -> np.ndarray:
    """``[n, C]`` frequencies of ``draws [n * N]`` (node-major)."""
    counts = np.zeros((n, C))
    for i, row in enumerate(draws.view(n, -1)):
        counts[i] = torch.bincount(row, minlength=C).numpy()[:C]
    return counts / counts.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", _discrete_families())
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_discrete_sample_and_mode_follow_the_table(name, temperature):
    case = leaf_case(name)
    n, C = case.num_nodes, case.dist.num_cats
    table = case.table() ** (1 / temperature)
    table = table / table.sum(-1, keepdims=True)
    rows = case.params.repeat_interleave(N, 0)  # [n * N, P]
    draws = case.dist.sample(rows, None, temperature, torch.Generator().manual_seed(0))
    assert draws.dtype == torch.long and draws.shape == (n * N,)
    assert np.abs(_frequencies(draws, C, n) - table).max() < 0.012
    assert case.dist.mode(case.params, None).tolist() == table.argmax(-1).tolist()


@pytest.mark.parametrize("name", _discrete_families())
def test_discrete_sample_and_mode_under_soft_evidence(name):
    """Draws follow ``p(c) w(c)`` normalised; the mode maximises it."""
    case = leaf_case(name)
    n, C = case.num_nodes, case.dist.num_cats
    logw = np.log(np.linspace(1.0, 3.0, C))[::-1].copy()  # favours small values
    post = case.table() * np.exp(logw)
    post = post / post.sum(-1, keepdims=True)
    ev = torch.from_numpy(logw).expand(n * N, C)
    draws = case.dist.sample(case.params.repeat_interleave(N, 0), ev, 1.0, torch.Generator().manual_seed(1))
    assert np.abs(_frequencies(draws, C, n) - post).max() < 0.012
    assert case.dist.mode(case.params, ev[:n]).tolist() == post.argmax(-1).tolist()


@pytest.mark.parametrize("name", [n for n in FAMILIES if not DISTRIBUTIONS[n].discrete])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_continuous_sample_and_mode_follow_the_density(name, temperature):
    """Sample mean and variance against the density's moments (numeric); the mode is its argmax on a grid."""
    case = leaf_case(name)
    n = case.num_nodes
    grid = np.linspace(-40.0, 40.0, 400_001)
    dens = case.prob(case.params.numpy(), grid) ** (1 / temperature)  # [K, n]
    dens = dens / trapezoid(dens, grid, axis=0)
    mean = trapezoid(dens * grid[:, None], grid, axis=0)
    var = trapezoid(dens * (grid[:, None] - mean) ** 2, grid, axis=0)
    draws = case.dist.sample(case.params.repeat_interleave(N, 0), None, temperature, torch.Generator().manual_seed(2))
    draws = draws.view(n, N).numpy()
    se = np.sqrt(var / N)
    assert np.all(np.abs(draws.mean(-1) - mean) < 5 * se)
    assert np.all(np.abs(draws.var(-1) / var - 1) < 0.05)
    mode = case.dist.mode(case.params, None).numpy()
    np.testing.assert_allclose(mode, grid[case.prob(case.params.numpy(), grid).argmax(0)], atol=2 * (grid[1] - grid[0]))


# ------------------------------------------------------------------------------------------------ EM
def _exact_data(case: LeafCase) -> tuple[torch.Tensor, torch.Tensor]:
    """Data distributed exactly as each node: values ``x [K, n]`` and their weights ``flows [K, n, 1]``.

    Every node is its own group (``G = n``, one node each), so each node can
    have its own support points. Discrete: every category, weighted by its
    probability. Continuous: Gauss-Hermite points of the node's Gaussian
    moments, exact for the first and second moments.
    """
    p = case.params.numpy()
    if case.dist.discrete:
        C = case.dist.num_cats
        x = torch.arange(C).unsqueeze(1).expand(C, case.num_nodes)
        return x, torch.from_numpy(case.table().T.copy()).unsqueeze(-1)
    grid = np.linspace(-60.0, 60.0, 600_001)
    dens = case.prob(p, grid)
    mean = trapezoid(dens * grid[:, None], grid, axis=0)
    std = np.sqrt(trapezoid(dens * (grid[:, None] - mean) ** 2, grid, axis=0))
    nodes, weights = np.polynomial.hermite_e.hermegauss(8)
    x = mean[None] + std[None] * nodes[:, None]  # [K, n]
    flows = np.broadcast_to((weights / weights.sum())[:, None], x.shape)
    return torch.from_numpy(x), torch.from_numpy(flows.copy()).unsqueeze(-1)


def _em_round(case: LeafCase, x: torch.Tensor, flows: torch.Tensor, missing=None, step_size: float = 1.0):
    """Statistics of ``x [K, n]`` with ``flows [K, n, 1]``, then ``em_update``: new params ``[n, P]``."""
    params = case.params.unsqueeze(1)  # [G = n, 1, P]
    stats = case.dist.em_statistics(params, x, missing, None, flows)
    assert stats.shape == (case.num_nodes, 1, case.dist.num_stats)
    new = case.dist.em_update(params, stats, 0.0, step_size)
    assert new.shape == params.shape
    return new[:, 0]


def _assert_same_distribution(case: LeafCase, new: torch.Tensor, rtol: float) -> None:
    """Raw parameters may differ (logits up to a constant); the distributions must not."""
    x = _values(case).numpy()
    np.testing.assert_allclose(case.prob(new.numpy(), x), case.prob(case.params.numpy(), x), rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_em_fixed_point(name):
    """Statistics of data drawn exactly as the distribution give back the same distribution."""
    case = leaf_case(name)
    x, flows = _exact_data(case)
    _assert_same_distribution(case, _em_round(case, x, flows), rtol=1e-9)


@pytest.mark.parametrize("name", FAMILIES)
def test_em_fixed_point_from_missing_values(name):
    """Missing values contribute their expected statistics: all-missing data is a fixed point too."""
    case = leaf_case(name)
    x = _values(case)[:1].expand(2, case.num_nodes)
    flows = torch.full((2, case.num_nodes, 1), 0.5, dtype=torch.float64)
    missing = torch.ones(2, case.num_nodes, dtype=torch.bool)
    _assert_same_distribution(case, _em_round(case, x, flows, missing), rtol=1e-9)


@pytest.mark.parametrize("name", FAMILIES)
def test_em_step_size_zero_keeps_the_distribution(name):
    case = leaf_case(name)
    x = _values(case)[:2].unsqueeze(1).expand(2, case.num_nodes)  # data far from the distribution
    flows = torch.ones(2, case.num_nodes, 1, dtype=torch.float64)
    _assert_same_distribution(case, _em_round(case, x, flows, step_size=0.0), rtol=1e-9)


# ------------------------------------------------------------------------------------------ checking
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_check_params_refuses_nan_and_inf(name, bad):
    case = leaf_case(name)
    case.dist.check_params(case.params, "theta")  # the case's own parameters are valid
    params = case.params.clone()
    params[1, 0] = bad
    with pytest.raises(ValueError, match="theta"):
        case.dist.check_params(params, "theta")


@pytest.mark.parametrize("name", FAMILIES)
def test_check_params_refuses_the_wrong_width(name):
    case = leaf_case(name)
    with pytest.raises(ValueError, match="theta"):
        case.dist.check_params(torch.zeros(case.num_nodes, case.dist.num_params + 1, dtype=torch.float64), "theta")


# ---------------------------------------------------------------------------------------- identity
@pytest.mark.parametrize("name", FAMILIES)
def test_json_round_trip(name):
    case = leaf_case(name)
    data = json.loads(json.dumps(case.dist.to_json()))
    back = Distribution.from_json(data)
    assert type(back) is type(case.dist)
    assert back.config() == case.dist.config() and back.signature() == case.dist.signature() and back == case.dist
    assert DISTRIBUTIONS[name](**case.dist.config()).signature() == case.dist.signature()
    x = _values(case)
    assert torch.equal(_log_prob(case, x), back.log_prob(case.params.unsqueeze(0), x.unsqueeze(1), None, None)[:, 0])


@pytest.mark.parametrize("name", FAMILIES)
def test_signature_tells_distributions_apart(name):
    case = leaf_case(name)
    assert case.same.signature() == case.dist.signature() and hash(case.same) == hash(case.dist)
    assert case.same == case.dist
    assert case.same.fold_key() == case.dist.fold_key(), "equal distributions must fold together"
    for other in case.different:
        assert other.signature() != case.dist.signature(), f"{other!r} and {case.dist!r} differ but share a signature"
        assert other != case.dist


def test_signatures_differ_between_families():
    sigs = {name: leaf_case(name).dist.signature() for name in FAMILIES}
    assert len(set(sigs.values())) == len(sigs), sigs


@pytest.mark.parametrize("name", FAMILIES)
def test_folded_groups_compute_with_their_own_parameters(name):
    """Groups with equal fold keys share one block, evaluated by the first group's object.

    So that object, given another member's parameters, must compute exactly
    what that member's own object does.
    """
    case = leaf_case(name)
    gen = torch.Generator().manual_seed(0)
    for other in [case.same, *case.different]:
        if other.fold_key() != case.dist.fold_key():
            continue
        params = other.init_params(case.num_nodes, gen)
        x = _values(case)
        got = _log_prob(case, x, params=params)
        want = other.log_prob(params.unsqueeze(0), x.unsqueeze(1), None, None)[:, 0]
        assert torch.equal(got, want), f"{case.dist!r} folds with {other!r} but computes its leaves differently"


# ------------------------------------------------------------------------------------- in a circuit
def _engine_check(groups: list[tuple[Distribution, torch.Tensor, Reference]], x: torch.Tensor, missing=None) -> None:
    """``sum_i w_i prod_v p_v(x_v)_i`` over one product per node index, engine against numpy.

    ``groups`` holds one (distribution, params ``[n, P]``, reference) per
    variable, all with ``n`` nodes; ``x [B, V]``; ``missing [B, V]`` or None.
    """
    n = groups[0][1].shape[0]
    leaves = [pc.inputs(v, n, d) for v, (d, _, _) in enumerate(groups)]
    root = pc.summate(pc.multiply(*leaves) if len(leaves) > 1 else leaves[0], num_nodes=1)
    circuit = pc.compile(root).to(torch.float64)
    weights = np.arange(1.0, n + 1) / np.arange(1.0, n + 1).sum()
    circuit.set_group_parameters(root, torch.from_numpy(weights)[None])
    for leaf, (_, params, _) in zip(leaves, groups, strict=True):
        circuit.set_group_parameters(leaf, params)
    per_node = np.ones((x.shape[0], n))
    for v, (_, params, prob) in enumerate(groups):
        p = prob(params.numpy(), x[:, v].numpy())  # [B, n]
        if missing is not None:
            p = np.where(missing[:, v].numpy()[:, None], 1.0, p)
        per_node = per_node * p
    with np.errstate(divide="ignore"):
        want = np.log(per_node @ weights)
    np.testing.assert_allclose(circuit(x, missing).detach().numpy(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", FAMILIES)
def test_engine_likelihood_equals_the_family_formula(name):
    case = leaf_case(name)
    x = _values(case).unsqueeze(1)
    _engine_check([(case.dist, case.params, case.prob)], x)
    missing = torch.zeros_like(x, dtype=torch.bool)
    missing[0] = True
    _engine_check([(case.dist, case.params, case.prob)], x, missing)


@pytest.mark.parametrize("name", FAMILIES)
def test_engine_keeps_differing_groups_apart(name):
    """Groups of one family that differ (folded into one block or not) each keep their own distribution."""
    case = leaf_case(name)
    gen = torch.Generator().manual_seed(0)
    groups = [(case.dist, case.params, case.prob)]
    groups += [(d, d.init_params(case.num_nodes, gen), case.prob) for d in case.different]
    vals = [torch.arange(d.num_cats).tolist() if d.discrete else _values(case).tolist() for d, _, _ in groups]
    x = torch.tensor(list(itertools.product(*vals)), dtype=_values(case).dtype)  # [K, V]: every combination
    _engine_check(groups, x)


@pytest.mark.parametrize("name", FAMILIES)
def test_tying_refuses_groups_that_differ(name):
    """A tied group shares its owner's parameters, so only equal distributions may be tied."""
    case = leaf_case(name)
    owner = pc.inputs(0, case.num_nodes, case.dist)
    pc.inputs(1, case.num_nodes, case.same, tie_with=owner)
    for other in case.different:
        with pytest.raises(ValueError, match="tie_with"):
            pc.inputs(1, case.num_nodes, other, tie_with=owner)
