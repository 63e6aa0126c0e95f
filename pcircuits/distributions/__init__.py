"""Leaf distribution families. Each is one class fulfilling
[`Distribution`][pcircuits.distributions.base.Distribution]."""

from .base import DISTRIBUTIONS, DiscreteDistribution, Distribution
from .bernoulli import Bernoulli
from .categorical import Categorical
from .gaussian import Gaussian
from .indicator import Indicator

__all__ = ["Distribution", "DiscreteDistribution", "DISTRIBUTIONS", "Categorical", "Bernoulli", "Gaussian", "Indicator"]
