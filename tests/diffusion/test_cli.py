"""The `codd` command line and the demo."""

from __future__ import annotations

import json

import pytest

from diffusion.cli import main
from diffusion.data import BUNDLED_DATA_DIR
from diffusion.demo import run_demo


@pytest.mark.parametrize("cmd", [[], ["train-backbone"], ["generate"], ["evaluate"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: codd" in capsys.readouterr().out


def test_missing_inputs_give_clear_errors(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train-backbone", "--data", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    rc = main([
        "train-backbone", "--data", str(BUNDLED_DATA_DIR), "--output", str(out), "--vocab-size", "300",
        "--hidden-size", "32", "--layers", "1", "--heads", "2", "--intermediate-size", "32", "--batch-size", "4",
        "--max-steps", "2", "--eval-examples", "4", "--train-limit", "20", "--no-progress",
    ])
    assert rc == 0
    return out


def test_generate_and_evaluate(tiny_model, tmp_path, capsys):
    capsys.readouterr()
    assert main(["generate", str(tiny_model), "--prompt", "What is 2+3?", "--gen-length", "16", "--block-length", "8",
                 "--tokens-per-step", "4"]) == 0
    assert "### What is 2+3?" in capsys.readouterr().out
    prompts = tmp_path / "p.txt"
    prompts.write_text("one?\ntwo?\n")
    assert main(["generate", str(tiny_model), "--prompts-file", str(prompts), "--gen-length", "8", "--mode", "full",
                 "--steps", "2", "--temperature", "1.0"]) == 0
    assert main(["generate", str(tiny_model), "--prompts-file", str(tmp_path / "none.txt")]) == 2
    assert main(["generate", str(tiny_model), "--prompt", "x", "--gen-length", "10", "--block-length", "4"]) == 2
    assert "gen_length" in capsys.readouterr().err
    out = tmp_path / "res.json"
    assert main(["evaluate", str(tiny_model), "--data", str(BUNDLED_DATA_DIR), "--examples", "3", "--questions", "2",
                 "--gen-length", "16", "--block-length", "8", "--tokens-per-step", "1", "8", "--max-answer-tokens", "200",
                 "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["elbo"]["ppl_bound"] > 1
    assert [g["tokens_per_step"] for g in res["generation"]] == [1, 8]
    assert len(res["loglik_by_mask_ratio"]) == 5


def test_demo_runs(tiny_model, capsys):
    res = run_demo(model_dir=tiny_model, questions=1, gen_length=16, block_length=8)
    assert set(res["results"]) == {1, 8}
    assert "8 token(s)/step" in capsys.readouterr().out


def test_generate_with_hf_masked_lm_directory(tmp_path, capsys):
    from .test_backbones import _tiny_bert

    path, _ = _tiny_bert(tmp_path)
    assert main(["generate", str(path), "--prompt", "the cat", "--prompt", "a dog sat", "--gen-length", "4",
                 "--block-length", "2", "--tokens-per-step", "2"]) == 0
    out = capsys.readouterr().out
    assert "### the cat" in out and "### a dog sat" in out


@pytest.mark.parametrize("weighting", ["token", "window"])
def test_train_prior(tiny_model, tmp_path, capsys, weighting):
    from diffusion import CoDDPrior

    out = tmp_path / "prior.npz"
    capsys.readouterr()
    assert main(["train-prior", str(tiny_model), "--data", str(BUNDLED_DATA_DIR), "--output", str(out), "--window", "8",
                 "--states", "3", "--windows", "32", "--top-k", "8", "--epochs", "1", "--examples", "20",
                 "--weighting", weighting, "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(res["heldout_nll"]) == 1 and res["heldout_nll"][0] > 0
    prior = CoDDPrior.load(out)
    assert prior.window == 8 and prior.vocab_size == 300


def test_train_prior_answer_scope_with_backoff(tiny_model, tmp_path, capsys):
    from diffusion import CoDDPrior

    out = tmp_path / "prior.npz"
    capsys.readouterr()
    assert main(["train-prior", str(tiny_model), "--data", str(BUNDLED_DATA_DIR), "--output", str(out), "--window", "8",
                 "--states", "3", "--top-k", "8", "--epochs", "1", "--examples", "20", "--mask-scope", "answer",
                 "--draws", "2", "--backoff-bins", "3", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(res["backoff"]) == 3 and all(0.0 <= v <= 1.0 for v in res["backoff"])
    assert CoDDPrior.load(out).backoff.tolist() == res["backoff"]


def _answers(out: str) -> dict[str, str]:
    """``### prompt`` headers and the answer printed under each."""
    blocks = [b for b in out.split("### ") if b.strip()]
    return {b.split("\n", 1)[0]: b.split("\n", 1)[1].strip() for b in blocks}


def test_generate_prints_the_same_answer_alone_and_with_other_prompts(tmp_path, capsys):
    import torch
    from transformers import AutoModelForMaskedLM, ModernBertConfig

    from diffusion.backbones import MaskedLMBackbone, save_backbone
    from diffusion.tokenizers import build_char_tokenizer

    tok = build_char_tokenizer(["abcdefghijklmnopqrstuvwxyz?.0123456789 "])
    cfg = ModernBertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=128, global_attn_every_n_layers=1,
                           pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                           cls_token_id=tok.bos_id, sep_token_id=tok.sep_id, mask_token_id=tok.mask_id,
                           initializer_range=0.5)  # large weights: answers depend on the prompt
    torch.manual_seed(0)
    path = save_backbone(MaskedLMBackbone(AutoModelForMaskedLM.from_config(cfg).eval(), tok.mask_id, tok.vocab_size, tok),
                         tmp_path / "model")
    prompts = ["A shop sells 12 pens.", "hi?", "what is 7 times 8?"]
    for mode in (["--block-length", "4"], ["--mode", "full"]):
        common = ["--gen-length", "8", "--tokens-per-step", "2", *mode]
        capsys.readouterr()
        assert main(["generate", str(path), *[a for p in prompts for a in ("--prompt", p)], *common]) == 0
        together = _answers(capsys.readouterr().out)
        assert list(together) == prompts
        for p in prompts:
            assert main(["generate", str(path), "--prompt", p, *common]) == 0
            assert _answers(capsys.readouterr().out) == {p: together[p]}
        assert len(set(together.values())) > 1  # answers differ by prompt: the comparison is not vacuous
