"""Text tokenizers for the project's own masked diffusion backbones.

Two tokenizers share one small interface (`TextTokenizer`):

* `CharTokenizer`: one token per character, vocabulary taken from a corpus.
* `BPETokenizer`: a byte-level BPE trained locally with the `tokenizers`
  library; digits are always split into single-digit tokens so that arithmetic
  stays visible to the model.

Both reserve the same special tokens at ids 0..5 (``[PAD]``, ``[MASK]``,
``[BOS]``, ``[SEP]``, ``[EOS]``, ``[UNK]``) and save themselves into a model
directory next to the weights (`load_tokenizer` reads them back).

A Hugging Face tokenizer (the one saved with a masked LM, LLaDA or Dream)
is seen through the same interface by `HFTokenizer` (`as_text_tokenizer`
wraps any tokenizer that is not already a `TextTokenizer`), so question-answer
encoding, training of priors and evaluation work with either. Its prompts
come from the tokenizer's chat template when it has one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pcircuits.atomic import atomic_write

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "TextTokenizer",
    "CharTokenizer",
    "BPETokenizer",
    "train_bpe_tokenizer",
    "build_char_tokenizer",
    "load_tokenizer",
    "TOKENIZER_META_FILE",
    "HFTokenizer",
    "as_text_tokenizer",
]

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[MASK]", "[BOS]", "[SEP]", "[EOS]", "[UNK]")
"""Special tokens, in id order (``[PAD]`` = 0 ... ``[UNK]`` = 5)."""

TOKENIZER_META_FILE = "codd_tokenizer.json"
"""File name of the small JSON that records which tokenizer a directory holds."""


class TextTokenizer:
    """Common interface of the project's tokenizers.

    Attributes:
        pad_id: id of ``[PAD]`` (left padding of prompts).
        mask_id: id of ``[MASK]`` (the absorbing state of the diffusion).
        bos_id: id of ``[BOS]`` (start of a sequence).
        sep_id: id of ``[SEP]`` (end of a prompt / question).
        eos_id: id of ``[EOS]`` (end of an answer; also pads answers on the right).
        unk_id: id of ``[UNK]``.
    """

    pad_id = 0
    mask_id = 1
    bos_id = 2
    sep_id = 3
    eos_id = 4
    unk_id = 5

    kind: str = "base"

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Encode text into token ids (no special tokens added).

        Args:
            text: the string to encode.

        Returns:
            A list of token ids.
        """
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Decode token ids back into text.

        Args:
            ids: token ids.
            skip_special_tokens: drop ``[PAD]``, ``[MASK]``, ``[BOS]`` ... from the output.

        Returns:
            The decoded string.
        """
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer into ``directory`` (created if needed).

        Args:
            directory: target directory, usually the model directory.
        """
        raise NotImplementedError

    @property
    def special_ids(self) -> set[int]:
        """Ids of all special tokens."""
        return set(range(len(SPECIAL_TOKENS)))

    def prompt_ids(self, question: str) -> list[int]:
        """The prompt of a question: ``[BOS] question [SEP]``.

        Args:
            question: the question text.

        Returns:
            Its token ids.
        """
        return [self.bos_id, *self.encode(question), self.sep_id]


class CharTokenizer(TextTokenizer):
    """Character-level tokenizer.

    Args:
        chars: the ordinary characters of the vocabulary, in id order (ids start
            after the special tokens). Unknown characters map to ``[UNK]``.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        chars = list(dict.fromkeys(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("chars: every entry must be a single character")
        self.chars = chars
        offset = len(SPECIAL_TOKENS)
        self._to_id = {c: i + offset for i, c in enumerate(chars)}
        self._to_char = {i + offset: c for i, c in enumerate(chars)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self._to_id.get(c, self.unk_id) for c in text]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i in self._to_char:
                out.append(self._to_char[i])
            elif not skip_special_tokens and 0 <= i < len(SPECIAL_TOKENS):
                out.append(SPECIAL_TOKENS[i])
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        """Writes ``char_vocab.json`` and the tokenizer metadata into ``directory`` (each file atomically)."""
        _write_files(directory, {"char_vocab.json": json.dumps({"chars": self.chars}, ensure_ascii=False)}, "char")


class BPETokenizer(TextTokenizer):
    """Byte-level BPE tokenizer backed by a `tokenizers.Tokenizer`.

    Args:
        tokenizer: a trained `tokenizers.Tokenizer` whose first six ids are
            `SPECIAL_TOKENS`.
    """

    kind = "bpe"

    def __init__(self, tokenizer: Tokenizer):
        for i, tok in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(tok) != i:
                raise ValueError(f"tokenizer: special token {tok} must have id {i}")
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if not skip_special_tokens:
            return self.tokenizer.decode(ids, skip_special_tokens=False)
        return self.tokenizer.decode([i for i in ids if i >= len(SPECIAL_TOKENS)], skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        """Writes ``tokenizer.json`` and the tokenizer metadata into ``directory`` (each file atomically)."""
        _write_files(directory, {"tokenizer.json": self.tokenizer.to_str(pretty=True)}, "bpe")


def _write_files(directory: str | Path, files: dict[str, str], kind: str) -> None:
    """Writes the tokenizer's ``files`` (name -> text), then the metadata naming them.

    Each file replaces its predecessor atomically; the metadata comes last,
    so an interrupted save leaves the previous tokenizer's files consistent.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        with atomic_write(directory / name, "w") as f:
            f.write(text)
    with atomic_write(directory / TOKENIZER_META_FILE, "w") as f:
        f.write(json.dumps({"type": kind, "file": next(iter(files))}))


