"""Parameter learning (EM, gradients) and structure learning."""

from .em import apply_statistics, em, expected_statistics

__all__ = ["em", "expected_statistics", "apply_statistics"]
