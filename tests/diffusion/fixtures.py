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
