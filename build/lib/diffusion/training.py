"""Training loop for the project's own masked diffusion backbones.

`train_backbone` builds a tokenizer (character-level or a small BPE
trained locally), a small bidirectional transformer (`build_backbone`),
and optimises the MDLM / LLaDA objective (`masked_diffusion_loss`)
with AdamW, a warm-up + cosine learning-rate schedule, a tqdm progress bar,
held-out bound evaluation at every epoch end (and every ``eval_every`` steps),
and checkpoints (model + tokenizer + ``training_log.json``) in ``output_dir``.

Training can be bounded by epochs, steps or wall-clock minutes; the schedule
follows whichever budget is closest to running out, so a time-bounded run
still ends with a decayed learning rate.

`train_backbone` runs four named phases: *data* (`_prepare_data`: corpus,
tokenizer, encoded splits), *model* (`_prepare_model`: a new or continued
backbone on its device), *loop* (`_Trainer.run`: optimiser steps with the
schedule and budgets) and *evaluation* (`_Trainer.evaluate` /
`_Trainer.save`: the held-out bound and checkpoints, during and after the
loop).

Shapes: ``B`` sequences per batch, ``L`` tokens per sequence.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pcircuits.atomic import atomic_write

from .backbones import MaskedLMBackbone, build_backbone, load_backbone, save_backbone
from .data import (
    EncodedExample,
    QAExample,
    encode_qa,
    encode_text_chunks,
    iterate_batches,
    load_gsm8k,
    read_jsonl_qa,
    read_text_file,
)
from .evaluation import elbo_bound
from .masking import masked_diffusion_loss
from .tokenizers import TextTokenizer, build_char_tokenizer, train_bpe_tokenizer

__all__ = ["TrainConfig", "TrainResult", "load_corpus", "train_backbone"]


@dataclass
class TrainConfig:
    """Settings of `train_backbone`.

    Attributes:
        data: ``"gsm8k"`` (default GSM8K directory, see
            `default_gsm8k_dir`), a directory with
            ``train.jsonl``/``test.jsonl``, a ``.jsonl`` file of
            ``{"question", "answer"}`` pairs, or a plain text file.
        output_dir: where the model, tokenizer and log are written.
        tokenizer: ``"bpe"`` or ``"char"``.
        vocab_size: BPE vocabulary size.
        hidden_size: model width.
        num_layers: transformer layers.
        num_heads: attention heads.
        intermediate_size: MLP width.
        max_length: maximal sequence length (longer examples are truncated,
            or skipped when ``skip_long`` is set).
        skip_long: drop question-answer pairs longer than ``max_length``
            instead of truncating their answers.
        min_target_length: pad every batch's answer region with ``[EOS]`` to
            at least this many tokens (question-answer data), so the model
            learns to fill a fixed generation window (``gen_length``) whose tail
            is ``[EOS]``.
        init_from: optional backbone directory to continue training from
            (its tokenizer and architecture are reused; the optimiser restarts).
        trust_remote_code: let `load_backbone` run code that the ``init_from``
            (and so the output) directory names in an ``auto_map``.
        batch_size: sequences per step.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        epochs: maximal number of epochs.
        max_steps: optional step budget.
        max_minutes: optional wall-clock budget.
        eval_every: evaluate the held-out bound every this many steps (0: only at epoch ends).
        eval_examples: number of held-out examples used for the per-epoch bound.
        train_limit: optional cap on training examples.
        num_threads: ``torch.set_num_threads`` value (1 leaves cores to others).
        device: where the model trains (``"cpu"``, ``"cuda"``, ...).
        precision: ``"fp32"``, or ``"bf16"`` (autocast of the forward pass on
            CUDA; the weights and optimiser state stay float32).
        dropout: dropout rate of the embeddings, attention and MLP (new models).
        keep_best: save a checkpoint only when the held-out bound improves, so
            ``output_dir`` ends with the best evaluated model rather than the last.
        seed: random seed.
        progress: show a tqdm progress bar.
    """

    data: str = "gsm8k"
    output_dir: str = "runs/backbone"
    tokenizer: str = "bpe"
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_length: int = 256
    skip_long: bool = True
    min_target_length: int = 128
    init_from: str | None = None
    trust_remote_code: bool = False
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    epochs: int = 10
    max_steps: int | None = None
    max_minutes: float | None = None
    eval_every: int = 0
    eval_examples: int = 200
    train_limit: int | None = None
    num_threads: int | None = 1
    device: str = "cpu"
    precision: str = "fp32"
    dropout: float = 0.0
    keep_best: bool = False
    seed: int = 0
    progress: bool = True


@dataclass
class TrainResult:
    """What `train_backbone` returns.

    Attributes:
        backbone: the trained backbone (tokenizer attached).
        output_dir: where it was saved.
        steps: optimiser steps taken.
        heldout: list of held-out evaluations (``step``, ``epoch``, ``nll``, ``ppl_bound``).
        train_loss: running training loss per logged step.
    """

    backbone: MaskedLMBackbone
    output_dir: Path
    steps: int
    heldout: list[dict[str, float]] = field(default_factory=list)
    train_loss: list[dict[str, float]] = field(default_factory=list)


def load_corpus(data: str) -> tuple[str, list[QAExample] | str, list[QAExample] | str]:
    """Resolve a data argument into train / held-out splits.

    Args:
        data: see `TrainConfig.data`.

    Returns:
        ``(kind, train, heldout)`` with ``kind`` ``"qa"`` (lists of
        `QAExample`) or ``"text"`` (strings; the last 5%
        of the file is held out).

    Raises:
        FileNotFoundError: if the path does not exist or is unreadable.
    """
    if data == "gsm8k":
        return "qa", load_gsm8k("train"), load_gsm8k("test")
    path = Path(data)
    if path.is_dir():
        return "qa", load_gsm8k("train", path), load_gsm8k("test", path)
    if not path.is_file():
        raise FileNotFoundError(f"data: file or directory not found: {path}")
    if path.suffix == ".jsonl":
        ex = read_jsonl_qa(path)
        n_held = max(1, len(ex) // 20)
        return "qa", ex[:-n_held], ex[-n_held:]
    text = read_text_file(path)
    cut = int(len(text) * 0.95)
    return "text", text[:cut], text[cut:]


def _lr_factor(step: int, progress: float, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train_backbone(config: TrainConfig, log: Any = print) -> TrainResult:
    """Train a small masked diffusion backbone from scratch.

    Args:
        config: the `TrainConfig`.
        log: callable receiving progress lines (``print`` by default).

    Returns:
        A `TrainResult`; the model, tokenizer, ``codd_backbone.json``
        (with the final held-out bound) and ``training_log.json`` are saved in
        ``config.output_dir``.
    """
    device = _check_config(config)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    out_dir = Path(config.output_dir)
    data = _prepare_data(config)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
    log(f"tokenizer={data.tokenizer.kind} vocab={data.tokenizer.vocab_size} "
        f"train={len(data.train_set)} heldout={len(data.held_set)}")
    backbone = _prepare_model(config, data, device, log)
    trainer = _Trainer(config, data, backbone, device, out_dir, log)
    trainer.run()
    return trainer.finish()


def _check_config(config: TrainConfig) -> torch.device:
    """The training device, once the settings that the data and model phases do not check are valid."""
    if config.tokenizer not in ("bpe", "char"):
        raise ValueError(f"tokenizer: expected 'bpe' or 'char', got {config.tokenizer!r}")
    if config.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision: expected 'fp32' or 'bf16', got {config.precision!r}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout: expected a rate in [0, 1), got {config.dropout}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {config.device!r} requested but CUDA is not available")
    if config.precision == "bf16" and device.type != "cuda":
        raise ValueError("precision: 'bf16' autocast is only supported on CUDA devices")
    return device


@dataclass
class _TrainData:
    """The data phase's output: the corpus kind (``"qa"`` or ``"text"``), the tokenizer, the encoded
    training and held-out examples, and the backbone to continue from (``init_from``) if any."""

    kind: str
    tokenizer: TextTokenizer
    train_set: list[EncodedExample]
    held_set: list[EncodedExample]
    init: MaskedLMBackbone | None


def _prepare_data(config: TrainConfig) -> _TrainData:
    """Data phase: loads the corpus, builds (or reuses) the tokenizer and encodes both splits."""
    kind, train_raw, held_raw = load_corpus(config.data)
    texts = [e.question + "\n" + e.answer for e in train_raw] if kind == "qa" else [train_raw]  # type: ignore[union-attr]
    init, tokenizer = _tokenizer(config, texts)  # type: ignore[arg-type]
    train_set = _encode(kind, train_raw, tokenizer, config)
    if config.train_limit is not None:
        train_set = train_set[: config.train_limit]
    held_set = _encode(kind, held_raw, tokenizer, config)[: config.eval_examples]
    if not train_set:
        raise ValueError("data: no training examples after tokenization (check max_length)")
    return _TrainData(kind, tokenizer, train_set, held_set, init)


def _tokenizer(config: TrainConfig, texts: list[str]) -> tuple[MaskedLMBackbone | None, TextTokenizer]:
    """The ``init_from`` backbone and its tokenizer, or ``None`` and a new tokenizer trained on ``texts``."""
    if config.init_from is not None:
        loaded = load_backbone(config.init_from, trust_remote_code=config.trust_remote_code)
        if not isinstance(loaded, MaskedLMBackbone) or not isinstance(loaded.tokenizer, TextTokenizer):
            raise ValueError(f"init_from: {config.init_from} is not a backbone saved by train_backbone")
        return loaded, loaded.tokenizer
    if config.tokenizer == "char":
        return None, build_char_tokenizer(texts)
    return None, train_bpe_tokenizer(texts, vocab_size=config.vocab_size)


def _encode(kind: str, raw: Any, tokenizer: TextTokenizer, config: TrainConfig) -> list[EncodedExample]:
    """Text chunks, or question-answer pairs truncated (or, with ``skip_long``, dropped) to ``max_length``."""
    if kind == "text":
        return encode_text_chunks(raw, tokenizer, config.max_length)
    if config.skip_long:
        enc = encode_qa(raw, tokenizer, 10**9)
        return [e for e in enc if len(e.prompt) + len(e.target) <= config.max_length]
    return encode_qa(raw, tokenizer, config.max_length)


def _prepare_model(config: TrainConfig, data: _TrainData, device: torch.device, log: Any) -> MaskedLMBackbone:
    """Model phase: the ``init_from`` backbone in training mode, or a new one, on ``device``."""
    if data.init is not None:
        backbone = data.init.train()
        log(f"continuing from {config.init_from}")
    else:
        backbone = build_backbone(
            data.tokenizer,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            max_length=max(config.max_length, 512),
            dropout=config.dropout,
        )
    return backbone.to(device)


class _Trainer:
    """The loop and evaluation phases of `train_backbone` over one backbone, with their running state."""

    def __init__(
        self, config: TrainConfig, data: _TrainData, backbone: MaskedLMBackbone, device: torch.device,
        out_dir: Path, log: Any,
    ) -> None:
        self.config, self.data, self.backbone, self.device, self.out_dir, self.log = (
            config, data, backbone, device, out_dir, log
        )
        self.n_params = sum(p.numel() for p in backbone.parameters())
        log(f"parameters={self.n_params / 1e6:.2f}M")
        decay = [p for n, p in backbone.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in backbone.named_parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            betas=(0.9, 0.98),
        )
        self.batches_per_epoch = math.ceil(len(data.train_set) / config.batch_size)
        total = config.epochs * self.batches_per_epoch
        self.total_steps = total if config.max_steps is None else min(total, config.max_steps)
        self.budget_s = config.max_minutes * 60.0 if config.max_minutes else None
        self.gen = torch.Generator().manual_seed(config.seed)
        self.heldout: list[dict[str, float]] = []
        self.train_log: list[dict[str, float]] = []
        self.start = time.time()
        self.step = 0
        self.ema: float | None = None
        self.best_nll = math.inf

    # ---------------------------------------------------------------- loop

    def run(self) -> None:
        """Epochs of optimiser steps until an epoch, step or time budget ends, evaluating at every epoch end."""
        config = self.config
        bar = tqdm(total=self.total_steps, disable=not config.progress, desc="train", mininterval=5.0)
        self.backbone.train()
        for epoch in range(config.epochs):
            if not self._epoch(epoch, bar):
                break
            self.save(self.evaluate(float(epoch + 1)))
        bar.close()
        if not self.heldout or self.heldout[-1]["step"] != self.step:
            self.save(self.evaluate(self.step / self.batches_per_epoch))
        else:
            self.save(not config.keep_best)

    def _epoch(self, epoch: int, bar: Any) -> bool:
        """One epoch of steps; returns False once a budget is spent (the epoch then ends early)."""
        config = self.config
        pad_to = config.min_target_length if self.data.kind == "qa" else None
        batches = iterate_batches(
            self.data.train_set, self.data.tokenizer, config.batch_size, shuffle=True, seed=config.seed + epoch,
            pad_to=pad_to,
        )
        for batch in batches:
            progress = self._progress()
            if progress is None:
                return False
            self._step(batch, progress, bar)
            if config.eval_every and self.step % config.eval_every == 0:
                self.save(self.evaluate(self.step / self.batches_per_epoch))
        return True

    def _progress(self) -> float | None:
        """Fraction of the closest budget spent, or ``None`` once the step or time budget is spent."""
        elapsed = time.time() - self.start
        progress = self.step / max(self.total_steps, 1)
        if self.budget_s:
            progress = max(progress, elapsed / self.budget_s)
        if self.step >= self.total_steps or (self.budget_s is not None and elapsed >= self.budget_s):
            return None
        return progress

    def _step(self, batch: Any, progress: float, bar: Any) -> None:
        """One optimiser step on ``batch`` (``input_ids`` ``[B, L]``) at the scheduled learning rate."""
        config, opt = self.config, self.opt
        for g in opt.param_groups:
            g["lr"] = config.lr * _lr_factor(self.step, progress, config.warmup_steps)
        ids, maskable = batch.input_ids.to(self.device), (~batch.prompt_mask).to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            out = masked_diffusion_loss(self.backbone, ids, self.data.tokenizer.mask_id, maskable, generator=self.gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.backbone.parameters(), 1.0)
        opt.step()
        self.step += 1
        val = float(out.loss.detach())
        self.ema = val if self.ema is None else 0.98 * self.ema + 0.02 * val
        lr = opt.param_groups[0]["lr"]
        if self.step % 10 == 0:
            self.train_log.append({"step": self.step, "loss": val, "ema": self.ema, "lr": lr})
        bar.update(1)
        bar.set_postfix(loss=f"{self.ema:.3f}", lr=f"{lr:.2e}", refresh=False)

    # ---------------------------------------------------------------- evaluation

    def evaluate(self, epoch: float) -> bool:
        """Held-out bound; returns whether it is the best so far."""
        backbone = self.backbone
        backbone.eval()
        res = elbo_bound(backbone, self.data.held_set, batch_size=32, num_samples=2, seed=1234)
        backbone.train()
        minutes = (time.time() - self.start) / 60
        rec = {"step": self.step, "epoch": epoch, "nll": res["nll"], "ppl_bound": res["ppl_bound"], "minutes": minutes}
        self.heldout.append(rec)
        self.log(f"[heldout] step={self.step} epoch={epoch:.2f} nll<={res['nll']:.4f} ppl<={res['ppl_bound']:.3f}")
        improved = res["nll"] < self.best_nll
        self.best_nll = min(self.best_nll, res["nll"])
        return improved

    def save(self, improved: bool = True) -> None:
        """Writes the log; the model too unless ``keep_best`` is set and it did not improve."""
        config = self.config
        log_record = {"config": asdict(config), "heldout": self.heldout, "train": self.train_log}
        with atomic_write(self.out_dir / "training_log.json", "w") as f:
            f.write(json.dumps(log_record, indent=1))
        if config.keep_best and not improved:
            return
        extra = {
            "train_config": asdict(config),
            "steps": self.step,
            "heldout": self.heldout[-1] if self.heldout else None,
            "parameters": self.n_params,
        }
        save_backbone(self.backbone, self.out_dir, extra=extra)

    def finish(self) -> TrainResult:
        """The result: the best checkpoint reloaded with ``keep_best``, else the trained backbone, in eval mode."""
        config, backbone = self.config, self.backbone
        if config.keep_best:
            backbone = load_backbone(self.out_dir, device=self.device, trust_remote_code=config.trust_remote_code)
        backbone.eval()
        kept = ""
        if config.keep_best:
            kept = f" (kept the best checkpoint, step {min(self.heldout, key=lambda r: r['nll'])['step']})"
        minutes = (time.time() - self.start) / 60
        self.log(f"saved to {self.out_dir} after {self.step} steps ({minutes:.1f} min){kept}")
        return TrainResult(backbone, self.out_dir, self.step, self.heldout, self.train_log)
