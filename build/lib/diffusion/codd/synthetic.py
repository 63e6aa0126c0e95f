"""A synthetic task with known ground truth for CoDD.

* The **teacher** is a random sparse HMM over ``L`` positions: every hidden
  state moves to one of a few successors and emits a few tokens, so nearby
  positions are strongly dependent.
* The **oracle backbone** returns the teacher's exact conditionals
  ``p(x_i | observed positions)`` for every masked position (computed with
  `pcircuits.marginals` on the teacher circuit). It is the best factorized
  denoiser there is, so any remaining error of parallel decoding is the
  factorization error that CoDD targets.
* The **trained backbone** (`train_teacher_backbone`) is a tiny
  bidirectional transformer (`diffusion.backbones.build_backbone`) trained on
  teacher samples with the project's masked-diffusion loss
  (`diffusion.masking.masked_diffusion_loss`): a realistic, imperfect denoiser.
* Samples are scored by the teacher's exact log-likelihood.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import pcircuits as pc
from pcircuits.engine.circuit import TensorCircuit
from pcircuits.structures import hmm

from ..backbones import MaskedLMBackbone, build_backbone
from ..masking import masked_diffusion_loss
from ..sampling import GenerationConfig, generate
from ..settings import with_overrides
from .prior import CoDDPrior
from .training import PriorTrainConfig, fit_prior

__all__ = [
    "OracleModel",
    "make_teacher",
    "oracle_backbone",
    "sample_and_score",
    "teacher_windows",
    "train_synthetic_prior",
    "train_teacher_backbone",
    "TeacherBackboneConfig",
]


def make_teacher(
    length: int = 16, states: int = 8, vocab: int = 12, seed: int = 0, fan_out: int = 2, emit: int = 3
) -> TensorCircuit:
    """A random sparse HMM teacher (float64).

    Args:
        length: sequence length ``L``.
        states: hidden states.
        vocab: tokens ``V`` (the mask id of the oracle backbone is ``V``).
        seed: random seed.
        fan_out: successors per state (other transitions get probability 1e-4).
        emit: tokens emitted per state (others get 1e-4).

    Returns:
        The compiled teacher circuit over ``L`` variables with ``V`` categories.
    """
    g = torch.Generator().manual_seed(seed)
    circuit = pc.compile(hmm(length, states, vocab), seed=seed).to(torch.float64)
    by = {grp.name: grp for grp in circuit.layout.groups if getattr(grp, "name", None)}

    def sparse_rows(n: int, k: int, fan: int) -> torch.Tensor:
        w = torch.full((n, k), 1e-4, dtype=torch.float64)
        for r in range(n):
            idx = torch.randperm(k, generator=g)[:fan]
            w[r, idx] += torch.rand(fan, generator=g, dtype=torch.float64) + 0.5
        return w / w.sum(-1, keepdim=True)

    if "trans1" in by:
        circuit.set_group_parameters(by["trans1"], sparse_rows(states, states, fan_out))
    circuit.set_group_parameters(by["emit0"], torch.log(sparse_rows(states, vocab, emit)))
    circuit.set_group_parameters(by["hmm_root"], torch.full((1, states), 1.0 / states, dtype=torch.float64))
    return circuit


class OracleModel(nn.Module):
    """Exact teacher conditionals of the last ``L`` positions as logits (the prompt gets uniform logits).

    Args:
        teacher: the teacher circuit over ``L`` variables and ``V`` tokens.
    """

    def __init__(self, teacher: TensorCircuit):
        super().__init__()
        self.teacher = teacher
        self.length = teacher.num_vars
        self.vocab = teacher.max_cats

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``ids [B, P + L]`` -> logits ``[B, P + L, V + 1]`` (the mask column at ``-inf``)."""
        B, N = input_ids.shape
        L, V = self.length, self.vocab
        ids = input_ids[:, N - L :]
        missing = ids == V
        x = torch.where(missing, torch.zeros_like(ids), ids)
        with torch.no_grad():
            post = pc.marginals(self.teacher, x, missing)  # [B, L, V]
        lg = torch.log(post.clamp_min(1e-30)).float()
        out = torch.zeros(B, N, V + 1)
        out[:, N - L :, :V] = lg
        out[..., V] = -math.inf
        return out


def oracle_backbone(teacher: TensorCircuit) -> MaskedLMBackbone:
    """The oracle as a `diffusion.Backbone` (vocabulary ``V + 1``, mask id ``V``)."""
    V = teacher.max_cats
    return MaskedLMBackbone(OracleModel(teacher), mask_token_id=V, vocab_size=V + 1)


class _TeacherVocab:
    """Token ids of the synthetic task for `build_backbone`: teacher tokens ``0..V-1``, mask ``V``."""

    def __init__(self, vocab: int):
        self.vocab_size = vocab + 1
        self.mask_id = self.pad_id = self.bos_id = self.eos_id = self.sep_id = vocab