def build_char_tokenizer(texts: Iterable[str]) -> CharTokenizer:
    """Build a character tokenizer from the characters seen in ``texts``.

    Args:
        texts: training texts.

    Returns:
        A `CharTokenizer` over the sorted set of characters.
    """
    chars: set[str] = set()
    for t in texts:
        chars.update(t)
    return CharTokenizer(sorted(chars))


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> BPETokenizer:
    """Train a small byte-level BPE tokenizer locally.

    Digits are pre-split into single digits, so numbers are spelled digit by
    digit (this keeps calculator annotations such as ``<<48/2=24>>`` learnable).

    Args:
        texts: training texts.
        vocab_size: target vocabulary size, special tokens and the 256 byte
            symbols included (must exceed 262).
        min_frequency: minimal pair frequency for a merge.

    Returns:
        The trained `BPETokenizer`.

    Raises:
        ValueError: if ``vocab_size`` is too small.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size: must exceed {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return BPETokenizer(tok)


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """Load a tokenizer saved by `TextTokenizer.save`.

    Args:
        directory: the directory holding ``codd_tokenizer.json``.

    Returns:
        The `CharTokenizer` or `BPETokenizer` found there.

    Raises:
        FileNotFoundError: if the directory or its tokenizer files are missing.
        ValueError: if the metadata names an unknown tokenizer type or a
            tokenizer file outside the directory, or a file is malformed.
    """
    directory = Path(directory)
    meta_path = directory / TOKENIZER_META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no tokenizer in {directory}: missing {TOKENIZER_META_FILE}")
    meta = json.loads(meta_path.read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    name = meta.get("file", "")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"{meta_path}: 'file' must name a file inside {directory}, got {name!r}")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} is missing")
    if meta.get("type") == "char":
        chars = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(chars, dict) or not isinstance(chars.get("chars"), list):
            raise ValueError(f"{path}: expected a JSON object with a 'chars' list")
        return CharTokenizer(chars["chars"])
    if meta.get("type") == "bpe":
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception on bad files
            raise ValueError(f"{path}: not a readable BPE tokenizer file ({' '.join(str(e).split())[:200]})") from e
        return BPETokenizer(tok)
    raise ValueError(f"unknown tokenizer type {meta.get('type')!r} in {meta_path}")


class HFTokenizer(TextTokenizer):
    """A Hugging Face tokenizer seen through the `TextTokenizer` interface.

    Prompts (`prompt_ids`) use the tokenizer's chat template when it has one
    (one user message, ``add_generation_prompt=True``), else its own special
    tokens around the question (for BERT: ``[CLS] question [SEP]``). The ids:

    * ``eos_id``: ``eos_token_id``, else ``sep_token_id`` (a BERT-style
      tokenizer ends answers with ``[SEP]``);
    * ``pad_id``: ``pad_token_id``, else ``eos_id``;
    * ``bos_id``: ``bos_token_id``, else ``cls_token_id`` (None when neither);
    * ``sep_id``: ``sep_token_id``, else ``eos_id``;
    * ``mask_id``: ``mask_token_id`` (None when there is none; the backbone's
      mask id is what generation uses).

    Args:
        tokenizer: a ``transformers`` tokenizer (``PreTrainedTokenizerBase``).

    Raises:
        ValueError: the tokenizer has neither an EOS nor a SEP token (answers
            could not be terminated).
    """

    kind = "hf"

    def __init__(self, tokenizer: object):
        for name in ("encode", "decode", "convert_tokens_to_ids"):
            if not callable(getattr(tokenizer, name, None)):
                raise TypeError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        eos = _first_id(tokenizer, "eos_token_id", "sep_token_id")
        if eos is None:
            raise ValueError("tokenizer: it has neither an EOS nor a SEP token to end answers with")
        self.eos_id = eos
        self.pad_id = _first_id(tokenizer, "pad_token_id", "eos_token_id", "sep_token_id")
        self.bos_id = _first_id(tokenizer, "bos_token_id", "cls_token_id")
        self.sep_id = _first_id(tokenizer, "sep_token_id", "eos_token_id")
        self.mask_id = getattr(tokenizer, "mask_token_id", None)
        self.unk_id = getattr(tokenizer, "unk_token_id", None)

    @property
    def has_chat_template(self) -> bool:
        """Whether prompts are built with the tokenizer's chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def special_ids(self) -> set[int]:
        return {int(i) for i in getattr(self.tokenizer, "all_special_ids", [])}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def prompt_ids(self, question: str) -> list[int]:
        """The chat template applied to one user message, else the tokenizer's special tokens around ``question``."""
        if self.has_chat_template:
            out = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            if isinstance(out, dict) or hasattr(out, "keys"):
                out = out["input_ids"]
            return [int(i) for i in out]
        return list(self.tokenizer.encode(question, add_special_tokens=True))

    def save(self, directory: str | Path) -> None:
        """Writes the wrapped tokenizer with its own ``save_pretrained``."""
        self.tokenizer.save_pretrained(str(directory))


def _first_id(tokenizer: object, *names: str) -> int | None:
    """The first of the tokenizer's ``names`` attributes that is an id (not None)."""
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def as_text_tokenizer(tokenizer: object) -> TextTokenizer:
    """``tokenizer`` itself when it is a `TextTokenizer`, else an `HFTokenizer` over it.

    Args:
        tokenizer: a project tokenizer or a Hugging Face tokenizer.

    Returns:
        A `TextTokenizer`.

    Raises:
        ValueError: ``tokenizer`` is None (the backbone has no tokenizer).
        TypeError: ``tokenizer`` is neither kind.
    """
    if tokenizer is None:
        raise ValueError("tokenizer: the backbone has no tokenizer; text cannot be encoded")
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    return HFTokenizer(tokenizer)
