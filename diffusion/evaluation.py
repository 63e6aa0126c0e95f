"""Evaluation of masked diffusion backbones.

* `elbo_bound`: held-out negative ELBO per token and the perplexity
  bound ``exp(nll)``.
* `loglik_by_mask_ratio`: conditional log-likelihood of held-out answer
  tokens given the question and the unmasked rest of the answer, by mask-ratio
  bins ``[0, 0.2), ..., [0.8, 1.0]``.
* `extract_final_answer`, `annotation_stats`: GSM8K quality
  measures (final-answer exact match; validity of ``<<a op b=c>>`` calculator
  annotations).
* `evaluate_generation`: few-step generation on held-out questions at
  several tokens-per-step settings, with exact match, annotation validity and
  tokens per second; `GenerationEvalConfig` holds its settings. Per setting
  it runs two phases: *generation* (`_generate_answers`) and *scoring*
  (`_score_answers`, `_generation_record`).
* `evaluate_backbone`: all of the above on one held-out set.

Shapes: ``B`` sequences per batch, ``P`` prompt tokens, ``G`` generated tokens.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pcircuits.learning.checks import build_config

from .backbones import Backbone
from .codd.draw import check_codd_options
from .data import EncodedExample, QAExample, collate, encode_qa, prompt_batch
from .masking import mask_exact_ratio
from .tokenizers import as_text_tokenizer

__all__ = [
    "elbo_bound",
    "loglik_by_mask_ratio",
    "extract_final_answer",
    "annotation_stats",
    "GenerationEvalConfig",
    "evaluate_generation",
    "evaluate_backbone",
    "DEFAULT_BINS",
]

DEFAULT_BINS: tuple[tuple[float, float], ...] = ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0))
"""Mask-ratio bins used by `loglik_by_mask_ratio`."""


@torch.no_grad()
def elbo_bound(
    backbone: Backbone,
    examples: Sequence[EncodedExample],
    batch_size: int = 32,
    num_samples: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    r"""Monte Carlo negative ELBO of held-out targets, per token.

    For each example the target tokens (answer and its ``[EOS]``) are masked at
    ``num_samples`` stratified times ``t_k = (k + u_k) / K`` (one per stratum),
    and ``sum_masked -log p / t`` is averaged over the samples. Right padding
    stays visible, so the bound is on ``-log p(answer | question, length)``,
    the usual convention for fixed-length masked diffusion models. The bound
    per token is the total over examples divided by the number of target
    tokens; ``ppl_bound = exp(nll)`` upper-bounds the perplexity (up to Monte
    Carlo noise).

    Args:
        backbone: the model; ``backbone.tokenizer`` (the project's or a Hugging
            Face one, see `diffusion.tokenizers.as_text_tokenizer`) supplies padding ids.
        examples: encoded held-out examples.
        batch_size: examples per forward pass.
        num_samples: times per example ``K``.
        seed: seed of the masking noise (fixed for comparable numbers).

    Returns:
        ``{"nll": nats per token, "ppl_bound": exp(nll), "tokens": count}``.
    """
    tok = as_text_tokenizer(backbone.tokenizer)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    count = 0
    dev = backbone.device
    for s in range(0, len(examples), batch_size):
        batch = collate(examples[s : s + batch_size], tok)
        ids = batch.input_ids.to(dev)
        target = batch.target_mask.to(dev)
        b = ids.shape[0]
        count += int(target.sum())
        for k in range(num_samples):
            t = ((k + torch.rand(b, generator=gen)) / num_samples).clamp_min(1e-3).to(dev)
            u = torch.rand(ids.shape, generator=gen).to(dev)
            masked = (u < t[:, None]) & target
            noisy = torch.where(masked, torch.full_like(ids, backbone.mask_token_id), ids)
            logp = F.log_softmax(backbone(noisy).float(), dim=-1)
            nll = -logp.gather(-1, ids[..., None])[..., 0]  # [B, N]
            total += float(((nll * masked) / t[:, None]).sum()) / num_samples
    nll = total / max(count, 1)
    return {"nll": nll, "ppl_bound": math.exp(nll), "tokens": count}


@torch.no_grad()
def loglik_by_mask_ratio(
    backbone: Backbone,
    examples: Sequence[EncodedExample],
    bins: Sequence[tuple[float, float]] = DEFAULT_BINS,
    batch_size: int = 32,
    samples_per_bin: int = 1,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Conditional log-likelihood of masked answer tokens by mask ratio.

    For each bin ``[lo, hi)`` and example, a ratio ``r ~ U(lo, hi)`` is drawn,
    ``round(r * T)`` answer tokens (at least one) are masked uniformly at random,
    and the mean ``log p(x_i | visible)`` over masked tokens is recorded.

    Args:
        backbone: the model.
        examples: encoded held-out question-answer examples.
        bins: mask-ratio intervals.
        batch_size: examples per forward pass.
        samples_per_bin: draws per example and bin.
        seed: noise seed.

    Returns:
        One dict per bin: ``lo``, ``hi``, ``loglik`` (mean nats per masked
        token), ``ppl`` (``exp(-loglik)``), ``tokens``.
    """
    tok = as_text_tokenizer(backbone.tokenizer)
    gen = torch.Generator().manual_seed(seed)
    dev = backbone.device
    results = []
    for lo, hi in bins:
        total, count = 0.0, 0
        for _ in range(samples_per_bin):
            for s in range(0, len(examples), batch_size):
                batch = collate(examples[s : s + batch_size], tok)
                ids = batch.input_ids.to(dev)
                target = batch.target_mask
                b = ids.shape[0]
                r = lo + (hi - lo) * torch.rand(b, generator=gen)
                masked = mask_exact_ratio(target, r, gen).to(dev)
                noisy = torch.where(masked, torch.full_like(ids, backbone.mask_token_id), ids)
                logp = F.log_softmax(backbone(noisy).float(), dim=-1)
                ll = logp.gather(-1, ids[..., None])[..., 0]
                total += float(ll[masked].sum())
                count += int(masked.sum())
        mean = total / max(count, 1)
        results.append({"lo": lo, "hi": hi, "loglik": mean, "ppl": math.exp(-mean), "tokens": count})
    return results


