"""Step schedules, remasking rules, validation and the joint-draw hook of `generate`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffusion.backbones import DreamBackbone, LLaDABackbone, MaskedLMBackbone, check_attention_mask
from diffusion.sampling import (
    REMASKING_RULES,
    FactorizedDraw,
    GenerationConfig,
    JointDraw,
    dream_transfer_count,
    generate,
    left_padding_mask,
    num_transfer_tokens,
)

from tests.diffusion.fixtures import RandomModel, table_backbone

MASK = 19


def _prompts(b: int = 3, p: int = 5) -> torch.Tensor:
    return torch.randint(0, MASK, (b, p), generator=torch.Generator().manual_seed(7))


def test_num_transfer_tokens_sums_and_spreads():
    out = num_transfer_tokens(torch.tensor([10, 8, 3]), 4)
    assert out.tolist() == [[3, 3, 2, 2], [2, 2, 2, 2], [1, 1, 1, 0]]
    assert out.sum(1).tolist() == [10, 8, 3]


def test_dream_budget_commits_everything():
    n = torch.tensor([32])
    total = 0
    for i in range(8):
        k = dream_transfer_count(n - total, i, 8)
        assert k.item() >= 0
        total += k.item()
    assert total == 32


@pytest.mark.parametrize("rule", REMASKING_RULES)
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_each_token_committed_once_and_prompt_kept(random_backbone, rule, k):
    prompt = _prompts()
    gen_length, block = 16, 8
    steps = gen_length // k
    out, trace = generate(
        random_backbone, prompt, gen_length=gen_length, steps=steps, block_length=block, remasking=rule,
        generator=torch.Generator().manual_seed(0), return_trace=True,
    )
    assert out.shape == (3, 5 + gen_length)
    assert torch.equal(out[:, :5], prompt)
    assert not (out == MASK).any()
    cs = trace.commit_step
    assert (cs >= 0).all() and (cs < steps).all()  # every position committed exactly once, during the run
    for s in range(steps):
        assert ((cs == s).sum(1) == k).all()  # k tokens per step, each row
    # semi-autoregressive: every token of block 0 is committed before any token of block 1
    assert (cs[:, :block].max(1).values < cs[:, block:].min(1).values).all()
    assert trace.forward_passes == steps


def test_full_sequence_dream_schedule(random_backbone):
    out, trace = generate(
        random_backbone, _prompts(), gen_length=12, steps=5, block_length=None, schedule="dream", return_trace=True
    )
    assert not (out == MASK).any()
    cs = trace.commit_step
    assert (cs >= 0).all() and (cs < 5).all()
    assert ((cs[:, :, None] == torch.arange(5)).sum(1).sum(1) == 12).all()


def _rule_table() -> torch.Tensor:
    """Three generated positions whose first choice differs per rule (V = 20, mask 19).

    A: p = [0.40, 0.06 x 10] -> largest margin (0.34), highest entropy
    B: p = [0.46, 0.18 x 3]  -> highest top probability
    C: p = [0.44, 0.44, 0.12] -> lowest entropy, zero margin
    """
    v = 20
    probs = torch.full((4, v), 1e-12)
    probs[0, 0] = 1.0  # prompt position (never generated)
    probs[1, 0], probs[1, 1:11] = 0.40, 0.06
    probs[2, 0], probs[2, 1:4] = 0.46, 0.18
    probs[3, 0], probs[3, 1], probs[3, 2] = 0.44, 0.44, 0.12
    return probs.log()


@pytest.mark.parametrize(
    "rule,order",
    [("low_confidence", [2, 0, 1]), ("margin", [0, 1, 2]), ("entropy", [2, 1, 0])],
)
def test_remasking_rule_order(rule, order):
    backbone = table_backbone(_rule_table(), MASK)
    prompt = torch.zeros(2, 1, dtype=torch.long)
    _, trace = generate(backbone, prompt, gen_length=3, steps=3, block_length=3, remasking=rule, return_trace=True)
    # order[j] = step at which position j (A, B, C) is committed
    assert trace.commit_step[0].tolist() == order
    assert trace.commit_step[1].tolist() == order


def test_random_remasking_varies_with_seed():
    backbone = table_backbone(_rule_table(), MASK)
    prompt = torch.zeros(1, 1, dtype=torch.long)
    orders = set()
    for seed in range(12):
        _, trace = generate(
            backbone, prompt, gen_length=3, steps=3, block_length=3, remasking="random",
            generator=torch.Generator().manual_seed(seed), return_trace=True,
        )
        assert sorted(trace.commit_step[0].tolist()) == [0, 1, 2]
        orders.add(tuple(trace.commit_step[0].tolist()))
    assert len(orders) > 1


def test_greedy_is_argmax_and_mask_never_generated():
    table = torch.zeros(6, 20)
    table[:, MASK] = 100.0  # the mask token is the model's favourite; it must be excluded
    for i in range(6):
        table[i, i] = 10.0
    backbone = table_backbone(table, MASK)
    out = generate(backbone, torch.zeros(2, 2, dtype=torch.long), gen_length=4, steps=2, block_length=2)
    assert out[:, 2:].tolist() == [[2, 3, 4, 5]] * 2


def test_temperature_and_top_p():
    table = torch.zeros(9, 20)
    table[:, 3] = 2.0
    backbone = table_backbone(table, MASK)
    prompt = torch.zeros(4, 1, dtype=torch.long)
    kw = dict(gen_length=8, steps=8, block_length=8, temperature=1.0)
    a = generate(backbone, prompt, generator=torch.Generator().manual_seed(0), **kw)
    b = generate(backbone, prompt, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(a, b)
    assert len(set(a[:, 1:].flatten().tolist())) > 1  # sampling draws more than the argmax
    c = generate(backbone, prompt, top_p=0.1, generator=torch.Generator().manual_seed(0), **kw)
    assert (c[:, 1:] == 3).all()  # nucleus of mass 0.1 holds only the top token


def test_factorized_draw_is_default(random_backbone):
    prompt = _prompts()
    a = generate(random_backbone, prompt, gen_length=16, steps=8, block_length=8)
    b = generate(random_backbone, prompt, gen_length=16, steps=8, block_length=8, joint_draw=FactorizedDraw())
    assert torch.equal(a, b)
    assert isinstance(FactorizedDraw(), JointDraw)


def test_joint_draw_hook_receives_window_and_commit(random_backbone):
    calls = []

    class Constant:
        def __call__(self, ids, logits, window, commit):
            calls.append((ids.clone(), logits.shape, window.clone(), commit.clone()))
            return torch.full_like(ids, 7), torch.zeros(ids.shape)

    prompt = _prompts(2, 4)
    out = generate(random_backbone, prompt, gen_length=8, steps=4, block_length=4, joint_draw=Constant())
    assert (out[:, 4:] == 7).all()
    assert len(calls) == 4
    for step, (ids, shape, window, commit) in enumerate(calls):
        assert shape == (2, 12, 20)
        assert not (commit & ~window).any()
        assert (window == (ids == MASK) & window).all()
        blk = step // 2
        cols = torch.zeros(12, dtype=torch.bool)
        cols[4 + 4 * blk : 8 + 4 * blk] = True
        assert not window[:, ~cols].any()  # only the active block
        assert (commit.sum(1) == 2).all()


def test_joint_draw_returning_mask_is_rejected(random_backbone):
    bad = lambda ids, logits, window, commit: (torch.full_like(ids, MASK), torch.zeros(ids.shape))  # noqa: E731
    with pytest.raises(ValueError, match="joint_draw"):
        generate(random_backbone, _prompts(), gen_length=8, steps=4, block_length=4, joint_draw=bad)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(gen_length=10, steps=10, block_length=4), "gen_length"),
        (dict(gen_length=16, steps=6, block_length=4), "steps"),
        (dict(gen_length=16, steps=0, block_length=4), "steps"),
        (dict(gen_length=16, steps=16, block_length=4, remasking="topk"), "remasking"),
        (dict(gen_length=16, steps=16, block_length=4, schedule="cosine"), "schedule"),
        (dict(gen_length=16, steps=16, block_length=4, temperature=-1.0), "temperature"),
        (dict(gen_length=16, steps=16, block_length=4, top_p=0.0), "top_p"),
    ],
)
def test_bad_arguments_raise(random_backbone, kwargs, name):
    with pytest.raises(ValueError, match=name):
        generate(random_backbone, _prompts(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(gen_length=10, block_length=4), "gen_length"),
        (dict(gen_length=16, steps=6, block_length=4), "steps"),
        (dict(remasking="topk"), "remasking"),
        (dict(entropy_bound=-1.0), "entropy_bound"),
        (dict(pc_frac=1.5), "pc_frac"),
        (dict(sampler="beam"), "sampler"),
    ],
)
def test_a_bad_config_fails_when_built(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GenerationConfig(**kwargs)


def test_config_and_keywords_give_the_same_output(random_backbone):
    prompt = _prompts()
    kw = dict(gen_length=8, steps=4, block_length=4, remasking="margin", temperature=0.7, top_p=0.9)
    cfg = GenerationConfig(**kw)
    a = generate(random_backbone, prompt, generator=torch.Generator().manual_seed(2), **kw)
    b = generate(random_backbone, prompt, cfg, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    # a keyword overrides the config's field; the config itself is unchanged
    c = generate(random_backbone, prompt, GenerationConfig(**{**kw, "steps": 8}), steps=4,
                 generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, c)
    greedy = generate(random_backbone, prompt, cfg, temperature=0.0)
    plain = generate(random_backbone, prompt, gen_length=8, steps=4, block_length=4, remasking="margin")
    assert torch.equal(greedy, plain)
    assert cfg.temperature == 0.7


def test_settings_by_position_or_unknown_name_are_refused(random_backbone):
    with pytest.raises(TypeError, match="config: expected a GenerationConfig"):
        generate(random_backbone, _prompts(), 8)
    with pytest.raises(TypeError, match="num_steps"):
        generate(random_backbone, _prompts(), num_steps=8)


def test_prompt_with_mask_or_out_of_vocab(random_backbone):
    p = _prompts()
    p[0, 1] = MASK
    with pytest.raises(ValueError, match="prompt_ids.*mask"):
        generate(random_backbone, p, gen_length=8, steps=8, block_length=8)
    p = _prompts()
    p[1, 0] = 20
    with pytest.raises(ValueError, match="prompt_ids"):
        generate(random_backbone, p, gen_length=8, steps=8, block_length=8)
    p[1, 0] = -1
    with pytest.raises(ValueError, match="prompt_ids"):
        generate(random_backbone, p, gen_length=8, steps=8, block_length=8)


def test_schedule_counts_at_8_tokens_per_step_math():
    # 128 tokens, blocks of 32, 8 tokens per step -> 16 steps, 4 per block
    assert num_transfer_tokens(torch.tensor([32]), 4).tolist() == [[8, 8, 8, 8]]
    assert math.isclose(128 / 16, 8)


# ------------------------------------------------------------ batch invariance (left padding)
_PROMPTS = [[3, 7], [5, 1, 8, 2, 9], [4, 4, 6]]  # different lengths; pad id 0, mask id 19


def _tiny_hf(kind: str) -> MaskedLMBackbone:
    """A float64 Hugging Face masked LM over the test vocabulary (V = 20, mask 19, pad 0)."""
    from transformers import AutoModelForMaskedLM, BertConfig, ModernBertConfig, RobertaConfig

    common = dict(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  pad_token_id=0, initializer_range=0.5)
    if kind == "modernbert":  # the project's own backbone (rotary positions)
        cfg = ModernBertConfig(**common, max_position_embeddings=64, global_attn_every_n_layers=1, mask_token_id=MASK,
                               bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    elif kind == "bert":  # absolute position embeddings
        cfg = BertConfig(**common, max_position_embeddings=64)
    else:  # RoBERTa: absolute positions that start after the padding index
        cfg = RobertaConfig(**common, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(cfg).eval().to(torch.float64)
    return MaskedLMBackbone(model, MASK, 20)


def _mixer() -> MaskedLMBackbone:
    """The conftest mixer (absolute positions, no attention mask argument) in float64."""
    return MaskedLMBackbone(RandomModel(20).to(torch.float64), MASK, 20)


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    p = max(len(q) for q in prompts)
    ids = torch.zeros(len(prompts), p, dtype=torch.long)
    for i, q in enumerate(prompts):
        ids[i, p - len(q):] = torch.tensor(q)
    return ids, left_padding_mask(ids, 0)


@pytest.fixture(scope="module")
def backbones() -> dict[str, MaskedLMBackbone]:
    return {"modernbert": _tiny_hf("modernbert"), "bert": _tiny_hf("bert"), "roberta": _tiny_hf("roberta"),
            "mixer": _mixer()}


@pytest.mark.parametrize("kind", ["modernbert", "bert", "roberta", "mixer"])
def test_padded_row_logits_equal_the_unpadded_ones(backbones, kind):
    bb = backbones[kind]
    ids, mask = _left_padded(_PROMPTS)
    with torch.no_grad():
        batched = bb(ids, mask)
        for i, q in enumerate(_PROMPTS):
            alone = bb(torch.tensor([q]))
            torch.testing.assert_close(batched[i, ids.shape[1] - len(q):], alone[0], rtol=0, atol=1e-12)
            assert bool((batched[i, : ids.shape[1] - len(q)] == 0).all())  # padded positions: 0


_MODES = {"block": dict(gen_length=8, steps=4, block_length=4),
          "full": dict(gen_length=8, steps=4, block_length=None, schedule="dream")}


@pytest.mark.parametrize("kind", ["modernbert", "bert", "roberta", "mixer"])
@pytest.mark.parametrize("mode", ["block", "full"])
@pytest.mark.parametrize("rule", ["low_confidence", "margin", "entropy"])
@pytest.mark.parametrize("with_prior", [False, True])
def test_greedy_output_is_the_same_alone_and_in_a_batch(backbones, kind, mode, rule, with_prior):
    from diffusion import CoDDPrior

    bb = backbones[kind]
    # block mode (block 4): a window of 8 reaches 4 columns back, into the padding of the shortest prompt in
    # the batch; full mode (block 8): a window of 6 tiles the block and re-draws dynamically
    kw = dict(_MODES[mode], remasking=rule)
    if with_prior:
        kw["prior"] = CoDDPrior.hmm(8 if mode == "block" else 6, 3, 20, seed=0).to(torch.float64)
    ids, mask = _left_padded(_PROMPTS)
    batched = generate(bb, ids, attention_mask=mask, **kw)
    for i, q in enumerate(_PROMPTS):
        alone = generate(bb, torch.tensor([q]), **kw)
        assert torch.equal(batched[i, ids.shape[1]:], alone[0, len(q):]), (i, batched[i], alone[0])
    # any sub-batch (here: the two shorter prompts, padded to a different length) agrees too
    sub, sub_mask = _left_padded([_PROMPTS[0], _PROMPTS[2]])
    part = generate(bb, sub, attention_mask=sub_mask, **kw)
    assert torch.equal(part[:, sub.shape[1]:], batched[[0, 2], ids.shape[1]:])


def test_attended_padding_changes_the_output(backbones):
    """Control: without the mask the padding leaks, so the test above can fail."""
    bb = backbones["modernbert"]
    ids, _ = _left_padded(_PROMPTS)
    kw = _MODES["block"]
    leaky = generate(bb, ids, **kw)
    alone = [generate(bb, torch.tensor([q]), **kw)[0, len(q):] for q in _PROMPTS]
    assert any(not torch.equal(leaky[i, ids.shape[1]:], a) for i, a in enumerate(alone))


def test_left_padding_mask_and_mask_validation(random_backbone):
    ids = torch.tensor([[0, 0, 5], [0, 3, 0], [4, 5, 6]])
    assert left_padding_mask(ids, 0).tolist() == [[False, False, True], [False, True, True], [True, True, True]]
    with pytest.raises(ValueError, match="only padding"):
        left_padding_mask(torch.tensor([[0, 0], [1, 2]]), 0)
    prompts = torch.tensor([[1, 2, 3], [1, 2, 3]])
    bad = {
        "shape": torch.ones(2, 2, dtype=torch.bool),
        "left-padded": torch.tensor([[True, False, True], [True, True, True]]),
        "no real token": torch.tensor([[False, False, False], [True, True, True]]),
        "0 and 1": torch.tensor([[0, 2, 1], [1, 1, 1]]),
        "bool or 0/1": torch.ones(2, 3),
    }
    for msg, m in bad.items():
        with pytest.raises(ValueError, match=msg):
            generate(random_backbone, prompts, gen_length=4, steps=2, block_length=2, attention_mask=m)
    assert torch.equal(check_attention_mask(torch.tensor([[0, 1]]), (1, 2)), torch.tensor([[False, True]]))


class _Recorder(nn.Module):
    """Records the keyword arguments of its calls; logits = one-hot of the ids."""

    def __init__(self, v: int = 20):
        super().__init__()
        self.v, self.calls = v, []

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls.append({"attention_mask": attention_mask, "position_ids": position_ids})
        return F.one_hot(input_ids, self.v).double()


def test_llada_and_dream_wrappers_forward_their_masks():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    mask = left_padding_mask(ids, 0)
    llada = LLaDABackbone(_Recorder(), mask_token_id=MASK, vocab_size=20)
    llada(ids, mask)
    call = llada.model.calls[-1]
    assert call["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]] and call["position_ids"] is None
    dream = DreamBackbone(_Recorder(), mask_token_id=MASK, vocab_size=20)
    out = dream(ids, mask)
    call = dream.model.calls[-1]
    assert call["position_ids"].tolist() == [[1, 1, 0, 1], [0, 1, 2, 3]]
    pair = call["attention_mask"]
    assert pair.shape == (2, 1, 4, 4) and pair.dtype == torch.bool
    assert torch.equal(pair[:, 0], mask[:, :, None] & mask[:, None, :])
    assert out[0, 3].argmax() == 5 and bool((out[0, :2] == 0).all())  # shifted logits, zero at padding
    assert dream(ids).shape == (2, 4, 20) and dream.model.calls[-1]["attention_mask"] is None


# ----------------------------------------------------------------- EB-Sampler
class _Logged(nn.Module):
    """Wraps a model and keeps every call's ids and logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids)
        self.calls.append((input_ids.clone(), out.detach().clone()))
        return out


