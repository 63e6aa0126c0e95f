"""The CPU demo: build, train with EM, evaluate, query, save and reload a circuit.

Run with ``make demo`` or ``python -m pcircuits.demo``. It uses the NLTCS
data bundled with the package (16 binary variables), then runs the short CoDD
demo of the ``diffusion`` package.
"""

from __future__ import annotations

import gzip
import tempfile
import time
from pathlib import Path

import torch

import pcircuits as pc

DATA = Path(__file__).parent / "data"


def load_bundled(split: str) -> torch.Tensor:
    """The bundled NLTCS split (``"train"``, ``"valid"`` or ``"test"``) as ``[N, 16]`` long."""
    with gzip.open(DATA / f"nltcs.{split}.data.gz", "rt") as f:
        return torch.tensor([[int(v) for v in line.split(",")] for line in f if line.strip()])


def main() -> None:
    # the demo's tensors are small: one thread avoids OpenMP overhead (and stalls on a busy machine)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, valid, test = (load_bundled(s) for s in ("train", "valid", "test"))
    print(f"NLTCS: {train.shape[0]} train / {valid.shape[0]} valid / {test.shape[0]} test examples, {train.shape[1]} variables")

    from pcircuits.structures import hclt

    root = hclt(train, num_latents=16)
    circuit = pc.compile(root, seed=0)
    print(f"HCLT: {circuit.num_nodes} nodes, {circuit.num_edges} edges, {circuit.num_parameters} parameters")

    t0 = time.perf_counter()
    pc.em(circuit, train, epochs=4, batch_size=512, step_size=0.2, pseudocount=0.1, progress=True)
    history = pc.em(circuit, train, epochs=8, pseudocount=0.1, progress=True)
    with torch.no_grad():
        lls = {name: float(circuit(d).mean()) for name, d in (("train", train), ("valid", valid), ("test", test))}
    print(f"EM ({time.perf_counter() - t0:.1f} s): full-batch train LL per epoch {[round(h, 3) for h in history]}")
    print("log-likelihood per example: " + ", ".join(f"{k} {v:.3f}" for k, v in lls.items()) + " (reference HCLT: test -6.00)")

    # queries: conditionals, MPE completion and samples under missing values
    x = test[:3].clone()
    missing = torch.zeros_like(x, dtype=torch.bool)
    missing[:, 8:] = True
    marg = pc.marginals(circuit, x, missing)
    print("p(X_8 = 1 | first 8 variables) for 3 test rows:", [round(v, 3) for v in marg[:, 8, 1].tolist()])
    print("MPE completion of row 0:", pc.mpe(circuit, x, missing)[0].tolist())
    samples = pc.sample(circuit, num_samples=5000, seed=0)
    print(f"5000 samples: mean of X_0 {samples[:, 0].float().mean():.3f} vs data {train[:, 0].float().mean():.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nltcs_hclt.safetensors"
        pc.save(circuit, path)
        loaded = pc.load(path)
        same = torch.equal(loaded(test), circuit(test))
        print(f"saved {path.stat().st_size / 1024:.0f} KiB; reloaded outputs bit-identical: {same}")

    print("\n== Masked diffusion LM: few-step generation on GSM8K questions ==")
    from diffusion.codd.demo import run_codd_demo
    from diffusion.demo import run_demo

    run_demo()
    print("\n== CoDD: factorized vs circuit-coupled sampling on a synthetic task ==")
    run_codd_demo()


if __name__ == "__main__":
    main()