class _MaskExcluded(nn.Module):
    """Wraps a masked LM so that the mask column of its logits is ``-inf`` (as for the oracle)."""

    def __init__(self, model: nn.Module, mask_id: int):
        super().__init__()
        self.model = model
        self.mask_id = mask_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids)
        lg = (out if isinstance(out, torch.Tensor) else out.logits).clone()
        lg[..., self.mask_id] = -math.inf
        return lg


@dataclass(frozen=True)
class TeacherBackboneConfig:
    """The settings of `train_teacher_backbone` (each may also be passed to it as a keyword).

    Attributes:
        num_train: teacher samples to train on.
        steps: optimiser steps.
        batch_size: sequences per step.
        hidden_size, num_layers, num_heads, intermediate_size: the transformer
            (`diffusion.backbones.build_backbone`).
        lr: peak learning rate.
        warmup_steps: linear warm-up steps.
        seed: seed of the samples, the initialisation and the masks.
        num_heldout: fresh teacher samples of the held-out bound.
    """

    num_train: int = 20000
    steps: int = 2500
    batch_size: int = 128
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    lr: float = 3e-3
    warmup_steps: int = 100
    seed: int = 0
    num_heldout: int = 1000


def _with_prompt(x: torch.Tensor) -> torch.Tensor:
    """``x [B, L]`` after a one-token prompt (token 0): ``[B, L + 1]``."""
    return torch.cat([torch.zeros(x.shape[0], 1, dtype=torch.long), x], dim=1)


