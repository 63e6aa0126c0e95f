"""The repository's CPU demo (``make demo``, or ``python demo.py`` from the repository root).

It sits above both packages, which do not import each other's demos: first
the circuits demo of :mod:`pcircuits.demo` (HCLT on the bundled NLTCS data:
EM, queries, save and reload), then few-step generation with a small masked
diffusion LM (:func:`diffusion.demo.run_demo`) and the CoDD comparison of
factorized and circuit-coupled sampling (:func:`diffusion.codd.demo.run_codd_demo`).
"""

from __future__ import annotations

from diffusion.codd.demo import run_codd_demo
from diffusion.demo import run_demo
from pcircuits.demo import main as run_circuits_demo


def main() -> None:
    """Runs the three demos in turn."""
    run_circuits_demo()
    print("\n== Masked diffusion LM: few-step generation on GSM8K questions ==")
    run_demo()
    print("\n== CoDD: factorized vs circuit-coupled sampling on a synthetic task ==")
    run_codd_demo()


if __name__ == "__main__":
    main()
