"""Public records describing the compiled layers, for queries, learners and clients such as CoDD.

[`TensorCircuit.leaf_blocks`][pcircuits.engine.circuit.TensorCircuit.leaf_blocks],
[`TensorCircuit.sum_blocks`][pcircuits.engine.circuit.TensorCircuit.sum_blocks] and
[`TensorCircuit.banks`][pcircuits.engine.circuit.TensorCircuit.banks] return these records; their tensors live on the
circuit's device (the records are rebuilt after ``.to()``). They are read-only
views of the layout: changing them changes nothing in the circuit.

Shapes: ``G`` groups in a block, ``n`` nodes per group, ``k`` children per
sum node, ``Q`` slots (parameter rows) of a bank, ``P`` raw parameters per
leaf node.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributions.base import Distribution
from ..nodes import InputGroup, SumGroup

__all__ = ["LeafBlockInfo", "SumBlockInfo", "BankInfo"]


@dataclass(frozen=True)
class LeafBlockInfo:
    """A leaf block: ``G`` input groups of one family and size, computed by one batched call.

    Attributes:
        index: position of the block in
            [`TensorCircuit.leaf_blocks`][pcircuits.engine.circuit.TensorCircuit.leaf_blocks]
            (and in the lists of [`TensorCircuit.leaf_values`][pcircuits.engine.circuit.TensorCircuit.leaf_values]).
        dist: the family shared by the block's groups.
        groups: the ``G`` input groups.
        num_nodes: ``n``.
        vars: ``[G]`` long, the variable of each group.
        slots: ``[G]`` long, the row of each group in its bank (tied groups share one).
        bank: name of the parameter bank, a key of ``circuit.params`` (``[Q, n, P]``).
        offset: first column of the block in the leaf layer; group ``g``'s
            node ``j`` is column ``offset + g * n + j`` of ``upward(...)[0]``.
    """

    index: int
    dist: Distribution
    groups: list[InputGroup]
    num_nodes: int
    vars: torch.Tensor
    slots: torch.Tensor
    bank: str
    offset: int

    @property
    def num_groups(self) -> int:
        """``G``."""
        return len(self.groups)

    @property
    def columns(self) -> slice:
        """The block's ``G * n`` columns of the leaf layer."""
        return slice(self.offset, self.offset + self.num_groups * self.num_nodes)


@dataclass(frozen=True)
class SumBlockInfo:
    """A block of sum groups of one layer with equal shape, weights from one bank.

    Attributes:
        layer: index of the inner layer (``upward(...)[layer + 1]`` is its output).
        index: position of the block inside its layer (its nodes follow those of earlier blocks).
        groups: the ``G`` sum groups.
        dense: every node reads all ``k`` children of its group (else ``k`` padded children per node).
        num_nodes: ``n``.
        k: children per node.
        bank: name of the weight bank (``circuit.params[bank]``: logits ``[Q, n, k]``).
        slots: ``[G]`` long, the bank row of each group.
    """

    layer: int
    index: int
    groups: list[SumGroup]
    dense: bool
    num_nodes: int
    k: int
    bank: str
    slots: torch.Tensor

    @property
    def num_groups(self) -> int:
        """``G``."""
        return len(self.groups)


@dataclass(frozen=True)
class BankInfo:
    """A parameter bank, ``circuit.params[name]`` of shape ``[Q, *shape]``.

    Attributes:
        name: the key in ``circuit.params``.
        kind: ``"sum"`` (weight logits ``[Q, n, k]``) or ``"leaf"`` (raw parameters ``[Q, n, P]``).
        shape: shape of one slot, ``(n, k)`` or ``(n, P)``.
        num_slots: ``Q``.
        dist: the leaf family (``None`` for sum banks).
        mask: ``[Q, n, k]`` bool edges of a sparse sum bank (False at pads), else ``None``.
        child_index: ``[Q, n, k]`` long, the child node (of the group's
            ``num_child_nodes``) each padded position of a sparse sum bank reads, else ``None``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    num_slots: int
    dist: Distribution | None
    mask: torch.Tensor | None
    child_index: torch.Tensor | None
