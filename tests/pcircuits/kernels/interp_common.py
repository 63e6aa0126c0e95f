"""Shared set-up of the interpreter checks: switches Triton to its CPU interpreter before importing it."""

from __future__ import annotations

import os
import sys

import pytest

if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "triton was imported without TRITON_INTERPRET=1; run through test_triton_backend.py", allow_module_level=True
    )
os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import torch  # noqa: E402

from pcircuits.kernels import torch_ops, triton_ops  # noqa: E402

assert triton_ops.interpreted(), "the kernels were not built for the interpreter"

__all__ = ["torch_ops", "triton_ops", "assert_close"]


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5, atol: float = 0.0) -> None:
    """Same ``-inf`` pattern, no NaN, and ``max |got - want| <= rtol * max |want| + atol`` on finite entries.

    ``atol`` is for tensors that are zero up to rounding noise (e.g. gradients
    of softmax logits at a stationary point), where a relative error means nothing.
    """
    assert got.shape == want.shape, (got.shape, want.shape)
    assert not torch.isnan(got).any(), "NaN in the Triton result"
    assert torch.equal(torch.isfinite(got), torch.isfinite(want)), "different -inf pattern"
    fin = torch.isfinite(want)
    if not fin.any():
        return
    g, w = got[fin].double(), want[fin].double()
    scale = w.abs().max().clamp_min(1e-30)
    diff = float((g - w).abs().max())
    assert diff <= rtol * float(scale) + atol, f"relative error {diff / float(scale):.3g} >= {rtol} (atol {atol})"
