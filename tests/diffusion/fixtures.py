"""Helpers shared by several diffusion and CoDD test modules (tiny models, CPU, seconds).

Test modules import shared helpers from here, never from one another;
``conftest.py`` builds its pytest fixtures from them.

- :data:`SHARED_DATA`: the shared data folder next to the repository.
- :class:`TableModel`, :func:`table_backbone`, :class:`RandomModel`: tiny
  masked-LM backbones with known logits.
- :func:`tiny_bert`, :func:`directory_naming_code`: saved Hugging Face
  masked-LM directories (plain, and with an ``auto_map`` naming code).
- :data:`W`, :data:`V`, :data:`H`, :func:`tiny_prior`, :func:`random_case`,
  :func:`brute_posterior`, :func:`total_variation`: a tiny CoDD prior and its
  brute-force reference over all completions of a window.
- :data:`STANDIN_SPECS`, :func:`diffusion_lm_standin`: LLaDA- and Dream-shaped
  remote-code directories (real vocabulary size, mask id and chat-template
  format; tiny random model).

Shapes: ``N`` positions, ``V`` vocabulary, ``B`` rows, ``W`` window.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from diffusion import CoDDPrior
from diffusion.backbones import MaskedLMBackbone

__all__ = [
    "run_codd",
    "SHARED_DATA",
    "TableModel",
    "RandomModel",
    "table_backbone",
    "tiny_bert",
    "directory_naming_code",
    "W",
    "V",
    "H",
    "tiny_prior",
    "random_case",
    "brute_posterior",
    "total_variation",
    "STANDIN_SPECS",
    "diffusion_lm_standin",
]

SHARED_DATA = Path(__file__).parents[2].parent / "shared" / "data"


# ------------------------------------------------------------------------------------------ backbones
class TableModel(nn.Module):
    """Logits that depend on the position only: ``table[N, V]`` broadcast over the batch."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        b, n = input_ids.shape
        return self.table[:n].unsqueeze(0).expand(b, -1, -1).clone()


class RandomModel(nn.Module):
    """A tiny bidirectional mixer: logits depend on all ids (so steps interact)."""

    def __init__(self, vocab_size: int, dim: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(vocab_size, dim, generator=g))
        self.pos = nn.Parameter(torch.randn(512, dim, generator=g))
        self.out = nn.Parameter(torch.randn(dim, vocab_size, generator=g))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb[input_ids] + self.pos[: input_ids.shape[1]]
        h = h + h.mean(dim=1, keepdim=True)
        return torch.tanh(h) @ self.out * 3.0


def table_backbone(table: torch.Tensor, mask_token_id: int) -> MaskedLMBackbone:
    """Wrap a position-only logit table ``[N, V]``."""
    return MaskedLMBackbone(TableModel(table), mask_token_id=mask_token_id, vocab_size=table.shape[1])


# ------------------------------------------------------------------------------ saved HF directories
def tiny_bert(tmp_path: Path, with_tokenizer: bool = True) -> tuple[Path, nn.Module]:
    """A one-layer BERT masked LM over 12 words saved to ``tmp_path / "bert"``; returns the path and the model.

    The tokenizer (mask id 4) is saved with it unless ``with_tokenizer`` is False.
    """
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a", "dog"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg).eval()
    out = tmp_path / "bert"
    model.save_pretrained(out)
    if with_tokenizer:
        BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(out)
    return out, model


_MARKER_TOKENIZER_SRC = """
from pathlib import Path

from transformers import BertTokenizer

Path({marker!r}).write_text("imported")


class MarkerTokenizer(BertTokenizer):
    pass
"""

_MARKER_MODEL_SRC = """
from pathlib import Path

Path({marker!r}).write_text("imported")
"""


def directory_naming_code(tmp_path: Path, where: str) -> tuple[Path, Path]:
    """A plain BERT masked-LM directory whose ``where`` JSON file has an ``auto_map`` naming a Python
    file that writes a marker file when it is imported; returns the directory and the marker's path."""
    path, _ = tiny_bert(tmp_path)
    marker = tmp_path / "marker.txt"
    if where == "tokenizer_config.json":
        (path / "marker_tokenizer.py").write_text(_MARKER_TOKENIZER_SRC.format(marker=str(marker)))
        auto_map = {"AutoTokenizer": ["marker_tokenizer.MarkerTokenizer", None]}
    else:
        (path / "marker_model.py").write_text(_MARKER_MODEL_SRC.format(marker=str(marker)))
        auto_map = {"AutoConfig": "marker_model.MarkerConfig", "AutoModelForMaskedLM": "marker_model.MarkerModel"}
    cfg = json.loads((path / where).read_text())
    cfg["auto_map"] = auto_map
    (path / where).write_text(json.dumps(cfg))
    return path, marker


