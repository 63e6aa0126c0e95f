"""Tokenizers, data layout, a tiny training run, and save/load of a trained backbone."""

from __future__ import annotations

import json

import pytest
import torch

from diffusion.backbones import build_backbone, load_backbone, save_backbone
from diffusion.data import BUNDLED_DATA_DIR, QAExample, collate, encode_prompts, encode_qa, load_gsm8k
from diffusion.masking import masked_diffusion_loss
from diffusion.tokenizers import CharTokenizer, build_char_tokenizer, load_tokenizer, train_bpe_tokenizer
from diffusion.training import TrainConfig, train_backbone

TEXTS = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.",
] * 20


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizer_roundtrip_and_save(tmp_path, kind):
    tok = build_char_tokenizer(TEXTS) if kind == "char" else train_bpe_tokenizer(TEXTS, vocab_size=300)
    for t in TEXTS[:2]:
        ids = tok.encode(t)
        assert all(i >= 6 for i in ids)
        assert tok.decode(ids) == t
    tok.save(tmp_path)
    tok2 = load_tokenizer(tmp_path)
    assert type(tok2) is type(tok) and tok2.vocab_size == tok.vocab_size
    assert tok2.encode(TEXTS[1]) == tok.encode(TEXTS[1])
    assert tok.decode([tok.bos_id, *tok.encode("12"), tok.eos_id]) == "12"


def test_bpe_splits_digits():
    tok = train_bpe_tokenizer(["1234 1234 1234 5678"] * 50, vocab_size=300)
    assert len(tok.encode("1234")) == 4


def test_load_tokenizer_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)


def test_bundled_data_present():
    train = load_gsm8k("train", BUNDLED_DATA_DIR)
    test = load_gsm8k("test", BUNDLED_DATA_DIR)
    assert len(train) >= 300 and len(test) >= 50
    assert all("####" in e.answer for e in train)
    assert "MIT" in (BUNDLED_DATA_DIR / "LICENSE").read_text()


def test_collate_layout():
    tok = CharTokenizer(list("abcdefgh?"))
    enc = encode_qa([QAExample("ab?", "cd"), QAExample("a?", "cdefg")], tok)
    batch = collate(enc, tok)
    p = batch.prompt_length
    assert p == 5  # [BOS] a b ? [SEP]
    assert batch.input_ids[1, 0].item() == tok.pad_id  # left padding of the shorter prompt
    assert batch.input_ids[0, p - 1].item() == tok.sep_id
    assert tok.decode(batch.input_ids[0, p:]) == "cd"
    assert batch.input_ids[0, -1].item() == tok.eos_id  # right padding with [EOS]
    assert batch.target_mask[0].sum().item() == 3  # c d [EOS]
    assert not (batch.prompt_mask & batch.target_mask).any()
    prompts = encode_prompts(["ab?", "a?"], tok)
    assert torch.equal(prompts, batch.input_ids[:, :p])


def test_training_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    tok = build_char_tokenizer(TEXTS)
    backbone = build_backbone(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=32, max_length=128)
    enc = encode_qa([QAExample("q?", TEXTS[0])] * 8, tok)
    batch = collate(enc, tok)
    opt = torch.optim.AdamW(backbone.parameters(), lr=1e-2)
    t = torch.full((8,), 0.5)

    def loss(seed):
        return masked_diffusion_loss(backbone, batch.input_ids, tok.mask_id, ~batch.prompt_mask, t=t,
                                     generator=torch.Generator().manual_seed(seed)).loss

    with torch.no_grad():
        before = float(loss(123))
    for step in range(60):
        opt.zero_grad()
        loss(step).backward()
        opt.step()
    with torch.no_grad():
        after = float(loss(123))
    assert after < 0.8 * before


