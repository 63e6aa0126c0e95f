"""Compilation of node-group DAGs into layered tensor modules."""

from .circuit import Evidence, TensorCircuit, compile
from .layout import Layout, build_layout

__all__ = ["TensorCircuit", "Evidence", "compile", "Layout", "build_layout"]
