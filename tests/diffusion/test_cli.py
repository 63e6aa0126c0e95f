"""The `codd` command line and the demo."""

from __future__ import annotations

import json
import shutil

import pytest

from diffusion.cli import main
from diffusion.data import BUNDLED_DATA_DIR
from diffusion.demo import run_demo
from tests.diffusion.fixtures import directory_naming_code, tiny_bert


@pytest.mark.parametrize("cmd", [[], ["train-backbone"], ["generate"], ["evaluate"], ["train-prior"]])
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
                 "--gen-length", "16", "--block-length", "8", "--tokens-per-step", "1", "8",
                 "--max-answer-tokens", "200", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["elbo"]["ppl_bound"] > 1
    assert [g["tokens_per_step"] for g in res["generation"]] == [1, 8]
    assert len(res["loglik_by_mask_ratio"]) == 5
    # an existing output is replaced only with --force
    again = ["evaluate", str(tiny_model), "--data", str(BUNDLED_DATA_DIR), "--examples", "2", "--questions", "1",
             "--gen-length", "16", "--block-length", "8", "--tokens-per-step", "8", "--max-answer-tokens", "200",
             "--output", str(out)]
    before = out.read_bytes()
    assert main(again) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == before
    assert main([*again, "--force"]) == 0
    assert [g["tokens_per_step"] for g in json.loads(out.read_text())["generation"]] == [8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.txt", "res.json"]  # no temporary file left behind


def test_demo_runs(tiny_model, capsys):
    res = run_demo(model_dir=tiny_model, questions=1, gen_length=16, block_length=8)
    assert set(res["results"]) == {1, 8}
    assert "8 token(s)/step" in capsys.readouterr().out


def test_generate_with_hf_masked_lm_directory(tmp_path, capsys):
    path, _ = tiny_bert(tmp_path)
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
    model = AutoModelForMaskedLM.from_config(cfg).eval()
    path = save_backbone(MaskedLMBackbone(model, tok.mask_id, tok.vocab_size, tok), tmp_path / "model")
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


# --- every user error: exit 2, one line on stderr, nothing changed ------------------------------------------


def snapshot(folder):
    """Every file under ``folder`` (relative path -> bytes) and every folder: what a failed command must not change."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A plain masked-LM directory, one whose tokenizer config names code, an existing output and a data folder."""
    d = tmp_path_factory.mktemp("codd_errors")
    tiny_bert(d)
    (d / "code").mkdir()
    code_dir, marker = directory_naming_code(d / "code", "tokenizer_config.json")
    assert code_dir == d / "code" / "bert" and marker == d / "code" / "marker.txt"
    (d / "old.json").write_text('{"existing": "output"}')
    (d / "prompts.txt").write_text("the cat\n")
    (d / "data").mkdir()
    for split in ("train", "test"):
        (d / "data" / f"{split}.jsonl").write_text('{"question": "q?", "answer": "a #### 1"}\n')
    (d / "outdir").mkdir()
    weights = (d / "bert" / "model.safetensors").read_bytes()
    for name, content in (("truncated", weights[: len(weights) // 2]), ("empty", b"")):
        shutil.copytree(d / "bert", d / name)
        (d / name / "model.safetensors").write_bytes(content)
    return d


_GEN = ["generate", "{d}/bert", "--prompt", "the cat"]
CODD_ERROR_CASES = [
    [],
    ["bogus"],
    ["generate"],
    ["generate", "--prompt", "x", "--prior", "{d}/old.json"],  # not a prior file (default model: the shipped one)
    [*_GEN, "--prior", "{d}/missing.safetensors"],
    [*_GEN, "--prior", "shipped"],  # a prior for another vocabulary
    [*_GEN, "--pc-frac", "1.5"],
    [*_GEN, "--pc-temperature", "0"],
    [*_GEN, "--sampler", "bogus"],
    [*_GEN, "--entropy-bound", "-1"],
    [*_GEN, "--dtype", "int8"],
    [*_GEN, "--tokens-per-step", "0"],
    [*_GEN, "--tokens-per-step", "two"],
    [*_GEN, "--steps", "0"],
    [*_GEN, "--gen-length", "-8"],
    [*_GEN, "--block-length", "0"],
    [*_GEN, "--top-p", "0"],
    [*_GEN, "--top-p", "1.5"],
    [*_GEN, "--temperature", "-1"],
    [*_GEN, "--temperature", "nan"],
    [*_GEN, "--mask-token-id", "-1"],
    [*_GEN, "--threads", "0"],
    [*_GEN, "--seed", "-1"],
    [*_GEN, "--mode", "sideways"],
    [*_GEN, "--trust-remote-code=yes"],
    [*_GEN, "--gen-length", "10", "--block-length", "4"],  # the sampler's own ValueError
    ["generate", "{d}/bert"],  # no prompts
    ["generate", "{d}/nope", "--prompt", "x"],
    ["generate", "{d}/old.json", "--prompt", "x"],  # a file given as a model directory
    ["generate", "{d}/outdir", "--prompt", "x"],  # a folder without config.json
    ["generate", "{d}/bert", "--prompts-file", "{d}/none.txt"],
    ["generate", "{d}/bert", "--prompts-file", "{d}/outdir"],
    ["generate", "{d}/code/bert", "--prompt", "x"],  # names code: refused without --trust-remote-code
    ["generate", "{d}/truncated", "--prompt", "x"],  # a truncated weights file
    ["generate", "{d}/empty", "--prompt", "x"],  # an empty weights file
    ["evaluate", "{d}/truncated"],
    ["train-prior", "{d}/bert", "--top-k", "-1"],
    ["train-prior", "{d}/bert", "--window", "0"],
    ["train-prior", "{d}/bert", "--states", "0"],
    ["train-prior", "{d}/bert", "--lr", "0"],
    ["train-prior", "{d}/bert", "--lr", "inf"],
    ["train-prior", "{d}/bert", "--draws", "0"],
    ["train-prior", "{d}/bert", "--backoff-bins", "-2"],
    ["train-prior", "{d}/bert", "--output", "{d}/old.json"],
    ["train-prior", "{d}/bert", "--output", "{d}/bert/config.json", "--force"],
    ["train-prior", "{d}/bert", "--output", "{d}/bert", "--force"],
    ["train-prior", "{d}/bert", "--output", "{d}/missing/prior.npz"],
    ["train-prior", "{d}/bert", "--output", "{d}/prior.npz", "--dtype", "int8"],
    ["train-prior", "{d}/code/bert", "--output", "{d}/prior.npz"],
    ["evaluate", "{d}/bert", "--prior", "shipped"],  # a prior for another vocabulary
    ["evaluate", "{d}/bert", "--tokens-per-step", "1", "0"],
    ["evaluate", "{d}/bert", "--examples", "0"],
    ["evaluate", "{d}/bert", "--output", "{d}/missing/res.json"],
    ["evaluate", "{d}/bert", "--output", "{d}/old.json"],
    ["evaluate", "{d}/bert", "--output", "{d}/bert/config.json", "--force"],
    ["evaluate", "{d}/bert", "--output", "{d}/outdir", "--force"],
    ["evaluate", "{d}/code/bert", "--output", "{d}/res.json"],
    ["train-backbone", "--output", "{d}/outdir"],  # exists, no --force
    ["train-backbone", "--output", "{d}/old.json", "--force"],
    ["train-backbone", "--data", "{d}/data", "--output", "{d}/data", "--force"],
    ["train-backbone", "--data", "{d}/data/train.jsonl", "--output", "{d}/data", "--force"],
    ["train-backbone", "--init-from", "{d}/bert", "--output", "{d}/bert", "--force"],
    ["train-backbone", "--data", "{d}/missing.txt", "--output", "{d}/new"],
    ["train-backbone", "--init-from", "{d}/code/bert", "--data", "{d}/data", "--output", "{d}/new"],
    ["train-backbone", "--output", "{d}/new", "--dropout", "1"],
    ["train-backbone", "--output", "{d}/new", "--lr", "-1"],
    ["train-backbone", "--output", "{d}/new", "--batch-size", "0"],
    ["train-backbone", "--output", "{d}/new", "--vocab-size", "0"],
    ["train-backbone", "--output", "{d}/new", "--max-minutes", "0"],
]


@pytest.mark.parametrize("argv", CODD_ERROR_CASES, ids=lambda a: " ".join(a).replace("{d}/", "") or "no-args")
def test_every_user_error_is_one_line_and_exit_2(workdir, capsys, argv):
    before = snapshot(workdir)
    capsys.readouterr()
    try:
        status = main([a.format(d=workdir) for a in argv])
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert status == 2
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith("codd") and ": error: " in lines[0]
    assert "Traceback" not in err
    assert out == ""
    assert snapshot(workdir) == before  # no output written, no input changed, no marker from remote code


def test_remote_code_error_says_how_to_opt_in(workdir, capsys):
    assert main(["generate", str(workdir / "code" / "bert"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "--trust-remote-code" in err and "marker_tokenizer.py" in err
    assert not (workdir / "code" / "marker.txt").exists()


def test_entry_point_prints_one_line_without_traceback(workdir):
    """The real process: a bad numeric argument, one line on stderr and exit 2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    res = subprocess.run([sys.executable, "-m", "diffusion.cli", "train-prior", str(workdir / "bert"), "--top-k", "-1"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr


def test_trust_remote_code_flag_reaches_the_loader(tmp_path, capsys):
    path, marker = directory_naming_code(tmp_path, "tokenizer_config.json")
    argv = ["generate", str(path), "--prompt", "the cat", "--gen-length", "2", "--block-length", "2"]
    assert main(argv) == 2 and not marker.exists()
    assert main([*argv, "--trust-remote-code"]) == 0
    assert marker.read_text() == "imported"  # the opted-in path imports the directory's tokenizer code
    assert "### the cat" in capsys.readouterr().out
