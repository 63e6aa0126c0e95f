"""Exact queries over compiled circuits."""

from .likelihood import log_likelihood

__all__ = ["log_likelihood"]
