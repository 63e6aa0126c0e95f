"""Parameter learning (EM, Anemone, gradients) and structure learning."""

from .anemone import anemone, anemone_step, model_statistics
from .chow_liu import FitResult, chow_liu_tree, learn_hclt, mutual_information
from .em import apply_statistics, em, expected_statistics
from .learnspn import learn_spn

__all__ = ["em", "anemone", "anemone_step", "model_statistics", "expected_statistics", "apply_statistics", "FitResult", "chow_liu_tree", "learn_hclt", "learn_spn", "mutual_information"]
