"""HCLT learning: clustering initialisation, EM schedule, budgets and model selection."""

import itertools

import numpy as np
import pytest
import torch

from pcircuits.learning.hclt import kmeans, learn_hclt, softened_evidence
from pcircuits.region_graphs.chow_liu_tree import chow_liu_tree, infer_num_cats


def mixture_data(n, V=8, seed=0):
    """Three clusters of correlated binary variables."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 3, n)
    probs = np.random.default_rng(99).choice([0.1, 0.9], (3, V))
    return (rng.random((n, V)) < probs[z]).astype(np.int64)


def factorised_ll(train, test):
    p = (train.sum(0) + 1) / (len(train) + 2)
    return float((test * np.log(p) + (1 - test) * np.log(1 - p)).sum(1).mean())


def test_learn_hclt_beats_independent_model_and_normalises():
    train, valid, test = mixture_data(1500), mixture_data(300, seed=1), mixture_data(500, seed=2)
    res = learn_hclt(train, 4, valid=valid, minibatch_epochs=2, fullbatch_epochs=8, progress=False)
    c = res.circuit.to(torch.float64)
    ll = float(c(torch.from_numpy(test)).mean())
    assert ll > factorised_ll(train, test) + 0.2
    x = torch.tensor(list(itertools.product([0, 1], repeat=8)))
    assert abs(float(torch.logsumexp(c(x), 0))) < 1e-6
    # the kept parameters are those of the best validation epoch
    assert float(c(torch.from_numpy(valid)).mean()) == pytest.approx(max(res.valid_ll), abs=1e-4)
    assert len(res.train_ll) == 10 and len(res.valid_ll) == 10
    # full-batch EM never lowers the train log-likelihood
    fb = res.train_ll[2:]
    assert all(b >= a - 1e-4 for a, b in itertools.pairwise(fb))


def test_kmeans_initialisation_starts_better_than_random():
    train = mixture_data(1500)
    km = learn_hclt(train, 4, init="kmeans", minibatch_epochs=0, fullbatch_epochs=1, progress=False)
    rnd = learn_hclt(train, 4, init="random", minibatch_epochs=0, fullbatch_epochs=1, progress=False)
    # the first full-batch epoch reports the log-likelihood of the initial parameters
    assert km.train_ll[0] > rnd.train_ll[0] + 0.5


def test_time_budget_stops_after_first_epoch():
    res = learn_hclt(mixture_data(200), 2, minibatch_epochs=3, fullbatch_epochs=3, time_budget=1e-9, progress=False)
    assert res.info["epochs"] == 1


@pytest.mark.parametrize("mixture", ["separate", "joint"])
def test_mixture_of_hclts_normalises_and_fits_like_one(mixture):
    train, valid = mixture_data(1000), mixture_data(300, seed=1)
    kw = dict(minibatch_epochs=1, fullbatch_epochs=6, progress=False)
    mix = learn_hclt(train, 3, valid=valid, num_components=3, mixture=mixture, **kw)
    one = learn_hclt(train, 3, valid=valid, **kw)
    c = mix.circuit.to(torch.float64)
    x = torch.tensor(list(itertools.product([0, 1], repeat=8)))
    assert abs(float(torch.logsumexp(c(x), 0))) < 1e-6
    assert mix.info["num_components"] == 3
    assert c.num_parameters > 2.9 * one.circuit.num_parameters
    assert max(mix.valid_ll) > max(one.valid_ll) - 0.05


def test_separate_mixture_is_the_equal_mixture_of_hclts_learned_alone():
    train, valid = mixture_data(600), mixture_data(200, seed=1)
    kw = dict(valid=valid, minibatch_epochs=1, fullbatch_epochs=4, progress=False)
    mix = learn_hclt(train, 3, num_components=2, seed=5, **kw).circuit.to(torch.float64)
    alone = [learn_hclt(train, 3, seed=s, **kw).circuit.to(torch.float64) for s in (5, 6)]
    xv = torch.from_numpy(valid)
    expected = torch.logsumexp(torch.stack([c(xv) for c in alone]), 0) - np.log(2)
    assert torch.allclose(mix(xv), expected, atol=1e-5)


def test_patience_stops_once_validation_stalls():
    train, valid = mixture_data(600), mixture_data(200, seed=1)
    res = learn_hclt(
        train, 4, valid=valid, minibatch_epochs=1, fullbatch_epochs=60, pseudocount=0.0, patience=3, progress=False
    )
    best = int(np.argmax(res.valid_ll))
    assert res.info["epochs"] == best + 4 < 61
    assert all(v <= res.valid_ll[best] for v in res.valid_ll[best + 1 :])


def test_kmeans_separates_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (50, 2))])
    labels, centres = kmeans(x, 2)
    assert len(set(labels[:50])) == 1 and len(set(labels[50:])) == 1 and labels[0] != labels[50]
    assert sorted(np.round(centres[:, 0]).tolist()) == [0.0, 5.0]


def test_categorical_data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (400, 4))
    x[:, 1] = (x[:, 0] + (rng.random(400) < 0.1)) % 3
    assert infer_num_cats(x) == [3, 3, 3, 3]
    tree = chow_liu_tree(x)
    assert tree.has_edge(0, 1)
    res = learn_hclt(x, 3, minibatch_epochs=1, fullbatch_epochs=2, progress=False)
    c = res.circuit.to(torch.float64)
    allx = torch.tensor(list(itertools.product(range(3), repeat=4)))
    assert abs(float(torch.logsumexp(c(allx), 0))) < 1e-6


def test_softened_evidence_spreads_the_flip_probability_over_other_categories():
    x = torch.tensor([[0, 2], [1, 0]])
    missing, soft = softened_evidence(x, [2, 3], 0.1)
    assert missing.all() and soft.shape == (2, 2, 3)
    w = soft.exp()
    assert torch.allclose(w[0, 0, :2], torch.tensor([0.9, 0.1]))
    assert torch.allclose(w[0, 1], torch.tensor([0.05, 0.05, 0.9]))
    assert torch.allclose(w[1, 1], torch.tensor([0.9, 0.05, 0.05]))


def test_softening_trains_on_softened_data_and_validates_on_the_data():
    train, valid = mixture_data(800), mixture_data(200, seed=1)
    kw = dict(minibatch_epochs=1, fullbatch_epochs=4, progress=False)
    res = learn_hclt(train, 4, valid=valid, softening=0.2, **kw)
    plain = learn_hclt(train, 4, valid=valid, **kw).circuit.to(torch.float64)
    c = res.circuit.to(torch.float64)
    assert float(c(torch.from_numpy(valid)).mean()) == pytest.approx(max(res.valid_ll), abs=1e-4)
    # clusters with flip rates 0.1 look like flip rates 0.26 after softening: a flatter fit
    xt = torch.from_numpy(train)
    assert float(c(xt).mean()) < float(plain(xt).mean()) - 0.1
    x = torch.tensor(list(itertools.product([0, 1], repeat=8)))
    assert abs(float(torch.logsumexp(c(x), 0))) < 1e-6


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"num_latents": 0}, "num_latents"),
        ({"init": "zeros"}, "init"),
        ({"time_budget": -1.0}, "time_budget"),
        ({"step_size": 0.0}, "step_size"),
        ({"valid": np.zeros((3, 2), dtype=np.int64)}, "valid"),
        ({"num_cats": 1}, "num_cats"),
        ({"softening": 0.5}, "softening"),
        ({"patience": 0}, "patience"),
        ({"num_components": 0}, "num_components"),
        ({"mixture": "bagged"}, "mixture"),
        ({"softening": -0.1}, "softening"),
    ],
)
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        learn_hclt(mixture_data(50, V=3), **{"num_latents": 2, **kwargs})
    with pytest.raises(ValueError, match="data"):
        learn_hclt(np.array([[0, -1]]), 2)
