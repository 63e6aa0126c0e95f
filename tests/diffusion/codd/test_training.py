"""fit_prior's window weightings and the metric it reports."""

from __future__ import annotations

import pytest
import torch

from diffusion import CoDDPrior
from diffusion.codd.training import conditional_nll, fit_prior

torch.set_num_threads(1)


def _windows(n: int = 24, window: int = 4, vocab: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(vocab, (n, window), generator=g)
    ratio = torch.rand(n, 1, generator=g)
    masked = torch.rand(n, window, generator=g) < ratio
    masked[:, 0] = True  # every window scores something; the counts differ from window to window
    logits = torch.randn(n, window, vocab, generator=g, dtype=torch.float64) * 2
    return x0, masked, logits


@pytest.mark.parametrize("weighting", ["token", "window"])
def test_reported_nll_follows_the_weighting(weighting):
    x0, masked, logits = _windows()
    prior = CoDDPrior.hmm(4, 3, 5, seed=0).to(torch.float64)
    hist = fit_prior(prior, x0, masked, logits, epochs=1, lr=0.0, valid_frac=0.0, progress=False, weighting=weighting)
    nll = conditional_nll(prior, x0, masked, logits)
    n = masked.sum(1)
    want = (nll / n).mean() if weighting == "window" else nll.sum() / n.sum()
    assert hist[0] == pytest.approx(float(want), rel=1e-9)
    assert float((nll / n).mean()) != pytest.approx(float(nll.sum() / n.sum()), rel=1e-3)  # the two differ here


@pytest.mark.parametrize("weighting", ["token", "window"])
def test_training_lowers_its_objective(weighting):
    x0, masked, logits = _windows(n=64, seed=1)
    prior = CoDDPrior.hmm(4, 3, 5, seed=0).to(torch.float64)
    before = fit_prior(prior, x0, masked, logits, epochs=1, lr=0.0, valid_frac=0.0, progress=False, weighting=weighting)
    hist = fit_prior(prior, x0, masked, logits, epochs=5, lr=0.1, batch_size=16, valid_frac=0.0, progress=False,
                     weighting=weighting)
    assert min(hist) < before[0] - 0.01


def test_unknown_weighting_raises():
    x0, masked, logits = _windows()
    with pytest.raises(ValueError, match="weighting"):
        fit_prior(CoDDPrior.hmm(4, 3, 5), x0, masked, logits.float(), epochs=1, progress=False, weighting="ratio")


def test_answer_tiles_cover_and_own_the_span():
    from diffusion.codd.training import answer_tiles

    assert answer_tiles(5, 5, 4) == []
    assert answer_tiles(0, 3, 4) == [(0, 0)]  # shorter than a window: one tile from max(end - W, 0)
    assert answer_tiles(2, 12, 4) == [(2, 2), (6, 6), (8, 10)]  # the last tile ends at the end, owns from 10
    for start, end, w in [(3, 40, 8), (0, 17, 5), (10, 11, 4)]:
        tiles = answer_tiles(start, end, w)
        owned = [
            p for i, (s0, own) in enumerate(tiles) for p in range(own, (tiles[i + 1][1] if i + 1 < len(tiles) else end))
        ]
        assert owned == list(range(start, end))
        assert all(s0 <= own < s0 + w <= max(end, w) for s0, own in tiles)


class _StubBackbone:
    """Records its inputs; logits are a fixed function of (position, input id)."""

    def __init__(self, vocab: int):
        self.vocab_size, self.mask_token_id, self.device = vocab, 1, torch.device("cpu")
        self.tokenizer = type("T", (), {"eos_id": 2})()
        self.inputs: list[torch.Tensor] = []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.inputs.append(ids.clone())
        b, L = ids.shape
        pos = torch.arange(L)[None, :, None].float()
        return torch.sin(pos * 0.3 + ids[..., None].float() * 0.7 + torch.arange(self.vocab_size).float())


def test_answer_window_logits_masks_whole_answers():
    from diffusion.codd.training import answer_window_logits

    g = torch.Generator().manual_seed(0)
    N, L, W, V = 5, 30, 4, 9
    tokens = torch.randint(3, V, (N, L), generator=g)
    answer = torch.zeros(N, L, dtype=torch.bool)
    answer[:, 10:] = True
    tokens[0, 20:] = 2  # answer 0 ends with EOS at 20: the padding after it is no window
    bb = _StubBackbone(V)
    x0, masked, logits = answer_window_logits(bb, tokens, answer, W, draws=3, generator=g, batch_size=4)
    inp = torch.cat(bb.inputs)  # [N * draws, L], sequence n at rows n, n + N, n + 2N
    assert inp.shape == (3 * N, L)
    m = inp == bb.mask_token_id
    assert not bool(m[:, :10].any()) and bool(m.any(1).all())  # masks only in answers, at least one per draw
    assert not bool(m[0::N, 21:].any())  # nothing after the first EOS of answer 0
    assert bool(masked.any(1).all()) and x0.shape == masked.shape == logits.shape[:2]
    # every window is a slice of one recorded input: tokens, mask and the backbone's logits there
    found = 0
    for r in range(len(inp)):
        n = r % N
        out = bb(inp[r : r + 1])[0]
        out[:, bb.mask_token_id] = float("-inf")
        for s0 in range(10, L - W + 1):
            hit = (x0 == tokens[n, s0 : s0 + W]).all(1) & (masked == m[r, s0 : s0 + W]).all(1)
            hit &= (logits == out[s0 : s0 + W]).flatten(1).all(1)
            found += int(hit.sum())
    assert found >= len(x0)
    with pytest.raises(ValueError, match="draws"):
        answer_window_logits(bb, tokens, answer, W, draws=0)
    with pytest.raises(ValueError, match="answer"):
        answer_window_logits(bb, tokens, answer[:, :5], W)


def test_config_and_keywords_train_the_same_prior(tmp_path):
    from diffusion.codd import PriorTrainConfig

    x0, masked, logits = _windows(n=40, seed=2)
    kw = dict(epochs=2, batch_size=8, lr=0.05, valid_frac=0.25, seed=3, progress=False, weighting="window")
    a = CoDDPrior.hmm(4, 3, 5, seed=0).to(torch.float64)
    b = CoDDPrior.hmm(4, 3, 5, seed=0).to(torch.float64)
    seen = []
    ha = fit_prior(a, x0, masked, logits, **kw)
    cfg = PriorTrainConfig(**{**kw, "epochs": 7}, callback=lambda ep, nll: seen.append((ep, nll)))
    hb = fit_prior(b, x0, masked, logits, cfg, epochs=2, checkpoint=tmp_path / "p")  # keywords override the config
    assert ha == hb and seen == list(enumerate(hb))
    for pa, pb in zip(a.circuit.parameters(), b.circuit.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert (tmp_path / "p").is_file() and cfg.epochs == 7


def test_bad_settings_name_themselves():
    from diffusion.codd import PriorJobConfig, PriorTrainConfig

    x0, masked, logits = _windows()
    prior = CoDDPrior.hmm(4, 3, 5)
    with pytest.raises(ValueError, match="valid_frac"):
        PriorTrainConfig(valid_frac=1.0)
    with pytest.raises(TypeError, match="config: expected a PriorTrainConfig"):
        fit_prior(prior, x0, masked, logits.float(), 3)
    with pytest.raises(TypeError, match="learning_rate"):
        fit_prior(prior, x0, masked, logits.float(), learning_rate=0.1)
    with pytest.raises(ValueError, match="mask_scope"):
        PriorJobConfig(mask_scope="sentence")
    job = PriorJobConfig(epochs=3, lr=0.2, em_epochs=1, seed=5, weighting="window", batch_size=7)
    train = job.train_config("out.prior")
    got = (train.epochs, train.lr, train.em_epochs, train.seed, train.weighting, train.batch_size)
    assert got == (3, 0.2, 1, 5, "window", 7)
    assert train.checkpoint == "out.prior" and train.valid_frac == PriorTrainConfig().valid_frac


def test_answer_window_topk_cuts_batch_by_batch_as_the_full_cut(monkeypatch):
    from diffusion.codd import training
    from diffusion.codd.training import answer_window_logits, answer_window_topk, topk_with_target

    g = torch.Generator().manual_seed(1)
    N, L, W, V, K, B = 6, 30, 4, 9, 3, 4
    tokens = torch.randint(3, V, (N, L), generator=g)
    answer = torch.zeros(N, L, dtype=torch.bool)
    answer[:, 12:] = True
    full = answer_window_logits(_StubBackbone(V), tokens, answer, W, 2, torch.Generator().manual_seed(5), B)
    want_v, want_c = topk_with_target(full[2], full[0], K)
    widths = []

    def spy(logits, x0, k):
        widths.append(len(logits))  # windows of one backbone batch, never all of them
        return topk_with_target(logits, x0, k)

    monkeypatch.setattr(training, "topk_with_target", spy)
    x0, masked, vals, cand = answer_window_topk(
        _StubBackbone(V), tokens, answer, W, K, 2, torch.Generator().manual_seed(5), B
    )
    assert torch.equal(x0, full[0]) and torch.equal(masked, full[1])
    assert torch.equal(vals, want_v) and torch.equal(cand, want_c)
    assert vals.shape == cand.shape == (len(x0), W, K + 1) and vals.dtype == torch.float32
    assert len(widths) == -(-2 * N // B) and sum(widths) == len(x0) and max(widths) < len(x0)
    with pytest.raises(ValueError, match="top_k"):
        answer_window_topk(_StubBackbone(V), tokens, answer, W, 0)


def test_prior_cache_bytes_and_the_window_count():
    from diffusion.codd.training import PriorJobConfig, _count_windows, answer_window_logits, prior_cache_bytes

    assert prior_cache_bytes(10, 16, 64, 1024) == 10 * 16 * (8 + 1 + 65 * (4 + 8))
    assert prior_cache_bytes(10, 16, None, 1024) == 10 * 16 * (8 + 1 + 1024 * 4)
    assert prior_cache_bytes(0, 16, 64, 1024) == 0
    for bad in (dict(windows=-1), dict(window=0), dict(top_k=0), dict(vocab_size=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            prior_cache_bytes(**{"windows": 1, "window": 4, "top_k": 2, "vocab_size": 9, **bad})
    g = torch.Generator().manual_seed(0)
    N, L, W, V = 5, 30, 4, 9
    tokens = torch.randint(3, V, (N, L), generator=g)
    answer = torch.zeros(N, L, dtype=torch.bool)
    answer[:, 10:] = True
    tokens[0, 20:] = 2  # span [10, 21): tiles at 10, 14, 17; the others [10, 30): 10, 14, 18, 22, 26
    job = PriorJobConfig(window=W, mask_scope="answer", draws=3)
    count = _count_windows(_StubBackbone(V), (tokens, answer), 0, job)
    assert count == 3 * (3 + 4 * 5)
    x0, _, _ = answer_window_logits(_StubBackbone(V), tokens, answer, W, draws=3, generator=g)
    assert len(x0) <= count  # tiles without a masked position are dropped
    assert _count_windows(_StubBackbone(V), (tokens, answer), 7, PriorJobConfig(window=W)) == 7


def test_train_prior_keeps_only_k_wide_caches(monkeypatch, tmp_path, capsys):
    from diffusion.codd import training
    from diffusion.data import BUNDLED_DATA_DIR, SHIPPED_BACKBONE_DIR

    seen = []
    real_fit, real_backoff = training.fit_prior, CoDDPrior.fit_backoff

    def fit_spy(prior, x0, masked, logits, config, candidates=None):
        seen.append(("fit", tuple(logits.shape), tuple(candidates.shape)))
        return real_fit(prior, x0, masked, logits, config, candidates=candidates)

    def backoff_spy(self, x0, logits, masked, bins, candidates=None):
        seen.append(("backoff", tuple(logits.shape), tuple(candidates.shape)))
        return real_backoff(self, x0, logits, masked, bins=bins, candidates=candidates)

    monkeypatch.setattr(training, "fit_prior", fit_spy)
    monkeypatch.setattr(CoDDPrior, "fit_backoff", backoff_spy)

    def no_full_cache(*args, **kwargs):
        raise AssertionError("the [M, W, V] logits cache must not be built with top_k")

    monkeypatch.setattr(training, "answer_window_logits", no_full_cache)
    res = training.train_prior_cli(
        str(SHIPPED_BACKBONE_DIR), str(BUNDLED_DATA_DIR), str(tmp_path / "p.safetensors"), window=8, states=4,
        top_k=8, epochs=1, batch_size=16, examples=20, mask_scope="answer", draws=1, backoff_bins=2, progress=None,
    )
    assert [s[0] for s in seen] == ["fit", "backoff"] and res["backoff"] is not None
    for _, lshape, cshape in seen:
        assert lshape == cshape and lshape[1:] == (8, 9)  # [M, W, top_k + 1], never [M, W, V]
    err = capsys.readouterr().err
    assert "estimated memory kept" in err and "W=8 x K=9" in err


def test_backbone_batch_reaches_the_backbone_loop_and_is_checked(tmp_path, monkeypatch, capsys):
    from diffusion.codd import training
    from diffusion.data import BUNDLED_DATA_DIR, SHIPPED_BACKBONE_DIR

    with pytest.raises(ValueError, match="backbone_batch"):
        training.PriorJobConfig(backbone_batch=0)
    with pytest.raises(ValueError, match="backbone_batch"):
        training.PriorJobConfig(backbone_batch=True)
    seen = []
    original = training.answer_window_topk

    def spy(*args, **kwargs):
        seen.append(kwargs["batch_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "answer_window_topk", spy)
    training.train_prior_cli(
        str(SHIPPED_BACKBONE_DIR), str(BUNDLED_DATA_DIR), str(tmp_path / "p.safetensors"), window=8, states=4,
        top_k=8, epochs=1, batch_size=16, examples=12, mask_scope="answer", draws=1, progress=False,
        backbone_batch=3,
    )
    assert seen == [3]
    err = capsys.readouterr().err
    assert "estimated memory kept" in err  # printed even without progress bars
