"""The one CLI path ``codd train-prior`` -> ``codd generate --prior`` -> ``codd evaluate --prior``.

Run end to end on the backbone shipped with the package (project BPE
tokenizer) and on a tiny Hugging Face BERT with its own WordPiece tokenizer
(and a chat template), with the bundled GSM8K subset and tiny settings. The
package-data tests check that the shipped backbone and prior are inside the
package and matched by pyproject's package-data globs.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
import torch

import diffusion
from diffusion import CoDDPrior, generate, load_backbone
from diffusion.cli import main
from diffusion.data import BUNDLED_DATA_DIR, SHIPPED_BACKBONE_DIR, SHIPPED_PRIOR_FILE, encode_qa, load_gsm8k
from diffusion.tokenizers import HFTokenizer, as_text_tokenizer
from tests.diffusion.fixtures import run_codd

ROOT = Path(__file__).parents[2]
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
TINY_PRIOR = ["--data", str(BUNDLED_DATA_DIR), "--window", "8", "--states", "4", "--windows", "48", "--top-k", "8",
              "--epochs", "1", "--batch-size", "16", "--examples", "24", "--no-progress"]


def _answer(out: str, question: str) -> str:
    """The answer printed by ``codd generate`` after ``### question``."""
    block = out.split(f"### {question}\n", 1)[1]
    return block.split("\n\n### ", 1)[0].rstrip("\n")


def _direct_answer(model: Path, prior_path: Path, question: str, gen_length: int, steps: int) -> str:
    """The greedy answer of ``generate(prior=...)`` called from Python, decoded as the CLI does."""
    backbone = load_backbone(model)
    tok = as_text_tokenizer(backbone.tokenizer)
    prompt = torch.tensor([tok.prompt_ids(question)])
    out = generate(backbone, prompt, gen_length=gen_length, steps=steps, block_length=min(32, gen_length),
                   prior=CoDDPrior.load(prior_path), generator=torch.Generator().manual_seed(0))
    row = out[0, prompt.shape[1]:].tolist()
    if tok.eos_id in row:
        row = row[: row.index(tok.eos_id)]
    return tok.decode(row, skip_special_tokens=True)


def _full_path(model: Path, tmp_path: Path, capsys, vocab: int) -> dict:
    """train-prior -> generate --prior -> evaluate --prior on ``model``; returns the evaluation JSON."""
    prior = tmp_path / "prior.safetensors"
    res = json.loads(run_codd(capsys, ["train-prior", str(model), "--output", str(prior), *TINY_PRIOR]))
    assert res["output"] == str(prior) and len(res["heldout_nll"]) == 1
    loaded = CoDDPrior.load(prior)
    assert (loaded.window, loaded.vocab_size) == (8, vocab)

    gen = ["generate", str(model), "--prior", str(prior), "--prompt", QUESTION, "--gen-length", "16",
           "--tokens-per-step", "2", "--pc-temperature", "1.0", "--sampler", "latent"]
    printed = _answer(run_codd(capsys, gen), QUESTION)
    assert printed == _direct_answer(model, prior, QUESTION, gen_length=16, steps=8)  # the CLI used this prior

    result = tmp_path / "eval.json"
    run_codd(capsys, ["evaluate", str(model), "--prior", str(prior), "--data", str(BUNDLED_DATA_DIR), "--examples", "2",
                  "--questions", "2", "--gen-length", "16", "--tokens-per-step", "4", "--max-answer-tokens", "400",
                  "--pc-frac", "0.5", "--output", str(result)])
    evaluation = json.loads(result.read_text())
    assert evaluation["settings"]["prior"] is True and evaluation["settings"]["pc_frac"] == 0.5
    assert [g["tokens_per_step"] for g in evaluation["generation"]] == [4]
    assert len(evaluation["generation"][0]["samples"]) == 2
    assert evaluation["elbo"]["tokens"] > 0
    return evaluation


# ------------------------------------------------------------------------------------ shipped backbone
def test_full_path_on_the_shipped_backbone(tmp_path, capsys):
    _full_path(SHIPPED_BACKBONE_DIR, tmp_path, capsys, vocab=1024)


