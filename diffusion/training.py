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
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    out_dir = Path(config.output_dir)

    kind, train_raw, held_raw = load_corpus(config.data)
    if kind == "qa":
        texts = [e.question + "\n" + e.answer for e in train_raw]  # type: ignore[union-attr]
    else:
        texts = [train_raw]  # type: ignore[list-item]
    tokenizer: TextTokenizer
    init: MaskedLMBackbone | None = None
    if config.init_from is not None:
        loaded = load_backbone(config.init_from, trust_remote_code=config.trust_remote_code)
        if not isinstance(loaded, MaskedLMBackbone) or not isinstance(loaded.tokenizer, TextTokenizer):
            raise ValueError(f"init_from: {config.init_from} is not a backbone saved by train_backbone")
        init, tokenizer = loaded, loaded.tokenizer
    elif config.tokenizer == "char":
        tokenizer = build_char_tokenizer(texts)
    else:
        tokenizer = train_bpe_tokenizer(texts, vocab_size=config.vocab_size)

    def encode(raw: Any) -> list[EncodedExample]:
        if kind == "text":
            return encode_text_chunks(raw, tokenizer, config.max_length)
        if config.skip_long:
            enc = encode_qa(raw, tokenizer, 10**9)
            return [e for e in enc if len(e.prompt) + len(e.target) <= config.max_length]
        return encode_qa(raw, tokenizer, config.max_length)

    train_set = encode(train_raw)
    if config.train_limit is not None:
        train_set = train_set[: config.train_limit]
    held_set = encode(held_raw)[: config.eval_examples]
    if not train_set:
        raise ValueError("data: no training examples after tokenization (check max_length)")
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
    log(f"tokenizer={tokenizer.kind} vocab={tokenizer.vocab_size} train={len(train_set)} heldout={len(held_set)}")

    if init is not None:
        backbone = init.train()
        log(f"continuing from {config.init_from}")
    else:
        backbone = build_backbone(
            tokenizer,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            max_length=max(config.max_length, 512),
            dropout=config.dropout,
        )
    backbone = backbone.to(device)
    n_params = sum(p.numel() for p in backbone.parameters())
    log(f"parameters={n_params / 1e6:.2f}M")
    decay = [p for n, p in backbone.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in backbone.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.98),
    )
    batches_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = config.epochs * batches_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    budget_s = config.max_minutes * 60.0 if config.max_minutes else None
    gen = torch.Generator().manual_seed(config.seed)

    heldout: list[dict[str, float]] = []
    train_log: list[dict[str, float]] = []
    start = time.time()
    step = 0
    done = False
    ema = None
    best_nll = math.inf

    def evaluate(epoch: float) -> bool:
        """Held-out bound; returns whether it is the best so far."""
        nonlocal best_nll
        backbone.eval()
        res = elbo_bound(backbone, held_set, batch_size=32, num_samples=2, seed=1234)
        backbone.train()
        rec = {"step": step, "epoch": epoch, "nll": res["nll"], "ppl_bound": res["ppl_bound"], "minutes": (time.time() - start) / 60}
        heldout.append(rec)
        log(f"[heldout] step={step} epoch={epoch:.2f} nll<={res['nll']:.4f} ppl<={res['ppl_bound']:.3f}")
        improved = res["nll"] < best_nll
        best_nll = min(best_nll, res["nll"])
        return improved

    def save(improved: bool = True) -> None:
        """Writes the log; the model too unless ``keep_best`` is set and it did not improve."""
        with atomic_write(out_dir / "training_log.json", "w") as f:
            f.write(json.dumps({"config": asdict(config), "heldout": heldout, "train": train_log}, indent=1))
        if config.keep_best and not improved:
            return
        save_backbone(
            backbone,
            out_dir,
            extra={
                "train_config": asdict(config),
                "steps": step,
                "heldout": heldout[-1] if heldout else None,
                "parameters": n_params,
            },
        )

    bar = tqdm(total=total_steps, disable=not config.progress, desc="train", mininterval=5.0)
    backbone.train()
    for epoch in range(config.epochs):
        pad_to = config.min_target_length if kind == "qa" else None
        for batch in iterate_batches(
            train_set, tokenizer, config.batch_size, shuffle=True, seed=config.seed + epoch, pad_to=pad_to
        ):
            elapsed = time.time() - start
            progress = step / max(total_steps, 1)
            if budget_s:
                progress = max(progress, elapsed / budget_s)
            if step >= total_steps or (budget_s is not None and elapsed >= budget_s):
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = config.lr * _lr_factor(step, progress, config.warmup_steps)
            ids, maskable = batch.input_ids.to(device), (~batch.prompt_mask).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                out = masked_diffusion_loss(backbone, ids, tokenizer.mask_id, maskable, generator=gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
            opt.step()
            step += 1
            val = float(out.loss.detach())
            ema = val if ema is None else 0.98 * ema + 0.02 * val
            if step % 10 == 0:
                train_log.append({"step": step, "loss": val, "ema": ema, "lr": opt.param_groups[0]["lr"]})
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
            if config.eval_every and step % config.eval_every == 0:
                save(evaluate(step / batches_per_epoch))
        if done:
            break
        save(evaluate(float(epoch + 1)))
    bar.close()
    if not heldout or heldout[-1]["step"] != step:
        save(evaluate(step / batches_per_epoch))
    else:
        save(not config.keep_best)
    if config.keep_best:
        backbone = load_backbone(out_dir, device=device, trust_remote_code=config.trust_remote_code)
    backbone.eval()
    kept = f" (kept the best checkpoint, step {min(heldout, key=lambda r: r['nll'])['step']})" if config.keep_best else ""
    log(f"saved to {out_dir} after {step} steps ({(time.time() - start) / 60:.1f} min){kept}")
    return TrainResult(backbone, out_dir, step, heldout, train_log)
