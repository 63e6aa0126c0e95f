"""Circuit templates: region graphs to circuits, HMMs, RAT-SPNs, Poon-Domingos circuits and mixtures."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch

from .._index import as_int
from ..distributions import Categorical
from ..distributions.base import Distribution
from ..engine.circuit import TensorCircuit, compile
from ..nodes import NodeGroup, SumGroup, inputs, multiply, summate
from ..region_graphs import RegionGraph, poon_domingos, quad_tree, random_binary_tree

__all__ = [
    "LAYER_FORMS",
    "from_region_graph",
    "hmm",
    "rat_spn",
    "pd",
    "qt",
    "mixture",
    "mixture_circuit",
    "copy_parameters",
]

#: Layer forms of [`from_region_graph`][pcircuits.structures.templates.from_region_graph].
LAYER_FORMS = ("cp", "tucker")

LeafSpec = Distribution | Callable[[int], Distribution] | int


def _leaf_fn(leaf: LeafSpec) -> Callable[[int], Distribution]:
    if isinstance(leaf, Distribution):
        return lambda v: leaf
    if not callable(leaf) and not isinstance(leaf, (bool, float)) and hasattr(leaf, "__index__"):
        cats = as_int(leaf, "leaf", minimum=2)
        return lambda v: Categorical(cats)
    if callable(leaf):
        return leaf
    raise ValueError(
        f"leaf must be a distribution, a callable var -> distribution, or an int, got {type(leaf).__name__}"
    )


def _units(value: object, name: str) -> int:
    return as_int(value, name, minimum=1)


def from_region_graph(
    rg: RegionGraph,
    num_units: int,
    leaf: LeafSpec = 2,
    layer: str = "cp",
    num_input_units: int | None = None,
) -> SumGroup:
    """Turns a region graph into a circuit.

    Every input region gets ``num_input_units`` leaves per variable (a
    region over several variables multiplies its variables' leaves
    element-wise). Every partition becomes a product group over its child
    regions' groups and every region with partitions a sum group over its
    partitions' products, with ``num_units`` nodes (one at the root).

    Layer forms:

    - ``"cp"``: element-wise (Hadamard) products of the child regions'
      units, then sums; all regions need the same number of units, so
      ``num_input_units`` must equal ``num_units``.
    - ``"tucker"``: products of all combinations of the child regions' units
      (``K^m`` product nodes for ``m`` children, built with
      ``pc.multiply(..., edges=)``), then sums.

    Args:
        rg: a valid region graph over ``0..V-1``.
        num_units: sum units per inner region.
        leaf: leaf family: a distribution, a callable ``var -> distribution``
            or a number of categories.
        layer: ``"cp"`` or ``"tucker"``.
        num_input_units: leaves per variable (``None``: ``num_units``).

    Returns:
        The root group (one node).

    Raises:
        ValueError: invalid region graph or arguments.
    """
    if not isinstance(rg, RegionGraph):
        raise ValueError(f"rg must be a RegionGraph, got {type(rg).__name__}")
    rg.validate()
    K = _units(num_units, "num_units")
    Ki = K if num_input_units is None else _units(num_input_units, "num_input_units")
    if layer not in LAYER_FORMS:
        raise ValueError(f"layer must be one of {LAYER_FORMS}, got {layer!r}")
    if layer == "cp" and Ki != K:
        raise ValueError(f"num_input_units must equal num_units ({K}) for layer='cp', got {Ki}")
    dist = _leaf_fn(leaf)
    root = rg.root
    group: dict[int, NodeGroup] = {}
    for r in rg.topological_regions():
        parts = rg.region_partitions(r)
        if not parts:
            scope = sorted(rg.scope(r))
            leaves = [inputs(v, Ki, dist(v)) for v in scope]
            g: NodeGroup = leaves[0] if len(leaves) == 1 else multiply(*leaves, name=f"region{r}")
        else:
            prods = []
            for p in parts:
                kids = [group[c] for c in rg.partition_children(p)]
                if layer == "cp" or len(kids) == 1:
                    prods.append(multiply(*kids, name=f"partition{p}"))
                else:
                    grid = torch.tensor(list(itertools.product(*[range(k.num_nodes) for k in kids])), dtype=torch.long)
                    prods.append(multiply(*kids, edges=grid, name=f"partition{p}"))
            g = summate(*prods, num_nodes=1 if r == root else K, name=f"region{r}")
        group[r] = g
    out = group[root]
    if out.num_nodes != 1 or not isinstance(out, SumGroup):
        out = summate(out, num_nodes=1, name="root")
    return out


def rat_spn(
    num_vars: int,
    num_units: int = 8,
    depth: int | None = None,
    num_repetitions: int = 4,
    leaf: LeafSpec = 2,
    layer: str = "cp",
    num_input_units: int | None = None,
    seed: int = 0,
) -> SumGroup:
    """A RAT-SPN: random binary region trees with repetitions (Peharz et al., 2020).

    Args:
        num_vars: number of variables.
        num_units: sum units per region.
        depth: binary splits per path (``None``: down to single variables).
        num_repetitions: random trees under the root.
        leaf: leaf family (see [`from_region_graph`][pcircuits.structures.templates.from_region_graph]).
        layer: ``"cp"`` or ``"tucker"``.
        num_input_units: leaves per variable (``None``: ``num_units``).
        seed: seed of the random trees.

    Returns:
        The root group.
    """
    num_vars = as_int(num_vars, "num_vars", minimum=1)
    depth = None if depth is None else as_int(depth, "depth", minimum=0)
    num_repetitions = as_int(num_repetitions, "num_repetitions", minimum=1)
    seed = as_int(seed, "seed")
    rg = random_binary_tree(num_vars, depth, num_repetitions, seed)
    return from_region_graph(rg, num_units, leaf, layer, num_input_units)


def pd(
    height: int,
    width: int,
    num_units: int = 8,
    delta: int | Sequence[int] = 1,
    leaf: LeafSpec = 256,
    layer: str = "cp",
    num_input_units: int | None = None,
) -> SumGroup:
    """A Poon-Domingos circuit over an image (pixel ``(r, c)`` is variable ``r * width + c``).

    Args:
        height: image rows.
        width: image columns.
        num_units: sum units per region.
        delta: cut step(s) of [`poon_domingos`][pcircuits.region_graphs.constructors.poon_domingos].
        leaf: leaf family (default: 256 categories per pixel).
        layer: ``"cp"`` or ``"tucker"``.
        num_input_units: leaves per pixel (``None``: ``num_units``).

    Returns:
        The root group.
    """
    height, width = as_int(height, "height", minimum=1), as_int(width, "width", minimum=1)
    delta = (
        as_int(delta, "delta", minimum=1)
        if hasattr(delta, "__index__")
        else [as_int(d, "delta", minimum=1) for d in delta]
    )
    return from_region_graph(poon_domingos(height, width, delta), num_units, leaf, layer, num_input_units)


def qt(
    height: int,
    width: int,
    num_units: int = 8,
    num_splits: int = 4,
    leaf: LeafSpec = 256,
    layer: str = "cp",
    num_input_units: int | None = None,
) -> SumGroup:
    """A quad-tree circuit over an image (see [`quad_tree`][pcircuits.region_graphs.constructors.quad_tree]).

    Args:
        height: image rows.
        width: image columns.
        num_units: sum units per region.
        num_splits: 4 or 2 children per level.
        leaf: leaf family (default: 256 categories per pixel).
        layer: ``"cp"`` or ``"tucker"``.
        num_input_units: leaves per pixel (``None``: ``num_units``).

    Returns:
        The root group.
    """
    height, width = as_int(height, "height", minimum=1), as_int(width, "width", minimum=1)
    num_splits = as_int(num_splits, "num_splits")
    return from_region_graph(quad_tree(height, width, num_splits), num_units, leaf, layer, num_input_units)


def hmm(seq_len: int, num_latents: int, num_cats: int, homogeneous: bool = True) -> SumGroup:
    """A hidden Markov model as a circuit, with one sum group per time step.

    The circuit is the HMM's forward recursion run from the last step to the
    first: ``alpha_0`` is the emission group of step 0 and
    ``alpha_t = (sum over z_{t-1} of alpha_{t-1}) * emission_t``; the root
    sums ``alpha_{T-1}``. With ``homogeneous`` all transition sums share one
    weight matrix and all emissions one table (``tie_with``), so the model
    has ``H*H + H*C + H`` parameters whatever its length.

    Args:
        seq_len: number of steps ``T`` (variables ``0..T-1``).
        num_latents: hidden states ``H``.
        num_cats: observed categories ``C``.
        homogeneous: tie transitions and emissions across steps.

    Returns:
        The root group.
    """
    T = _units(seq_len, "seq_len")
    H = _units(num_latents, "num_latents")
    num_cats = as_int(num_cats, "num_cats", minimum=2)
    emit0 = inputs(0, H, Categorical(num_cats), name="emit0")
    alpha: NodeGroup = emit0
    trans: SumGroup | None = None
    for t in range(1, T):
        emit = inputs(t, H, Categorical(num_cats), tie_with=emit0 if homogeneous else None, name=f"emit{t}")
        s = summate(alpha, num_nodes=H, tie_with=trans if homogeneous else None, name=f"trans{t}")
        if trans is None:
            trans = s
        alpha = multiply(s, emit, name=f"alpha{t}")
    return summate(alpha, num_nodes=1, name="hmm_root")


def mixture(*roots: NodeGroup, name: str | None = None) -> SumGroup:
    """A mixture (one sum node) of several circuits over the same variables.

    Args:
        *roots: root groups (one node each) with equal scopes.
        name: label of the new root.

    Returns:
        The mixture's root group; compile it, or use
        [`mixture_circuit`][pcircuits.structures.templates.mixture_circuit] to keep trained parameters.

    Raises:
        ValueError: no roots, a root with more than one node, or different scopes.
    """
    if not roots:
        raise ValueError("roots: mixture needs at least one circuit")
    for i, r in enumerate(roots):
        if not isinstance(r, NodeGroup):
            raise ValueError(f"roots[{i}] must be a node group (a circuit's root), got {type(r).__name__}")
        if r.num_nodes != 1:
            raise ValueError(f"roots[{i}] must have one node, {r!r} has {r.num_nodes}")
        if not r.same_scope(roots[0]):
            raise ValueError(f"roots[{i}] has a different scope than roots[0]")
    return summate(*roots, num_nodes=1, name=name or "mixture")


@torch.no_grad()
def copy_parameters(src: TensorCircuit, dst: TensorCircuit) -> int:
    """Copies the parameters of every group of ``src`` that also belongs to ``dst``.

    Groups are matched by identity (``dst`` built on ``src.root``'s groups).

    Returns:
        The number of groups copied.
    """
    copied = 0
    for gid, (bank, slot) in src.layout.param_slot.items():
        if gid not in dst.layout.param_slot:
            continue
        dbank, dslot = dst.layout.param_slot[gid]
        spec = dst.layout.banks[dbank]
        if spec.kind == "leaf":
            dst.params[dbank][dslot].copy_(src.params[bank][slot])
        else:
            w = src.sum_log_weights()[bank][slot]  # [n, k]
            sspec = src.layout.banks[bank]
            if spec.masks or sspec.masks:
                group = sspec.groups[slot]
                dense = src.group_parameters(group)  # [n, total]
                if spec.masks:
                    mask, child = spec.masks[dslot], spec.child_index[dslot]
                    vals = torch.gather(dense, 1, child).clamp_min(1e-300).log()
                    dst.params[dbank][dslot].copy_(vals.masked_fill(~mask, 0.0))
                else:
                    dst.params[dbank][dslot].copy_(dense.clamp_min(1e-300).log())
            else:
                dst.params[dbank][dslot].copy_(w)
        copied += 1
    return copied


def mixture_circuit(*circuits: TensorCircuit, weights: Sequence[float] | None = None) -> TensorCircuit:
    """Compiles a mixture of trained circuits, keeping their parameters.

    Args:
        *circuits: compiled circuits over the same variables.
        weights: mixture weights (``None``: uniform); normalised.

    Returns:
        A new compiled circuit.
    """
    if not circuits:
        raise ValueError("circuits: mixture needs at least one circuit")
    for i, c in enumerate(circuits):
        if not isinstance(c, TensorCircuit):
            raise ValueError(f"circuits[{i}] must be a TensorCircuit, got {type(c).__name__}")
    root = mixture(*[c.root for c in circuits])
    out = compile(root).to(circuits[0].dtype)
    for c in circuits:
        copy_parameters(c, out)
    w = torch.full((len(circuits),), 1.0 / len(circuits), dtype=torch.float64)
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (len(circuits),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {len(circuits)} non-negative numbers with a positive sum")
        w = w / w.sum()
    bank, slot = out.layout.param_slot[id(root)]
    with torch.no_grad():
        out.params[bank][slot].copy_(w.clamp_min(1e-300).log().unsqueeze(0))
    return out
