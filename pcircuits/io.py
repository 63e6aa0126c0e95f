"""Saving and loading circuits: no pickle, no code run on load, every byte checked.

**Format (version 2).** A saved circuit is one `safetensors
<https://huggingface.co/docs/safetensors>`_ file, so any safetensors reader
can open it:

- tensors: ``param/<bank>`` (the parameter banks of the compiled circuit, all
  in the circuit's dtype), ``edges/<i>`` (``int64`` edge arrays of group
  ``i``: ``[2, E]`` for a sparse sum, ``[n, k]`` for a product that is not
  element-wise) and ``extra/<name>`` (``float64`` attachments of a client,
  e.g. the backoff weights of a CoDD prior, declared in the header);
- the safetensors ``__metadata__`` (a string-to-string map) holds
  ``format = "pcircuits.circuit"``, ``version = "2"`` and ``header``, a JSON
  document with the structure (groups in topological order: kind,
  ``num_nodes``, children indices, variable, distribution by registry name
  and arguments, tie), the backend and the declared extras.

The metadata sits in the safetensors header rather than in a separate JSON
member because the header is already bounded, read first and parsed as
JSON: one file, one read of the header, nothing else to keep in sync.

**Version 1** files (``.npz`` archives of ``.npy`` members written by
earlier versions) still load, through the same validation; their members'
``.npy`` headers are read and checked before any data is read (numpy would
allocate a whole array from a member's header).

**Validation.** [`load`][pcircuits.io.load] checks the whole file before building the
circuit from it: the format marker and version, the header's size
(`MAX_HEADER_BYTES`) and JSON, every structure field (group kinds,
children pointing back only, integer ``num_nodes`` and variables within
`LIMITS`, registered distributions with valid arguments, tie targets),
every member's name, dtype and shape (edges against their group, parameters
against the banks the structure compiles to), sizes against limits derived
from the structure and the file's own length (so a file declaring huge
arrays is refused without allocating them), and values (edges in range, no
NaN, sum and categorical rows with positive mass, Gaussian parameters
finite, frozen leaf parameters such as an Indicator's values equal to those
the structure defines, extras finite). Every malformed file raises
``ValueError`` with a one-line message naming the path.

[`save`][pcircuits.io.save] writes through [`pcircuits.atomic.atomic_write`][pcircuits.atomic.atomic_write]: a failed
save leaves the previous file intact.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import safetensors.torch
import torch

from .atomic import atomic_write
from .distributions.base import DISTRIBUTIONS, DiscreteDistribution, Distribution
from .engine.circuit import TensorCircuit
from .nodes import InputGroup, NodeGroup, ProductGroup, SumGroup

__all__ = [
    "save",
    "load",
    "load_with_extras",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "LIMITS",
    "structure_to_json",
    "structure_from_json",
]

#: Version of the file format written by [`save`][pcircuits.io.save].
FORMAT_VERSION = 2
_MAGIC_V2 = "pcircuits.circuit"
_MAGIC_V1 = "pcircuits"
#: Largest JSON header accepted (bytes); the safetensors library's own limit.
MAX_HEADER_BYTES = 100_000_000
#: Structural limits checked on load (and on save, so every saved file loads).
LIMITS: dict[str, int] = {
    "num_nodes": 2**31 - 1,  # nodes of one group
    "total_nodes": 2**28,  # nodes of all groups together (ties included)
    "num_cats": 2**24,  # categories of a discrete leaf
    "extra_elements": 2**24,  # elements of one extra tensor
}
_PARAM_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_ST_DTYPES = {**_PARAM_DTYPES, "I64": torch.int64}
_NPY_DTYPES = {
    np.dtype("<f2"): torch.float16,
    np.dtype("<f4"): torch.float32,
    np.dtype("<f8"): torch.float64,
    np.dtype("<i8"): torch.int64,
    np.dtype("u1"): torch.uint8,
}
_EXTRA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_BACKENDS = ("auto", "torch", "triton")


class _Invalid(Exception):
    """A reason why a file is not a valid circuit file (turned into a ``ValueError`` naming the path)."""


# --------------------------------------------------------------------- structure
def structure_to_json(root: NodeGroup) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The DAG under ``root`` as a JSON-able dict plus its edge arrays (``int64``)."""
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


