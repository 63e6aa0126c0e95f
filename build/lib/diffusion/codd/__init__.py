"""CoDD: a tractable circuit prior coupling the tokens a masked diffusion model unmasks together.

See `CoDDPrior` (the prior and its queries), `fit_prior` (training on a
frozen backbone, settings in `PriorTrainConfig`) and `CoDDDraw` (the draw
used by `diffusion.generate` with ``prior=``).

Modules, lowest first: ``prior`` (the circuit prior; imports only
`pcircuits` and `diffusion.proposals`), ``draw`` (the prior inside the
denoising loop), ``training`` (fitting it on a frozen backbone),
``synthetic`` and ``demo`` (a task with known ground truth).
"""

from .draw import CoDDDraw
from .prior import ORDER_RULES, SAMPLE_METHODS, CoDDPrior, order_scores
from .training import (
    PriorJobConfig,
    PriorTrainConfig,
    backbone_window_logits,
    conditional_nll,
    fit_prior,
    make_windows,
    topk_with_target,
)

__all__ = [
    "CoDDPrior",
    "CoDDDraw",
    "SAMPLE_METHODS",
    "ORDER_RULES",
    "order_scores",
    "fit_prior",
    "PriorTrainConfig",
    "PriorJobConfig",
    "make_windows",
    "backbone_window_logits",
    "topk_with_target",
    "conditional_nll",
]
