"""Masked diffusion language-model tooling.

Backbones (token ids in, per-position logits out), the MDLM / LLaDA training
objective, block and full-sequence diffusion samplers with a joint-draw hook
(used by the CoDD circuit prior), evaluation on GSM8K, and the ``codd`` CLI.
"""

from .backbones import (
    DREAM_MASK_TOKEN_ID,
    LLADA_MASK_TOKEN_ID,
    Backbone,
    DreamBackbone,
    LLaDABackbone,
    MaskedLMBackbone,
    build_backbone,
    load_backbone,
    save_backbone,
)
from .data import QAExample, encode_prompts, load_gsm8k
from .evaluation import annotation_stats, elbo_bound, evaluate_generation, extract_final_answer, loglik_by_mask_ratio
from .masking import mask_tokens, masked_diffusion_loss, sample_times
from .sampling import REMASKING_RULES, FactorizedDraw, GenerationConfig, JointDraw, generate
from .tokenizers import BPETokenizer, CharTokenizer, TextTokenizer, load_tokenizer, train_bpe_tokenizer
from .training import TrainConfig, train_backbone
from .codd import CoDDDraw, CoDDPrior, PriorTrainConfig, fit_prior

__all__ = [
    "Backbone",
    "MaskedLMBackbone",
    "LLaDABackbone",
    "DreamBackbone",
    "LLADA_MASK_TOKEN_ID",
    "DREAM_MASK_TOKEN_ID",
    "build_backbone",
    "load_backbone",
    "save_backbone",
    "QAExample",
    "load_gsm8k",
    "encode_prompts",
    "sample_times",
    "mask_tokens",
    "masked_diffusion_loss",
    "generate",
    "GenerationConfig",
    "JointDraw",
    "FactorizedDraw",
    "REMASKING_RULES",
    "elbo_bound",
    "loglik_by_mask_ratio",
    "evaluate_generation",
    "annotation_stats",
    "extract_final_answer",
    "TextTokenizer",
    "CharTokenizer",
    "BPETokenizer",
    "train_bpe_tokenizer",
    "load_tokenizer",
    "TrainConfig",
    "train_backbone",
    "CoDDPrior",
    "CoDDDraw",
    "fit_prior",
    "PriorTrainConfig",
]
