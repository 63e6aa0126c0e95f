"""pcircuits: tractable probabilistic circuits for CPU and GPU.

Build circuits from vectorized node groups ([`inputs`][pcircuits.nodes.inputs], [`multiply`][pcircuits.nodes.multiply],
[`summate`][pcircuits.nodes.summate]), compile them with [`compile`][pcircuits.engine.circuit.compile] into a
[`TensorCircuit`][pcircuits.engine.circuit.TensorCircuit] (a ``torch.nn.Module``), query them exactly and learn
their parameters with EM ([`em`][pcircuits.learning.em.em], [`anemone`][pcircuits.learning.anemone.anemone]) or
gradients.
"""

from .distributions import Bernoulli, Categorical, Distribution, Gaussian, Indicator
from .engine import TensorCircuit, compile
from .io import load, save
from .learning import anemone, em
from .nodes import InputGroup, NodeGroup, ProductGroup, SumGroup, inputs, multiply, summate
from .queries import log_likelihood, marginals, mpe, sample
from . import region_graphs, structures  # noqa: E402  (templates build on everything above)

__version__ = "0.1.0"

__all__ = [
    "Bernoulli",
    "Categorical",
    "Distribution",
    "Gaussian",
    "Indicator",
    "InputGroup",
    "NodeGroup",
    "ProductGroup",
    "SumGroup",
    "TensorCircuit",
    "anemone",
    "compile",
    "em",
    "inputs",
    "load",
    "log_likelihood",
    "marginals",
    "mpe",
    "multiply",
    "region_graphs",
    "sample",
    "save",
    "structures",
    "summate",
]
