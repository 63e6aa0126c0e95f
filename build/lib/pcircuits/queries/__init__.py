"""Exact queries over compiled circuits."""

from .likelihood import log_likelihood
from .marginals import marginals
from .mpe import mpe
from .sampling import sample

__all__ = ["log_likelihood", "marginals", "mpe", "sample"]
