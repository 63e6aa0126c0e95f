"""Backbone wrappers and loading from local directories."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from diffusion.backbones import (
    DREAM_MASK_TOKEN_ID,
    LLADA_MASK_TOKEN_ID,
    DreamBackbone,
    LLaDABackbone,
    MaskedLMBackbone,
    load_backbone,
)
from tests.diffusion.fixtures import directory_naming_code, tiny_bert


class PositionModel(nn.Module):
    """Raw logits at output position j put all mass on token j (a fake remote-code model)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids):
        b, n = input_ids.shape
        out = torch.zeros(b, n, self.vocab_size)
        out[:, torch.arange(n), torch.arange(n)] = 10.0
        return out


def test_dream_logits_shift_right_by_one():
    raw = PositionModel(32)
    backbone = DreamBackbone(raw, mask_token_id=31, vocab_size=32)
    ids = torch.zeros(2, 6, dtype=torch.long)
    logits = backbone(ids)
    assert logits.shape == (2, 6, 32)
    # logits for position i come from output position i - 1
    assert logits.argmax(-1).tolist() == [[0, 0, 1, 2, 3, 4]] * 2
    plain = MaskedLMBackbone(raw, mask_token_id=31, vocab_size=32)
    assert plain(ids).argmax(-1).tolist() == [[0, 1, 2, 3, 4, 5]] * 2


def test_default_mask_ids():
    assert LLADA_MASK_TOKEN_ID == 126336 and DREAM_MASK_TOKEN_ID == 151666
    assert LLaDABackbone(PositionModel(4), vocab_size=126400).mask_token_id == 126336
    assert DreamBackbone(PositionModel(4), vocab_size=151700).mask_token_id == 151666
    with pytest.raises(ValueError, match="mask_token_id"):
        DreamBackbone(PositionModel(4), vocab_size=100)


def test_out_of_vocab_ids_rejected():
    backbone = MaskedLMBackbone(PositionModel(8), 7, 8)
    with pytest.raises(ValueError, match="input_ids"):
        backbone(torch.tensor([[1, 8]]))
    with pytest.raises(ValueError, match="input_ids"):
        backbone(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="input_ids"):
        backbone(torch.tensor([1.0, 2.0]))


def test_load_hf_masked_lm_directory(tmp_path):
    path, model = tiny_bert(tmp_path)
    backbone = load_backbone(path)
    assert isinstance(backbone, MaskedLMBackbone)
    assert backbone.mask_token_id == 4 and backbone.vocab_size == 12
    ids = torch.tensor([[2, 5, 4, 7, 3]])
    with torch.no_grad():
        assert torch.allclose(backbone(ids), model(input_ids=ids).logits, atol=1e-5)
    assert backbone.tokenizer is not None and backbone.tokenizer.mask_token_id == 4
    assert load_backbone(path, mask_token_id=6).mask_token_id == 6  # override


def test_hf_directory_without_mask_id(tmp_path):
    path, _ = tiny_bert(tmp_path, with_tokenizer=False)
    with pytest.raises(ValueError, match="mask_token_id"):
        load_backbone(path)
    assert load_backbone(path, mask_token_id=4).mask_token_id == 4


def test_missing_or_incomplete_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(tmp_path / "empty")
    path, _ = tiny_bert(tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="weights"):
        load_backbone(path)


_CONFIG_SRC = '''
from transformers import PretrainedConfig


class FakeConfig(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=40, hidden_size=8, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
'''

_MODEL_SRC = '''
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .{config_module} import FakeConfig


class FakeModel(PreTrainedModel):
    config_class = FakeConfig

    def __init__(self, config):
        super().__init__(config)
        self.emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return MaskedLMOutput(logits=self.head(self.emb(input_ids)))
'''