def structure_from_json(data: dict[str, Any], arrays: Mapping[str, np.ndarray | torch.Tensor]) -> NodeGroup:
    """Rebuilds the DAG written by [`structure_to_json`][pcircuits.io.structure_to_json].

    Raises:
        ValueError: a malformed structure (see [`load`][pcircuits.io.load] for the checks).
    """
    try:
        specs = _check_structure(data)
        return _build_groups(specs, {k: torch.as_tensor(v) for k, v in arrays.items()})
    except _Invalid as e:
        raise ValueError(f"data: {e}") from None


@dataclass
class _GroupSpec:
    """One group of a saved structure, checked field by field."""

    kind: str
    num_nodes: int
    children: list[int]
    name: str | None
    var: int | None = None
    dist: Distribution | None = None
    tie: int | None = None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_structure(data: Any) -> list[_GroupSpec]:
    """Checks the JSON structure without building anything; returns its groups."""
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list) or not data["groups"]:
        raise _Invalid("structure must be an object with a non-empty 'groups' list")
    items = data["groups"]
    if data.get("root") != len(items) - 1:
        raise _Invalid(f"structure: 'root' must be the last group ({len(items) - 1}), got {data.get('root')!r}")
    specs: list[_GroupSpec] = []
    total_nodes = 0
    for i, item in enumerate(items):
        spec = _check_group(i, item, specs)
        total_nodes += spec.num_nodes
        if total_nodes > LIMITS["total_nodes"]:
            raise _Invalid(f"structure: more than {LIMITS['total_nodes']} nodes in all groups together")
        specs.append(spec)
    num_inputs = sum(s.kind == "input" for s in specs)
    for i, s in enumerate(specs):
        if s.kind == "input" and s.var >= num_inputs:
            raise _Invalid(f"group {i}: variable {s.var} but only {num_inputs} input groups (variables must be 0..V-1)")
    return specs


def _check_group(i: int, item: Any, earlier: list[_GroupSpec]) -> _GroupSpec:
    if not isinstance(item, dict):
        raise _Invalid(f"group {i}: expected an object, got {type(item).__name__}")
    kind = item.get("kind")
    if kind not in ("input", "product", "sum"):
        raise _Invalid(f"group {i}: kind must be 'input', 'product' or 'sum', got {kind!r}")
    n = item.get("num_nodes")
    if not _is_int(n) or not 1 <= n <= LIMITS["num_nodes"]:
        raise _Invalid(f"group {i}: num_nodes must be an int in 1..{LIMITS['num_nodes']}, got {n!r}")
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise _Invalid(f"group {i}: name must be a string or null")
    children = item.get("children")
    if not isinstance(children, list) or not all(_is_int(c) and 0 <= c < i for c in children):
        raise _Invalid(f"group {i}: children must be a list of indices of earlier groups (0..{i - 1})")
    if (kind == "input") != (len(children) == 0):
        raise _Invalid(
            f"group {i}: {'an input group has no' if kind == 'input' else 'a ' + kind + ' group needs'} children"
        )
    spec = _GroupSpec(kind, n, children, name)
    if kind == "input":
        spec.var = item.get("var")
        if not _is_int(spec.var) or spec.var < 0:
            raise _Invalid(f"group {i}: var must be a non-negative int, got {spec.var!r}")
        spec.dist = _check_dist(i, item.get("dist"))
    tie = item.get("tie")
    if tie is not None:
        spec.tie = _check_tie(i, spec, tie, earlier)
    return spec


def _check_tie(i: int, spec: _GroupSpec, tie: Any, earlier: list[_GroupSpec]) -> int:
    """The root of the tie chain of group ``i`` (``spec``), tied to the earlier group ``tie``."""
    kind = spec.kind
    if kind == "product" or not _is_int(tie) or not 0 <= tie < i or earlier[tie].kind != kind:
        raise _Invalid(f"group {i}: tie must index an earlier {kind} group, got {tie!r}")
    if earlier[tie].num_nodes != spec.num_nodes:
        raise _Invalid(f"group {i}: tied to group {tie} of a different size")
    return earlier[tie].tie if earlier[tie].tie is not None else tie


