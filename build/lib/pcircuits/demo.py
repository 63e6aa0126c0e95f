"""The circuits demo: build, train with EM, evaluate, query, save and reload a circuit.

Run with ``python -m pcircuits.demo``. It uses the NLTCS data bundled with the
package (16 binary variables). ``make demo`` runs the repository's ``demo.py``,
which sits above both packages: this demo, then the short demos of the
``diffusion`` package.
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
    """Runs the demo: data, structure, EM, queries, then saving and reloading."""
    # the demo's tensors are small: one thread avoids OpenMP overhead (and stalls on a busy machine)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, valid, test = (load_bundled(s) for s in ("train", "valid", "test"))
    sizes = f"{train.shape[0]} train / {valid.shape[0]} valid / {test.shape[0]} test examples"
    print(f"NLTCS: {sizes}, {train.shape[1]} variables")
    circuit = _train(train, valid, test)
    _query(circuit, train, test)
    _save_and_reload(circuit, test)


def _train(train: torch.Tensor, valid: torch.Tensor, test: torch.Tensor) -> pc.TensorCircuit:
    """An HCLT over the Chow-Liu tree of ``train`` ``[N, 16]``, trained with mini-batch then full-batch EM."""
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
    per_split = ", ".join(f"{k} {v:.3f}" for k, v in lls.items())
    print(f"log-likelihood per example: {per_split} (reference HCLT: test -6.00)")
    return circuit


def _query(circuit: pc.TensorCircuit, train: torch.Tensor, test: torch.Tensor) -> None:
    """Conditionals, an MPE completion and samples, with the last 8 variables missing."""
    x = test[:3].clone()
    missing = torch.zeros_like(x, dtype=torch.bool)
    missing[:, 8:] = True
    marg = pc.marginals(circuit, x, missing)
    print("p(X_8 = 1 | first 8 variables) for 3 test rows:", [round(v, 3) for v in marg[:, 8, 1].tolist()])
    print("MPE completion of row 0:", pc.mpe(circuit, x, missing)[0].tolist())
    samples = pc.sample(circuit, num_samples=5000, seed=0)
    print(f"5000 samples: mean of X_0 {samples[:, 0].float().mean():.3f} vs data {train[:, 0].float().mean():.3f}")


def _save_and_reload(circuit: pc.TensorCircuit, test: torch.Tensor) -> None:
    """Saves the circuit to a temporary file, reloads it and compares the outputs on ``test``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nltcs_hclt.safetensors"
        pc.save(circuit, path)
        loaded = pc.load(path)
        same = torch.equal(loaded(test), circuit(test))
        print(f"saved {path.stat().st_size / 1024:.0f} KiB; reloaded outputs bit-identical: {same}")


if __name__ == "__main__":
    main()
