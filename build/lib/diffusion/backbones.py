"""Denoising backbones: token ids in, per-position logits out.

Every backbone is a `Backbone` (a ``torch.nn.Module``) with a known
``mask_token_id`` and ``vocab_size``; calling it on ``LongTensor[B, N]`` ids
returns ``FloatTensor[B, N, V]`` logits where row ``i`` is the model's
distribution over the clean token at position ``i``.

Padding: ``backbone(ids, attention_mask)`` takes an optional
``BoolTensor[B, N]`` that is True on real tokens and False on the left
padding of shorter prompts (Hugging Face's ``attention_mask`` convention,
padding on the left only). Padded keys are invisible to every real token,
and position ids count from each row's first real token
(`position_ids_from_mask`), so a row's logits do not depend on how much
padding precedes it, up to floating-point rounding of reductions over a
different number of keys or rows (last-bit differences; see
``docs/diffusion/sampling.md``). Logits at padded positions are 0.
Hugging Face models receive ``attention_mask`` and ``position_ids``; a
module whose ``forward`` takes no ``attention_mask`` is called once per
group of rows with the same padding, with the padding cut off, which is
exact for any model.

Supported sources, all loaded from local directories only (no network):

* any Hugging Face masked LM (``AutoModelForMaskedLM``: BERT, RoBERTa,
  ModernBERT, ...) saved with ``save_pretrained``;
* LLaDA checkpoints (remote code, mask id 126336);
* Dream checkpoints (remote code, mask id 151666; Dream is adapted from an
  autoregressive model, so the logits for position ``i`` are read from output
  position ``i - 1``; `DreamBackbone` applies that shift);
* the project's own small bidirectional transformer, built from a
  ``transformers`` config by `build_backbone` and saved with its tokenizer
  by `save_backbone`.

`load_backbone` detects which one a directory holds.
"""

from __future__ import annotations

import json
import os
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pcircuits.atomic import atomic_directory, atomic_write

from .tokenizers import TOKENIZER_META_FILE, TextTokenizer, load_tokenizer
from .diffusion_gemma import DiffusionGemmaLM, is_diffusion_gemma_dir, load_diffusion_gemma

__all__ = [
    "Backbone",
    "MaskedLMBackbone",
    "LLaDABackbone",
    "DreamBackbone",
    "LLADA_MASK_TOKEN_ID",
    "DREAM_MASK_TOKEN_ID",
    "BACKBONE_META_FILE",
    "build_backbone",
    "save_backbone",
    "load_backbone",
    "check_token_ids",
    "check_attention_mask",
    "position_ids_from_mask",
]

LLADA_MASK_TOKEN_ID = 126336
"""Mask token id of LLaDA checkpoints."""
DREAM_MASK_TOKEN_ID = 151666
"""Mask token id of Dream checkpoints."""
BACKBONE_META_FILE = "codd_backbone.json"
"""Metadata file that marks a directory as one of the project's own backbones."""

_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """Validate a tensor of token ids.

    Args:
        input_ids: ``LongTensor[B, N]`` token ids.
        vocab_size: the vocabulary size ``V``.
        name: argument name used in the error message.

    Raises:
        ValueError: if the tensor is not an integer ``[B, N]`` tensor or holds
            ids outside ``[0, V)``.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"{name}: expected an integer (long) tensor")
    if input_ids.dim() != 2:
        raise ValueError(f"{name}: expected shape [B, N], got {tuple(input_ids.shape)}")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(
            f"{name}: token ids must lie in [0, {vocab_size}), got range "
            f"[{int(input_ids.min())}, {int(input_ids.max())}]"
        )


def check_attention_mask(
    attention_mask: torch.Tensor | None, shape: tuple[int, int], name: str = "attention_mask"
) -> torch.Tensor | None:
    """Validate a left-padding attention mask and return it as booleans.

    Args:
        attention_mask: ``None`` (no padding) or a ``[B, N]`` bool or 0/1
            integer tensor, True (1) on real tokens; in every row the False
            entries (left padding) precede all True ones and at least one
            entry is True.
        shape: the ids' shape ``(B, N)``.
        name: argument name used in the error message.

    Returns:
        ``BoolTensor[B, N]`` (or None).

    Raises:
        ValueError: wrong type, shape or values, padding that is not on the
            left, or a row without any real token.
    """
    if attention_mask is None:
        return None
    if (
        not isinstance(attention_mask, torch.Tensor)
        or attention_mask.is_floating_point()
        or attention_mask.is_complex()
    ):
        raise ValueError(f"{name}: expected a bool or 0/1 integer tensor of shape {tuple(shape)}")
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool:
        if attention_mask.numel() and bool(((attention_mask != 0) & (attention_mask != 1)).any()):
            raise ValueError(f"{name}: integer masks must hold only 0 and 1")
        attention_mask = attention_mask != 0
    if attention_mask.numel() == 0:
        return attention_mask
    if not bool(attention_mask.any(1).all()):
        row = int((~attention_mask.any(1)).nonzero()[0, 0])
        raise ValueError(f"{name}: row {row} has no real token (all False)")
    if bool((attention_mask[:, :-1] & ~attention_mask[:, 1:]).any()):
        row = int((attention_mask[:, :-1] & ~attention_mask[:, 1:]).any(1).nonzero()[0, 0])
        raise ValueError(f"{name}: row {row} is not left-padded (a False entry follows a True one)")
    return attention_mask


def position_ids_from_mask(attention_mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids that count from each row's first real token.

    Args:
        attention_mask: ``BoolTensor[B, N]`` (True on real tokens, left padding False).
        offset: id of the first real token's position (RoBERTa-style
            embeddings start after their padding index).

    Returns:
        ``LongTensor[B, N]``: ``offset, offset + 1, ...`` from the first real
        token of each row; padded positions get ``offset``.
    """
    return (attention_mask.long().cumsum(1) - 1).clamp_min(0) + offset