_NUMBER = r"-?\$?\s*[0-9][0-9,]*(?:\.[0-9]+)?"
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_FINAL = re.compile(r"####\s*(" + _NUMBER + ")")


def _to_number(s: str) -> float | None:
    s = s.replace(",", "").replace("$", "").replace(" ", "").strip()
    try:
        return float(s)
    except ValueError:
        return None


def extract_final_answer(text: str) -> float | None:
    """Read the final ``#### <number>`` of a GSM8K-style answer.

    Args:
        text: generated or reference answer text.

    Returns:
        The number, or None if there is none.
    """
    m = _FINAL.search(text)
    return _to_number(m.group(1)) if m else None


def _safe_eval(expr: str) -> float | None:
    expr = expr.replace("x", "*").replace("X", "*").replace("÷", "/").replace(",", "").replace("$", "")
    if not re.fullmatch(r"[0-9.+\-*/() %]+", expr) or not re.search(r"[0-9]", expr):
        return None
    if "**" in expr:  # no exponentiation (keeps evaluation cheap and bounded)
        return None
    try:
        return float(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307 - restricted to digits and + - * / ( ) . %
    except Exception:  # noqa: BLE001
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b)) or abs(a - b) < 0.005 + 1e-9


def annotation_stats(text: str) -> dict[str, int]:
    """Count and check the calculator annotations ``<<expr=c>>c`` in a text.

    An annotation is *valid* when (1) it has the form ``<<expr=c>>``, (2)
    ``expr`` is arithmetic over numbers with ``+ - * / ( )`` whose value equals
    ``c``, and (3) the number written right after ``>>`` equals ``c``.

    Args:
        text: the answer text.

    Returns:
        ``{"total", "wellformed", "valid", "arith_ok", "copy_ok"}`` counts: all
        ``<<...>>`` spans, well-formed ones (``<<expr=c>>`` with arithmetic
        ``expr``, a number ``c`` and a number right after ``>>``), valid ones,
        ones whose arithmetic holds, ones whose following number equals ``c``.
    """
    total = wellformed = valid = arith_ok = copy_ok = 0
    for m in _ANNOTATION.finditer(text):
        total += 1
        body = m.group(1)
        if body.count("=") != 1:
            continue
        expr, rhs = body.split("=")
        c = _to_number(rhs)
        if c is None:
            continue
        v = _safe_eval(expr)
        a_ok = v is not None and _close(v, c)
        follow = re.match(r"\s*(" + _NUMBER + ")", text[m.end() :])
        n = _to_number(follow.group(1)) if follow is not None else None
        f_ok = n is not None and _close(n, c)
        wellformed += v is not None and n is not None
        arith_ok += a_ok
        copy_ok += f_ok
        valid += a_ok and f_ok
    return {"total": total, "wellformed": wellformed, "valid": valid, "arith_ok": arith_ok, "copy_ok": copy_ok}