def _eb_prefix(score: list[float], ent: list[float], gamma: float) -> int:
    """The longest prefix in score order (best first, ties by position) with sum(H) - max(H) <= gamma.

    Recomputed by hand.
    """
    order = sorted(range(len(score)), key=lambda j: (-score[j], j))
    best = 1
    for k in range(1, len(order) + 1):
        hs = [ent[j] for j in order[:k]]
        if sum(hs) - max(hs) <= gamma:
            best = k
        else:
            break
    return best


def _score_and_entropy(logits: torch.Tensor, rule: str) -> tuple[list[float], list[float]]:
    """Greedy-proposal scores and entropies of ``logits [n, V]`` (mask column already -inf), by hand."""
    p = torch.softmax(logits.double(), -1)
    ent = [float(-sum(pi * math.log(pi) for pi in row.tolist() if pi > 0)) for row in p]
    top = p.topk(2, -1).values
    if rule == "low_confidence":
        score = torch.log(top[:, 0]).tolist()
    elif rule == "margin":
        score = (top[:, 0] - top[:, 1]).tolist()
    else:
        score = [-h for h in ent]
    return score, ent


def _check_steps(calls, out, p: int, block: int, gamma: float, entropies=None, rule="low_confidence") -> int:
    """Recomputes every step's count from the logged logits; returns the number of steps checked."""
    states = [ids for ids, _ in calls[1:]] + [out]
    for s, ((ids, logits), after) in enumerate(zip(calls, states, strict=True)):
        first = (ids[:, p:] == MASK).long().argmax(1)  # every row shares the block loop: the batch's earliest block
        lo = p + int(first[(ids[:, p:] == MASK).any(1)].min()) // block * block
        for b in range(ids.shape[0]):
            cols = [c for c in range(lo, lo + block) if ids[b, c] == MASK]  # the active block's masked positions
            if not cols:  # this row is done with the block and waits for the others
                assert torch.equal(after[b], ids[b])
                continue
            lg = logits[b, cols].clone()
            lg[:, MASK] = -math.inf
            score, ent = _score_and_entropy(lg, rule)
            if entropies is not None:
                ent = entropies(s, b, cols)
                score = [-h for h in ent] if rule == "entropy" else score
            committed = [c for c in cols if after[b, c] != MASK]
            assert len(committed) >= 1
            hs = [ent[cols.index(c)] for c in committed]
            assert sum(hs) - max(hs) <= gamma + 1e-9  # the bound holds
            assert len(committed) == _eb_prefix(score, ent, gamma)  # and the prefix is the longest one
            order = sorted(range(len(cols)), key=lambda j: (-score[j], j))
            assert sorted(committed) == sorted(cols[j] for j in order[: len(committed)])
    return len(calls)


