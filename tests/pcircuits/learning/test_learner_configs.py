"""Learner settings: a config dataclass and the same fields as keywords give the same learner."""

import numpy as np
import pytest
import torch

from pcircuits.learning import HCLTConfig, LearnSPNConfig, learn_hclt, learn_spn


def _data(n=300, V=6, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, n)
    return (rng.random((n, V)) < np.where(z[:, None] == 1, 0.8, 0.2)).astype(np.int64)


def _same_parameters(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_hclt_config_and_keywords_learn_the_same_circuit():
    x = _data()
    kw = dict(minibatch_epochs=1, fullbatch_epochs=2, seed=3, progress=False)
    by_keywords = learn_hclt(x, 3, **kw)
    by_config = learn_hclt(x, config=HCLTConfig(num_latents=3, **kw))
    assert _same_parameters(by_keywords.circuit, by_config.circuit)
    assert by_keywords.train_ll == by_config.train_ll
    other_seed = learn_hclt(x, 3, **{**kw, "seed": 4})
    assert not _same_parameters(by_keywords.circuit, other_seed.circuit)  # the comparison can fail


def test_hclt_keywords_replace_config_fields():
    x = _data()
    cfg = HCLTConfig(num_latents=2, minibatch_epochs=1, fullbatch_epochs=1, progress=False)
    res = learn_hclt(x, 4, config=cfg, fullbatch_epochs=3)
    assert res.info["num_latents"] == 4 and res.info["epochs"] == 4
    assert cfg.num_latents == 2 and cfg.fullbatch_epochs == 1  # the given config is not modified


def test_spn_config_and_keywords_learn_the_same_circuit():
    x = _data()
    by_keywords = learn_spn(x, min_instances=40, seed=1, progress=False)
    by_config = learn_spn(x, config=LearnSPNConfig(min_instances=40, seed=1, progress=False))
    assert _same_parameters(by_keywords.circuit, by_config.circuit)
    assert by_keywords.info == by_config.info


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: HCLTConfig(batch_size=0), "batch_size"),
        (lambda: HCLTConfig(num_latents=0), "num_latents"),
        (lambda: HCLTConfig(mixture="bagged"), "mixture"),
        (lambda: LearnSPNConfig(alpha=0.0), "alpha"),
        (lambda: LearnSPNConfig(min_instances=0), "min_instances"),
    ],
)
def test_configs_refuse_bad_values(make, arg):
    with pytest.raises(ValueError, match=arg):
        make()


def test_unknown_options_and_wrong_config_types_are_refused():
    x = _data(50)
    with pytest.raises(TypeError, match="latents"):
        learn_hclt(x, latents=3)
    with pytest.raises(TypeError, match="HCLTConfig"):
        learn_hclt(x, config=LearnSPNConfig())
    with pytest.raises(TypeError, match="min_instance"):
        learn_spn(x, min_instance=5)
