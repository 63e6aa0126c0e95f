"""A fast end-to-end demonstration of the diffusion package (under a minute on CPU).

`run_demo` loads the small GSM8K backbone shipped with the package
(`SHIPPED_BACKBONE_DIR`, package data under ``diffusion/bundled/backbone``,
found from any directory after ``pip install``) when it is present, or otherwise
trains a tiny backbone for a few seconds on the GSM8K subset bundled in the
package, then answers a few held-out questions with block diffusion at 1 and
at 8 tokens per step and prints the answers with their calculator-annotation
validity.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .backbones import Backbone, load_backbone
from .data import BUNDLED_DATA_DIR, SHIPPED_BACKBONE_DIR, SHIPPED_PRIOR_FILE, encode_prompts, load_gsm8k
from .evaluation import annotation_stats
from .sampling import generate, left_padding_mask
from .training import TrainConfig, train_backbone

__all__ = ["run_demo", "SHIPPED_BACKBONE_DIR", "SHIPPED_PRIOR_FILE"]


def _tiny_backbone(seconds: float, log: Callable[[str], Any]) -> Backbone:
    out = Path(tempfile.mkdtemp(prefix="codd_demo_"))
    cfg = TrainConfig(
        data=str(BUNDLED_DATA_DIR),
        output_dir=str(out),
        tokenizer="bpe",
        vocab_size=512,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        batch_size=16,
        lr=3e-3,
        warmup_steps=10,
        max_minutes=seconds / 60.0,
        eval_examples=16,
        progress=False,
    )
    log(f"no shipped backbone found; training a tiny one for {seconds:.0f}s on the bundled GSM8K subset")
    return train_backbone(cfg, log=log).backbone


def run_demo(
    model_dir: str | Path | None = None,
    train_seconds: float = 20.0,
    questions: int = 2,
    gen_length: int = 64,
    block_length: int = 32,
    threads: int | None = 1,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Generate answers at 1 and 8 tokens per step and print them.

    Args:
        model_dir: a backbone directory; default: the shipped checkpoint if
            present, else a tiny backbone trained for ``train_seconds``.
        train_seconds: training budget of the fallback tiny backbone.
        questions: number of held-out questions (bundled GSM8K test subset).
        gen_length: generated tokens per answer.
        block_length: block length of the sampler.
        threads: ``torch.set_num_threads`` value (None leaves it unchanged).
        log: output function.

    Returns:
        ``{"model": source, "results": {k: {"answers", "valid", "total", "seconds"}}}``
        for ``k`` in (1, 8).
    """
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    backbone, source = _demo_backbone(model_dir, train_seconds, log)
    tok = backbone.tokenizer
    test = load_gsm8k("test", BUNDLED_DATA_DIR)
    fits = [e for e in test if len(tok.encode(e.answer)) < gen_length]
    held = (fits or sorted(test, key=lambda e: len(tok.encode(e.answer))))[:questions]
    prompts = encode_prompts([e.question for e in held], tok)
    results = {k: _answer(backbone, prompts, k, gen_length, block_length) for k in (1, 8)}
    log(f"model: {source}")
    for i, ex in enumerate(held):
        log(f"\nQ: {ex.question}")
        for k in (1, 8):
            log(f"--- {k} token(s)/step:\n{results[k]['answers'][i]}")
    for k in (1, 8):
        r = results[k]
        log(f"\n{k} token(s)/step: {r['valid']}/{r['total']} valid calculator annotations, {r['seconds']:.1f}s")
    log(f"demo finished in {time.perf_counter() - start:.1f}s")
    return {"model": source, "results": results}


def _demo_backbone(
    model_dir: str | Path | None, train_seconds: float, log: Callable[[str], Any]
) -> tuple[Backbone, str]:
    """The backbone of ``model_dir``, else the shipped one, else a tiny one trained now; and where it came from."""
    if model_dir is None and (SHIPPED_BACKBONE_DIR / "codd_backbone.json").is_file():
        model_dir = SHIPPED_BACKBONE_DIR
    if model_dir is not None:
        return load_backbone(model_dir), str(model_dir)
    return _tiny_backbone(train_seconds, log), "tiny backbone trained on the bundled data"


def _answer(backbone: Backbone, prompts: torch.Tensor, k: int, gen_length: int, block_length: int) -> dict[str, Any]:
    """Answers to ``prompts`` ``[B, P]`` at ``k`` tokens per step, with their annotation counts and the time taken."""
    tok = backbone.tokenizer
    t0 = time.perf_counter()
    out = generate(backbone, prompts, gen_length=gen_length, steps=gen_length // k, block_length=block_length,
                   attention_mask=left_padding_mask(prompts, tok.pad_id))  # [B, P + gen_length]
    seconds = time.perf_counter() - t0
    answers = []
    valid = total = 0
    for row in out[:, prompts.shape[1] :].tolist():
        if tok.eos_id in row:
            row = row[: row.index(tok.eos_id)]
        text = tok.decode(row)
        st = annotation_stats(text)
        valid += st["valid"]
        total += st["total"]
        answers.append(text)
    return {"answers": answers, "valid": valid, "total": total, "seconds": seconds}
