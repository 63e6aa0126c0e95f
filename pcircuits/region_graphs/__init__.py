"""Region graphs: the variable-scope skeletons that circuit templates are built on.

A [`RegionGraph`][pcircuits.region_graphs.graph.RegionGraph] holds regions (sets of variables) and partitions
(splits of a region into disjoint child regions). The constructors build
the classic families; [`pcircuits.structures.from_region_graph`][pcircuits.structures.templates.from_region_graph] turns
any of them into a circuit.
"""

from .constructors import (
    chow_liu,
    fully_factorized,
    linear_chain,
    poon_domingos,
    quad_tree,
    random_binary_tree,
    tree_region_graph,
)
from .graph import RegionGraph

__all__ = [
    "RegionGraph",
    "chow_liu",
    "fully_factorized",
    "linear_chain",
    "poon_domingos",
    "quad_tree",
    "random_binary_tree",
    "tree_region_graph",
]
