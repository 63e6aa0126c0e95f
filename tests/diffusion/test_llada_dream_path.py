"""The CLI path ``codd train-prior`` -> ``codd generate --prior`` -> ``codd evaluate --prior`` on LLaDA- and
Dream-shaped stand-ins.

The stand-ins (`tests.diffusion.fixtures.diffusion_lm_standin`) are remote-code directories with the real
checkpoints' ``model_type``, ``architectures``, ``auto_map`` class names, vocabulary size (126,464 and
152,064), mask and EOS ids and chat-template format, and a tiny random model. The path runs with
``--trust-remote-code``, a checkpoint-directory prior, ``--dtype bfloat16`` in generation and a few short
arithmetic QA pairs (full-vocabulary logits of 8 sequences of ~30 tokens: ~150 MB per backbone call).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusion import CoDDPrior, generate, load_backbone
from diffusion.backbones import DREAM_MASK_TOKEN_ID, LLADA_MASK_TOKEN_ID, DreamBackbone, LLaDABackbone
from diffusion.cli import main
from diffusion.tokenizers import HFTokenizer, as_text_tokenizer
from tests.diffusion.fixtures import STANDIN_SPECS, diffusion_lm_standin, run_codd

QUESTION = "What is 2 plus 3?"
KINDS = {"llada": (LLaDABackbone, LLADA_MASK_TOKEN_ID), "dream": (DreamBackbone, DREAM_MASK_TOKEN_ID)}


def _qa_pairs() -> list[dict[str, str]]:
    """Twelve short arithmetic question-answer pairs in GSM8K's answer format."""
    return [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}
            for a in range(2, 6) for b in range(1, 4)]


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _qa_pairs()))
    return path


def _standin(tmp_path: Path, kind: str) -> Path:
    texts = [t for r in _qa_pairs() for t in (r["question"], r["answer"])]
    return diffusion_lm_standin(tmp_path, kind, texts)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_loader_picks_the_wrapper_mask_id_and_chat_template(tmp_path, kind):
    model = _standin(tmp_path, kind)
    with pytest.raises(ValueError, match="--trust-remote-code"):
        load_backbone(model)
    backbone = load_backbone(model, trust_remote_code=True)
    cls, mask_id = KINDS[kind]
    spec = STANDIN_SPECS[kind]
    assert type(backbone) is cls and backbone.mask_token_id == mask_id
    assert backbone.vocab_size == spec["vocab_size"]
    tok = as_text_tokenizer(backbone.tokenizer)
    assert isinstance(tok, HFTokenizer) and tok.has_chat_template and tok.eos_id == spec["eos_token_id"]
    rendered = backbone.tokenizer.decode(tok.prompt_ids(QUESTION), skip_special_tokens=False)
    first, last = spec["extra_tokens"][:2] if kind == "dream" else ("<|start_header_id|>", "<|end_header_id|>")
    assert rendered.count(first) == 2 and last in rendered and "what is 2 plus 3?" in rendered
    ids = torch.tensor([tok.prompt_ids(QUESTION)])
    with torch.no_grad():
        raw = backbone.model(input_ids=ids).logits
        got = backbone(ids)
    if kind == "dream":  # Dream's next-token head: position i is read at output i - 1
        assert torch.equal(got[:, 1:], raw[:, :-1]) and torch.equal(got[:, 0], raw[:, 0])
    else:
        assert torch.equal(got, raw)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_full_cli_path_on_a_stand_in(tmp_path, capsys, kind):
    model, data = _standin(tmp_path, kind), _data(tmp_path)
    spec = STANDIN_SPECS[kind]
    ckpt = tmp_path / "prior"
    train = ["train-prior", str(model), "--trust-remote-code", "--data", str(data), "--window", "4", "--states", "4",
             "--windows", "8", "--top-k", "8", "--epochs", "1", "--batch-size", "8", "--no-progress",
             "--device", "cpu", "--dtype", "float32", "--output", str(ckpt)]
    res = json.loads(run_codd(capsys, train))
    assert res["output"] == str(ckpt) and len(res["heldout_nll"]) == 1
    config = json.loads((ckpt / "config.json").read_text())
    assert config["backbone"] == {"vocab_size": spec["vocab_size"], "mask_token_id": spec["mask_token_id"]}
    assert (config["window"], config["states"], config["vocab_size"]) == (4, 4, spec["vocab_size"])

    gen = ["generate", str(model), "--trust-remote-code", "--prior", str(ckpt), "--prompt", QUESTION,
           "--device", "cpu", "--dtype", "bfloat16", "--gen-length", "8", "--tokens-per-step", "2"]
    printed = run_codd(capsys, gen).split(f"### {QUESTION}\n", 1)[1].rstrip("\n")
    backbone = load_backbone(model, dtype=torch.bfloat16, trust_remote_code=True)
    prior = CoDDPrior.from_pretrained(ckpt, backbone=backbone)
    tok = as_text_tokenizer(backbone.tokenizer)
    prompt = torch.tensor([tok.prompt_ids(QUESTION)])
    out = generate(backbone, prompt, gen_length=8, steps=4, block_length=8, prior=prior,
                   generator=torch.Generator().manual_seed(0))[0, prompt.shape[1]:].tolist()
    out = out[: out.index(tok.eos_id)] if tok.eos_id in out else out
    assert printed == tok.decode(out, skip_special_tokens=True)  # the CLI used this prior and dtype

    result = tmp_path / "eval.json"
    run_codd(capsys, ["evaluate", str(model), "--trust-remote-code", "--prior", str(ckpt), "--data", str(data),
                  "--examples", "2", "--questions", "2", "--batch-size", "2", "--gen-length", "8",
                  "--tokens-per-step", "4", "--max-answer-tokens", "400", "--pc-frac", "0.5", "--output", str(result)])
    evaluation = json.loads(result.read_text())
    assert evaluation["settings"]["prior"] is True and evaluation["settings"]["pc_frac"] == 0.5
    assert len(evaluation["generation"][0]["samples"]) == 2 and evaluation["elbo"]["tokens"] > 0


def test_a_prior_for_llada_is_refused_by_dream(tmp_path, capsys):
    llada, dream = _standin(tmp_path, "llada"), _standin(tmp_path, "dream")
    llada_backbone = load_backbone(llada, trust_remote_code=True)
    ckpt = CoDDPrior.hmm(4, 2, llada_backbone.vocab_size).save_pretrained(tmp_path / "prior", backbone=llada_backbone)
    dream_backbone = load_backbone(dream, trust_remote_code=True)
    with pytest.raises(ValueError, match="backbone") as e:
        CoDDPrior.from_pretrained(ckpt, backbone=dream_backbone)
    assert "126464" in str(e.value) and "152064" in str(e.value)
    capsys.readouterr()
    assert main(["generate", str(dream), "--trust-remote-code", "--prior", str(ckpt), "--prompt", QUESTION]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--prior" in err and "126464" in err