def _remote_code_dir(tmp_path: Path, name: str, model_type: str) -> tuple[Path, nn.Module]:
    """A LLaDA/Dream-like directory: custom code files + auto_map + weights."""
    pkg = tmp_path / f"pkg_{name}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / f"configuration_{name}.py").write_text(_CONFIG_SRC.format(model_type=model_type))
    (pkg / f"modeling_{name}.py").write_text(_MODEL_SRC.format(config_module=f"configuration_{name}"))
    sys.path.insert(0, str(tmp_path))
    try:
        mod = __import__(f"pkg_{name}.modeling_{name}", fromlist=["FakeModel"])
        cfg_mod = __import__(f"pkg_{name}.configuration_{name}", fromlist=["FakeConfig"])
        torch.manual_seed(0)
        model = mod.FakeModel(cfg_mod.FakeConfig()).eval()
    finally:
        sys.path.remove(str(tmp_path))
    out = tmp_path / name
    model.save_pretrained(out)
    for f in (f"configuration_{name}.py", f"modeling_{name}.py"):
        shutil.copy(pkg / f, out / f)
    cfg = json.loads((out / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": f"configuration_{name}.FakeConfig", "AutoModel": f"modeling_{name}.FakeModel"}
    (out / "config.json").write_text(json.dumps(cfg))
    return out, model


def test_load_dream_like_remote_code_directory(tmp_path):
    path, model = _remote_code_dir(tmp_path, "dream", "Dream")
    backbone = load_backbone(path, mask_token_id=39, trust_remote_code=True)
    assert isinstance(backbone, DreamBackbone)
    ids = torch.randint(0, 39, (2, 7))
    with torch.no_grad():
        raw = model(input_ids=ids).logits
        got = backbone(ids)
    assert torch.allclose(got[:, 1:], raw[:, :-1], atol=1e-6)
    assert torch.allclose(got[:, 0], raw[:, 0], atol=1e-6)


def test_load_llada_like_remote_code_directory(tmp_path):
    path, model = _remote_code_dir(tmp_path, "llada", "llada")
    backbone = load_backbone(path, mask_token_id=39, trust_remote_code=True)
    assert isinstance(backbone, LLaDABackbone)
    ids = torch.randint(0, 39, (2, 7))
    with torch.no_grad():
        assert torch.allclose(backbone(ids), model(input_ids=ids).logits, atol=1e-6)
    # the default mask id (126336) lies outside this tiny vocabulary
    with pytest.raises(ValueError, match="mask_token_id"):
        load_backbone(path, trust_remote_code=True)


def test_remote_code_directory_missing_code(tmp_path):
    path, _ = _remote_code_dir(tmp_path, "dream", "Dream")
    (path / "modeling_dream.py").unlink()
    with pytest.raises(FileNotFoundError, match="modeling_dream.py"):
        load_backbone(path, mask_token_id=39, trust_remote_code=True)


@pytest.mark.parametrize("name, model_type", [("dream", "Dream"), ("llada", "llada")])
def test_llada_dream_need_the_opt_in(tmp_path, name, model_type):
    path, _ = _remote_code_dir(tmp_path, name, model_type)
    with pytest.raises(ValueError, match="trust_remote_code=True") as e:
        load_backbone(path, mask_token_id=39)
    assert "--trust-remote-code" in str(e.value) and f"modeling_{name}.py" in str(e.value)
    with pytest.raises(TypeError, match="trust_remote_code"):
        load_backbone(path, mask_token_id=39, trust_remote_code="yes")


@pytest.mark.parametrize("where", ["tokenizer_config.json", "config.json"])
def test_no_code_from_the_directory_runs_without_the_opt_in(tmp_path, where):
    path, marker = directory_naming_code(tmp_path, where)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    with pytest.raises(ValueError, match="trust_remote_code") as e:
        load_backbone(path)
    assert where in str(e.value) and "--trust-remote-code" in str(e.value)
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_tokenizer_code_runs_with_the_opt_in(tmp_path):
    path, marker = directory_naming_code(tmp_path, "tokenizer_config.json")
    backbone = load_backbone(path, trust_remote_code=True)
    assert marker.read_text() == "imported"
    assert type(backbone.tokenizer).__name__ == "MarkerTokenizer"
    assert backbone.mask_token_id == 4


def test_unreadable_tokenizer_config_is_refused(tmp_path):
    path, _ = tiny_bert(tmp_path)
    (path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        load_backbone(path)


@pytest.mark.parametrize("file, content, match", [
    ("model.safetensors", b"", "weights"),
    ("model.safetensors", "half", "weights"),
    ("config.json", b"[1, 2]", "config.json"),
    ("codd_backbone.json", b"{}", "mask_token_id"),
    ("codd_tokenizer.json", b'{"type": "bpe", "file": "../../elsewhere.json"}', "inside"),
    ("tokenizer.json", b"{not a tokenizer", "tokenizer"),
])
def test_malformed_files_raise_value_error(tmp_path, file, content, match):
    from diffusion.backbones import build_backbone, save_backbone
    from diffusion.tokenizers import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["the cat sat on the mat", "a dog sat"] * 5, vocab_size=300, min_frequency=1)
    path = save_backbone(build_backbone(tok, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=16,
                                        max_length=16), tmp_path / "m")
    target = path / file
    assert target.is_file()
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2] if content == "half" else content)
    with pytest.raises(ValueError, match=match):
        load_backbone(path)
