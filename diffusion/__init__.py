"""Masked diffusion language-model tooling (backbones, training, sampling, evaluation)."""