def _check_dist(i: int, data: Any) -> Distribution:
    if not isinstance(data, dict) or data.get("type") not in DISTRIBUTIONS:
        name = data.get("type") if isinstance(data, dict) else data
        raise _Invalid(f"group {i}: unknown distribution {name!r}; known: {sorted(DISTRIBUTIONS)}")
    config = data.get("config", {})
    if not isinstance(config, dict):
        raise _Invalid(f"group {i}: distribution config must be an object")
    try:
        dist = DISTRIBUTIONS[data["type"]](**config)
    except (TypeError, ValueError) as e:
        raise _Invalid(f"group {i}: invalid {data['type']} arguments ({_one_line(e)})") from None
    if dist.discrete and dist.num_cats > LIMITS["num_cats"]:
        raise _Invalid(f"group {i}: {dist.num_cats} categories, more than {LIMITS['num_cats']}")
    return dist


def _edge_shape_ok(spec: _GroupSpec, specs: list[_GroupSpec], shape: tuple[int, ...]) -> bool:
    total = sum(specs[c].num_nodes for c in spec.children)
    if spec.kind == "sum":
        return len(shape) == 2 and shape[0] == 2 and 1 <= shape[1] <= spec.num_nodes * total
    return spec.kind == "product" and shape == (spec.num_nodes, len(spec.children))


def _build_groups(specs: list[_GroupSpec], edges: Mapping[str, torch.Tensor]) -> NodeGroup:
    """Node groups of a checked structure (the constructors check smoothness, decomposability, edge ranges)."""
    groups: list[NodeGroup] = []
    for i, s in enumerate(specs):
        kids = [groups[c] for c in s.children]
        e = edges.get(f"edges/{i}")
        tie = groups[s.tie] if s.tie is not None else None
        try:
            if s.kind == "input":
                g: NodeGroup = InputGroup(s.var, s.num_nodes, s.dist, tie_with=tie, name=s.name)
            elif s.kind == "product":
                g = ProductGroup(kids, edges=e, name=s.name)
            else:
                g = SumGroup(kids, s.num_nodes, edges=e, tie_with=tie, name=s.name)
        except (TypeError, ValueError) as err:
            raise _Invalid(f"group {i}: {_one_line(err)}") from None
        groups.append(g)
    return groups[-1]


def _param_count(specs: list[_GroupSpec], edges: Mapping[str, torch.Tensor]) -> int:
    """Number of parameters the structure compiles to (one ``[n, P]`` or ``[n, k]`` row block per owner)."""
    total = 0
    for i, s in enumerate(specs):
        if s.tie is not None or s.kind == "product":
            continue
        if s.kind == "input":
            total += s.num_nodes * s.dist.num_params
            continue
        e = edges.get(f"edges/{i}")
        if e is None:
            total += s.num_nodes * sum(specs[c].num_nodes for c in s.children)
        else:
            rows = e[0]
            if int(rows.min()) < 0 or int(rows.max()) >= s.num_nodes:
                raise _Invalid(f"group {i}: edges[0] must index sum nodes 0..{s.num_nodes - 1}")
            total += s.num_nodes * int(torch.bincount(rows, minlength=s.num_nodes).max())
    return total


