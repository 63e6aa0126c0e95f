"""Corpora and batching for masked diffusion training and evaluation.

Question-answer data (GSM8K) is laid out as

```text
[PAD]...[PAD] [BOS] question [SEP] | answer [EOS] [EOS]...[EOS]
<------------- prompt ------------> <--------- answer --------->
```

Prompts are padded on the left so that every prompt in a batch ends at the
same column (this is also how `diffusion.generate` receives batched
prompts); answers are padded on the right with ``[EOS]``, as in LLaDA's SFT, so
a model learns to fill the unused tail of a fixed generation window with
``[EOS]``. Plain text files become fixed-length chunks with a one-token prompt
(``[BOS]``).

The prompt of a question is the tokenizer's ``prompt_ids(question)``
(`diffusion.tokenizers.TextTokenizer.prompt_ids`): ``[BOS] question [SEP]``
for the project's tokenizers; for a Hugging Face tokenizer wrapped by
`diffusion.tokenizers.HFTokenizer`, its chat template when it has one.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .tokenizers import TextTokenizer

__all__ = [
    "QAExample",
    "EncodedExample",
    "Batch",
    "BUNDLED_DATA_DIR",
    "SHIPPED_BACKBONE_DIR",
    "SHIPPED_PRIOR_FILE",
    "default_gsm8k_dir",
    "read_jsonl_qa",
    "load_gsm8k",
    "read_text_file",
    "encode_qa",
    "encode_text_chunks",
    "collate",
    "iterate_batches",
    "encode_prompts",
    "prompt_batch",
]

BUNDLED_DATA_DIR = Path(__file__).resolve().parent / "bundled"
"""Small GSM8K subset shipped with the package (``gsm8k_train.jsonl``, ``gsm8k_test.jsonl``, MIT ``LICENSE``)."""

SHIPPED_BACKBONE_DIR = BUNDLED_DATA_DIR / "backbone"
"""The small GSM8K backbone shipped as package data (1.0 M parameters, 4 MB; project BPE tokenizer)."""

SHIPPED_PRIOR_FILE = BUNDLED_DATA_DIR / "prior.safetensors"
"""A CoDD prior (HMM, window 32) trained for `SHIPPED_BACKBONE_DIR` on GSM8K answers (``codd ... --prior shipped``)."""


@dataclass(frozen=True)
class QAExample:
    """One question-answer pair.

    Attributes:
        question: the prompt text.
        answer: the target text (for GSM8K: reasoning with ``<<a op b=c>>``
            calculator annotations, ending in ``#### <number>``).
    """

    question: str
    answer: str


@dataclass(frozen=True)
class EncodedExample:
    """A tokenized example.

    Attributes:
        prompt: prompt ids (never masked), e.g. ``[BOS] question [SEP]``.
        target: target ids (masked by the forward process), e.g. ``answer [EOS]``.
    """

    prompt: tuple[int, ...]
    target: tuple[int, ...]


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        input_ids: ``LongTensor[B, N]`` clean token ids.
        prompt_mask: ``BoolTensor[B, N]``, True on prompt and left-padding
            positions (never masked).
        target_mask: ``BoolTensor[B, N]``, True on real target tokens (the
            answer and its first ``[EOS]``); right padding is False.
        prompt_length: common prompt length ``P`` (targets start at column ``P``).
    """

    input_ids: torch.Tensor
    prompt_mask: torch.Tensor
    target_mask: torch.Tensor
    prompt_length: int

    def to(self, device: torch.device | str) -> "Batch":
        """Move the tensors to ``device``."""
        return Batch(
            self.input_ids.to(device), self.prompt_mask.to(device), self.target_mask.to(device), self.prompt_length
        )


def default_gsm8k_dir() -> Path:
    """Directory holding GSM8K ``train.jsonl`` / ``test.jsonl``.

    Resolution order: ``$CODD_GSM8K_DIR``; the workspace copy
    ``<repo>/../shared/data/gsm8k``; the small subset bundled in the package.

    Returns:
        A directory path.
    """
    env = os.environ.get("CODD_GSM8K_DIR")
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
    if (shared / "train.jsonl").is_file():
        return shared
    return BUNDLED_DATA_DIR


def read_jsonl_qa(path: str | Path, question_key: str = "question", answer_key: str = "answer") -> list[QAExample]:
    """Read question-answer pairs from a JSON-lines file.

    Args:
        path: the ``.jsonl`` file.
        question_key: key of the question field.
        answer_key: key of the answer field.

    Returns:
        The examples, in file order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a line is not JSON or lacks a key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found or not readable: {path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                out.append(QAExample(str(rec[question_key]), str(rec[answer_key])))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object with {question_key!r} and {answer_key!r}"
                ) from e
    return out


def load_gsm8k(split: str = "train", directory: str | Path | None = None, limit: int | None = None) -> list[QAExample]:
    """Load a GSM8K split.

    Args:
        split: ``"train"`` or ``"test"``.
        directory: directory with ``train.jsonl``/``test.jsonl`` (the bundled
            subset uses ``gsm8k_train.jsonl``/``gsm8k_test.jsonl``); defaults to
            `default_gsm8k_dir`.
        limit: keep only the first ``limit`` examples.

    Returns:
        The examples.

    Raises:
        ValueError: for an unknown split.
        FileNotFoundError: if the split file is missing.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    directory = Path(directory) if directory is not None else default_gsm8k_dir()
    path = directory / f"{split}.jsonl"
    if not path.is_file() and (directory / f"gsm8k_{split}.jsonl").is_file():
        path = directory / f"gsm8k_{split}.jsonl"
    examples = read_jsonl_qa(path)
    return examples[:limit] if limit is not None else examples


def read_text_file(path: str | Path) -> str:
    """Read a UTF-8 plain text corpus.

    Args:
        path: the file.

    Returns:
        Its contents.

    Raises:
        FileNotFoundError: if the file is missing or unreadable.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FileNotFoundError(f"text file not found or not readable: {path}") from e


def encode_qa(examples: Sequence[QAExample], tokenizer: TextTokenizer, max_length: int = 256) -> list[EncodedExample]:
    """Tokenize question-answer pairs.

    The prompt is ``[BOS] question [SEP]`` (the tokenizer's ``prompt_ids``) and
    the target ``answer [EOS]``.
    Targets are truncated so that prompt + target fit in ``max_length``;
    examples whose prompt leaves fewer than 8 target positions are dropped.

    Args:
        examples: the pairs.
        tokenizer: the tokenizer.
        max_length: maximal total length.

    Returns:
        The encoded examples.
    """
    out = []
    for ex in examples:
        prompt = _prompt_ids(tokenizer, ex.question)
        target = [*tokenizer.encode(ex.answer), tokenizer.eos_id]
        room = max_length - len(prompt)
        if room < 8:
            continue
        out.append(EncodedExample(tuple(prompt), tuple(target[:room])))
    return out


def _prompt_ids(tokenizer: TextTokenizer, question: str) -> list[int]:
    """The tokenizer's ``prompt_ids(question)``; ``[BOS] question [SEP]`` for a tokenizer without that method."""
    build = getattr(tokenizer, "prompt_ids", None)
    if build is not None:
        return build(question)
    return [tokenizer.bos_id, *tokenizer.encode(question), tokenizer.sep_id]


def encode_text_chunks(text: str, tokenizer: TextTokenizer, max_length: int = 256) -> list[EncodedExample]:
    """Cut a plain text corpus into fixed-length training examples.

    Each example is ``[BOS]`` (prompt) followed by ``max_length - 1`` text tokens.

    Args:
        text: the corpus.
        tokenizer: the tokenizer.
        max_length: example length.

    Returns:
        The encoded chunks (a trailing partial chunk is dropped).
    """
    ids = tokenizer.encode(text)
    n = max_length - 1
    return [EncodedExample((tokenizer.bos_id,), tuple(ids[i : i + n])) for i in range(0, len(ids) - n + 1, n)]


def collate(examples: Sequence[EncodedExample], tokenizer: TextTokenizer, pad_to: int | None = None) -> Batch:
    """Pad encoded examples into a `Batch`.

    Args:
        examples: the examples.
        tokenizer: supplies ``pad_id`` and ``eos_id``.
        pad_to: pad targets to at least this length (default: the longest target).

    Returns:
        The batch; ``input_ids`` has shape ``[B, P + T]`` with ``P`` the longest
        prompt and ``T`` the longest target (or ``pad_to``).
    """
    if not examples:
        raise ValueError("examples: empty batch")
    p = max(len(e.prompt) for e in examples)
    t = max(len(e.target) for e in examples)
    if pad_to is not None:
        t = max(t, pad_to)
    b = len(examples)
    ids = torch.full((b, p + t), tokenizer.eos_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, p + t), dtype=torch.bool)
    prompt_mask[:, :p] = True
    target_mask = torch.zeros((b, p + t), dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, : p - len(e.prompt)] = tokenizer.pad_id
        ids[i, p - len(e.prompt) : p] = torch.tensor(e.prompt)
        ids[i, p : p + len(e.target)] = torch.tensor(e.target)
        target_mask[i, p : p + len(e.target)] = True
    return Batch(ids, prompt_mask, target_mask, p)


def iterate_batches(
    examples: Sequence[EncodedExample],
    tokenizer: TextTokenizer,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    length_grouped: bool = True,
    pad_to: int | None = None,
) -> Iterator[Batch]:
    """Yield padded batches over ``examples`` (one epoch).

    Args:
        examples: the encoded examples.
        tokenizer: the tokenizer (padding ids).
        batch_size: examples per batch.
        shuffle: shuffle the order.
        seed: shuffling seed.
        length_grouped: group examples of similar total length (sorted inside
            windows of 50 batches) to reduce padding.
        pad_to: minimal target length of every batch (see `collate`).

    Yields:
        `Batch` objects.
    """
    order = list(range(len(examples)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    if length_grouped:
        win = batch_size * 50
        chunks = [order[i : i + win] for i in range(0, len(order), win)]
        order = []
        for c in chunks:
            order.extend(sorted(c, key=lambda j: len(examples[j].prompt) + len(examples[j].target)))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    for idx in batches:
        yield collate([examples[j] for j in idx], tokenizer, pad_to=pad_to)


def encode_prompts(questions: Sequence[str], tokenizer: TextTokenizer) -> torch.Tensor:
    """Encode questions as a left-padded prompt batch for generation.

    Args:
        questions: the question texts.
        tokenizer: the tokenizer.

    Returns:
        ``LongTensor[B, P]``: ``[PAD]... [BOS] question [SEP]`` rows (the tokenizer's ``prompt_ids``).
    """
    return prompt_batch(questions, tokenizer)[0]


def prompt_batch(questions: Sequence[str], tokenizer: TextTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts and their attention mask, for `diffusion.generate`.

    The mask comes from the prompts' lengths, so it is right even when a
    prompt starts with the padding id (a Hugging Face tokenizer whose padding
    token is also its BOS or EOS).

    Args:
        questions: the question texts.
        tokenizer: the tokenizer (its ``prompt_ids`` and ``pad_id``).

    Returns:
        ``(ids LongTensor[B, P], attention_mask BoolTensor[B, P])``, the mask
        True on each row's real prompt tokens.

    Raises:
        ValueError: no questions, or a question whose prompt is empty.
    """
    if not questions:
        raise ValueError("questions: no prompts given")
    enc = [_prompt_ids(tokenizer, q) for q in questions]
    if any(not e for e in enc):
        raise ValueError(f"questions: question {next(i for i, e in enumerate(enc) if not e)} encodes to no tokens")
    p = max(len(e) for e in enc)
    out = torch.full((len(enc), p), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(enc), p), dtype=torch.bool)
    for i, e in enumerate(enc):
        out[i, p - len(e) :] = torch.tensor(e)
        mask[i, p - len(e) :] = True
    return out, mask
