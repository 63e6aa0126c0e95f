"""CoDD: a tractable circuit prior coupling the tokens a masked diffusion model unmasks together.

See `CoDDPrior` (the prior and its queries), `fit_prior` (training on a
frozen backbone) and `CoDDDraw` (the draw used by `diffusion.generate`
with ``prior=``).
"""

from .draw import CoDDDraw
from .prior import ORDER_RULES, SAMPLE_METHODS, CoDDPrior, order_scores
from .training import backbone_window_logits, conditional_nll, fit_prior, make_windows, topk_with_target

__all__ = [
    "CoDDPrior",
    "CoDDDraw",
    "SAMPLE_METHODS",
    "ORDER_RULES",
    "order_scores",
    "fit_prior",
    "make_windows",
    "backbone_window_logits",
    "topk_with_target",
    "conditional_nll",
]
