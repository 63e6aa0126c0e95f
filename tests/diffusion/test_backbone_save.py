"""Atomic directory saves: backbones and tokenizers; a failed save leaves the previous one loadable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from diffusion.backbones import build_backbone, load_backbone, save_backbone
from diffusion.tokenizers import build_char_tokenizer, load_tokenizer, train_bpe_tokenizer
from pcircuits.atomic import atomic_directory

TEXTS = ["the cat sat on the mat", "a dog ran", "numbers 12 + 30 = 42"]


def tiny_backbone(seed: int):
    torch.manual_seed(seed)
    tok = build_char_tokenizer(TEXTS)
    return build_backbone(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=32, max_length=64)


def weights(backbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_backbone_round_trip_keeps_foreign_files_and_drops_stale_weights(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "pytorch_model.bin").write_bytes(b"stale weights")
    backbone = tiny_backbone(0)
    save_backbone(backbone, out, extra={"steps": 3})
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "pytorch_model.bin").exists()
    loaded = load_backbone(out)
    for k, v in weights(backbone).items():
        assert torch.equal(v, loaded.model.state_dict()[k])
    assert json.loads((out / "codd_backbone.json").read_text())["steps"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary sibling left


def test_failed_backbone_save_leaves_previous_directory_loadable(tmp_path, monkeypatch):
    out = tmp_path / "m"
    first = tiny_backbone(0)
    save_backbone(first, out)
    before = snapshot(out)
    second = tiny_backbone(1)
    real = type(second.model).save_pretrained

    def half_then_fail(self, directory, *args, **kwargs):
        real(self, directory, *args, **kwargs)  # the weights are written, then the disk "fills up"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(second.model), "save_pretrained", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_backbone(second, out)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    loaded = load_backbone(out)
    for k, v in weights(first).items():
        assert torch.equal(v, loaded.model.state_dict()[k])


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizer_save_round_trip_is_atomic_per_file(tmp_path, kind):
    tok = (
        build_char_tokenizer(TEXTS)
        if kind == "char"
        else train_bpe_tokenizer(TEXTS * 20, vocab_size=300, min_frequency=1)
    )
    tok.save(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert again.vocab_size == tok.vocab_size
    assert again.encode("the cat 42") == tok.encode("the cat 42")
    assert not [p for p in (tmp_path / "t").iterdir() if p.name.startswith(".")]


def test_atomic_directory_swaps_only_on_success(tmp_path):
    target = tmp_path / "d"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    assert snapshot(target) == {"a": b"1"}
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("interrupted")
    assert snapshot(target) == {"a": b"1"}
    with atomic_directory(target, carry_over=lambda name: name != "b") as tmp:
        (tmp / "c").write_text("3")
    assert snapshot(target) == {"a": b"1", "c": b"3"}
    assert sorted(os.listdir(tmp_path)) == ["d"]
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"), atomic_directory(tmp_path / "f"):
        pass