def _accepts(fn: Any, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values())


def _position_offset(model: nn.Module) -> int:
    """First position id of a real token: ``padding_idx + 1`` for RoBERTa-style position embeddings, else 0."""
    for name, mod in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(mod, nn.Embedding) and mod.padding_idx is not None:
            return int(mod.padding_idx) + 1
    return 0


class Backbone(nn.Module):
    """Base class of denoising backbones.

    Subclasses implement `logits`; `forward` validates the ids.

    Attributes:
        mask_token_id: id of the mask (absorbing) token.
        vocab_size: size ``V`` of the logit dimension.
        tokenizer: the tokenizer saved with the model (a `TextTokenizer`
            or a Hugging Face tokenizer), or None when the directory had none.
    """

    def __init__(self, mask_token_id: int, vocab_size: int, tokenizer: Any = None):
        super().__init__()
        if not 0 <= int(mask_token_id) < int(vocab_size):
            raise ValueError(f"mask_token_id: {mask_token_id} outside the vocabulary [0, {vocab_size})")
        self.mask_token_id = int(mask_token_id)
        self.vocab_size = int(vocab_size)
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        """Device of the parameters (CPU when there are none)."""
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compute logits without validation.

        Args:
            input_ids: ``LongTensor[B, N]``.
            attention_mask: optional validated ``BoolTensor[B, N]`` (True on
                real tokens, left padding False); padded keys must stay
                invisible to real tokens.

        Returns:
            ``FloatTensor[B, N, V]``.
        """
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-position logits of the clean tokens.

        Args:
            input_ids: ``LongTensor[B, N]`` partially masked token ids.
            attention_mask: optional ``[B, N]`` bool or 0/1 tensor, True on
                real tokens and False on left padding (see `check_attention_mask`).

        Returns:
            ``FloatTensor[B, N, V]`` logits (0 at padded positions).

        Raises:
            ValueError: if ids fall outside ``[0, V)`` or the mask is malformed.
        """
        check_token_ids(input_ids, self.vocab_size)
        mask = check_attention_mask(attention_mask, tuple(input_ids.shape))
        if mask is not None:
            mask = mask.to(input_ids.device)
        out = self.logits(input_ids) if mask is None else self.logits(input_ids, mask)
        if mask is not None and not bool(mask.all()):
            out = out.masked_fill(~mask.unsqueeze(-1), 0.0)
        return out


