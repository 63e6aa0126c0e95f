"""The Triton backend, run through Triton's CPU interpreter in child processes.

``TRITON_INTERPRET=1`` must be set before :mod:`triton` is imported and it
changes how every ``@triton.jit`` function is built, so the kernel checks
(``interp_ops.py``, ``interp_engine.py``; not collected by the parent run)
run in a fresh pytest process each, with the variable set only there. Nothing
in the parent process imports triton or sees the variable.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed (pip install triton)"
)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@needs_triton
@pytest.mark.parametrize("module", ["interp_ops.py", "interp_engine.py"])
def test_kernels_in_interpreter(module: str) -> None:
    proc = _run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(HERE / module)], timeout=900)
    if proc.returncode != 0:
        pytest.fail(
            f"{module} failed in the interpreter (rc={proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
        )
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


@needs_triton
def test_backend_is_registered_lazily() -> None:
    code = (
        "import sys, pcircuits as pc\n"
        "from pcircuits import kernels\n"
        "assert 'triton' in kernels.BACKENDS\n"
        "assert 'triton' not in sys.modules, 'import pcircuits imported triton'\n"
        "root = pc.summate(pc.inputs(0, 2, pc.Categorical(3)), num_nodes=1)\n"
        "assert pc.compile(root).resolve_backend() == 'torch'\n"
        "assert pc.compile(root, backend='triton').resolve_backend() == 'triton'\n"
        "assert 'triton' not in sys.modules\n"
        "print('ok')\n"
    )
    proc = _run([sys.executable, "-c", code], timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-4000:]