def test_generate_without_a_model_uses_the_shipped_backbone_and_prior(capsys):
    argv = ["generate", "--prompt", QUESTION, "--gen-length", "16", "--tokens-per-step", "2"]
    plain = _answer(run_codd(capsys, argv), QUESTION)
    backbone = load_backbone(SHIPPED_BACKBONE_DIR)
    tok = backbone.tokenizer
    prompt = torch.tensor([[tok.bos_id, *tok.encode(QUESTION), tok.sep_id]])  # the project's prompt layout
    out = generate(backbone, prompt, gen_length=16, steps=8, block_length=16)[0, prompt.shape[1]:].tolist()
    assert plain == tok.decode(out[: out.index(tok.eos_id)] if tok.eos_id in out else out)
    with_prior = _answer(run_codd(capsys, [*argv, "--prior", "shipped"]), QUESTION)
    assert with_prior == _direct_answer(SHIPPED_BACKBONE_DIR, SHIPPED_PRIOR_FILE, QUESTION, gen_length=16, steps=8)


def test_a_prior_for_another_vocabulary_is_one_line_and_exit_2(tmp_path, capsys):
    other = CoDDPrior.hmm(4, 2, 50)
    other.save(tmp_path / "other.safetensors")
    capsys.readouterr()
    assert main(["generate", "--prompt", "x", "--prior", str(tmp_path / "other.safetensors")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--prior" in err and "50" in err and "1024" in err


# ------------------------------------------------------------------------------- Hugging Face stand-in
CHAT_TEMPLATE = "{% for m in messages %}[CLS] user : {{ m['content'] }} [SEP]{% endfor %}" \
                "{% if add_generation_prompt %} assistant : {% endif %}"


def _hf_bert(tmp_path: Path, chat_template: str | None) -> Path:
    """A two-layer BERT masked LM with a WordPiece tokenizer trained here on the bundled GSM8K subset."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(),
                                                pre_tokenizers.Digits(individual_digits=True)])
    wp.decoder = decoders.WordPiece()
    texts = [t for e in load_gsm8k("train", BUNDLED_DATA_DIR, limit=200) for t in (e.question, e.answer)]
    wp.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials,
                                                            show_progress=False))
    wp.post_processor = processors.BertProcessing(("[SEP]", wp.token_to_id("[SEP]")),
                                                  ("[CLS]", wp.token_to_id("[CLS]")))
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    if chat_template is not None:
        tok.chat_template = chat_template
    cfg = BertConfig(vocab_size=wp.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    out = tmp_path / "hf_bert"
    BertForMaskedLM(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_full_path_on_a_hugging_face_bert_with_its_own_tokenizer(tmp_path, capsys):
    model = _hf_bert(tmp_path, chat_template=None)
    vocab = load_backbone(model).vocab_size
    _full_path(model, tmp_path, capsys, vocab=vocab)


def test_hugging_face_prompts_use_the_chat_template(tmp_path):
    model = _hf_bert(tmp_path, chat_template=CHAT_TEMPLATE)
    hf = load_backbone(model).tokenizer
    tok = as_text_tokenizer(hf)
    assert isinstance(tok, HFTokenizer) and tok.has_chat_template
    rendered = f"[CLS] user : {QUESTION} [SEP] assistant : "
    expected = hf.convert_tokens_to_ids(["[CLS]", *hf.tokenize(f"user : {QUESTION}"), "[SEP]",
                                         *hf.tokenize("assistant :")])
    assert tok.prompt_ids(QUESTION) == expected, rendered
    # QA encoding: the templated prompt, then the answer and [SEP] (BERT has no EOS)
    ex = load_gsm8k("test", BUNDLED_DATA_DIR, limit=1)
    enc = encode_qa(ex, tok, max_length=10**6)[0]
    assert list(enc.prompt) == tok.prompt_ids(ex[0].question)
    assert list(enc.target) == [*hf.encode(ex[0].answer, add_special_tokens=False), hf.sep_token_id]


def test_hugging_face_prompts_without_a_template_use_the_tokenizers_special_tokens(tmp_path):
    model = _hf_bert(tmp_path, chat_template=None)
    hf = load_backbone(model).tokenizer
    tok = as_text_tokenizer(hf)
    assert not tok.has_chat_template
    assert tok.prompt_ids("the cat") == [hf.cls_token_id, *hf.encode("the cat", add_special_tokens=False),
                                         hf.sep_token_id]
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (hf.sep_token_id, hf.pad_token_id, hf.cls_token_id)


def test_the_project_tokenizer_keeps_its_prompt_layout():
    tok = load_backbone(SHIPPED_BACKBONE_DIR).tokenizer
    assert as_text_tokenizer(tok) is tok
    ex = load_gsm8k("test", BUNDLED_DATA_DIR, limit=3)
    for e, enc in zip(ex, encode_qa(ex, tok, max_length=10**6), strict=True):
        assert list(enc.prompt) == [2, *tok.encode(e.question), 3]  # [BOS] question [SEP]
        assert list(enc.target) == [*tok.encode(e.answer), 4]  # answer [EOS]


# ------------------------------------------------------------------------------------- package data
def test_shipped_files_are_package_data():
    package = Path(diffusion.__file__).resolve().parent
    assert SHIPPED_BACKBONE_DIR.resolve().parent.parent == package
    assert SHIPPED_PRIOR_FILE.resolve().parent.parent == package
    needed = ["config.json", "model.safetensors", "tokenizer.json", "codd_backbone.json", "codd_tokenizer.json"]
    assert all((SHIPPED_BACKBONE_DIR / n).is_file() for n in needed)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["diffusion"]
    shipped = [p.relative_to(package).as_posix() for p in (package / "bundled").rglob("*") if p.is_file()]
    shipped = [p for p in shipped if "__pycache__" not in p]
    missing = [p for p in shipped if not any(fnmatch.fnmatchcase(p, g) and p.count("/") == g.count("/")
                                             for g in globs)]
    assert not missing, f"not matched by pyproject package-data {globs}: {missing}"
    assert {f"bundled/backbone/{n}" for n in needed} | {"bundled/prior.safetensors"} <= set(shipped)


@pytest.mark.parametrize("name", ["generate", "evaluate", "train-prior"])
def test_help_names_the_chat_template_and_the_prior(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "chat template" in text and "apply_chat_template" in text
    if name != "train-prior":
        assert "--prior" in text and "--pc-frac" in text and "--sampler" in text and "--entropy-bound" in text


# ---------------------------------------------------------------------------------- checkpoint directory
def test_train_prior_writes_a_checkpoint_directory_that_generate_loads(tmp_path, capsys):
    ckpt = tmp_path / "runs" / "prior"  # no file suffix: a checkpoint directory, parents created
    res = json.loads(run_codd(capsys, ["train-prior", "--output", str(ckpt), *TINY_PRIOR]))
    assert res["output"] == str(ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "prior.safetensors"]
    assert [p.name for p in ckpt.parent.iterdir()] == ["prior"]  # no temporary file left behind
    config = json.loads((ckpt / "config.json").read_text())
    backbone = load_backbone(SHIPPED_BACKBONE_DIR)
    assert config["backbone"] == {"vocab_size": 1024, "mask_token_id": backbone.mask_token_id}
    assert (config["window"], config["states"], config["top_k"]) == (8, 4, 8)
    assert config["training"]["num_windows"] == 48 and config["training"]["data"] == str(BUNDLED_DATA_DIR)

    gen = ["generate", "--prior", str(ckpt), "--prompt", QUESTION, "--gen-length", "16", "--tokens-per-step", "2"]
    printed = _answer(run_codd(capsys, gen), QUESTION)
    assert printed == _direct_answer(SHIPPED_BACKBONE_DIR, ckpt, QUESTION, gen_length=16, steps=8)

    config["backbone"]["mask_token_id"] = (backbone.mask_token_id + 1) % 1024  # trained for another mask id
    (ckpt / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(gen) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--prior" in err and "backbone" in err
    assert f"mask_token_id={backbone.mask_token_id}" in err
    assert f"mask_token_id={(backbone.mask_token_id + 1) % 1024}" in err
