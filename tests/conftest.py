"""Test-suite settings: one torch thread, so tiny tensor operations stay cheap on a busy 2-core machine,
and a private cache directory for the compiled CPU kernel (compiled once per test session)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

#: Compiled test kernels live under the repository, not /tmp: a machine may mount /tmp noexec, and shared
#: libraries must be loadable from where they are built (the virtualenv's own libraries load from here).
KERNEL_CACHE_ROOT = tempfile.mkdtemp(prefix=".pcircuits-kernels-", dir=Path(__file__).resolve().parents[1])
atexit.register(shutil.rmtree, KERNEL_CACHE_ROOT, ignore_errors=True)
if "PCIRCUITS_CACHE_DIR" not in os.environ:
    os.environ["PCIRCUITS_CACHE_DIR"] = os.path.join(KERNEL_CACHE_ROOT, "session")


@pytest.fixture
def exec_tmp_path() -> Path:
    """A fresh directory from which compiled libraries can be loaded (``tmp_path`` may be on a noexec mount)."""
    return Path(tempfile.mkdtemp(dir=KERNEL_CACHE_ROOT))


@pytest.fixture(autouse=True)
def _reload_compiled_kernel_after_switching_it_off():
    """A test that turned the compiled max-plus kernel off (or made it fail) must not leave it off for others."""
    yield
    from pcircuits.kernels import native

    if native._state is not None and native._state[0] is None:
        native._reset()