# -------------------------------------------------------------------------------- a tiny CoDD prior
#: window, vocabulary and hidden states of the tiny prior
W, V, H = 3, 4, 3


def tiny_prior(window: int = W, vocab: int = V, states: int = H, seed: int = 1, top_k: int | None = None) -> CoDDPrior:
    """A random HMM prior in float64."""
    return CoDDPrior.hmm(window, states, vocab, seed=seed, top_k=top_k).to(torch.float64)


def random_case(seed: int, window: int = W, vocab: int = V, batch: int = 3):
    """Random ids ``x [B, W]``, logits ``[B, W, V]`` and a mask ``[B, W]`` (position 0 always masked)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, window, vocab, generator=g, dtype=torch.float64) * 2
    x = torch.randint(vocab, (batch, window), generator=g)
    masked = torch.rand(batch, window, generator=g) < 0.6
    masked[:, 0] = True
    return x, logits, masked


def brute_posterior(prior: CoDDPrior, x, logits, masked, tau: float = 1.0) -> dict[tuple[int, ...], float]:
    """p_hat over the completions of one row (``x [W]``, ``logits [W, V]``, ``masked [W]``), by enumeration."""
    w = torch.log_softmax(logits / tau, -1)
    pos = [i for i in range(len(x)) if masked[i]]
    keys, vals = [], []
    for vs in itertools.product(range(prior.vocab_size), repeat=len(pos)):
        xx = x.clone()
        for i, v in zip(pos, vs, strict=True):
            xx[i] = v
        keys.append(tuple(xx.tolist()))
        vals.append(prior.circuit(xx[None])[0] + sum(w[i, xx[i]] for i in pos))
    t = torch.stack(vals)
    p = (t - torch.logsumexp(t, 0)).exp()
    return dict(zip(keys, p.tolist(), strict=True))


def total_variation(samples: torch.Tensor, dist: dict) -> float:
    """Total variation distance between the empirical law of ``samples [S, W]`` and ``dist`` (row tuple -> p)."""
    n = len(samples)
    cnt = Counter(tuple(r) for r in samples.tolist())
    keys = set(cnt) | set(dist)
    return 0.5 * sum(abs(cnt.get(k, 0) / n - dist.get(k, 0.0)) for k in keys)


# ------------------------------------------------------------------- LLaDA- and Dream-shaped stand-ins
#: What a stand-in shares with the real checkpoint: vocabulary size, mask / EOS / PAD ids, ``model_type``,
#: ``architectures`` and the ``auto_map`` class names (``config.json`` of LLaDA-8B-Instruct and
#: Dream-v0-Instruct-7B). Widths and depths are tiny.
STANDIN_SPECS: dict[str, dict] = {
    "llada": {
        "model_type": "llada", "config_class": "LLaDAConfig", "model_class": "LLaDAModelLM",
        "module": "llada", "vocab_size": 126464, "mask_token_id": 126336, "eos_token_id": 126081,
        "pad_token_id": 126081, "mask_token": "<|mdm_mask|>", "eos_token": "<|endoftext|>",
        "chat_template": "<|startoftext|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
                         "\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
                         "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        "extra_tokens": ["<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    },
    "dream": {
        "model_type": "Dream", "config_class": "DreamConfig", "model_class": "DreamModel",
        "module": "dream", "vocab_size": 152064, "mask_token_id": 151666, "eos_token_id": 151643,
        "pad_token_id": 151643, "mask_token": "<|mask|>", "eos_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "extra_tokens": ["<|im_start|>", "<|im_end|>"],
    },
}

_STANDIN_CONFIG_SRC = '''
from transformers import PretrainedConfig


class {config_class}(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=64, hidden_size=16, mask_token_id=63, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)
'''

_STANDIN_MODEL_SRC = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_{module} import {config_class}


class {model_class}(PreTrainedModel):
    """Embedding, one bidirectional single-head attention layer over the visible keys, vocabulary head."""

    config_class = {config_class}

    def __init__(self, config):
        super().__init__(config)
        d = config.hidden_size
        self.emb = nn.Embedding(config.vocab_size, d)
        self.pos = nn.Embedding(512, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.head = nn.Linear(d, config.vocab_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        b, n = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(n, device=input_ids.device).expand(b, n)
        h = self.emb(input_ids) + self.pos(position_ids)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) / h.shape[-1] ** 0.5  # [B, N, N]
        if attention_mask is not None:
            keys = attention_mask.bool()
            keys = keys[:, None, :] if keys.dim() == 2 else keys[:, 0]  # 2-D (LLaDA) or [B, 1, N, N] (Dream)
            scores = scores.masked_fill(~keys, -1e9)
        return MaskedLMOutput(logits=self.head(h + torch.softmax(scores, -1) @ v))
'''


def _standin_tokenizer(spec: dict, texts: list[str]):
    """A WordPiece tokenizer over ``spec["vocab_size"]`` ids: words learnt from ``texts`` at the low ids,
    the special tokens at the real checkpoint's ids, unused fillers elsewhere; with the chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    learner = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    learner.normalizer = normalizers.BertNormalizer(lowercase=True)
    learner.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(),
                                                     pre_tokenizers.Digits(individual_digits=True)])
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]"], show_progress=False)
    learner.train_from_iterator([*texts, "user assistant"], trainer)
    specials = {spec["mask_token"]: spec["mask_token_id"], spec["eos_token"]: spec["eos_token_id"]}
    taken = set(specials.values())
    for i, tok in enumerate(spec["extra_tokens"]):
        specials[tok] = spec["mask_token_id"] + 1 + i
        taken.add(specials[tok])
    vocab = dict(learner.get_vocab())
    vocab.update(specials)
    used = set(vocab.values())
    for i in range(spec["vocab_size"]):
        if i not in used:
            vocab[f"[unused{i}]"] = i
    wp = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    wp.normalizer, wp.pre_tokenizer, wp.decoder = learner.normalizer, learner.pre_tokenizer, decoders.WordPiece()
    wp.add_special_tokens(list(specials))
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", mask_token=spec["mask_token"],
                                  eos_token=spec["eos_token"], pad_token=spec["eos_token"],
                                  additional_special_tokens=spec["extra_tokens"])
    tok.chat_template = spec["chat_template"]
    return tok


