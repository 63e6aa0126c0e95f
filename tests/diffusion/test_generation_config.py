"""`GenerationEvalConfig`: the settings of `evaluate_generation`, checked before any generation."""

import pytest

from diffusion.data import QAExample
from diffusion.evaluation import GenerationEvalConfig, evaluate_generation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tokens_per_step": (0,)}, "positive ints"),
        ({"tokens_per_step": (True,)}, "positive ints"),
        ({"tokens_per_step": (1, 3), "block_length": 4}, "does not divide"),
    ],
)
def test_bad_tokens_per_step_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationEvalConfig(**kwargs)


def test_unknown_option_is_refused_before_generating():
    # the backbone is never touched: the option check comes first
    with pytest.raises(TypeError, match="steps_per_token"):
        evaluate_generation(object(), [QAExample("1+1?", "#### 2")], steps_per_token=(1,))
    with pytest.raises(TypeError, match="GenerationEvalConfig"):
        evaluate_generation(object(), [QAExample("1+1?", "#### 2")], config={"gen_length": 8})
