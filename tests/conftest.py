"""Test-suite settings: one torch thread, so tiny tensor operations stay cheap on a busy 2-core machine,
and a private cache directory for the compiled CPU kernel (compiled once per test session)."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(1)

if "PCIRCUITS_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="pcircuits-test-cache-")
    os.environ["PCIRCUITS_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def _reload_compiled_kernel_after_switching_it_off():
    """A test that turned the compiled max-plus kernel off (or made it fail) must not leave it off for others."""
    yield
    from pcircuits.kernels import native

    if native._state is not None and native._state[0] is None:
        native._reset()