@pytest.mark.parametrize("rule", ["low_confidence", "margin", "entropy"])
@pytest.mark.parametrize(("gamma", "block"), [(0.5, 8), (2.0, 8), (1.0, 16)])
def test_eb_sampler_counts_satisfy_the_bound(rule, gamma, block):
    model = _Logged(RandomModel(20, seed=1))
    bb = MaskedLMBackbone(model, mask_token_id=MASK, vocab_size=20)
    prompt = _prompts()
    out, trace = generate(
        bb, prompt, gen_length=16, steps=16, block_length=block, remasking=rule, entropy_bound=gamma, return_trace=True
    )
    assert not (out == MASK).any() and torch.equal(out[:, :5], prompt)
    assert _check_steps(model.calls, out, 5, block, gamma, rule=rule) == trace.forward_passes
    assert trace.forward_passes < 16  # the bound let some steps commit several tokens


def test_eb_sampler_extremes(random_backbone):
    prompt = _prompts()
    _, trace = generate(
        random_backbone, prompt, gen_length=16, steps=16, block_length=8, entropy_bound=1e9, return_trace=True
    )
    assert trace.forward_passes == 2  # a huge bound: each block in one step
    assert (trace.commit_step[:, :8] == trace.commit_step[:, :1]).all()
    assert (trace.commit_step[:, 8:] == trace.commit_step[:, 8:9]).all()
    _, trace0 = generate(
        random_backbone, prompt, gen_length=16, steps=16, block_length=8, entropy_bound=0.0, return_trace=True
    )
    assert trace0.forward_passes == 16  # bound 0 with positive entropies: one token per step
    for row in trace0.commit_step:
        assert sorted(row.tolist()) == list(range(16))
    capped = generate(
        random_backbone, prompt, gen_length=16, steps=4, block_length=8, entropy_bound=0.0, return_trace=True
    )[1]
    assert capped.forward_passes == 4  # steps caps the calls; the block's last step commits what is left


