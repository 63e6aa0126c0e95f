"""Compilation of node-group DAGs into layered tensor modules.

Public interface for queries, learners and clients (see ``docs/engine.md``):
[`TensorCircuit`][pcircuits.engine.circuit.TensorCircuit] (``prepare``, ``leaf_values``, ``upward``,
``leaf_blocks()``, ``sum_blocks()``, ``banks()``, ``var_cats``,
``continuous``), the records of `blocks`, [`Evidence`][pcircuits.engine.evidence.Evidence], and the
top-down passes of [`downward`][pcircuits.engine.downward].
"""

from .blocks import BankInfo, LeafBlockInfo, SumBlockInfo
from .circuit import BlockEvidence, Evidence, TensorCircuit, compile
from .layout import Layout, build_layout

__all__ = [
    "TensorCircuit",
    "Evidence",
    "BlockEvidence",
    "LeafBlockInfo",
    "SumBlockInfo",
    "BankInfo",
    "compile",
    "Layout",
    "build_layout",
]