class MaskedLMBackbone(Backbone):
    """Wraps a Hugging Face masked LM (or any module returning ``.logits``).

    Args:
        model: a module called as ``model(input_ids=ids)`` returning an object
            with a ``logits`` attribute (or a tensor) of shape ``[B, N, V']``.
        mask_token_id: mask id.
        vocab_size: ``V`` (defaults to ``model.config.vocab_size``); logits are
            cut to the first ``V`` entries.
        tokenizer: optional tokenizer to keep with the model.
    """

    def __init__(self, model: nn.Module, mask_token_id: int, vocab_size: int | None = None, tokenizer: Any = None):
        if vocab_size is None:
            vocab_size = int(model.config.vocab_size)
        super().__init__(mask_token_id, vocab_size, tokenizer)
        self.model = model

    def _call(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``model(input_ids=ids, **kwargs)`` logits cut to ``V``: ``FloatTensor[B, N, V]``."""
        out = self.model(input_ids=input_ids, **kwargs)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        return logits[..., : self.vocab_size]

    def _masked_kwargs(self, attention_mask: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments that make left padding invisible: the 0/1 ``attention_mask``
        (padded keys hidden) and ``position_ids`` from each row's first real token."""
        kwargs: dict[str, Any] = {"attention_mask": attention_mask.long()}
        if _accepts(self.model.forward, "position_ids"):
            kwargs["position_ids"] = position_ids_from_mask(attention_mask, _position_offset(self.model))
        return kwargs

    def _unpadded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of a model without a mask argument: one call per padding length, padding cut off.

        Returns:
            ``FloatTensor[B, N, V]`` (0 at padded positions).
        """
        if input_ids.shape[0] == 0:
            return self._call(input_ids)
        start = (~attention_mask).sum(1)  # [B] first real column per row
        out: torch.Tensor | None = None
        for s in start.unique().tolist():
            rows = (start == s).nonzero(as_tuple=True)[0]
            part = self._call(input_ids[rows, s:])
            if out is None:
                out = part.new_zeros(*input_ids.shape, part.shape[-1])
            out[rows, s:] = part
        assert out is not None
        return out

    def _raw_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            return self._call(input_ids)
        if _accepts(self.model.forward, "attention_mask"):
            return self._call(input_ids, **self._masked_kwargs(attention_mask))
        return self._unpadded(input_ids, attention_mask)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._raw_logits(input_ids, attention_mask)


class LLaDABackbone(MaskedLMBackbone):
    """LLaDA checkpoint (bidirectional; logits aligned with positions).

    With padding, LLaDA receives the 2-D 0/1 ``attention_mask`` (its remote
    code turns it into a key bias that hides padded keys); it takes no
    position ids, and its rotary positions make attention depend on relative
    offsets only, so left padding changes logits only by rounding.

    Args:
        model: the LLaDA module (remote code).
        mask_token_id: defaults to `LLADA_MASK_TOKEN_ID`.
        vocab_size: defaults to ``model.config.vocab_size``.
        tokenizer: optional tokenizer.
    """

    def __init__(
        self,
        model: nn.Module,
        mask_token_id: int = LLADA_MASK_TOKEN_ID,
        vocab_size: int | None = None,
        tokenizer: Any = None,
    ):
        super().__init__(model, mask_token_id, vocab_size, tokenizer)

    def _masked_kwargs(self, attention_mask: torch.Tensor) -> dict[str, Any]:
        return {"attention_mask": attention_mask.long()}


class DreamBackbone(MaskedLMBackbone):
    """Dream checkpoint: logits shifted one position to the right.

    Dream keeps the next-token head of its autoregressive initialisation, so
    the prediction for position ``i`` sits at output position ``i - 1``. This
    wrapper returns ``logits[:, i] = raw[:, i - 1]`` for ``i >= 1`` and
    ``logits[:, 0] = raw[:, 0]`` (position 0 is always a prompt token).

    With padding, Dream is called as in its own generation code: a
    ``[B, 1, N, N]`` boolean mask (query and key both real) and position ids
    from each row's first real token (padded positions get 1).

    Args:
        model: the Dream module (remote code).
        mask_token_id: defaults to `DREAM_MASK_TOKEN_ID`.
        vocab_size: defaults to ``model.config.vocab_size``.
        tokenizer: optional tokenizer.
    """

    def __init__(
        self,
        model: nn.Module,
        mask_token_id: int = DREAM_MASK_TOKEN_ID,
        vocab_size: int | None = None,
        tokenizer: Any = None,
    ):
        super().__init__(model, mask_token_id, vocab_size, tokenizer)

    def _masked_kwargs(self, attention_mask: torch.Tensor) -> dict[str, Any]:
        position_ids = position_ids_from_mask(attention_mask).masked_fill(~attention_mask, 1)
        pair = attention_mask[:, None, None, :] & attention_mask[:, None, :, None]  # [B, 1, N, N]
        return {"attention_mask": pair, "position_ids": position_ids}

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        raw = self._raw_logits(input_ids, attention_mask)
        return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)


def build_backbone(
    tokenizer: TextTokenizer,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_length: int = 512,
    config: Any = None,
    dropout: float = 0.0,
) -> MaskedLMBackbone:
    """Build the project's own small bidirectional transformer.

    By default a ModernBERT-style encoder (pre-norm, rotary positions, GLU MLP,
    global attention in every layer, no dropout by default) from a
    ``transformers.ModernBertConfig``; pass ``config`` to use any other masked-LM
    config (e.g. ``BertConfig``) instead.

    Args:
        tokenizer: the tokenizer (fixes ``vocab_size`` and the special ids).
        hidden_size: model width ``d``.
        num_layers: number of transformer layers.
        num_heads: attention heads.
        intermediate_size: MLP width.
        max_length: maximal sequence length.
        dropout: dropout rate of the embeddings, attention and MLP (active in
            training mode only).
        config: optional ready-made ``transformers`` config (its ``vocab_size``
            must equal ``tokenizer.vocab_size``).

    Returns:
        A randomly initialised `MaskedLMBackbone` with ``tokenizer`` attached.
    """
    from transformers import AutoModelForMaskedLM, ModernBertConfig

    if config is None:
        config = ModernBertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_length,
            global_attn_every_n_layers=1,
            pad_token_id=tokenizer.pad_id,
            bos_token_id=tokenizer.bos_id,
            eos_token_id=tokenizer.eos_id,
            cls_token_id=tokenizer.bos_id,
            sep_token_id=tokenizer.sep_id,
            mask_token_id=tokenizer.mask_id,
            embedding_dropout=dropout,
            attention_dropout=dropout,
            mlp_dropout=dropout,
            tie_word_embeddings=True,
        )
    elif config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"config: vocab_size {config.vocab_size} != tokenizer vocab_size {tokenizer.vocab_size}")
    model = AutoModelForMaskedLM.from_config(config)
    return MaskedLMBackbone(model, tokenizer.mask_id, tokenizer.vocab_size, tokenizer)


def save_backbone(backbone: MaskedLMBackbone, directory: str | Path, extra: dict | None = None) -> Path:
    """Save one of the project's backbones with its tokenizer.

    Writes ``config.json`` + ``model.safetensors`` (``save_pretrained``), the
    tokenizer files and ``codd_backbone.json``. The save is atomic as a
    whole: everything is written into a temporary sibling directory that then
    replaces ``directory`` (`pcircuits.atomic.atomic_directory`), so a failed
    save leaves a previous backbone loadable. Other files already in
    ``directory`` (logs, notes) are kept; stale weight files are not.

    Args:
        backbone: a `MaskedLMBackbone` with a `TextTokenizer`.
        directory: target directory (created).
        extra: additional metadata (e.g. training statistics) stored in
            ``codd_backbone.json``.

    Returns:
        The directory path.
    """
    if not isinstance(backbone, MaskedLMBackbone) or not hasattr(backbone.model, "save_pretrained"):
        raise ValueError("backbone: expected a MaskedLMBackbone around a transformers model")
    directory = Path(directory)
    meta = {"format": "codd-backbone", "mask_token_id": backbone.mask_token_id, "vocab_size": backbone.vocab_size}
    meta.update(extra or {})
    text = json.dumps(meta, indent=2)
    with atomic_directory(directory, carry_over=_not_weights) as tmp:
        backbone.model.save_pretrained(tmp)
        if isinstance(backbone.tokenizer, TextTokenizer):
            backbone.tokenizer.save(tmp)
        with atomic_write(tmp / BACKBONE_META_FILE, "w") as f:
            f.write(text)
    return directory


def _not_weights(name: str) -> bool:
    """Whether an existing file may be kept beside newly saved weights (weights and shards are not)."""
    return not (name.startswith(("model", "pytorch_model")) and name.endswith((".safetensors", ".bin", ".index.json")))


def _check_directory(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"backbone directory does not exist: {path}")
    if not path.is_dir():
        raise FileNotFoundError(f"backbone path is not a directory: {path}")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"incomplete backbone directory {path}: missing config.json")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileNotFoundError(f"incomplete backbone directory {path}: unreadable config.json") from e
    if not isinstance(config, dict):
        raise ValueError(f"path: {cfg_path} holds {type(config).__name__}, expected a JSON object")
    has_weights = any((path / f).is_file() for f in _WEIGHT_FILES) or any(path.glob("*.safetensors"))
    if not has_weights:
        raise FileNotFoundError(
            f"incomplete backbone directory {path}: no weights (expected one of {', '.join(_WEIGHT_FILES)})"
        )
    return config


def _kind_of(config: dict) -> str:
    model_type = str(config.get("model_type", "")).lower()
    archs = " ".join(config.get("architectures", []) or []).lower()
    if model_type == "llada" or "llada" in archs:
        return "llada"
    if model_type == "dream" or "dream" in archs:
        return "dream"
    return "mlm"


def _auto_map_refs(path: Path, filename: str) -> list[str]:
    """The code references (``module.Class``) named by the ``auto_map`` of one JSON file of a directory.

    Args:
        path: the model directory.
        filename: ``config.json`` or ``tokenizer_config.json``.

    Returns:
        The non-empty references, in file order; ``[]`` when the file or its
        ``auto_map`` is absent.

    Raises:
        ValueError: the file exists but is not a JSON object.
    """
    file = path / filename
    if not file.is_file():
        return []
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"path: {file} is not readable JSON ({e})") from None
    if not isinstance(content, dict):
        raise ValueError(f"path: {file} holds {type(content).__name__}, expected a JSON object")
    auto_map = content.get("auto_map") or {}
    entries = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    refs: list[str] = []
    for entry in entries:
        for ref in entry if isinstance(entry, (list, tuple)) else [entry]:
            if ref:
                refs.append(str(ref))
    return refs


def _check_remote_code(path: Path, trust_remote_code: bool) -> None:
    """Refuses a directory whose configs name custom code unless the caller opted in.

    Reads ``config.json`` and ``tokenizer_config.json`` as plain JSON (nothing
    is imported) and raises when either has an ``auto_map``: loading such a
    directory through ``transformers`` imports Python files named there.

    Raises:
        ValueError: an ``auto_map`` names code and ``trust_remote_code`` is False.
    """
    if trust_remote_code:
        return
    for filename in ("config.json", "tokenizer_config.json"):
        refs = _auto_map_refs(path, filename)
        if refs:
            modules = sorted({ref.rsplit(".", 1)[0] + ".py" for ref in refs})
            raise ValueError(
                f"trust_remote_code: {path / filename} names custom code in its auto_map ({', '.join(modules)}); "
                "loading it would run that code. If you trust this directory, pass trust_remote_code=True "
                "(command line: --trust-remote-code)"
            )


def _from_pretrained(auto_class: Any, path: Path, **kwargs: Any) -> nn.Module:
    """``auto_class.from_pretrained(path, **kwargs)``, with malformed weight files reported as ``ValueError``.

    A truncated or corrupt ``model.safetensors`` (``SafetensorError``), an
    unreadable ``pytorch_model.bin`` (``torch.load`` errors) or weights whose
    shapes disagree with ``config.json`` become one ``ValueError`` naming the
    directory; missing files stay ``OSError``.
    """
    import pickle

    from safetensors import SafetensorError

    try:
        return auto_class.from_pretrained(str(path), **kwargs)
    except (SafetensorError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        detail = " ".join(str(e).split())[:300]
        raise ValueError(f"path: cannot load the weights in {path} ({type(e).__name__}: {detail})") from e


def _load_hf_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")
    if not any((path / n).is_file() for n in names):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - a model without a usable tokenizer is still usable with ids
        return None


def load_backbone(
    path: str | Path,
    mask_token_id: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> Backbone | DiffusionGemmaLM:
    """Load a backbone from a local directory, detecting its kind.

    Detection: ``codd_backbone.json`` marks the project's own model; a
    ``config.json`` of transformers' DiffusionGemma gives a
    `diffusion.diffusion_gemma.DiffusionGemmaLM` (uniform-noise block
    diffusion with its own generation loop, not a masked-LM `Backbone`);
    ``model_type``/``architectures`` in ``config.json`` naming LLaDA or Dream
    select `LLaDABackbone` / `DreamBackbone` (their model code comes from
    the directory, so they need ``trust_remote_code=True``); anything else is
    loaded with ``AutoModelForMaskedLM``. Nothing is downloaded
    (``local_files_only=True`` everywhere).

    No code from the directory runs unless ``trust_remote_code=True``: before
    ``transformers`` is called, ``config.json`` and ``tokenizer_config.json``
    are read as plain JSON, and an ``auto_map`` in either (which names Python
    files that ``transformers`` would import) raises ``ValueError``.

    Args:
        path: the model directory.
        mask_token_id: overrides (or supplies, when neither the config nor the
            tokenizer names one) the mask token id.
        device: device to place the model on.
        dtype: optional parameter dtype (e.g. ``torch.bfloat16``).
        trust_remote_code: allow ``transformers`` to import the Python files
            that the directory's ``auto_map`` names (needed for LLaDA and
            Dream). Only for directories you trust: that code runs with your
            permissions.

    Returns:
        The `Backbone` (or `DiffusionGemmaLM`), in eval mode.

    Raises:
        FileNotFoundError: if the directory is missing or incomplete (no
            ``config.json``, no weights, missing remote-code files).
        ValueError: if no mask token id can be determined, or the directory
            names custom code (an ``auto_map``) and ``trust_remote_code`` is False.
    """
    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code: expected a bool, got {type(trust_remote_code).__name__}")
    path = Path(path)
    config = _check_directory(path)
    _check_remote_code(path, trust_remote_code)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if is_diffusion_gemma_dir(path):
        return load_diffusion_gemma(path, device=device, dtype=dtype)
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if (path / BACKBONE_META_FILE).is_file():
        backbone = _load_project_backbone(path, mask_token_id, kwargs)
    else:
        kind = _kind_of(config)
        tokenizer = _load_hf_tokenizer(path, trust_remote_code)
        if kind in ("llada", "dream"):
            backbone = _load_remote_code_backbone(path, kind, config, tokenizer, mask_token_id, kwargs)
        else:
            backbone = _load_masked_lm(path, config, tokenizer, mask_token_id, kwargs)
    return backbone.to(device).eval()


def _load_project_backbone(path: Path, mask_token_id: int | None, kwargs: dict[str, Any]) -> Backbone:
    """The project's own model (``codd_backbone.json``), with its tokenizer when it has one."""
    from transformers import AutoModelForMaskedLM

    meta = json.loads((path / BACKBONE_META_FILE).read_text())
    if not isinstance(meta, dict) or (mask_token_id is None and not isinstance(meta.get("mask_token_id"), int)):
        raise ValueError(f"path: {path / BACKBONE_META_FILE} must be a JSON object with an integer mask_token_id")
    tokenizer = load_tokenizer(path) if (path / TOKENIZER_META_FILE).is_file() else None
    model = _from_pretrained(AutoModelForMaskedLM, path, **kwargs)
    mid = mask_token_id if mask_token_id is not None else meta["mask_token_id"]
    return MaskedLMBackbone(model, mid, meta.get("vocab_size"), tokenizer)


