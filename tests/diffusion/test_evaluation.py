"""Likelihood bounds and GSM8K quality measures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusion.backbones import MaskedLMBackbone
from diffusion.data import QAExample, encode_qa, load_gsm8k
from diffusion.evaluation import (
    annotation_stats,
    elbo_bound,
    evaluate_generation,
    extract_final_answer,
    loglik_by_mask_ratio,
)
from diffusion.tokenizers import build_char_tokenizer

from tests.diffusion.fixtures import SHARED_DATA


def test_annotation_stats():
    text = "She sold 48/2 = <<48/2=24>>24 clips. Then <<48+24=72>>72 total, <<3*4=13>>13 and <<5-1=4>>5. #### 72"
    st = annotation_stats(text)
    assert st == {"total": 4, "wellformed": 4, "valid": 2, "arith_ok": 3, "copy_ok": 3}
    assert annotation_stats("<<2*=6>>6 <<1+1=2>>x")["wellformed"] == 0
    assert annotation_stats("<<2*3=6>>$6 and <<1,000+1=1001>>1,001")["valid"] == 2
    assert annotation_stats("<<garbage>> <<2*3=6")["total"] == 1
    assert annotation_stats("<<2*3=6>>")["valid"] == 0  # no number after the annotation


def test_extract_final_answer():
    assert extract_final_answer("so 5\n#### 1,234") == 1234.0
    assert extract_final_answer("#### -3.5") == -3.5
    assert extract_final_answer("#### $18") == 18.0
    assert extract_final_answer("no answer") is None


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file(), reason="shared GSM8K not available")
def test_reference_answers_are_valid():
    ex = load_gsm8k("test", SHARED_DATA / "gsm8k")[:300]
    total = valid = 0
    for e in ex:
        st = annotation_stats(e.answer)
        total += st["total"]
        valid += st["valid"]
        assert extract_final_answer(e.answer) is not None
    assert valid / total > 0.95


class Uniform(nn.Module):
    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, input_ids):
        return torch.zeros(*input_ids.shape, self.v)


class Oracle(nn.Module):
    """Knows the answer: puts almost all mass on the clean token at every position."""

    def __init__(self, v, clean):
        super().__init__()
        self.v, self.clean = v, clean

    def forward(self, input_ids):
        return torch.nn.functional.one_hot(self.clean[: input_ids.shape[0], : input_ids.shape[1]], self.v).float() * 50


def _examples():
    tok = build_char_tokenizer(["abcdefghij?"])
    ex = [QAExample("abc?", "defghij" * (i + 1)) for i in range(6)]
    return tok, encode_qa(ex, tok)


def test_elbo_uniform_model_is_log_v():
    tok, enc = _examples()
    backbone = MaskedLMBackbone(Uniform(tok.vocab_size), tok.mask_id, tok.vocab_size, tok)
    res = elbo_bound(backbone, enc, num_samples=200)
    assert abs(res["nll"] - math.log(tok.vocab_size)) < 0.06 * math.log(tok.vocab_size)
    assert res["tokens"] == sum(len(e.target) for e in enc)
    bins = loglik_by_mask_ratio(backbone, enc)
    assert [b["lo"] for b in bins] == [0.0, 0.2, 0.4, 0.6, 0.8]
    for b in bins:
        assert b["loglik"] == pytest.approx(-math.log(tok.vocab_size), abs=1e-5)


def test_elbo_oracle_is_near_zero():
    tok, enc = _examples()
    from diffusion.data import collate

    clean = collate(enc, tok).input_ids
    backbone = MaskedLMBackbone(Oracle(tok.vocab_size, clean), tok.mask_id, tok.vocab_size, tok)
    res = elbo_bound(backbone, enc, batch_size=len(enc), num_samples=4)
    assert res["nll"] < 1e-3 and res["ppl_bound"] < 1.01


def _context_sensitive_backbone(tok) -> MaskedLMBackbone:
    """The project's own backbone (ModernBERT), tiny, float64.

    Its weights are large enough that answers depend on the prompt.
    """
    from transformers import AutoModelForMaskedLM, ModernBertConfig

    cfg = ModernBertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=128, global_attn_every_n_layers=1,
                           pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                           cls_token_id=tok.bos_id, sep_token_id=tok.sep_id, mask_token_id=tok.mask_id,
                           initializer_range=0.5)
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(cfg).eval().to(torch.float64)
    return MaskedLMBackbone(model, tok.mask_id, tok.vocab_size, tok)


def test_generation_outputs_do_not_depend_on_the_batch_size():
    tok = build_char_tokenizer(["abcdefghij?=<>+*0123456789 "])
    questions = ["a?", "abcdefgh?", "abc?", "ab cd ef?", "j?"]  # prompt lengths 4 to 11
    ex = [QAExample(q, "#### 1") for q in questions]
    backbone = _context_sensitive_backbone(tok)
    kw = dict(tokens_per_step=(1, 4), gen_length=8, block_length=4, keep_samples=len(ex))
    runs = {bs: evaluate_generation(backbone, ex, batch_size=bs, **kw) for bs in (1, 2, len(ex))}
    timing = {"seconds", "tokens_per_second"}
    for bs in (2, len(ex)):
        for a, b in zip(runs[1], runs[bs], strict=True):
            assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    samples = runs[1][0]["samples"]
    assert len(set(samples)) > 1  # the answers differ between questions: the check above is not vacuous