# --------------------------------------------------------------------- members
@dataclass
class _Member:
    """A tensor of the file: its dtype and shape, and how to read its data once checked."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    read: Callable[[], torch.Tensor]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _read_exact(f: BinaryIO, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise _Invalid(f"truncated (expected {n} bytes, found {got})")
        got += k
    return buf


def _tensor_from_bytes(buf: bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not buf:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def _open_safetensors(f: BinaryIO, size: int) -> tuple[dict[str, str], dict[str, _Member]]:
    """Checks a safetensors header (size, JSON, dtypes, shapes, contiguous offsets covering the file)."""
    n, table = _read_safetensors_header(f, size)
    meta = table.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _Invalid("no pcircuits metadata")
    base, data_len = 8 + n, size - 8 - n
    members, spans = {}, []
    for name, entry in table.items():
        dtype, shape, start, end = _check_safetensors_entry(name, entry, data_len)
        spans.append((start, end))
        members[name] = _Member(dtype, shape, _safetensors_reader(f, base + start, end - start, dtype, shape))
    spans.sort()
    covered = 0
    for start, end in spans:
        if start != covered:
            raise _Invalid("tensor data overlaps or leaves gaps")
        covered = end
    if covered != data_len:
        raise _Invalid(f"{data_len - covered} bytes after the last tensor")
    return meta, members


def _read_safetensors_header(f: BinaryIO, size: int) -> tuple[int, dict]:
    """``(header length in bytes, header JSON object)`` of a file of ``size`` bytes, read from its start."""
    if size < 8:
        raise _Invalid("too short to be a circuit file")
    (n,) = struct.unpack("<Q", _read_exact(f, 8))
    limit = min(MAX_HEADER_BYTES, size - 8)
    if not 2 <= n <= limit:
        raise _Invalid(f"not a safetensors file (its first 8 bytes give a header length of {n}, outside 2..{limit})")
    try:
        table = json.loads(_read_exact(f, n).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _Invalid(f"header is not JSON ({_one_line(e)})") from None
    if not isinstance(table, dict):
        raise _Invalid("header is not a JSON object")
    return n, table


def _check_safetensors_entry(name: str, entry: Any, data_len: int) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """``(dtype, shape, start, end)`` of one header entry, its byte span inside the ``data_len`` data bytes."""
    if not isinstance(entry, dict) or entry.get("dtype") not in _ST_DTYPES:
        raise _Invalid(f"tensor {name!r}: dtype must be one of {sorted(_ST_DTYPES)}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _Invalid(f"tensor {name!r}: shape must be a list of non-negative ints")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
        raise _Invalid(f"tensor {name!r}: data_offsets must be two ints")
    dtype = _ST_DTYPES[entry["dtype"]]
    start, end = offsets
    if not 0 <= start <= end <= data_len or end - start != math.prod(shape) * dtype.itemsize:
        raise _Invalid(f"tensor {name!r}: data_offsets {offsets} do not fit its shape {shape} or the file")
    return dtype, tuple(shape), start, end


def _safetensors_reader(f: BinaryIO, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]) -> Callable:
    def read() -> torch.Tensor:
        f.seek(offset)
        return _tensor_from_bytes(_read_exact(f, nbytes), dtype, shape)

    return read


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Invalid("header has duplicate keys")
    return out


def _open_npz(zf: zipfile.ZipFile, size: int) -> dict[str, _Member]:
    """Checks every member of a version-1 archive: name, ``.npy`` header, dtype, shape, stored size."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise _Invalid("archive has duplicate members")
    members = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise _Invalid(f"unexpected archive member {info.filename!r}")
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size or info.file_size > size:
            raise _Invalid(f"member {info.filename!r}: expected an uncompressed member within the file")
        with zf.open(info) as m:
            dtype, shape, fortran, header_len = _npy_header(m, info.filename)
        if header_len + math.prod(shape) * dtype.itemsize != info.file_size:
            raise _Invalid(f"member {info.filename!r}: its header declares shape {list(shape)}, not its stored size")
        members[info.filename[:-4]] = _Member(dtype, shape, _npz_reader(zf, info, header_len, dtype, shape, fortran))
    return members


def _npy_header(m: BinaryIO, name: str) -> tuple[torch.dtype, tuple[int, ...], bool, int]:
    try:
        version = np.lib.format.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
        else:
            raise _Invalid(f"member {name!r}: unsupported .npy version {version}")
    except ValueError as e:
        raise _Invalid(f"member {name!r}: not a .npy array ({_one_line(e)})") from None
    if dtype not in _NPY_DTYPES:
        raise _Invalid(f"member {name!r}: dtype {dtype} is not allowed")
    return _NPY_DTYPES[dtype], tuple(int(d) for d in shape), bool(fortran), m.tell()


def _npz_reader(zf, info, header_len, dtype, shape, fortran) -> Callable:
    def read() -> torch.Tensor:
        with zf.open(info) as m:
            _read_exact(m, header_len)
            buf = _read_exact(m, info.file_size - header_len)
        if fortran and len(shape) > 1:
            return _tensor_from_bytes(buf, dtype, shape[::-1]).permute(*reversed(range(len(shape)))).contiguous()
        return _tensor_from_bytes(buf, dtype, shape)

    return read


