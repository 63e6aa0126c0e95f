"""Parameter learning (EM, gradients) and structure learning."""

from .chow_liu import FitResult, chow_liu_tree, learn_hclt, mutual_information
from .em import apply_statistics, em, expected_statistics
from .learnspn import learn_spn

__all__ = ["em", "expected_statistics", "apply_statistics", "FitResult", "chow_liu_tree", "learn_hclt", "learn_spn", "mutual_information"]
