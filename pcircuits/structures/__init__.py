"""Ready-made circuit structures (templates) built from node groups.

- [`from_region_graph`][pcircuits.structures.templates.from_region_graph]: any
  [`RegionGraph`][pcircuits.region_graphs.graph.RegionGraph] with CP or Tucker layers;
- `hclt`: hidden Chow-Liu trees;
- [`hmm`][pcircuits.structures.templates.hmm]: hidden Markov models with tied parameters;
- [`rat_spn`][pcircuits.structures.templates.rat_spn], [`pd`][pcircuits.structures.templates.pd],
  [`qt`][pcircuits.structures.templates.qt]: RAT-SPNs, Poon-Domingos and quad-tree circuits;
- [`mixture`][pcircuits.structures.templates.mixture] /
  [`mixture_circuit`][pcircuits.structures.templates.mixture_circuit]: mixtures of circuits.
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