# --------------------------------------------------------------------- checks
def _check_members(
    specs: list[_GroupSpec], members: dict[str, _Member], extras_declared: dict[str, tuple[int, ...]]
) -> tuple[dict[str, torch.Tensor], dict[str, _Member], torch.dtype]:
    """Member names, dtypes and shapes against the structure; reads the (bounded) edge arrays."""
    params, edges = {}, {}
    for name, m in members.items():
        kind, _, key = name.partition("/")
        if kind == "param" and key:
            if m.dtype not in _PARAM_DTYPES.values():
                raise _Invalid(f"tensor {name!r}: dtype {m.dtype} is not a float dtype")
            params[key] = m
        elif kind == "edges" and key.isdigit() and int(key) < len(specs) and str(int(key)) == key:
            edges[name] = _read_edge_member(name, m, specs, int(key))
        elif kind == "extra" and key in extras_declared:
            if m.dtype != torch.float64 or m.shape != extras_declared[key]:
                raise _Invalid(f"tensor {name!r}: expected float64 of shape {list(extras_declared[key])}")
        else:
            raise _Invalid(f"unexpected member {name!r}")
    missing = sorted(k for k in extras_declared if f"extra/{k}" not in members)
    if missing:
        raise _Invalid(f"declared extras {missing} are missing")
    return edges, params, _check_param_members(specs, params, edges)


def _read_edge_member(name: str, m: _Member, specs: list[_GroupSpec], group: int) -> torch.Tensor:
    """The edge array ``[2, E]`` of group ``group``, after checking its dtype and shape against the structure."""
    spec = specs[group]
    if m.dtype != torch.int64 or not _edge_shape_ok(spec, specs, m.shape):
        raise _Invalid(
            f"tensor {name!r}: dtype {m.dtype} / shape {list(m.shape)} do not fit group {group} ({spec.kind})"
        )
    return m.read()


def _check_param_members(
    specs: list[_GroupSpec], params: dict[str, _Member], edges: dict[str, torch.Tensor]
) -> torch.dtype:
    """The one float dtype of the parameter members, after checking they hold enough values for the structure."""
    if not params:
        raise _Invalid("no parameters")
    dtypes = {m.dtype for m in params.values()}
    if len(dtypes) != 1:
        raise _Invalid(f"parameters have several dtypes {sorted(map(str, dtypes))}")
    stored = sum(m.numel for m in params.values())
    needed = _param_count(specs, edges)
    if needed > stored:
        raise _Invalid(f"the structure needs {needed} parameters but the file stores {stored}")
    return dtypes.pop()


def _check_banks(circuit: TensorCircuit, params: dict[str, _Member], version: int) -> dict[str, torch.Tensor]:
    """Bank names and shapes against the compiled structure, then each bank's values.

    Frozen leaf banks (an Indicator's values) are defined by the structure. In
    version 2 the stored values must equal it; version-1 files may hold values
    written before indicator groups of one bank kept their own values, so their
    frozen banks are taken from the structure, which is what the user built.
    """
    expected = {name: tuple(p.shape) for name, p in circuit.params.items()}
    if set(params) != set(expected):
        extra, absent = sorted(set(params) - set(expected)), sorted(set(expected) - set(params))
        raise _Invalid(f"parameter banks do not match the structure (unexpected {extra}, missing {absent})")
    for name, shape in expected.items():
        if params[name].shape != shape:
            raise _Invalid(
                f"parameter {name!r} has shape {list(params[name].shape)}, the structure needs {list(shape)}"
            )
    values = {}
    for name, m in params.items():
        values[name] = v = m.read()
        spec = circuit.layout.banks[name]
        if version == 1 and spec.kind == "leaf" and not spec.dist.trainable:
            values[name] = circuit.params[name].detach().clone()
            continue
        problem = _bank_problem(circuit, name, v)
        if problem:
            raise _Invalid(f"parameter {name!r}: {problem}")
    return values


def _bank_problem(circuit: TensorCircuit, name: str, v: torch.Tensor) -> str | None:
    """Why the values ``v [slots, n, k|P]`` of bank ``name`` are invalid, or ``None``."""
    spec = circuit.layout.banks[name]
    if bool(torch.isnan(v).any()) or bool(torch.isposinf(v).any()):
        return "contains NaN or +inf"
    if spec.kind == "sum":
        if spec.masks:
            v = v.masked_fill(~torch.stack(spec.masks), -math.inf)
        return None if bool(torch.isfinite(v).any(-1).all()) else "a sum node has no finite weight"
    dist = spec.dist
    if not dist.trainable:
        if not torch.equal(v.to(circuit.params[name].dtype), circuit.params[name].detach()):
            return f"{type(dist).__name__} parameters differ from the values in the structure"
        return None
    if isinstance(dist, DiscreteDistribution):
        table = dist.log_table(v.double())
        return None if bool(torch.isfinite(table).any(-1).all()) else "a leaf has no category of positive probability"
    try:
        dist.check_params(v.to(circuit.params[name].dtype), "values")
    except (TypeError, ValueError) as e:
        return str(e)
    return None