def test_eb_sampler_with_a_prior_uses_the_coupled_entropies():
    from diffusion import CoDDPrior

    model = _Logged(RandomModel(20, seed=2))
    bb = MaskedLMBackbone(model, mask_token_id=MASK, vocab_size=20)
    prior = CoDDPrior.hmm(8, 3, 20, seed=0).to(torch.float64)
    prompt = _prompts(b=2)
    gamma, tau = 1.0, 0.7
    out, trace = generate(
        bb,
        prompt,
        gen_length=8,
        steps=8,
        block_length=8,
        remasking="entropy",
        entropy_bound=gamma,
        prior=prior,
        pc_temperature=tau,
        return_trace=True,
    )

    def coupled(s, b, cols):  # entropies of p_hat's marginals on the window (the whole block), by the prior
        ids, logits = model.calls[s]
        win = ids[b : b + 1, 5:13]
        masked = win == MASK
        lg = logits[b : b + 1, 5:13].double().clone()
        lg[..., MASK] = -math.inf
        post = prior.marginals(win.masked_fill(masked, 0), lg, masked, tau)[0]
        return [float(-(post[c - 5] * torch.log(post[c - 5].clamp_min(1e-300))).sum()) for c in cols]

    assert _check_steps(model.calls, out, 5, 8, gamma, entropies=coupled, rule="entropy") == trace.forward_passes
    # the coupled entropies are not the backbone's: the counts differ from EB without the prior
    plain = generate(
        bb, prompt, gen_length=8, steps=8, block_length=8, remasking="entropy", entropy_bound=gamma, return_trace=True
    )[1]
    assert not torch.equal(plain.commit_step, trace.commit_step)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "1", True])
def test_eb_sampler_bad_bound(random_backbone, bad):
    with pytest.raises(ValueError, match="entropy_bound"):
        generate(random_backbone, _prompts(), gen_length=8, steps=8, block_length=8, entropy_bound=bad)
