"""Bad input at every entry point: a ValueError/TypeError naming the argument, and no model changed.

Each case calls one public function with one bad argument on freshly built
small models (a circuit with Categorical, Bernoulli, Gaussian and Indicator
leaves and a sparse sum group; a Gaussian mixture; a CoDD prior with a
backoff; stub backbones). The test checks the exception type, that the
message names the argument, and that every parameter of every model (and
the prior's backoff) is bit-identical before and after the call.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import pcircuits as pc
from diffusion import CoDDDraw, CoDDPrior, generate
from diffusion.backbones import MaskedLMBackbone
from diffusion.data import QAExample
from diffusion.evaluation import evaluate_generation
from pcircuits.learning import apply_statistics, expected_statistics, learn_hclt, learn_spn

NAN, INF = math.nan, math.inf
VOCAB, MASK = 6, 5  # stub backbones: vocabulary 6, mask id 5


class _ConstantLogits(nn.Module):
    """Logits 0 everywhere except ``value`` at token 2 (NaN / inf make a broken backbone)."""

    def __init__(self, value: float, fill: float = 0.0):
        super().__init__()
        self.value, self.fill = value, fill
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = torch.full((*input_ids.shape, VOCAB), self.fill)
        out[..., 2] = self.value
        return out


def _models() -> SimpleNamespace:
    """Fresh small models for one case."""
    m = SimpleNamespace()
    m.cat = pc.inputs(0, 2, pc.Categorical(3))
    m.bern = pc.inputs(1, 2, pc.Bernoulli())
    m.gauss = pc.inputs(2, 2, pc.Gaussian())
    m.ind = pc.inputs(3, 1, pc.Indicator(1, num_cats=2))
    ind0 = pc.inputs(3, 1, pc.Indicator(0, num_cats=2))
    m.isum = pc.summate(ind0, m.ind, num_nodes=2)
    prod = pc.multiply(m.cat, m.bern, m.gauss, m.isum)
    m.sparse = pc.summate(prod, num_nodes=2, edges=torch.tensor([[0, 1, 1], [0, 0, 1]]))
    m.root = pc.summate(m.sparse, num_nodes=1)
    m.circuit = pc.compile(m.root, seed=0)
    m.x = torch.tensor([[0.0, 1, 0.5, 1], [2, 0, -1.0, 0]])
    m.gmix = pc.compile(pc.summate(pc.inputs(0, 2, pc.Gaussian()), num_nodes=1), seed=0)
    m.prior = CoDDPrior.hmm(4, 3, VOCAB, seed=0)
    m.prior.set_backoff([0.25, 0.75])
    m.px = torch.tensor([[1, 0, 0, 3], [2, 0, 0, 4]])
    m.masked = torch.tensor([[False, True, True, False]] * 2)
    m.logits = torch.randn(2, 4, VOCAB, generator=torch.Generator().manual_seed(0))
    return m


def _bad_logits(m: SimpleNamespace, value: float, row: int = 0, pos: int = 1, token: int | None = 2) -> torch.Tensor:
    """The valid logits with ``value`` at one token (``token=None``: the whole row) of a masked position."""
    out = m.logits.clone()
    if token is None:
        out[row, pos] = value
    else:
        out[row, pos, token] = value
    return out


def _backbone(value: float, fill: float = 0.0) -> MaskedLMBackbone:
    return MaskedLMBackbone(_ConstantLogits(value, fill), mask_token_id=MASK, vocab_size=VOCAB)


def _generate(backbone: MaskedLMBackbone, **kw) -> torch.Tensor:
    args = dict(gen_length=4, steps=4, block_length=4)
    args.update(kw)
    return generate(backbone, torch.zeros(1, 2, dtype=torch.long), **args)


def _em_stats(m: SimpleNamespace):
    return expected_statistics(m.circuit, m.circuit.prepare(m.x))[1]


def _binary_data() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 2, size=(30, 3))


def _with(t: torch.Tensor, index: tuple, value: float) -> torch.Tensor:
    t = t.clone()
    t[index] = value
    return t


Case = tuple[str, type[Exception], str, Callable[[SimpleNamespace], object]]

CASES: list[Case] = [
    # --- parameters through set_group_parameters: sum groups
    ("sum-zero-row", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.root, torch.zeros(1, 2))),
    ("sum-nan", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.root, torch.tensor([[NAN, 1.0]]))),
    ("sum-inf", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.root, torch.tensor([[INF, 1.0]]))),
    ("sum-negative", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.root, torch.tensor([[-1.0, 2.0]]))),
    ("sum-wrong-shape", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.root, torch.ones(2, 2))),
    ("sum-complex", TypeError, "value", lambda m: m.circuit.set_group_parameters(m.root, torch.ones(1, 2, dtype=torch.complex64))),
    ("sum-bool", TypeError, "value", lambda m: m.circuit.set_group_parameters(m.root, torch.ones(1, 2, dtype=torch.bool))),
    ("sum-strings", TypeError, "value", lambda m: m.circuit.set_group_parameters(m.root, [["a", "b"]])),
    ("sum-ragged", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.root, [[1.0], [1.0, 2.0]])),
    (
        "sparse-sum-weight-only-off-edges",  # node 0 has one edge (child 0); all its weight is on child 1
        ValueError,
        "value",
        lambda m: m.circuit.set_group_parameters(m.sparse, torch.tensor([[0.0, 1.0], [1.0, 1.0]])),
    ),
    ("sum-nan-off-edges", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.sparse, torch.tensor([[1.0, NAN], [1.0, 1.0]]))),
    ("indicator-sum-inf", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.isum, torch.full((2, 2), INF))),
    # --- parameters through set_group_parameters: input groups
    ("categorical-nan", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.cat, torch.tensor([[0.0, NAN, 1.0]] * 2))),
    ("categorical-plus-inf", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.cat, torch.tensor([[0.0, INF, 1.0]] * 2))),
    ("categorical-all-minus-inf", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.cat, torch.full((2, 3), -INF))),
    ("categorical-wrong-shape", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.cat, torch.zeros(2, 2))),
    ("categorical-complex", TypeError, "value", lambda m: m.circuit.set_group_parameters(m.cat, np.zeros((2, 3), dtype=complex))),
    ("categorical-object", TypeError, "value", lambda m: m.circuit.set_group_parameters(m.cat, np.array([[None] * 3] * 2))),
    ("bernoulli-inf", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.bern, torch.tensor([[INF], [0.0]]))),
    ("bernoulli-nan", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.bern, torch.tensor([[0.0], [NAN]]))),
    ("gaussian-nan-mean", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.gauss, torch.tensor([[NAN, 0.0], [0.0, 0.0]]))),
    ("gaussian-inf-log-std", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.gauss, torch.tensor([[0.0, INF], [0.0, 0.0]]))),
    ("gaussian-zero-std", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.gauss, torch.tensor([[0.0, -INF], [0.0, 0.0]]))),
    (
        "gaussian-log-std-overflows-float32",
        ValueError,
        "value",
        lambda m: m.circuit.set_group_parameters(m.gauss, torch.tensor([[0.0, 1e39], [0.0, 0.0]], dtype=torch.float64)),
    ),
    ("gaussian-std-underflows", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.gauss, torch.tensor([[0.0, -1000.0], [0.0, 0.0]]))),
    ("gaussian-std-overflows", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.gauss, torch.tensor([[0.0, 1000.0], [0.0, 0.0]]))),
    (
        "indicator-changed",  # the other value of the binary variable
        ValueError,
        "value",
        lambda m: m.circuit.set_group_parameters(m.ind, 1.0 - m.circuit.group_parameters(m.ind).detach()),
    ),
    ("indicator-out-of-range", ValueError, "value", lambda m: m.circuit.set_group_parameters(m.ind, torch.tensor([[7.0]]))),
    ("foreign-group", ValueError, "group", lambda m: m.circuit.set_group_parameters(pc.inputs(0, 2, pc.Categorical(3)), torch.zeros(2, 3))),
    # --- EM and the other learners
    ("em-pseudocount-nan", ValueError, "pseudocount", lambda m: pc.em(m.circuit, m.x, pseudocount=NAN, progress=False)),
    ("em-pseudocount-inf", ValueError, "pseudocount", lambda m: pc.em(m.circuit, m.x, pseudocount=INF, progress=False)),
    ("em-pseudocount-negative", ValueError, "pseudocount", lambda m: pc.em(m.circuit, m.x, pseudocount=-1.0, progress=False)),
    ("em-pseudocount-string", TypeError, "pseudocount", lambda m: pc.em(m.circuit, m.x, pseudocount="0.1", progress=False)),
    ("em-step-size-zero", ValueError, "step_size", lambda m: pc.em(m.circuit, m.x, step_size=0.0, progress=False)),
    ("em-step-size-nan", ValueError, "step_size", lambda m: pc.em(m.circuit, m.x, step_size=NAN, progress=False)),
    ("em-step-size-above-one", ValueError, "step_size", lambda m: pc.em(m.circuit, m.x, step_size=1.5, progress=False)),
    ("em-epochs-zero", ValueError, "epochs", lambda m: pc.em(m.circuit, m.x, epochs=0, progress=False)),
    ("em-epochs-float", TypeError, "epochs", lambda m: pc.em(m.circuit, m.x, epochs=1.5, progress=False)),
    ("em-batch-size-zero", ValueError, "batch_size", lambda m: pc.em(m.circuit, m.x, batch_size=0, progress=False)),
    ("em-batch-size-float", TypeError, "batch_size", lambda m: pc.em(m.circuit, m.x, batch_size=2.5, progress=False)),
    ("em-chunk-size-zero", ValueError, "chunk_size", lambda m: pc.em(m.circuit, m.x, chunk_size=0, progress=False)),
    ("em-gaussian-data-inf", ValueError, "data", lambda m: pc.em(m.circuit, _with(m.x, (1, 2), INF), progress=False)),
    ("em-gaussian-data-minus-inf", ValueError, "data", lambda m: pc.em(m.gmix, torch.tensor([[0.0], [-INF]]), progress=False)),
    ("em-gaussian-data-nan", ValueError, "data", lambda m: pc.em(m.gmix, torch.tensor([[0.0], [NAN]]), batch_size=1, progress=False)),
    (
        "em-bad-row-after-first-batch",  # mini-batch EM would have updated on the first batches
        ValueError,
        "data",
        lambda m: pc.em(m.gmix, torch.tensor([[0.0], [1.0], [2.0], [INF]]), batch_size=1, shuffle=False, chunk_size=2, progress=False),
    ),
    (
        "em-statistics-overflow",  # squares of the data overflow float32: the update would be inf
        ValueError,
        "data",
        lambda m: pc.em(m.gmix, torch.full((3, 1), 1.5e19), progress=False),
    ),
    ("em-missing-rows", ValueError, "missing", lambda m: pc.em(m.circuit, m.x, missing=torch.zeros(3, 4, dtype=torch.bool), progress=False)),
    ("apply-statistics-pseudocount-nan", ValueError, "pseudocount", lambda m: apply_statistics(m.circuit, _em_stats(m), NAN, 1.0)),
    ("apply-statistics-step-size-inf", ValueError, "step_size", lambda m: apply_statistics(m.circuit, _em_stats(m), 0.1, INF)),
    ("learn-hclt-pseudocount-nan", ValueError, "pseudocount", lambda m: learn_hclt(_binary_data(), 2, pseudocount=NAN, progress=False)),
    ("learn-hclt-batch-size-zero", ValueError, "batch_size", lambda m: learn_hclt(_binary_data(), 2, batch_size=0, progress=False)),
    ("learn-spn-pseudocount-inf", ValueError, "pseudocount", lambda m: learn_spn(_binary_data(), pseudocount=INF)),
    ("learn-spn-time-budget-nan", ValueError, "time_budget", lambda m: learn_spn(_binary_data(), time_budget=NAN)),
    # --- evidence of queries
    ("prepare-wrong-columns", ValueError, "x", lambda m: m.circuit.prepare(torch.zeros(2, 3))),
    ("prepare-gaussian-overflows-float32", ValueError, "x", lambda m: m.circuit.prepare(_with(m.x.double(), (0, 2), 1e200))),
    ("prepare-category-past-int64", ValueError, "x", lambda m: m.circuit.prepare(_with(m.x.double(), (0, 0), 1e300))),
    ("prepare-list", TypeError, "x", lambda m: m.circuit.prepare([[0, 1, 0.5, 1]])),
    ("prepare-complex", TypeError, "x", lambda m: m.circuit.prepare(m.x.to(torch.complex64))),
    ("prepare-category-out-of-range", ValueError, "x", lambda m: m.circuit.prepare(_with(m.x, (0, 0), 3.0))),
    ("prepare-negative-category", ValueError, "x", lambda m: m.circuit.prepare(_with(m.x, (1, 1), -1.0))),
    ("prepare-nan-observed", ValueError, "x", lambda m: m.circuit.prepare(_with(m.x, (0, 2), NAN))),
    ("prepare-gaussian-inf", ValueError, "x", lambda m: m.circuit.prepare(_with(m.x, (1, 2), INF))),
    ("prepare-discrete-inf", ValueError, "x", lambda m: m.circuit.prepare(_with(m.x, (1, 0), INF))),
    ("prepare-missing-float", TypeError, "missing", lambda m: m.circuit.prepare(m.x, torch.zeros(2, 4))),
    ("prepare-missing-shape", ValueError, "missing", lambda m: m.circuit.prepare(m.x, torch.zeros(2, 3, dtype=torch.bool))),
    ("prepare-soft-evidence-nan", ValueError, "soft_evidence", lambda m: m.circuit.prepare(m.x, soft_evidence=torch.full((2, 4, 3), NAN))),
    ("prepare-soft-evidence-shape", ValueError, "soft_evidence", lambda m: m.circuit.prepare(m.x, soft_evidence=torch.zeros(2, 4, 2))),
    ("forward-gaussian-inf", ValueError, "x", lambda m: m.circuit(_with(m.x, (0, 2), -INF))),
    ("marginals-gaussian-inf", ValueError, "x", lambda m: pc.marginals(m.circuit, _with(m.x, (0, 2), INF))),
    ("mpe-category-out-of-range", ValueError, "x", lambda m: pc.mpe(m.circuit, _with(m.x, (0, 1), 2.0))),
    ("sample-soft-evidence-plus-inf", ValueError, "soft_evidence", lambda m: pc.sample(m.circuit, 1, m.x, soft_evidence=torch.full((2, 4, 3), INF))),
    ("sample-num-samples-zero", ValueError, "num_samples", lambda m: pc.sample(m.circuit, 0)),
    ("sample-temperature-nan", ValueError, "temperature", lambda m: pc.sample(m.circuit, 2, temperature=NAN)),
    # --- builders
    ("inputs-negative-var", ValueError, "var", lambda m: pc.inputs(-1, 2, pc.Categorical(3))),
    ("inputs-zero-nodes", ValueError, "num_nodes", lambda m: pc.inputs(0, 0, pc.Categorical(3))),
    ("inputs-dist-string", TypeError, "dist", lambda m: pc.inputs(0, 2, "categorical")),
    ("categorical-one-category", ValueError, "num_cats", lambda m: pc.Categorical(1)),
    ("gaussian-min-std-nan", ValueError, "min_std", lambda m: pc.Gaussian(min_std=NAN)),
    ("indicator-negative-value", ValueError, "value", lambda m: pc.Indicator(-1)),
    ("summate-zero-nodes", ValueError, "num_nodes", lambda m: pc.summate(m.cat, num_nodes=0)),
    ("summate-edges-out-of-range", ValueError, "edges", lambda m: pc.summate(m.cat, num_nodes=1, edges=[[0], [5]])),
    ("summate-not-smooth", ValueError, "child", lambda m: pc.summate(m.cat, m.bern, num_nodes=1)),
    ("multiply-not-decomposable", ValueError, "children", lambda m: pc.multiply(m.cat, pc.inputs(0, 2, pc.Bernoulli()))),
    ("multiply-float-edges", ValueError, "edges", lambda m: pc.multiply(m.cat, m.bern, edges=torch.zeros(2, 2))),
    ("compile-bad-backend", ValueError, "backend", lambda m: pc.compile(m.root, backend="cuda")),
    ("compile-float-seed", TypeError, "seed", lambda m: pc.compile(m.root, seed=1.5)),
    # --- CoDD prior queries
    ("prior-marginals-nan-logits", ValueError, "logits", lambda m: m.prior.marginals(m.px, _bad_logits(m, NAN), m.masked)),
    ("prior-sample-inf-logits", ValueError, "logits", lambda m: m.prior.sample(m.px, _bad_logits(m, INF), m.masked)),
    ("prior-exact-sample-nan-logits", ValueError, "logits", lambda m: m.prior.sample(m.px, _bad_logits(m, NAN, 1, 2), m.masked, method="exact")),
    ("prior-mpe-all-minus-inf-row", ValueError, "logits", lambda m: m.prior.mpe(m.px, _bad_logits(m, -INF, token=None), m.masked)),
    ("prior-log-prob-nan-logits", ValueError, "logits", lambda m: m.prior.log_prob(m.px, _bad_logits(m, NAN, 1, 1), m.masked)),
    ("prior-logits-shape", ValueError, "logits", lambda m: m.prior.marginals(m.px, m.logits[..., :4], m.masked)),
    ("prior-logits-int", TypeError, "logits", lambda m: m.prior.marginals(m.px, m.logits.long(), m.masked)),
    ("prior-x-shape", ValueError, "x", lambda m: m.prior.marginals(m.px[:, :3], m.logits, m.masked)),
    ("prior-x-float", TypeError, "x", lambda m: m.prior.mpe(m.px.float() + 0.5, m.logits, m.masked)),
    ("prior-masked-not-bool", ValueError, "masked", lambda m: m.prior.marginals(m.px, m.logits, m.masked.long())),
    ("prior-observed-id-out-of-range", ValueError, "x", lambda m: m.prior.sample(_with(m.px, (0, 0), VOCAB), m.logits, m.masked)),
    ("prior-log-prob-x0-out-of-range", ValueError, "x0", lambda m: m.prior.log_prob(_with(m.px, (0, 1), -1), m.logits, m.masked)),
    ("prior-tau-zero", ValueError, "temperature", lambda m: m.prior.marginals(m.px, m.logits, m.masked, temperature=0.0)),
    ("prior-tau-nan", ValueError, "temperature", lambda m: m.prior.sample(m.px, m.logits, m.masked, temperature=NAN)),
    ("prior-unknown-method", ValueError, "method", lambda m: m.prior.sample(m.px, m.logits, m.masked, method="gibbs")),
    ("prior-top-k-zero", ValueError, "top_k", lambda m: CoDDPrior(m.prior.circuit, 4, VOCAB, top_k=0)),
    ("prior-top-k-negative", ValueError, "top_k", lambda m: CoDDPrior(m.prior.circuit, 4, VOCAB, top_k=-1)),
    ("prior-top-k-bool", ValueError, "top_k", lambda m: CoDDPrior(m.prior.circuit, 4, VOCAB, top_k=True)),
    ("prior-fit-backoff-bins-zero", ValueError, "bins", lambda m: m.prior.fit_backoff(m.px, m.logits, m.masked, bins=0)),
    ("prior-fit-backoff-nan-logits", ValueError, "logits", lambda m: m.prior.fit_backoff(m.px, _bad_logits(m, NAN), m.masked)),
    (
        "prior-fit-backoff-candidates-inf-logits",
        ValueError,
        "logits",
        lambda m: m.prior.fit_backoff(
            m.px, _with(torch.zeros(2, 4, 2), (0, 2, 0), INF), m.masked, candidates=torch.zeros(2, 4, 2, dtype=torch.long)
        ),
    ),
    ("prior-set-backoff-nan", ValueError, "weights", lambda m: m.prior.set_backoff([0.5, NAN])),
    # --- generation
    ("generate-nan-logits", ValueError, "logits", lambda m: _generate(_backbone(NAN))),
    ("generate-plus-inf-logits", ValueError, "logits", lambda m: _generate(_backbone(INF))),
    ("generate-all-minus-inf-logits", ValueError, "logits", lambda m: _generate(_backbone(-INF, fill=-INF))),
    ("generate-sampling-nan-logits", ValueError, "logits", lambda m: _generate(_backbone(NAN), temperature=1.0)),
    ("generate-with-prior-nan-logits", ValueError, "logits", lambda m: _generate(_backbone(NAN), prior=CoDDPrior.hmm(4, 2, VOCAB))),
    ("generate-steps-zero", ValueError, "steps", lambda m: _generate(_backbone(1.0), steps=0)),
    ("generate-gen-length-zero", ValueError, "gen_length", lambda m: _generate(_backbone(1.0), gen_length=0)),
    ("generate-temperature-negative", ValueError, "temperature", lambda m: _generate(_backbone(1.0), temperature=-1.0)),
    (
        "evaluate-tokens-per-step-zero",
        ValueError,
        "tokens_per_step",
        lambda m: evaluate_generation(_backbone(1.0), [QAExample("1+1?", "#### 2")], tokens_per_step=[0]),
    ),
    ("codd-draw-remasking", ValueError, "remasking", lambda m: CoDDDraw(m.prior, VOCAB, remasking="confidence")),
    ("codd-draw-temperature-nan", ValueError, "temperature", lambda m: CoDDDraw(m.prior, VOCAB, temperature=NAN)),
    (
        "codd-draw-nan-logits",
        ValueError,
        "logits",
        lambda m: CoDDDraw(m.prior, VOCAB)(m.px, _bad_logits(m, NAN), m.masked, m.masked),
    ),
]


def _state(m: SimpleNamespace) -> dict[str, torch.Tensor]:
    """Deep copies of every parameter of every model, and the prior's backoff."""
    out = {}
    for prefix, module in (("circuit", m.circuit), ("gmix", m.gmix), ("prior", m.prior.circuit)):
        for k, v in module.state_dict().items():
            out[f"{prefix}.{k}"] = copy.deepcopy(v.detach())
    out["prior.backoff"] = m.prior.backoff.clone()
    return out


