"""Saving and loading circuits without pickle.

A saved circuit is one ``.npz`` archive (read with ``allow_pickle=False``)
holding the structure as JSON (groups in topological order, distributions
by name and arguments), the edge tensors, and the parameters. Loading
executes no code from the file and gives bit-identical outputs.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np
import torch

from .distributions.base import Distribution
from .engine.circuit import TensorCircuit
from .nodes import InputGroup, NodeGroup, ProductGroup, SumGroup

__all__ = ["save", "load", "FORMAT_VERSION", "structure_to_json", "structure_from_json"]

#: Version of the file format written by :func:`save`.
FORMAT_VERSION = 1
_MAGIC = "pcircuits"


def structure_to_json(root: NodeGroup) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The DAG under ``root`` as a JSON-able dict plus its edge arrays."""
    from .nodes import topological_order

    groups = topological_order(root)
    index = {id(g): i for i, g in enumerate(groups)}
    items, arrays = [], {}
    for i, g in enumerate(groups):
        item: dict[str, Any] = {"kind": g.kind, "num_nodes": g.num_nodes, "name": g.name}
        item["children"] = [index[id(c)] for c in g.children]
        if isinstance(g, InputGroup):
            item["var"] = g.var
            item["dist"] = g.dist.to_json()
        if isinstance(g, (InputGroup, SumGroup)) and g.tied_to is not None:
            item["tie"] = index[id(g.tied_to)]
        edges = getattr(g, "edges", None)
        if edges is not None and not (isinstance(g, ProductGroup) and _is_elementwise(g)):
            arrays[f"edges/{i}"] = edges.numpy().astype(np.int64)
        items.append(item)
    return {"groups": items, "root": len(groups) - 1}, arrays


def _is_elementwise(g: ProductGroup) -> bool:
    n = g.num_nodes
    return all(c.num_nodes == n for c in g.children) and torch.equal(
        g.edges, torch.arange(n).unsqueeze(1).expand(n, len(g.children))
    )


def structure_from_json(data: dict[str, Any], arrays: dict[str, np.ndarray]) -> NodeGroup:
    """Rebuilds the DAG written by :func:`structure_to_json`."""
    groups: list[NodeGroup] = []
    for i, item in enumerate(data["groups"]):
        kids = [groups[c] for c in item["children"]]
        edges = arrays.get(f"edges/{i}")
        edges = None if edges is None else torch.from_numpy(np.array(edges))
        tie = groups[item["tie"]] if item.get("tie") is not None else None
        kind = item["kind"]
        if kind == "input":
            g = InputGroup(item["var"], item["num_nodes"], Distribution.from_json(item["dist"]), tie_with=tie, name=item["name"])
        elif kind == "product":
            g = ProductGroup(kids, edges=edges, name=item["name"])
        elif kind == "sum":
            g = SumGroup(kids, item["num_nodes"], edges=edges, tie_with=tie, name=item["name"])
        else:
            raise ValueError(f"unknown group kind {kind!r} in saved circuit")
        groups.append(g)
    return groups[data["root"]]


def save(circuit: TensorCircuit, path: str | os.PathLike) -> None:
    """Writes ``circuit`` (structure and parameters) to ``path`` (an ``.npz`` archive)."""
    if not isinstance(circuit, TensorCircuit):
        raise TypeError(f"circuit must be a TensorCircuit, got {type(circuit).__name__}")
    structure, arrays = structure_to_json(circuit.root)
    header = {"format": _MAGIC, "version": FORMAT_VERSION, "structure": structure, "backend": circuit.backend}
    payload = {"header": np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    payload.update(arrays)
    for name, p in circuit.params.items():
        payload[f"param/{name}"] = p.detach().cpu().numpy()
    with open(path, "wb") as f:
        np.savez(f, **payload)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TensorCircuit:
    """Reads a circuit written by :func:`save`.

    Raises:
        ValueError: the file is not a pcircuits archive, or was written by an
            unknown format version.
    """
    if not os.path.exists(path):
        raise ValueError(f"path: no such file {os.fspath(path)!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ValueError(f"path: {os.fspath(path)!r} is not a pcircuits circuit file ({e})") from None
    with archive:
        if "header" not in archive.files:
            raise ValueError(f"path: {os.fspath(path)!r} is not a pcircuits circuit file (no header)")
        header = json.loads(archive["header"].tobytes().decode())
        if header.get("format") != _MAGIC:
            raise ValueError(f"path: {os.fspath(path)!r} is not a pcircuits circuit file")
        version = header.get("version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"path: {os.fspath(path)!r} was written in format version {version!r}; this pcircuits reads version {FORMAT_VERSION}"
            )
        arrays = {k: archive[k] for k in archive.files if k.startswith("edges/")}
        params = {k[len("param/") :]: archive[k] for k in archive.files if k.startswith("param/")}
    root = structure_from_json(header["structure"], arrays)
    circuit = TensorCircuit(root, backend=header.get("backend", "auto"))
    dtype = next(iter(params.values())).dtype if params else np.float32
    circuit.to(torch.from_numpy(np.zeros(0, dtype=dtype)).dtype)
    with torch.no_grad():
        for name, p in circuit.params.items():
            if name not in params or tuple(params[name].shape) != tuple(p.shape):
                raise ValueError(f"path: parameter {name!r} is missing or has the wrong shape in the file")
            p.copy_(torch.from_numpy(params[name]))
    return circuit.to(map_location)