@dataclass
class GenerationEvalConfig:
    """Settings of `evaluate_generation` (each can also be passed to it as a keyword).

    Attributes:
        tokens_per_step: tokens committed per step ``k`` (each must divide ``block_length``).
        gen_length: generated tokens per question.
        block_length: semi-autoregressive block length.
        remasking: remasking rule (see `diffusion.generate`).
        temperature: sampling temperature (0: greedy).
        batch_size: questions per generation batch.
        seed: sampling seed.
        entropy_bound: gamma of the EB-Sampler (None: the fixed schedule; see `diffusion.generate`).
        pc_frac, pc_temperature, sampler: the CoDD settings used with a prior (see `diffusion.GenerationConfig`).
        keep_samples: decoded samples kept per setting for inspection.
        progress: print progress lines.

    Raises:
        ValueError: ``tokens_per_step`` holds a value that is not a positive
            int or does not divide ``block_length``, or a bad ``entropy_bound``,
            ``pc_frac``, ``pc_temperature`` or ``sampler``.
    """

    tokens_per_step: Sequence[int] = (1, 2, 4, 8)
    gen_length: int = 128
    block_length: int = 32
    remasking: str = "low_confidence"
    temperature: float = 0.0
    batch_size: int = 50
    seed: int = 0
    entropy_bound: float | None = None
    pc_frac: float = 1.0
    pc_temperature: float = 1.0
    sampler: str = "latent"
    keep_samples: int = 3
    progress: bool = False

    def __post_init__(self) -> None:
        for k in self.tokens_per_step:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"tokens_per_step: expected positive ints, got {k!r}")
        for k in self.tokens_per_step:
            if self.block_length % k:
                raise ValueError(f"tokens_per_step: {k} does not divide block_length={self.block_length}")
        bound = self.entropy_bound
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound >= 0.0):
            raise ValueError(f"entropy_bound: expected None or a number >= 0 (nats), got {bound!r}")
        check_codd_options(self.pc_frac, self.pc_temperature, self.sampler)