def test_train_save_load_roundtrip(tmp_path):
    cfg = TrainConfig(
        data=str(BUNDLED_DATA_DIR), output_dir=str(tmp_path / "m"), tokenizer="bpe", vocab_size=300,
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=32, max_length=256, batch_size=4,
        max_steps=3, eval_examples=4, train_limit=40, progress=False,
    )
    res = train_backbone(cfg, log=lambda s: None)
    assert res.steps == 3 and res.heldout and res.heldout[-1]["ppl_bound"] > 1.0
    meta = json.loads((tmp_path / "m" / "codd_backbone.json").read_text())
    assert meta["format"] == "codd-backbone" and meta["steps"] == 3
    loaded = load_backbone(tmp_path / "m")
    assert loaded.mask_token_id == res.backbone.tokenizer.mask_id
    assert loaded.tokenizer.encode("48+24=72") == res.backbone.tokenizer.encode("48+24=72")
    ids = torch.randint(0, loaded.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.allclose(loaded(ids), res.backbone(ids), atol=1e-5)
    # save again from the loaded copy, load once more
    save_backbone(loaded, tmp_path / "m2")
    again = load_backbone(tmp_path / "m2")
    with torch.no_grad():
        assert torch.allclose(again(ids), res.backbone(ids), atol=1e-5)


def test_text_corpus_training(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question. " * 200)
    cfg = TrainConfig(data=str(text), output_dir=str(tmp_path / "t"), tokenizer="char", hidden_size=16, num_layers=1,
                      num_heads=2, intermediate_size=16, max_length=64, batch_size=4, max_steps=2, eval_examples=2,
                      progress=False)
    res = train_backbone(cfg, log=lambda s: None)
    assert res.steps == 2
    with pytest.raises(FileNotFoundError):
        train_backbone(
            TrainConfig(data=str(tmp_path / "missing.txt"), output_dir=str(tmp_path / "x")), log=lambda s: None
        )


def test_pad_to_fills_answers_with_eos():
    tok = CharTokenizer(list("abcd?"))
    batch = collate(encode_qa([QAExample("a?", "bc")], tok), tok, pad_to=6)
    assert batch.input_ids.shape[1] == batch.prompt_length + 6
    assert batch.input_ids[0, batch.prompt_length + 3 :].tolist() == [tok.eos_id] * 3
    assert batch.target_mask.sum().item() == 3


def test_continue_training_from_checkpoint(tmp_path):
    base = dict(data=str(BUNDLED_DATA_DIR), tokenizer="bpe", vocab_size=300, hidden_size=32, num_layers=1, num_heads=2,
                intermediate_size=32, batch_size=4, max_steps=2, eval_examples=4, train_limit=20, progress=False)
    first = train_backbone(TrainConfig(output_dir=str(tmp_path / "a"), **base), log=lambda s: None)
    second = train_backbone(
        TrainConfig(output_dir=str(tmp_path / "b"), init_from=str(tmp_path / "a"), **base), log=lambda s: None
    )
    assert second.backbone.tokenizer.encode("48+24=72") == first.backbone.tokenizer.encode("48+24=72")
    assert json.loads((tmp_path / "b" / "codd_backbone.json").read_text())["train_config"]["init_from"] == str(
        tmp_path / "a"
    )
    with pytest.raises(FileNotFoundError):
        train_backbone(
            TrainConfig(output_dir=str(tmp_path / "c"), init_from=str(tmp_path / "none"), **base), log=lambda s: None
        )


def test_keep_best_saves_the_best_heldout_checkpoint(tmp_path):
    cfg = TrainConfig(
        data=str(BUNDLED_DATA_DIR), output_dir=str(tmp_path / "m"), tokenizer="bpe", vocab_size=300,
        hidden_size=32, num_layers=1, num_heads=2, intermediate_size=32, batch_size=4, lr=0.05, warmup_steps=1,
        max_steps=6, eval_every=1, eval_examples=4, train_limit=40, keep_best=True, dropout=0.1, progress=False,
    )
    res = train_backbone(cfg, log=lambda s: None)
    best = min(res.heldout, key=lambda r: r["nll"])
    meta = json.loads((tmp_path / "m" / "codd_backbone.json").read_text())
    assert meta["steps"] == best["step"] and meta["heldout"]["nll"] == best["nll"]
    assert len(json.loads((tmp_path / "m" / "training_log.json").read_text())["heldout"]) == len(res.heldout)
    loaded = load_backbone(tmp_path / "m")
    ids = torch.randint(0, loaded.vocab_size, (2, 12))
    with torch.no_grad():  # the returned model is the saved (best) one, in eval mode (dropout off)
        assert not res.backbone.training
        assert torch.allclose(loaded(ids), res.backbone(ids), atol=1e-5)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("precision", "fp16", "precision"), ("precision", "bf16", "precision"), ("dropout", 1.0, "dropout"),
     ("tokenizer", "word", "tokenizer")],
)
def test_bad_training_settings_raise(tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        train_backbone(TrainConfig(output_dir=str(tmp_path / "x"), **{field: value}), log=lambda s: None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_device_without_cuda_raises(tmp_path):
    with pytest.raises(ValueError, match="device"):
        train_backbone(TrainConfig(output_dir=str(tmp_path / "x"), device="cuda"), log=lambda s: None)
