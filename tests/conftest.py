"""Test-suite settings: one torch thread, so tiny tensor operations stay cheap on a busy 2-core machine."""

import torch

torch.set_num_threads(1)