def _load_remote_code_backbone(
    path: Path, kind: str, config: dict, tokenizer: Any, mask_token_id: int | None, kwargs: dict[str, Any]
) -> Backbone:
    """A LLaDA or Dream directory (``kind``), whose model code the ``auto_map`` of ``config`` names."""
    from transformers import AutoModel

    auto_map = config.get("auto_map", {})
    if not auto_map:
        raise FileNotFoundError(f"incomplete {kind} directory {path}: config.json has no auto_map for remote code")
    for ref in auto_map.values():
        ref = ref[0] if isinstance(ref, (list, tuple)) else ref
        if ref and "--" not in ref:
            module_file = path / (ref.rsplit(".", 1)[0] + ".py")
            if not module_file.is_file():
                raise FileNotFoundError(f"incomplete {kind} directory {path}: missing {module_file.name}")
    model = _from_pretrained(AutoModel, path, **kwargs)
    cls = LLaDABackbone if kind == "llada" else DreamBackbone
    default = LLADA_MASK_TOKEN_ID if kind == "llada" else DREAM_MASK_TOKEN_ID
    return cls(model, mask_token_id if mask_token_id is not None else default, None, tokenizer)


def _load_masked_lm(
    path: Path, config: dict, tokenizer: Any, mask_token_id: int | None, kwargs: dict[str, Any]
) -> Backbone:
    """Any other ``AutoModelForMaskedLM`` directory.

    The mask id comes from the argument, the tokenizer or ``config``.
    """
    from transformers import AutoModelForMaskedLM

    model = _from_pretrained(AutoModelForMaskedLM, path, **kwargs)
    mid = mask_token_id
    if mid is None and tokenizer is not None:
        mid = getattr(tokenizer, "mask_token_id", None)
    if mid is None:
        mid = config.get("mask_token_id")
    if mid is None:
        raise ValueError(
            f"mask_token_id: {path} names no mask token (no tokenizer with a mask token, "
            "no mask_token_id in config.json); pass mask_token_id"
        )
    return MaskedLMBackbone(model, mid, None, tokenizer)