def _student(vocab: int, cfg: TeacherBackboneConfig) -> tuple[MaskedLMBackbone, torch.optim.Optimizer]:
    """A fresh transformer over ``vocab + 1`` ids and its AdamW (weight decay on matrices only)."""
    bb = build_backbone(
        _TeacherVocab(vocab), hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size, max_length=64,
    )  # type: ignore[arg-type]
    decay = [p for p in bb.parameters() if p.dim() >= 2]
    no_decay = [p for p in bb.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    return bb, torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def _train_student(
    bb: MaskedLMBackbone,
    opt: torch.optim.Optimizer,
    data: torch.Tensor,
    mask_id: int,
    cfg: TeacherBackboneConfig,
    generator: torch.Generator,
) -> list[float]:
    """Trains ``bb`` on teacher samples ``data [n, L]``; returns the loss EMA every 100 steps."""
    from ..training import _lr_factor

    maskable = torch.ones(cfg.batch_size, data.shape[1] + 1, dtype=torch.bool)
    maskable[:, 0] = False
    losses = []
    ema = None
    bb.train()
    for step in range(cfg.steps):
        for grp in opt.param_groups:
            grp["lr"] = cfg.lr * _lr_factor(step, step / cfg.steps, cfg.warmup_steps)
        idx = torch.randint(cfg.num_train, (cfg.batch_size,), generator=generator)
        out = masked_diffusion_loss(bb, _with_prompt(data[idx]), mask_id, maskable, generator=generator)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(bb.parameters(), 1.0)
        opt.step()
        val = float(out.loss.detach())
        ema = val if ema is None else 0.98 * ema + 0.02 * val
        if (step + 1) % 100 == 0:
            losses.append(ema)
    bb.eval()
    return losses


@torch.no_grad()
def _heldout_bound(bb: MaskedLMBackbone, held: torch.Tensor, mask_id: int, seed: int) -> float:
    """The masked-diffusion bound (nats per token) on ``held [n, L]``, averaged over 4 draws of ``t`` and masks."""
    hg = torch.Generator().manual_seed(seed + 20_000)
    hm = torch.ones(held.shape[0], held.shape[1] + 1, dtype=torch.bool)
    hm[:, 0] = False
    x = _with_prompt(held)
    return sum(float(masked_diffusion_loss(bb, x, mask_id, hm, generator=hg).loss) for _ in range(4)) / 4


def train_teacher_backbone(
    teacher: TensorCircuit, config: TeacherBackboneConfig | None = None, **settings: Any
) -> tuple[MaskedLMBackbone, dict]:
    """Trains a tiny bidirectional transformer on teacher samples (masked diffusion).

    Vocabulary: the teacher's ``V`` tokens plus the mask id ``V``; inputs are a
    one-token prompt (token 0, never masked) followed by the ``L`` positions,
    exactly what `sample_and_score` feeds a backbone. Optimised with AdamW,
    linear warm-up and cosine decay (as `diffusion.training.train_backbone`)
    on the MDLM / LLaDA loss `masked_diffusion_loss`.

    Phases: teacher samples, the student and its optimiser, the training
    loop, the held-out bound.

    Args:
        teacher: the teacher circuit over ``L`` variables and ``V`` tokens.
        config: the settings (`TeacherBackboneConfig`; default ``TeacherBackboneConfig()``).
        **settings: fields of `TeacherBackboneConfig`, overriding those of ``config``.

    Returns:
        ``(backbone, info)``: the backbone in eval mode (vocabulary ``V + 1``,
        mask column of the logits at ``-inf``), and ``info`` with the settings,
        the parameter count, the training-loss curve, the held-out bound
        (nats per token) on fresh teacher samples and the training seconds.

    Raises:
        TypeError: ``config`` not a `TeacherBackboneConfig` or a keyword that is not a setting.
    """
    cfg = with_overrides(TeacherBackboneConfig, config, settings, "train_teacher_backbone")
    start = time.time()
    V, L = teacher.max_cats, teacher.num_vars
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    data = pc.sample(teacher, cfg.num_train, generator=g).long()
    held = pc.sample(teacher, cfg.num_heldout, generator=torch.Generator().manual_seed(cfg.seed + 10_000)).long()
    bb, opt = _student(V, cfg)
    n_params = sum(p.numel() for p in bb.parameters())
    losses = _train_student(bb, opt, data, V, cfg, g)
    bound = _heldout_bound(bb, held, V, cfg.seed)
    info = {
        "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size, "parameters": n_params, "train_sequences": cfg.num_train,
        "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "train_loss_ema_per_100_steps": losses,
        "heldout_bound_nats_per_token": bound, "teacher_entropy_nats_per_token": None, "seconds": time.time() - start,
    }
    with torch.no_grad():
        info["teacher_entropy_nats_per_token"] = -float(teacher(held).mean()) / L
    model = _MaskExcluded(bb.model, V).eval()
    return MaskedLMBackbone(model, mask_token_id=V, vocab_size=V + 1), info


def teacher_windows(
    teacher: TensorCircuit, backbone: MaskedLMBackbone, num: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training windows: teacher samples, masks with ratio ``t ~ U(0, 1)``, oracle logits.

    Returns:
        ``(x0 [num, L], masked [num, L], logits [num, L, V + 1])``.
    """
    g = torch.Generator().manual_seed(seed)
    x0 = pc.sample(teacher, num, generator=g).long()
    L = x0.shape[1]
    t = torch.rand(num, 1, generator=g)
    masked = torch.rand(num, L, generator=g) < t
    masked[torch.arange(num), torch.randint(L, (num,), generator=g)] = True
    inp = torch.where(masked, torch.full_like(x0, backbone.mask_token_id), x0)
    with torch.no_grad():
        logits = backbone(inp)
    return x0, masked, logits


def train_synthetic_prior(
    teacher: TensorCircuit,
    backbone: MaskedLMBackbone,
    states: int = 16,
    num_windows: int = 2000,
    epochs: int = 8,
    lr: float = 0.05,
    seed: int = 0,
    progress: bool | None = False,
) -> tuple[CoDDPrior, list[float], dict[str, float]]:
    """Trains an HMM prior on the oracle's logits over teacher samples.

    Returns:
        ``(prior, per-epoch held-out NLL per masked token, {"factorized": ...,
        "codd": ...})`` held-out NLLs per masked token.
    """
    from .training import conditional_nll

    x0, masked, logits = teacher_windows(teacher, backbone, num_windows, seed)
    prior = CoDDPrior.hmm(teacher.num_vars, states, backbone.vocab_size, seed=seed)
    settings = PriorTrainConfig(epochs=epochs, batch_size=64, lr=lr, valid_frac=0.1, seed=seed, progress=progress)
    hist = fit_prior(prior, x0, masked, logits, settings)
    xv, mv, lv = teacher_windows(teacher, backbone, 500, seed + 1)
    n = mv.sum()
    nll = {
        "factorized": float(conditional_nll(None, xv, mv, lv).sum() / n),
        "codd": float(conditional_nll(prior, xv, mv, lv).sum() / n),
    }
    return prior, hist, nll


def sample_and_score(
    teacher: TensorCircuit,
    backbone: MaskedLMBackbone,
    num_samples: int,
    tokens_per_step: int,
    prior: CoDDPrior | None = None,
    sampler: str = "latent",
    pc_frac: float = 1.0,
    pc_temperature: float = 1.0,
    remasking: str = "low_confidence",
    seed: int = 0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Generates ``num_samples`` sequences and returns their teacher log-likelihoods ``[num_samples]``.

    One block over the whole sequence (``block_length = L``), sampling
    ``temperature`` (1 by default; it applies to the factorized proposals,
    the prior's draws use ``pc_temperature``), ``L / tokens_per_step`` steps.
    """
    L = teacher.num_vars
    prompt = torch.zeros(num_samples, 1, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    settings = GenerationConfig(
        gen_length=L, steps=L // tokens_per_step, block_length=L, remasking=remasking, temperature=temperature,
        pc_frac=pc_frac, pc_temperature=pc_temperature, sampler=sampler,
    )
    out = generate(backbone, prompt, settings, generator=g, prior=prior)
    with torch.no_grad():
        return teacher(out[:, 1:]).float()
