"""Hidden Chow-Liu trees (HCLT): a Chow-Liu tree with a latent variable per data variable.

The template `hclt` estimates the Chow-Liu tree
([`chow_liu_tree`][pcircuits.region_graphs.chow_liu_tree.chow_liu_tree]) and builds
the HCLT over it with [`hclt_from_tree`][pcircuits.learning.hclt.hclt_from_tree]; both
live in lower layers because the learner [`pcircuits.learning.learn_hclt`][pcircuits.learning.hclt.learn_hclt]
needs them too. Shapes: ``N`` examples, ``V`` variables.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._index import as_int
from ..learning.hclt import HCLTGroups, hclt_from_tree
from ..nodes import SumGroup
from ..region_graphs.chow_liu_tree import chow_liu_tree, infer_num_cats
from ..region_graphs.constructors import tree_center

__all__ = ["HCLTGroups", "hclt", "hclt_from_tree", "tree_center"]


def hclt(
    data: np.ndarray | torch.Tensor,
    num_latents: int,
    num_cats: int | Sequence[int] | None = None,
    pseudocount: float = 1.0,
    root_var: int | None = None,
) -> SumGroup:
    """An HCLT whose tree is the Chow-Liu tree of ``data``.

    Args:
        data: ``[N, V]`` discrete training data (category indices).
        num_latents: latent states per variable.
        num_cats: categories per variable (``None``: ``max(data) + 1`` per
            column, at least 2).
        pseudocount: smoothing of the pairwise counts behind the mutual information.
        root_var: root of the tree (``None``: a centre).

    Returns:
        The root group (compile it with [`pcircuits.compile`][pcircuits.engine.circuit.compile]; for a
        clustering-based initialisation and training use
        [`pcircuits.learning.learn_hclt`][pcircuits.learning.hclt.learn_hclt]).
    """
    num_latents = as_int(num_latents, "num_latents", minimum=1)
    arr = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    cats = infer_num_cats(arr) if num_cats is None else num_cats
    tree = chow_liu_tree(arr, num_cats=cats, pseudocount=pseudocount)
    return hclt_from_tree(tree, num_latents, cats, root_var=root_var).root