def diffusion_lm_standin(tmp_path: Path, kind: str, texts: list[str], hidden_size: int = 16,
                         seed: int = 0) -> Path:
    """A LLaDA- or Dream-shaped remote-code directory (``kind``: ``"llada"`` or ``"dream"``) in ``tmp_path / kind``.

    Same ``model_type``, ``architectures``, ``auto_map`` class names, vocabulary size and mask / EOS ids as the
    real checkpoint (`STANDIN_SPECS`), a tokenizer with a chat template in the checkpoint's format, and a tiny
    random model (width ``hidden_size``, one attention layer) whose code lives in the directory, so
    `diffusion.load_backbone` needs ``trust_remote_code=True``.
    """
    from transformers import AutoConfig, AutoModel

    spec = STANDIN_SPECS[kind]
    out = tmp_path / kind
    out.mkdir(parents=True)
    module = spec["module"]
    (out / f"configuration_{module}.py").write_text(_STANDIN_CONFIG_SRC.format(**spec))
    (out / f"modeling_{module}.py").write_text(_STANDIN_MODEL_SRC.format(**spec))
    config = {
        "model_type": spec["model_type"], "architectures": [spec["model_class"]],
        "auto_map": {"AutoConfig": f"configuration_{module}.{spec['config_class']}",
                     "AutoModel": f"modeling_{module}.{spec['model_class']}"},
        "vocab_size": spec["vocab_size"], "hidden_size": hidden_size, "mask_token_id": spec["mask_token_id"],
        "eos_token_id": spec["eos_token_id"], "pad_token_id": spec["pad_token_id"],
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(str(out), trust_remote_code=True, local_files_only=True)
    AutoModel.from_config(cfg, trust_remote_code=True).eval().save_pretrained(out)
    _standin_tokenizer(spec, texts).save_pretrained(out)
    return out


def run_codd(capsys, argv: list[str]) -> str:
    """``codd argv`` must succeed (exit status 0, stderr shown otherwise); returns its stdout."""
    from diffusion.cli import main

    capsys.readouterr()
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    return out
