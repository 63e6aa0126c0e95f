"""Parameter learning (EM, gradients) and structure learning (HCLT, LearnSPN)."""

from ..region_graphs.chow_liu_tree import chow_liu_tree, mutual_information
from .em import apply_statistics, em, expected_statistics
from .hclt import FitResult, HCLTConfig, learn_hclt
from .learnspn import LearnSPNConfig, learn_spn

__all__ = [
    "FitResult",
    "HCLTConfig",
    "LearnSPNConfig",
    "apply_statistics",
    "chow_liu_tree",
    "em",
    "expected_statistics",
    "learn_hclt",
    "learn_spn",
    "mutual_information",
]