def test_the_module_covers_at_least_forty_distinct_cases():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_by_name_and_changes_no_model(case: Case):
    _, exc, name, call = case
    m = _models()
    before = _state(m)
    with pytest.raises(exc) as info:
        call(m)
    assert re.search(rf"\b{name}\b", str(info.value)), f"message does not name {name!r}: {info.value}"
    after = _state(m)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed"


# --- the checks refuse only what is invalid: legitimate edge values still pass


def test_probability_zero_values_are_accepted():
    m = _models()
    m.circuit.set_group_parameters(m.cat, torch.tensor([[-INF, 0.0, 1.0], [0.0, -INF, -INF]]))  # a category of probability 0
    m.circuit.set_group_parameters(m.root, torch.tensor([[0.0, 3.0]]))  # a weight of 0 beside a positive one
    m.circuit.set_group_parameters(m.sparse, torch.tensor([[2.0, 5.0], [1.0, 0.0]]))  # off-edge entries ignored
    m.circuit.set_group_parameters(m.ind, m.circuit.group_parameters(m.ind).detach())  # unchanged indicator values
    assert torch.equal(m.circuit.group_parameters(m.root), torch.tensor([[0.0, 1.0]]))
    assert torch.equal(m.circuit.group_parameters(m.sparse), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    x = torch.tensor([[0.0, 1, 0.5, 0], [1, 0, 0.0, 0]])
    ll = m.circuit(x)
    assert torch.isinf(ll[0]) and torch.isfinite(ll[1])  # x0 = 0 has probability 0 in both components


def test_em_without_pseudocount_round_trips_through_set_group_parameters():
    m = _models()
    data = torch.tensor([[0.0, 1, 0.5, 0], [0, 0, -1.0, 0], [0, 1, 2.0, 0]])  # categories 1 and 2 of variable 0 unseen
    pc.em(m.circuit, data, epochs=3, pseudocount=0.0, progress=False)
    cat = m.circuit.group_parameters(m.cat).detach()
    assert bool(torch.isinf(cat).any()), "EM without smoothing gives unseen categories probability 0"
    for group in (m.cat, m.bern, m.gauss, m.ind, m.sparse, m.isum, m.root):
        value = m.circuit.group_parameters(group).detach().clone()
        m.circuit.set_group_parameters(group, value)  # sum weights are normalised again: equal up to rounding
        torch.testing.assert_close(m.circuit.group_parameters(group).detach(), value, rtol=1e-6, atol=0.0)


def test_missing_entries_may_hold_inf_and_nan():
    m = _models()
    x = _with(_with(torch.tensor([[0.0, 1, 0.5, 0], [2, 0, -1.0, 0]]), (0, 2), INF), (1, 0), NAN)
    missing = torch.zeros(2, 4, dtype=torch.bool)
    missing[0, 2] = missing[1, 0] = True
    assert torch.isfinite(m.circuit(x, missing)).all()
    pc.em(m.circuit, x, missing=missing, progress=False)
    gauss = m.circuit.group_parameters(m.gauss)
    assert torch.isfinite(gauss).all() and torch.isfinite(m.circuit(x, missing)).all()


def test_forbidden_tokens_are_allowed_and_never_drawn():
    m = _models()
    logits = m.logits.clone()
    logits[:, :, 3:] = -INF  # tokens 3.. forbidden at every position
    post = m.prior.marginals(m.px, logits, m.masked)
    assert torch.isfinite(post).all()
    assert float(post[m.masked][:, 3:].abs().sum()) == 0.0
    out = m.prior.sample(m.px, logits, m.masked, generator=torch.Generator().manual_seed(0))
    assert bool((out[m.masked] < 3).all())
    gen = _generate(_backbone(1.0, fill=-INF), temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert bool((gen[:, 2:] == 2).all()), "only token 2 is possible"
