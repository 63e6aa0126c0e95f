"""Parameter learning (EM, Anemone, gradients) and structure learning (HCLT, LearnSPN)."""

from ..region_graphs.chow_liu_tree import chow_liu_tree, mutual_information
from .anemone import anemone, anemone_step, model_statistics
from .em import apply_statistics, em, expected_statistics
from .hclt import FitResult, HCLTConfig, learn_hclt
from .learnspn import LearnSPNConfig, learn_spn

__all__ = [
    "FitResult",
    "HCLTConfig",
    "LearnSPNConfig",
    "anemone",
    "anemone_step",
    "apply_statistics",
    "chow_liu_tree",
    "em",
    "expected_statistics",
    "learn_hclt",
    "learn_spn",
    "model_statistics",
    "mutual_information",
]