def evaluate_generation(
    backbone: Backbone,
    examples: Sequence[QAExample],
    *,
    config: GenerationEvalConfig | None = None,
    prior: object | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Few-step generation quality and speed on held-out questions.

    For each ``k`` in ``tokens_per_step`` answers are generated with
    ``steps = gen_length / k`` (block diffusion, ``block_length`` columns per
    block) and scored for final-answer exact match and annotation validity.

    Args:
        backbone: a backbone with a tokenizer attached (the project's or a Hugging Face one).
        examples: held-out question-answer pairs.
        config: the settings (``None``: the defaults of `GenerationEvalConfig`).
        prior: optional `diffusion.CoDDPrior` used by every generation (with the
            config's ``pc_frac``, ``pc_temperature`` and ``sampler``).
        **options: fields of `GenerationEvalConfig` replacing those of ``config``,
            e.g. ``evaluate_generation(bb, ex, tokens_per_step=(1, 8))``.

    Returns:
        One dict per ``k``: ``tokens_per_step``, ``steps``, ``exact_match``,
        ``annotation_validity`` (valid / total annotations), ``arith_ok_rate``,
        ``copy_ok_rate``, ``annotations_per_answer``, ``wellformed_per_answer``,
        ``wellformed_rate``, ``valid_per_answer``, ``annotations_total``,
        ``annotations_valid``, ``answers_all_valid``
        (fraction of answers with at least one annotation, all valid),
        ``tokens_per_second``, ``seconds``, ``samples``.

    Raises:
        ValueError: no examples, or a bad ``tokens_per_step``.
        TypeError: an option that is not a field of `GenerationEvalConfig`.
    """
    if not examples:
        raise ValueError("examples: no questions to generate for")
    cfg = build_config(GenerationEvalConfig, config, options, "evaluate_generation")
    results = []
    for k in cfg.tokens_per_step:
        t0 = time.perf_counter()
        texts = _generate_answers(backbone, examples, cfg.gen_length // k, cfg, prior)
        seconds = time.perf_counter() - t0
        rec = _generation_record(k, cfg.gen_length // k, _score_answers(texts, examples), texts, seconds, cfg)
        if cfg.progress:
            print(
                f"k={k} steps={rec['steps']} EM={rec['exact_match']:.3f} validity={rec['annotation_validity']:.3f} "
                f"({rec['annotations_valid']}/{rec['annotations_total']}) tok/s={rec['tokens_per_second']:.1f}",
                flush=True,
            )
        results.append(rec)
    return results


def _generate_answers(
    backbone: Backbone, examples: Sequence[QAExample], steps: int, cfg: GenerationEvalConfig, prior: object | None
) -> list[str]:
    """Generation phase: the decoded answers (up to their first ``[EOS]``) in ``steps`` steps, batch by batch."""
    from .sampling import generate

    tok = as_text_tokenizer(backbone.tokenizer)
    texts: list[str] = []
    for s in range(0, len(examples), cfg.batch_size):
        chunk = examples[s : s + cfg.batch_size]
        prompts, mask = prompt_batch([e.question for e in chunk], tok)  # [B, P]
        prompts = prompts.to(backbone.device)
        out = generate(
            backbone,
            prompts,
            attention_mask=mask,
            gen_length=cfg.gen_length,
            steps=steps,
            block_length=cfg.block_length,
            remasking=cfg.remasking,
            temperature=cfg.temperature,
            entropy_bound=cfg.entropy_bound,
            pc_frac=cfg.pc_frac,
            pc_temperature=cfg.pc_temperature,
            sampler=cfg.sampler,
            prior=prior,
            generator=torch.Generator().manual_seed(cfg.seed + s),
        )  # [B, P + G]
        for row in out[:, prompts.shape[1] :].tolist():
            if tok.eos_id in row:
                row = row[: row.index(tok.eos_id)]
            texts.append(tok.decode(row))
    return texts


def _score_answers(texts: Sequence[str], examples: Sequence[QAExample]) -> dict[str, int]:
    """Scoring phase: counts of exact matches, annotations by kind, and answers whose annotations are all valid."""
    counts = dict.fromkeys(("em", "total", "wellformed", "valid", "arith_ok", "copy_ok", "all_valid"), 0)
    for text, ex in zip(texts, examples, strict=True):
        ref = extract_final_answer(ex.answer)
        pred = extract_final_answer(text)
        counts["em"] += ref is not None and pred is not None and _close(ref, pred)
        st = annotation_stats(text)
        for key in ("total", "wellformed", "valid", "arith_ok", "copy_ok"):
            counts[key] += st[key]
        counts["all_valid"] += st["total"] > 0 and st["valid"] == st["total"]
    return counts


def _generation_record(
    k: int, steps: int, c: dict[str, int], texts: list[str], seconds: float, cfg: GenerationEvalConfig
) -> dict[str, Any]:
    """The result of one tokens-per-step setting from the counts ``c`` of `_score_answers`."""
    n = len(texts)
    total = max(c["total"], 1)
    return {
        "tokens_per_step": k,
        "steps": steps,
        "exact_match": c["em"] / n,
        "annotation_validity": c["valid"] / total,
        "arith_ok_rate": c["arith_ok"] / total,
        "copy_ok_rate": c["copy_ok"] / total,
        "annotations_per_answer": c["total"] / n,
        "wellformed_per_answer": c["wellformed"] / n,
        "wellformed_rate": c["wellformed"] / total,
        "valid_per_answer": c["valid"] / n,
        "annotations_total": c["total"],
        "annotations_valid": c["valid"],
        "answers_all_valid": c["all_valid"] / n,
        "tokens_per_second": n * cfg.gen_length / seconds,
        "seconds": seconds,
        "samples": texts[: cfg.keep_samples],
    }


def evaluate_backbone(
    backbone: Backbone,
    heldout: Sequence[QAExample],
    examples: int = 200,
    questions: int = 50,
    max_length: int = 256,
    max_answer_tokens: int | None = None,
    progress: bool = True,
    *,
    config: GenerationEvalConfig | None = None,
    prior: object | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Full evaluation of a project backbone on held-out question-answer pairs.

    Likelihood measures use the first ``examples`` held-out pairs whose total
    length is at most ``max_length`` tokens (the training length); generation
    uses the first ``questions`` pairs whose reference answer (with ``[EOS]``)
    fits in ``max_answer_tokens`` (default ``gen_length``) tokens.

    Args:
        backbone: a backbone with a tokenizer (``backbone.tokenizer``: the project's,
            or a Hugging Face one seen through `diffusion.tokenizers.HFTokenizer`).
        heldout: held-out pairs.
        examples: pairs for `elbo_bound` and `loglik_by_mask_ratio`.
        questions: questions for `evaluate_generation`.
        max_length: length filter of the likelihood examples.
        max_answer_tokens: answer length filter of the generation questions.
        progress: print progress lines (it replaces ``config.progress``).
        config: the generation settings (``None``: the defaults of `GenerationEvalConfig`).
        prior: optional `diffusion.CoDDPrior` used in generation (the likelihood
            measures are the backbone's own).
        **options: fields of `GenerationEvalConfig` replacing those of ``config``
            (``tokens_per_step``, ``gen_length``, ``block_length``, ``remasking``,
            ``temperature``, ``batch_size``, ``seed``, ``entropy_bound``, ``pc_frac``,
            ``pc_temperature``, ``sampler``).

    Returns:
        A JSON-serialisable dict with ``elbo``, ``loglik_by_mask_ratio``,
        ``generation`` and ``settings``.
    """
    cfg = build_config(GenerationEvalConfig, config, {**options, "progress": progress}, "evaluate_backbone")
    tok = as_text_tokenizer(backbone.tokenizer)
    enc = [e for e in encode_qa(heldout, tok, 10**9) if len(e.prompt) + len(e.target) <= max_length][:examples]
    elbo = elbo_bound(backbone, enc, num_samples=4)
    if progress:
        print(f"heldout nll<={elbo['nll']:.4f} ppl_bound={elbo['ppl_bound']:.3f} ({elbo['tokens']} tokens)", flush=True)
    bins = loglik_by_mask_ratio(backbone, enc)
    limit = max_answer_tokens if max_answer_tokens is not None else cfg.gen_length
    fit = [ex for ex in heldout if len(tok.encode(ex.answer)) + 1 <= limit][:questions]
    gen = evaluate_generation(backbone, fit, config=cfg, prior=prior)
    return {
        "elbo": elbo,
        "loglik_by_mask_ratio": bins,
        "generation": gen,
        "settings": {
            "likelihood_examples": len(enc),
            "questions": len(fit),
            "gen_length": cfg.gen_length,
            "block_length": cfg.block_length,
            "remasking": cfg.remasking,
            "temperature": cfg.temperature,
            "entropy_bound": cfg.entropy_bound,
            "prior": prior is not None,
            "pc_frac": cfg.pc_frac,
            "pc_temperature": cfg.pc_temperature,
            "sampler": cfg.sampler,
            "max_length": max_length,
            "max_answer_tokens": limit,
        },
    }
