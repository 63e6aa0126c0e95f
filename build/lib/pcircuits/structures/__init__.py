"""Ready-made circuit structures (templates) built from node groups.

- :func:`from_region_graph`: any :class:`~pcircuits.region_graphs.RegionGraph`
  with CP or Tucker layers;
- :func:`hclt`: hidden Chow-Liu trees;
- :func:`hmm`: hidden Markov models with tied parameters;
- :func:`rat_spn`, :func:`pd`, :func:`qt`: RAT-SPNs, Poon-Domingos and quad-tree circuits;
- :func:`mixture` / :func:`mixture_circuit`: mixtures of circuits.
"""

from .hclt import HCLTGroups, hclt, hclt_from_tree, tree_center
from .templates import LAYER_FORMS, copy_parameters, from_region_graph, hmm, mixture, mixture_circuit, pd, qt, rat_spn

__all__ = [
    "HCLTGroups",
    "LAYER_FORMS",
    "copy_parameters",
    "from_region_graph",
    "hclt",
    "hclt_from_tree",
    "hmm",
    "mixture",
    "mixture_circuit",
    "pd",
    "qt",
    "rat_spn",
    "tree_center",
]