def _check_extras(extras: dict[str, _Member]) -> dict[str, torch.Tensor]:
    out = {}
    for key, m in extras.items():
        out[key] = v = m.read()
        if not bool(torch.isfinite(v).all()):
            raise _Invalid(f"extra {key!r} has non-finite values")
    return out


def _check_header(header: Any, version: int) -> tuple[dict, str, dict[str, tuple[int, ...]]]:
    if not isinstance(header, dict):
        raise _Invalid("header is not a JSON object")
    backend = header.get("backend", "auto")
    if backend not in _BACKENDS:
        raise _Invalid(f"backend must be one of {_BACKENDS}, got {backend!r}")
    declared = header.get("extras", {}) if version == 2 else {}
    if not isinstance(declared, dict):
        raise _Invalid("extras must be an object")
    extras = {}
    for key, shape in declared.items():
        if (
            not _EXTRA_NAME.match(str(key))
            or not isinstance(shape, list)
            or not all(_is_int(d) and d >= 1 for d in shape)
        ):
            raise _Invalid(f"extra {key!r}: expected a lower-case name and a shape of positive ints")
        if math.prod(shape) > LIMITS["extra_elements"]:
            raise _Invalid(f"extra {key!r}: more than {LIMITS['extra_elements']} elements")
        extras[key] = tuple(shape)
    return header.get("structure"), backend, extras


def _one_line(e: BaseException | str) -> str:
    return " ".join(str(e).split())


# --------------------------------------------------------------------- public
def save(
    circuit: TensorCircuit, path: str | os.PathLike, extras: Mapping[str, torch.Tensor | np.ndarray] | None = None
) -> None:
    """Writes ``circuit`` (structure and parameters) to ``path`` as a version-2 file (see the module docstring).

    The file is written to a temporary file in the same directory and renamed
    over ``path``, so a failed save leaves a previous file intact.

    Args:
        circuit: the compiled circuit.
        path: the target file (any name; ``.safetensors`` is a natural suffix).
        extras: named finite tensors stored beside the circuit (``float64``);
            names are lower-case ``[a-z][a-z0-9_]*``; read back with
            [`load_with_extras`][pcircuits.io.load_with_extras].

    Raises:
        TypeError: ``circuit`` is not a `TensorCircuit`.
        ValueError: a bad extra, a structure beyond `LIMITS`, or a
            target whose directory does not exist.
    """
    if not isinstance(circuit, TensorCircuit):
        raise TypeError(f"circuit must be a TensorCircuit, got {type(circuit).__name__}")
    structure, arrays = structure_to_json(circuit.root)
    try:
        _check_structure(structure)
    except _Invalid as e:
        raise ValueError(f"circuit: cannot be saved: {e}") from None
    tensors = {k: torch.from_numpy(a) for k, a in arrays.items()}
    for name, p in circuit.params.items():
        tensors[f"param/{name}"] = p.detach().cpu().contiguous()
    declared = {}
    for key, value in (extras or {}).items():
        t = _check_extra_value(key, value)
        tensors[f"extra/{key}"] = t
        declared[key] = list(t.shape)
    header = {"structure": structure, "backend": circuit.backend, "extras": declared}
    meta = {"format": _MAGIC_V2, "version": str(FORMAT_VERSION), "header": json.dumps(header, separators=(",", ":"))}
    if len(meta["header"]) > MAX_HEADER_BYTES // 2:
        raise ValueError(
            f"circuit: its structure needs {len(meta['header'])} bytes of JSON, over {MAX_HEADER_BYTES // 2}"
        )
    data = safetensors.torch.save(tensors, metadata=meta)
    with atomic_write(path) as f:
        f.write(data)


