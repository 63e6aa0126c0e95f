"""Command line interface ``codd``.

Subcommands:

* ``codd train-backbone``: train a small masked diffusion backbone
  (see `TrainConfig`).
* ``codd generate``: generate answers for prompts with a saved backbone,
  optionally with a CoDD prior (``--prior``).
* ``codd train-prior``: train a CoDD circuit prior on a frozen backbone.
* ``codd evaluate``: held-out bound, log-likelihood by mask ratio and few-step
  generation quality of a saved backbone on GSM8K-style data, optionally
  with a CoDD prior.

One path from training to generation: ``codd train-prior MODEL --output P``,
then ``codd generate MODEL --prior P --prompt ...`` and ``codd evaluate MODEL
--prior P``. With a ``P`` that has no file suffix, ``train-prior`` writes a
checkpoint directory (`CoDDPrior.save_pretrained`: ``config.json`` with the
backbone's vocabulary size and mask id and the training settings, and
``prior.safetensors``) and ``--prior P`` refuses it for a backbone with
another vocabulary or mask id; ``P`` with a suffix (``prior.safetensors``,
the default) is one circuit file. ``MODEL`` may be left out: it defaults to the small GSM8K
backbone shipped with the package (``diffusion.data.SHIPPED_BACKBONE_DIR``),
and ``--prior shipped`` names the prior trained for it
(``diffusion.data.SHIPPED_PRIOR_FILE``), so ``codd generate --prompt ...``
works from any directory after ``pip install``. Every command takes a
project backbone or a Hugging Face masked LM (LLaDA, Dream) with its own
tokenizer; with a Hugging Face tokenizer each question is formatted with the
tokenizer's chat template when it has one (`diffusion.tokenizers.HFTokenizer`).

Run ``codd <subcommand> --help`` for the options.

Every user error (a bad option, a missing or unreadable file, an output it
must not write) is one line ``codd SUBCOMMAND: error: ...`` on stderr with exit
status 2. Outputs that exist are replaced only with ``--force``, and never
when they are one of the command's inputs. No code from a model directory runs
unless ``--trust-remote-code`` is given (LLaDA and Dream need it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pcircuits.atomic import atomic_write
from pcircuits.cli import (
    USER_ERRORS,
    OneLineArgumentParser,
    check_output,
    float_in,
    int_at_least,
    parse_or_status,
    report_error,
    run_quietly_on_broken_pipe,
)

__all__ = ["main", "build_parser"]

_positive_int = int_at_least(1)
_nonnegative_int = int_at_least(0)
_positive_float = float_in(0.0, low_open=True)
_nonnegative_float = float_in(0.0)
_rate = float_in(0.0, 1.0, high_open=True)
_probability = float_in(0.0, 1.0, low_open=True)
_fraction = float_in(0.0, 1.0)

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_TOKENIZER_HELP = (
    "Text is encoded with the backbone's own tokenizer: the project tokenizer ([BOS] question [SEP]) or a Hugging "
    "Face one, whose chat template (apply_chat_template, one user turn with the generation prompt) formats each "
    "question when the tokenizer has one, else its own special tokens around it."
)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="backbone directory: a project model, a Hugging Face masked LM, LLaDA or Dream "
                   "(default: the small GSM8K backbone shipped with the package)")


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="device of the backbone, e.g. cpu or cuda (default: %(default)s)")
    p.add_argument("--dtype", choices=_DTYPES, default="auto",
                   help="parameter dtype of the backbone (auto: as saved; default: %(default)s)")


def _add_codd(p: argparse.ArgumentParser) -> None:
    from .codd.prior import SAMPLE_METHODS

    p.add_argument("--prior", default=None,
                   help="a CoDD prior written by 'codd train-prior' for this backbone (a checkpoint directory or a "
                   "single file), or 'shipped' for the "
                   "prior shipped with the package for the default backbone (default: no prior)")
    p.add_argument("--pc-frac", type=_fraction, default=1.0,
                   help="gamma in [0, 1]: use the prior in a window only when its mask ratio is at most gamma "
                   "(default: %(default)s)")
    p.add_argument("--pc-temperature", type=_positive_float, default=1.0,
                   help="tau > 0 of p_hat ~ p_prior * prod p_backbone^(1/tau) (default: %(default)s)")
    p.add_argument("--sampler", choices=list(SAMPLE_METHODS), default="latent",
                   help="the prior's sampler (default: %(default)s)")
    p.add_argument("--entropy-bound", type=_nonnegative_float, default=None,
                   help="EB-Sampler: commit per step the longest prefix of positions whose entropy sum minus its "
                   "largest entropy is at most this many nats (default: the fixed schedule)")


def _add_trust(p: argparse.ArgumentParser, what: str = "the model directory") -> None:
    p.add_argument("--trust-remote-code", action="store_true",
                   help=f"allow Python code named by {what} (an auto_map in config.json or tokenizer_config.json; "
                   "LLaDA and Dream need it) to run; only for directories you trust")


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training import TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train-backbone",
        help="train a small masked diffusion backbone",
        description="Train a small bidirectional transformer with the MDLM/LLaDA objective "
        "and save it (with its tokenizer) to --output.",
    )
    p.add_argument(
        "--data", default=d.data, help="'gsm8k', a directory with train/test.jsonl, a .jsonl QA file or a text file"
    )
    p.add_argument("--output", default=d.output_dir, help="output directory (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="write into --output even if it exists")
    p.add_argument("--tokenizer", choices=["bpe", "char"], default=d.tokenizer)
    p.add_argument("--vocab-size", type=_positive_int, default=d.vocab_size, help="BPE vocabulary size")
    p.add_argument("--hidden-size", type=_positive_int, default=d.hidden_size)
    p.add_argument("--layers", type=_positive_int, default=d.num_layers)
    p.add_argument("--heads", type=_positive_int, default=d.num_heads)
    p.add_argument("--intermediate-size", type=_positive_int, default=d.intermediate_size)
    p.add_argument("--max-length", type=_positive_int, default=d.max_length)
    p.add_argument("--min-target-length", type=_nonnegative_int, default=d.min_target_length,
                   help="pad answers with [EOS] to at least this length (default: %(default)s)")
    p.add_argument("--init-from", default=None, help="continue training from this backbone directory")
    _add_trust(p, "the --init-from directory")
    p.add_argument("--truncate-long", action="store_true", help="truncate long QA pairs instead of skipping them")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--lr", type=_positive_float, default=d.lr)
    p.add_argument("--weight-decay", type=_nonnegative_float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=_nonnegative_int, default=d.warmup_steps)
    p.add_argument("--epochs", type=_positive_int, default=d.epochs)
    p.add_argument("--max-steps", type=_positive_int, default=None)
    p.add_argument("--max-minutes", type=_positive_float, default=None, help="wall-clock budget")
    p.add_argument(
        "--eval-every",
        type=_nonnegative_int,
        default=d.eval_every,
        help="held-out evaluation every N steps (0: per epoch)",
    )
    p.add_argument("--eval-examples", type=_positive_int, default=d.eval_examples)
    p.add_argument("--train-limit", type=_positive_int, default=None)
    p.add_argument("--threads", type=_positive_int, default=d.num_threads)
    p.add_argument("--device", default=d.device, help="training device, e.g. cpu or cuda (default: %(default)s)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=d.precision,
                   help="bf16: autocast the forward pass (CUDA only; default: %(default)s)")
    p.add_argument(
        "--dropout", type=_rate, default=d.dropout, help="dropout rate in [0, 1) of a new model (default: %(default)s)"
    )
    p.add_argument(
        "--keep-best", action="store_true", help="keep the checkpoint with the best held-out bound, not the last"
    )
    p.add_argument("--seed", type=_nonnegative_int, default=d.seed)
    p.add_argument("--no-progress", action="store_true")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gen-length", type=_positive_int, default=128)
    p.add_argument("--block-length", type=_positive_int, default=None,
                   help="block length of block diffusion (default: 32, or --gen-length when that is shorter)")
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "margin", "entropy", "random"])
    p.add_argument("--temperature", type=_nonnegative_float, default=0.0)
    p.add_argument("--seed", type=_nonnegative_int, default=0)
    p.add_argument("--threads", type=_positive_int, default=1)
    _add_trust(p)
    _add_runtime(p)
    _add_codd(p)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate answers with a saved backbone",
        description="Generate with block diffusion, optionally with a CoDD prior (--prior). "
        "Prompts come from --prompt (repeatable) or --prompts-file (one per line). " + _TOKENIZER_HELP,
    )
    _add_model(p)
    p.add_argument("--prompt", action="append", default=[], help="a prompt (question); repeatable")
    p.add_argument("--prompts-file", help="text file with one prompt per line")
    p.add_argument(
        "--steps", type=_positive_int, default=None, help="denoising steps (default gen_length / tokens-per-step)"
    )
    p.add_argument("--tokens-per-step", type=_positive_int, default=1)
    p.add_argument("--top-p", type=_probability, default=1.0, help="nucleus mass in (0, 1]")
    p.add_argument(
        "--mode", choices=["block", "full"], default="block", help="block (LLaDA) or full-sequence (Dream-style)"
    )
    p.add_argument("--mask-token-id", type=_nonnegative_int, default=None)
    _add_sampling_args(p)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a saved backbone on held-out question-answer data",
        description="Held-out ELBO / perplexity bound, log-likelihood by mask-ratio bins and few-step "
        "generation (exact match, annotation validity, tokens/s) at several tokens per step, with a CoDD "
        "prior in generation when --prior is given. " + _TOKENIZER_HELP,
    )
    _add_model(p)
    p.add_argument("--data", default="gsm8k", help="'gsm8k', a directory with test.jsonl, or a .jsonl QA file")
    p.add_argument("--examples", type=_positive_int, default=200, help="held-out examples for the likelihood measures")
    p.add_argument("--questions", type=_positive_int, default=50, help="held-out questions for generation")
    p.add_argument("--tokens-per-step", type=_positive_int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument(
        "--max-answer-tokens",
        type=_positive_int,
        default=None,
        help="only generate for questions whose reference answer fits (default gen_length)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=50)
    p.add_argument("--output", help="write the results as JSON here (its folder must exist)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    _add_sampling_args(p)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``codd`` argument parser.

    Returns:
        The parser with the ``train-backbone``, ``generate``, ``evaluate`` and ``train-prior`` subcommands.
    """
    parser = OneLineArgumentParser(prog="codd", description="Masked diffusion language-model tooling.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_generate(sub)
    _add_evaluate(sub)
    _add_train_prior(sub)
    return parser


def _add_train_prior(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-prior",
        help="train a CoDD circuit prior on a frozen backbone",
        description="Mask windows of QA answers (t ~ U(0,1)), cache the backbone's (top-k) logits and fit an HMM "
        "prior to the conditional likelihood with Adam; the best held-out circuit is saved with pcircuits.save. "
        "Memory: the top-k cut is made inside the backbone loop, so the caches take windows x W x (9 + 12 x (top-k + "
        "1)) bytes (targets and mask flags, float32 values, int64 ids; printed before the backbone pass, with a "
        "progress bar over its batches); "
        "the full GSM8K with --mask-scope answer --draws 4 --backoff-bins 10 keeps about 235k windows "
        "(2.8 GiB at W=16, top-k 64; measured peak RSS 3.6 GB for the whole run, see docs/diffusion/codd.md, Memory). "
        + _TOKENIZER_HELP,
    )
    _add_model(p)
    p.add_argument("--data", default="gsm8k", help="'gsm8k', a directory with train.jsonl, or a .jsonl QA file")
    p.add_argument("--output", default="prior.safetensors",
                   help="a checkpoint directory (config.json + prior.safetensors, recording the backbone and the "
                   "settings) when the name has no file suffix, else one circuit file (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    _add_trust(p)
    p.add_argument("--window", type=_positive_int, default=16,
                   help="positions W of the prior's window (default: %(default)s)")
    p.add_argument("--states", type=_positive_int, default=64,
                   help="hidden states of the HMM prior (default: %(default)s)")
    p.add_argument("--windows", type=_positive_int, default=2000, help="training windows")
    p.add_argument("--top-k", type=_nonnegative_int, default=64,
                   help="candidates per position (0: full vocabulary, 4 x V cached bytes per position instead of "
                   "12 x (K + 1))")
    p.add_argument("--epochs", type=_positive_int, default=5,
                   help="Adam epochs over the windows (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="windows per Adam step of the prior (the backbone's batch is --backbone-batch-size; "
                   "default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=0.05, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--em-epochs", type=_nonnegative_int, default=0, help="EM epochs on the windows' tokens first")
    p.add_argument("--weighting", choices=["token", "window"], default="token",
                   help="each masked token counts once (token) or each window does (window)")
    p.add_argument("--mask-scope", choices=["window", "answer"], default="window",
                   help="mask only the window (window) or whole answers, keeping every window tiling them (answer)")
    p.add_argument("--draws", type=_positive_int, default=4, help="mask draws per answer with --mask-scope answer")
    p.add_argument("--backoff-bins", type=_nonnegative_int, default=0,
                   help="fit backoff weights in this many mask-ratio bins on the held-out windows (0: none)")
    p.add_argument("--examples", type=_positive_int, default=None, help="use the first N QA pairs")
    p.add_argument("--backbone-batch-size", type=_positive_int, default=32,
                   help="sequences per backbone call while caching logits; each call holds batch x length x V "
                   "float32 logits, so lower it for large vocabularies on small GPUs (default: %(default)s)")
    p.add_argument("--threads", type=_positive_int, default=1, help="CPU threads of torch (default: %(default)s)")
    p.add_argument("--seed", type=_nonnegative_int, default=0,
                   help="seed of the split, the windows, the initialisation and the training (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the memory estimate still prints)")
    _add_runtime(p)


def _cmd_train_prior(a: argparse.Namespace) -> int:
    import torch

    from .codd.training import is_checkpoint_output, train_prior_cli

    model = _model_dir(a.model)
    check_output(a.output, "--output", [model, a.data], a.force, directory=is_checkpoint_output(a.output))
    torch.set_num_threads(a.threads)
    res = train_prior_cli(
        model, a.data, a.output, window=a.window, states=a.states, num_windows=a.windows,
        top_k=a.top_k or None, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, em_epochs=a.em_epochs,
        examples=a.examples, seed=a.seed, progress=False if a.no_progress else None, weighting=a.weighting,
        backbone_batch=a.backbone_batch_size,
        mask_scope=a.mask_scope, draws=a.draws, backoff_bins=a.backoff_bins, trust_remote_code=a.trust_remote_code,
        device=a.device, dtype=_dtype(a.dtype),
    )
    print(json.dumps(res))
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from .training import TrainConfig, train_backbone

    check_output(a.output, "--output", [a.data, a.init_from], a.force, directory=True)
    cfg = TrainConfig(
        data=a.data,
        output_dir=a.output,
        tokenizer=a.tokenizer,
        vocab_size=a.vocab_size,
        hidden_size=a.hidden_size,
        num_layers=a.layers,
        num_heads=a.heads,
        intermediate_size=a.intermediate_size,
        max_length=a.max_length,
        skip_long=not a.truncate_long,
        min_target_length=a.min_target_length,
        init_from=a.init_from,
        trust_remote_code=a.trust_remote_code,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        warmup_steps=a.warmup_steps,
        epochs=a.epochs,
        max_steps=a.max_steps,
        max_minutes=a.max_minutes,
        eval_every=a.eval_every,
        eval_examples=a.eval_examples,
        train_limit=a.train_limit,
        num_threads=a.threads,
        device=a.device,
        precision=a.precision,
        dropout=a.dropout,
        keep_best=a.keep_best,
        seed=a.seed,
        progress=not a.no_progress,
    )
    res = train_backbone(cfg, log=lambda s: print(s, flush=True))
    if res.heldout:
        h = min(res.heldout, key=lambda r: r["nll"]) if a.keep_best else res.heldout[-1]
        print(
            json.dumps(
                {
                    "output": str(res.output_dir),
                    "steps": res.steps,
                    "heldout_nll": h["nll"],
                    "ppl_bound": h["ppl_bound"],
                }
            )
        )
    return 0


def _model_dir(model: str | None) -> str:
    """The backbone directory: ``model``, or the shipped backbone when it is None."""
    if model is not None:
        return model
    from .data import SHIPPED_BACKBONE_DIR

    return str(SHIPPED_BACKBONE_DIR)


def _dtype(name: str):
    """The torch dtype named by ``--dtype`` (None for ``auto``)."""
    import torch

    return None if name == "auto" else getattr(torch, name)


def _load(a: argparse.Namespace, mask_token_id: int | None = None):
    """The backbone of ``a.model`` on ``a.device`` in ``a.dtype``, its tokenizer seen as a `TextTokenizer`."""
    from .backbones import Backbone, load_backbone
    from .tokenizers import as_text_tokenizer

    model = _model_dir(a.model)
    backbone = load_backbone(model, mask_token_id=mask_token_id, device=a.device, dtype=_dtype(a.dtype),
                             trust_remote_code=a.trust_remote_code)
    if not isinstance(backbone, Backbone):
        raise ValueError(f"model: {model} is a {type(backbone).__name__}, not a masked diffusion backbone")
    if backbone.tokenizer is None:
        raise ValueError(f"model: {model} has no tokenizer; cannot encode text")
    backbone.tokenizer = as_text_tokenizer(backbone.tokenizer)
    return backbone


def _load_prior(spec: str | None, backbone):
    """The prior named by ``--prior`` (None: no prior; ``shipped``: the package's), checked against ``backbone``.

    A checkpoint directory (`CoDDPrior.from_pretrained`) is refused when its
    recorded vocabulary size or mask token id differs from the backbone's; a
    single file records no mask id, so only its vocabulary is checked.
    """
    if spec is None:
        return None
    from .codd.prior import CoDDPrior
    from .data import SHIPPED_PRIOR_FILE

    path = SHIPPED_PRIOR_FILE if spec == "shipped" else Path(spec)
    if path.is_dir():
        try:
            prior = CoDDPrior.from_pretrained(path, backbone=backbone)
        except ValueError as e:
            raise ValueError(f"--prior: {e}") from None
        return prior.to(backbone.device)
    if not path.is_file():
        raise ValueError(
            f"--prior: {spec!r} is not a prior file or checkpoint directory "
            "(write one with 'codd train-prior', or pass 'shipped')"
        )
    prior = CoDDPrior.load(path)
    if prior.vocab_size != backbone.vocab_size:
        raise ValueError(
            f"--prior: {spec!r} was trained for a vocabulary of {prior.vocab_size} tokens, "
            f"but the backbone has {backbone.vocab_size}; train a prior for this backbone with 'codd train-prior'"
        )
    return prior.to(backbone.device)


def _block_length(a: argparse.Namespace) -> int:
    """``--block-length``, by default 32 or ``--gen-length`` when that is shorter."""
    return a.block_length if a.block_length is not None else min(32, a.gen_length)


def _read_prompts(a: argparse.Namespace) -> list[str]:
    """The prompts of ``--prompt`` and ``--prompts-file``."""
    prompts = list(a.prompt)
    if a.prompts_file:
        try:
            prompts += [
                ln.strip() for ln in Path(a.prompts_file).read_text(encoding="utf-8").splitlines() if ln.strip()
            ]
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--prompts-file: cannot read {a.prompts_file!r} ({type(e).__name__})") from None
    if not prompts:
        raise ValueError("--prompt / --prompts-file: no prompts given")
    return prompts


def _cmd_generate(a: argparse.Namespace) -> int:
    import torch

    from .data import prompt_batch
    from .sampling import generate

    torch.set_num_threads(a.threads)
    prompts = _read_prompts(a)
    backbone = _load(a, a.mask_token_id)
    prior = _load_prior(a.prior, backbone)
    tok = backbone.tokenizer
    ids, mask = prompt_batch(prompts, tok)  # [B, P]
    steps = a.steps if a.steps is not None else a.gen_length // a.tokens_per_step
    block = _block_length(a) if a.mode == "block" else None
    out = generate(
        backbone,
        ids,
        gen_length=a.gen_length,
        steps=steps,
        block_length=block,
        remasking=a.remasking,
        temperature=a.temperature,
        top_p=a.top_p,
        entropy_bound=a.entropy_bound,
        pc_frac=a.pc_frac,
        pc_temperature=a.pc_temperature,
        sampler=a.sampler,
        prior=prior,
        generator=torch.Generator().manual_seed(a.seed),
        attention_mask=mask,
    )  # [B, P + gen_length]
    eos = tok.eos_id
    for p, row in zip(prompts, out[:, ids.shape[1] :].tolist(), strict=True):
        if eos is not None and eos in row:
            row = row[: row.index(eos)]
        print(f"### {p}\n{tok.decode(row, skip_special_tokens=True)}\n")
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    import torch

    from .data import load_gsm8k, read_jsonl_qa
    from .evaluation import evaluate_backbone

    if a.output:
        check_output(a.output, "--output", [_model_dir(a.model), a.data], a.force)
    torch.set_num_threads(a.threads)
    backbone = _load(a)
    prior = _load_prior(a.prior, backbone)
    if a.data == "gsm8k":
        held = load_gsm8k("test")
    elif Path(a.data).is_dir():
        held = load_gsm8k("test", a.data)
    else:
        held = read_jsonl_qa(a.data)
    results = evaluate_backbone(
        backbone,
        held,
        examples=a.examples,
        questions=a.questions,
        tokens_per_step=a.tokens_per_step,
        gen_length=a.gen_length,
        block_length=_block_length(a),
        remasking=a.remasking,
        temperature=a.temperature,
        batch_size=a.batch_size,
        seed=a.seed,
        max_answer_tokens=a.max_answer_tokens,
        entropy_bound=a.entropy_bound,
        pc_frac=a.pc_frac,
        pc_temperature=a.pc_temperature,
        sampler=a.sampler,
        prior=prior,
    )
    text = json.dumps(results, indent=1)
    if a.output:
        with atomic_write(a.output, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``codd`` command.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Process exit status (0 on success, 2 on bad input: one line
        ``codd[ SUBCOMMAND]: error: ...`` on stderr). ``--help`` exits with
        ``SystemExit(0)``.
    """
    parser = build_parser()
    a = parse_or_status(parser, argv)
    if isinstance(a, int):
        return a
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    prog = f"codd {a.command}"
    try:
        if a.command == "train-backbone":
            return _cmd_train(a)
        if a.command == "generate":
            return _cmd_generate(a)
        if a.command == "train-prior":
            return _cmd_train_prior(a)
        return _cmd_evaluate(a)
    except BrokenPipeError:
        return run_quietly_on_broken_pipe(1)
    except USER_ERRORS as e:
        return report_error(prog, e)


if __name__ == "__main__":
    sys.exit(main())