def _check_extra_value(key: Any, value: Any) -> torch.Tensor:
    if not isinstance(key, str) or not _EXTRA_NAME.match(key):
        raise ValueError(f"extras: names must match [a-z][a-z0-9_]{{0,63}}, got {key!r}")
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu().contiguous().clone()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"extras: {key!r} is not numeric ({_one_line(e)})") from None
    if t.dim() == 0 or t.numel() == 0 or t.numel() > LIMITS["extra_elements"] or not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"extras: {key!r} must be a non-empty finite tensor of at most {LIMITS['extra_elements']} elements"
        )
    return t


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TensorCircuit:
    """Reads a circuit written by [`save`][pcircuits.io.save] (version 2) or by earlier versions (version-1 ``.npz``).

    Raises:
        ValueError: the file is missing, malformed, written by an unknown
            format version, or declares sizes or values that the structure
            does not allow (see the module docstring); the message names ``path``.
    """
    return load_with_extras(path, map_location)[0]


def load_with_extras(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[TensorCircuit, dict[str, torch.Tensor]]:
    """Like [`load`][pcircuits.io.load], and also returns the extras saved with the circuit (``{name: float64
    tensor}``)."""
    where = os.fspath(path)
    if not os.path.exists(where):
        raise ValueError(f"path: no such file {where!r}")
    if not os.path.isfile(where):
        raise ValueError(f"path: {where!r} is not a regular file")
    try:
        with open(where, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(6)
            if magic == b"\x93NUMPY":
                raise _Invalid("it is a single .npy array")
            if magic[:4] == b"PK\x03\x04":
                f.seek(0)
                with zipfile.ZipFile(f) as zf:
                    circuit, extras = _load_v1(zf, size)
            else:
                f.seek(0)
                meta, members = _open_safetensors(f, size)
                circuit, extras = _load_v2(meta, members)
    except _Invalid as e:
        raise ValueError(f"path: {where!r} is not a valid pcircuits circuit file: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error) as e:
        raise ValueError(f"path: {where!r} is not a readable pcircuits circuit file ({_one_line(e)})") from None
    return circuit.to(map_location), {k: v.to(map_location) for k, v in extras.items()}


def _load_v1(zf: zipfile.ZipFile, size: int) -> tuple[TensorCircuit, dict[str, torch.Tensor]]:
    members = _open_npz(zf, size)
    head = members.pop("header", None)
    if head is None or head.dtype != torch.uint8 or len(head.shape) != 1 or head.numel > MAX_HEADER_BYTES:
        raise _Invalid("no header (not a pcircuits archive)")
    try:
        header = json.loads(bytes(head.read().numpy()).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _Invalid(f"header is not JSON ({_one_line(e)})") from None
    if not isinstance(header, dict) or header.get("format") != _MAGIC_V1:
        raise _Invalid("wrong format marker")
    if header.get("version") != 1:
        raise _Invalid(
            f"written in format version {header.get('version')!r}; this pcircuits reads versions 1 and {FORMAT_VERSION}"
        )
    return _build(header, members, 1)


def _load_v2(meta: dict[str, str], members: dict[str, _Member]) -> tuple[TensorCircuit, dict[str, torch.Tensor]]:
    if meta.get("format") != _MAGIC_V2:
        raise _Invalid("wrong format marker")
    if meta.get("version") != str(FORMAT_VERSION):
        raise _Invalid(
            f"written in format version {meta.get('version')!r}; this pcircuits reads versions 1 and {FORMAT_VERSION}"
        )
    if set(meta) != {"format", "version", "header"}:
        raise _Invalid(f"unexpected metadata keys {sorted(set(meta) - {'format', 'version', 'header'})}")
    try:
        header = json.loads(meta["header"], object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, RecursionError) as e:
        raise _Invalid(f"header is not JSON ({_one_line(e)})") from None
    return _build(header, members, 2)


def _build(header: Any, members: dict[str, _Member], version: int) -> tuple[TensorCircuit, dict[str, torch.Tensor]]:
    """Checks structure and members, compiles, checks and copies the parameters."""
    structure, backend, declared = _check_header(header, version)
    specs = _check_structure(structure)
    edges, params, dtype = _check_members(specs, members, declared)
    extras = _check_extras({k: members[f"extra/{k}"] for k in declared})
    root = _build_groups(specs, edges)
    try:
        circuit = TensorCircuit(root, backend=backend).to(dtype)
    except (TypeError, ValueError) as e:
        raise _Invalid(f"the structure does not compile ({_one_line(e)})") from None
    values = _check_banks(circuit, params, version)
    with torch.no_grad():
        for name, p in circuit.params.items():
            p.copy_(values[name])
    return circuit, extras
