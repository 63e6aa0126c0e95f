"""The compiled circuit: a ``torch.nn.Module`` running upward passes layer by layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from .. import kernels
from ..distributions.base import DiscreteDistribution
from .._index import as_int
from ..nodes import NodeGroup
from .blocks import BankInfo, LeafBlockInfo, SumBlockInfo
from .evidence import Domain, Evidence, build_evidence, dense_soft_evidence
from .layout import Gather, Layout, ProductLayer, SumBlock, SumLayer, build_layout

__all__ = ["TensorCircuit", "Evidence", "BlockEvidence", "compile"]

_BACKENDS = ("auto", "torch", "triton")


class BlockEvidence(NamedTuple):
    """The evidence of one leaf block's ``G`` groups (see
    [`TensorCircuit.block_evidence`][pcircuits.engine.circuit.TensorCircuit.block_evidence]).

    Attributes:
        x: ``[B, G]`` values (long for discrete families, float otherwise).
        missing: ``[B, G]`` bool or ``None``.
        soft_evidence: ``[B, G, C]`` (``C`` the family's categories), ``[B, G, K]``
            with ``candidates``, or ``None`` (always ``None`` for continuous families).
        candidates: ``[B, G, K]`` long category ids or ``None``.
    """

    x: torch.Tensor
    missing: torch.Tensor | None
    soft_evidence: torch.Tensor | None
    candidates: torch.Tensor | None


class TensorCircuit(nn.Module):
    """A smooth, decomposable circuit compiled into layers of batched tensor operations.

    Build one with [`pcircuits.compile`][pcircuits.engine.circuit.compile]. Calling it returns the
    log-likelihood of each example (see [`forward`][pcircuits.engine.circuit.TensorCircuit.forward]). Parameters are
    unnormalised logits (sum weights, categorical leaves) or unconstrained raw
    values (Gaussian mean and log std), so gradient training needs no
    projection; EM writes normalised values back into them.

    Attributes:
        root: the symbolic root group.
        num_vars: number of variables ``V``.
        max_cats: largest number of categories ``C`` of a discrete variable (0 if none).
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
    """

    def __init__(self, root: NodeGroup, seed: int = 0, backend: str = "auto"):
        super().__init__()
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.backend = backend
        self.root = root
        self.layout: Layout = build_layout(root)
        self.num_vars = self.layout.num_vars
        self._register_domain()
        self._init_parameters(as_int(seed, "seed", 0))
        self._register_indices()

    def _register_domain(self) -> None:
        """Sets ``max_cats`` and the domain buffers ``_var_cats [V]`` and ``_continuous [V]``."""
        var_cats = self.layout.var_cats
        cats = [c for c in var_cats if c is not None]
        self.max_cats = max(cats) if cats else 0
        self.register_buffer("_var_cats", torch.tensor([c or 0 for c in var_cats]), persistent=False)
        self.register_buffer(
            "_continuous", torch.tensor([c is None for c in var_cats], dtype=torch.bool), persistent=False
        )
        self.has_continuous = bool(self._continuous.any())

    def _init_parameters(self, seed: int) -> None:
        """Draws every bank's initial parameters (bank by bank, in layout order) and registers sparse masks."""
        gen = torch.Generator().manual_seed(seed)
        self.params = nn.ParameterDict()
        for name, spec in self.layout.banks.items():
            if spec.kind == "leaf":
                # every slot from its own group's distribution: groups of one bank share the family
                # and its shape, not the parameters (an Indicator's values are its parameters)
                table = torch.empty(len(spec.groups), *spec.shape, dtype=torch.float32)  # filled in place
                for row, g in zip(table, spec.groups, strict=True):
                    g.dist.init_params_into(row, gen)
                p = nn.Parameter(table, requires_grad=spec.dist.trainable)
            else:
                u = torch.rand((spec.slots, *spec.shape), generator=gen, dtype=torch.float64)
                p = nn.Parameter(torch.log(-torch.log(u.clamp_min(1e-12))).float())  # Dirichlet(1) weights
            self.params[name] = p
            if spec.kind == "sum" and spec.masks:
                self.register_buffer(f"_mask_{name}", torch.stack(spec.masks), persistent=False)

    def _register_indices(self) -> None:
        """Registers the layout's index tensors as non-persistent buffers, so ``.to(device)`` moves them."""
        lay = self.layout
        for i, b in enumerate(lay.leaf_blocks):
            self._buf(f"leaf{i}_vars", b.vars)
            self._buf(f"leaf{i}_slots", b.slots)
        for li, layer in enumerate(lay.layers):
            self._register_gather(f"l{li}", layer.gather)
            if isinstance(layer, ProductLayer):
                for j, term in enumerate(layer.terms):
                    self._register_gather(f"l{li}t{j}", term)
            if isinstance(layer, SumLayer):
                for bi, blk in enumerate(layer.blocks):
                    self._buf(f"l{li}b{bi}_slots", blk.slots)

    # ------------------------------------------------------------------ setup
    def _buf(self, name: str, t: torch.Tensor) -> None:
        self.register_buffer("_i_" + name, t, persistent=False)

    def _get(self, name: str) -> torch.Tensor:
        cache = self.__dict__.setdefault("_buffer_cache", {})
        t = cache.get(name)
        if t is None:
            t = cache[name] = getattr(self, "_i_" + name)
        return t

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double() replace the buffers
        self.__dict__.pop("_buffer_cache", None)
        self.__dict__.pop("_table_cache", None)
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self) -> dict:
        """The module's state without the buffer cache (its execution plan holds closures over this instance)."""
        state = self.__dict__.copy()
        state.pop("_buffer_cache", None)
        state.pop("_table_cache", None)
        return state

    def __setstate__(self, state: dict) -> None:
        """Restores a copied or unpickled circuit; its layout is re-keyed by the copied groups it now holds."""
        super().__setstate__(state)
        self.layout.rekey()

    def _register_gather(self, prefix: str, g: Gather) -> None:
        for si, idx in enumerate(g.indices):
            self._buf(f"{prefix}_src{si}", idx)
        if g.perm is not None:
            self._buf(f"{prefix}_perm", g.perm)

    # ------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def num_nodes(self) -> int:
        """Number of nodes (leaves included)."""
        return sum(self.layout.layer_sizes)

    @property
    def num_edges(self) -> int:
        """Number of sum edges plus product edges."""
        total = 0
        for layer in self.layout.layers:
            if isinstance(layer, ProductLayer):
                total += sum(g.num_nodes * len(g.children) for g in layer.groups)
            else:
                for blk in layer.blocks:
                    for g in blk.groups:
                        total += g.num_nodes * g.num_child_nodes if g.is_dense else g.edges.shape[1]
        return total

    @property
    def num_parameters(self) -> int:
        """Number of free parameters (sum weights counted per edge, tied ones once)."""
        total = 0
        for name, spec in self.layout.banks.items():
            if spec.kind == "leaf":
                total += self.params[name].numel() if spec.dist.trainable else 0
            elif spec.masks:
                total += int(torch.stack(spec.masks).sum())
            else:
                total += self.params[name].numel()
        return total

    def resolve_backend(self) -> str:
        """The kernel backend a pass on the current device uses.

        ``"auto"`` resolves to torch on every device: on an H200 the Triton
        kernels were slower for forward passes (1.05-1.5x) and for the
        soft-evidence leaf (4-18x), on par for forward+backward passes, and at
        most 1.24x faster for EM steps (``docs/kernels.md``), so they stay opt-in.
        """
        if self.backend == "auto":
            return "torch"
        if self.backend == "triton" and "triton" not in kernels.BACKENDS:
            raise ValueError("backend='triton' needs the triton package (pip install triton)")
        return self.backend

    # ----------------------------------------------------- public interface
    @property
    def var_cats(self) -> torch.Tensor:
        """``[V]`` long: categories of each variable (its widest leaf's), 0 for continuous variables."""
        return self._var_cats

    @property
    def continuous(self) -> torch.Tensor:
        """``[V]`` bool: True for continuous (Gaussian) variables."""
        return self._continuous

    @property
    def domain(self) -> Domain:
        """The variables' domains as evidence checks use them (see `Domain`)."""
        return Domain(self.num_vars, self.max_cats, self._var_cats, self._continuous)

    def leaf_blocks(self) -> list[LeafBlockInfo]:
        """The leaf blocks in leaf-layer order, with their variables and slots on the circuit's device."""
        cache = self.__dict__.setdefault("_buffer_cache", {})
        blocks = cache.get("leaf_blocks")
        if blocks is None:
            blocks = cache["leaf_blocks"] = [
                LeafBlockInfo(
                    i, b.dist, b.groups, b.num_nodes, self._get(f"leaf{i}_vars"), self._get(f"leaf{i}_slots"),
                    b.bank, b.offset,
                )
                for i, b in enumerate(self.layout.leaf_blocks)
            ]
        return blocks

    def sum_blocks(self) -> list[SumBlockInfo]:
        """Every sum block, layer by layer (bottom up), blocks in their order inside the layer."""
        cache = self.__dict__.setdefault("_buffer_cache", {})
        blocks = cache.get("sum_blocks")
        if blocks is None:
            blocks = cache["sum_blocks"] = [
                SumBlockInfo(
                    li, bi, blk.groups, blk.dense, blk.num_nodes, blk.k, blk.bank, self._get(f"l{li}b{bi}_slots")
                )
                for li, layer in enumerate(self.layout.layers)
                if isinstance(layer, SumLayer)
                for bi, blk in enumerate(layer.blocks)
            ]
        return blocks

    def banks(self) -> dict[str, BankInfo]:
        """Every parameter bank by name (the keys of `params`), masks on the circuit's device."""
        cache = self.__dict__.setdefault("_buffer_cache", {})
        banks = cache.get("banks")
        if banks is None:
            banks = cache["banks"] = {name: self._bank_info(name, spec) for name, spec in self.layout.banks.items()}
        return banks

    def _bank_info(self, name: str, spec) -> BankInfo:
        mask = child = None
        if spec.kind == "sum" and spec.masks:
            mask = getattr(self, f"_mask_{name}")
            child = torch.stack(spec.child_index).to(mask.device)
        return BankInfo(name, spec.kind, tuple(spec.shape), spec.slots, spec.dist, mask, child)

    # ------------------------------------------------------------ parameters
    def sum_log_weights(self) -> dict[str, torch.Tensor]:
        """Normalised log-weights of every sum bank, ``{bank: [slots, n, k]}`` (``-inf`` at pads)."""
        out = {}
        for name, spec in self.layout.banks.items():
            if spec.kind != "sum":
                continue
            logits = self.params[name]
            if spec.masks:
                logits = logits.masked_fill(~getattr(self, f"_mask_{name}"), -math.inf)
            out[name] = torch.log_softmax(logits, -1)
        return out

    def group_parameters(self, group: NodeGroup) -> torch.Tensor:
        """The parameters of one group of the circuit.

        Returns:
            For a sum group, its weights as probabilities ``[n, num_child_nodes]``
            (0 where there is no edge); for an input group, its raw parameters
            ``[n, P]`` (see its distribution).
        """
        owner = getattr(group, "tied_to", None) or group
        if id(owner) not in self.layout.param_slot:
            raise ValueError(f"group: {group!r} has no parameters in this circuit (not an input or sum group of it)")
        bank, slot = self.layout.param_slot[id(owner)]
        if group.kind == "input":
            return self.params[bank][slot]
        w = self.sum_log_weights()[bank][slot].exp()  # [n, k]
        spec = self.layout.banks[bank]
        if not spec.masks:
            return w
        mask, child = spec.masks[slot].to(w.device), spec.child_index[slot].to(w.device)
        dense = w.new_zeros(group.num_nodes, group.num_child_nodes)
        rows = torch.arange(group.num_nodes, device=w.device).unsqueeze(1).expand_as(child)
        return dense.index_put((rows[mask], child[mask]), w[mask])

    @torch.no_grad()
    def set_group_parameters(self, group: NodeGroup, value: torch.Tensor | np.ndarray) -> None:
        """Overwrites the parameters of one group (and of the groups tied to it).

        Every value is checked before anything is written, so a refused call
        leaves the circuit unchanged.

        Args:
            group: an input or sum group of this circuit.
            value: for a sum group, weights ``[n, num_child_nodes]`` (finite,
                non-negative, normalised per node by this call; entries off
                the edge pattern are ignored, and each node needs a positive
                weight on one of its edges); for an input group, raw
                parameters ``[n, P]`` valid for its distribution (see
                [`check_params`][pcircuits.distributions.base.Distribution.check_params];
                an Indicator group's values cannot be changed).

        Raises:
            TypeError: ``value`` is not real numbers (bool, complex, strings, objects).
            ValueError: ``group`` is not a group of this circuit, or ``value``
                has the wrong shape or invalid values.
        """
        owner = getattr(group, "tied_to", None) or group
        if id(owner) not in self.layout.param_slot:
            raise ValueError(f"group: {group!r} has no parameters in this circuit (not an input or sum group of it)")
        bank, slot = self.layout.param_slot[id(owner)]
        value = _as_real_tensor(value, "value")
        if group.kind == "input":
            expected = tuple(self.params[bank].shape[1:])
            if tuple(value.shape) != expected:
                raise ValueError(f"value must have shape {list(expected)} for {group!r}, got {list(value.shape)}")
            value = value.to(device=self.device, dtype=self.dtype)
            owner.dist.check_params(value, "value")
            if not owner.dist.trainable and not torch.equal(value, self.params[bank][slot]):
                raise ValueError(
                    f"value: {group!r} has {owner.dist!r} leaves, which are not trainable; their indicated "
                    f"values {self.params[bank][slot][:, 0].tolist()} cannot be changed (build a new group instead)"
                )
            self.params[bank][slot] = value
            return
        expected = (group.num_nodes, group.num_child_nodes)
        if tuple(value.shape) != expected:
            raise ValueError(f"value must have shape {list(expected)} for {group!r}, got {list(value.shape)}")
        logits = self._sum_logits(group, bank, slot, value.detach().to(device="cpu", dtype=torch.float64))
        self.params[bank][slot] = logits.to(device=self.device, dtype=self.dtype)

    def _sum_logits(self, group: NodeGroup, bank: str, slot: int, value: torch.Tensor) -> torch.Tensor:
        """Checked, normalised log-weights ``[n, k]`` of a sum group from weights ``value [n, num_child_nodes]``.

        Computed on the CPU in float64 (every device), returned in float64.
        """
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            b, c = bad.nonzero()[0].tolist()
            raise ValueError(f"value: sum weights must be finite, got {value[b, c].item()} at node {b}, child {c}")
        if bool((value < 0).any()):
            b, c = (value < 0).nonzero()[0].tolist()
            raise ValueError(
                f"value: sum weights must be non-negative, got {value[b, c].item()} at node {b}, child {c}"
            )
        spec = self.layout.banks[bank]
        mask = None
        if spec.masks:
            mask, child = spec.masks[slot].to(value.device), spec.child_index[slot].to(value.device)
            value = torch.where(mask, value.gather(1, child), torch.zeros((), dtype=value.dtype))
        top = value.amax(-1, keepdim=True)  # scaled by the largest weight first: no overflow in the sum
        if bool((top == 0).any()):
            b = int((top[:, 0] == 0).nonzero()[0])
            where = "on its edges " if mask is not None else ""
            raise ValueError(
                f"value: sum node {b} of {group!r} has no positive weight {where}(each node needs a positive total)"
            )
        scaled = value / top
        logits = torch.log(scaled / scaled.sum(-1, keepdim=True))
        if mask is not None:
            logits = logits.masked_fill(~mask, 0.0)
        return logits

    # -------------------------------------------------------------- evidence
    def prepare(
        self,
        x: torch.Tensor | np.ndarray,
        missing: torch.Tensor | np.ndarray | None = None,
        soft_evidence: torch.Tensor | np.ndarray | None = None,
        candidates: torch.Tensor | np.ndarray | None = None,
    ) -> Evidence:
        """Checks evidence and converts it to the circuit's device and dtype.

        Args:
            x: ``[B, V]`` values (categories of discrete variables, reals of Gaussian ones).
            missing: ``[B, V]`` bool; True where the variable is unobserved.
            soft_evidence: ``[B, V, C]`` log-weights on discrete variables
                (``C`` = `max_cats`), or ``[B, V, K]`` with ``candidates``.
            candidates: ``[B, V, K]`` integer category ids: soft evidence
                over these ids only (``-inf`` for every other id); see
                `pcircuits.engine.evidence`. Ignored on continuous variables.

        Raises:
            TypeError: an argument is not a tensor or array, ``missing`` is not
                boolean, or ``candidates`` are not integers.
            ValueError: wrong shapes, NaN or ``+-inf`` at an observed entry, a
                category or candidate outside its variable's range, non-integer
                discrete values, NaN or ``+inf`` in ``soft_evidence``, soft
                evidence on a continuous variable, or candidates without soft evidence.
        """
        return build_evidence(self.domain, x, missing, soft_evidence, candidates, self.dtype)

    # -------------------------------------------------------------- passes
    def leaf_values(
        self,
        ev: Evidence,
        semiring: str = "sum",
        leaf_params: dict[str, torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Log-values of each leaf block, ``[B, G, n]`` per block (the leaf layer of
        [`upward`][pcircuits.engine.circuit.TensorCircuit.upward]).

        Args:
            ev: evidence from [`prepare`][pcircuits.engine.circuit.TensorCircuit.prepare].
            semiring: ``"sum"``, or ``"max"`` (missing leaves take ``max_v log p(v) + log w(v)``).
            leaf_params: ``{bank: [Q, n, P]}`` raw parameters to use instead of the module's.
        """
        outs = []
        for i, blk in enumerate(self.layout.leaf_blocks):
            bank = leaf_params[blk.bank] if leaf_params is not None else self.params[blk.bank]
            be = self.block_evidence(ev, i)
            extra = {} if be.candidates is None else {"candidates": be.candidates}
            slots = self._get(f"leaf{i}_slots")
            # a max-product pass replaces every missing entry by the leaf's best value below, so the
            # marginal of a missing entry is never computed there (only observed entries are read)
            marginal = be.missing if semiring == "sum" else None
            if isinstance(blk.dist, DiscreteDistribution):  # the normalised table, once per parameter change
                extra["table"] = self.leaf_table(i, bank)
                dense = be.candidates is None and be.soft_evidence is not None and marginal is not None
                shifted = self._cached_table_exp(blk.bank, extra["table"]) if dense and bool(marginal.any()) else None
                if shifted is not None:
                    extra["shifted"] = shifted  # exponentiated once per parameter change, like the table
            out = blk.dist.log_prob(bank, be.x, marginal, be.soft_evidence, slots=slots, **extra)
            if semiring == "max" and (be.missing is not None or be.soft_evidence is not None):
                if "table" in extra:
                    extra["table"] = self.leaf_block_params(i, extra["table"])  # [G or 1, n, C]
                best = blk.dist.max_log_prob(self.leaf_block_params(i, bank), be.soft_evidence, **extra)
                if be.missing is not None:  # observed entries already hold log p(x) + log w(x)
                    in_place = not (torch.is_grad_enabled() and (out.requires_grad or best.requires_grad))
                    out = torch.where(be.missing.unsqueeze(-1), best, out, out=out if in_place else None)
            outs.append(out)
        return outs

    def leaf_table(self, i: int, bank: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probability table ``[Q, n, C]`` of discrete leaf block ``i``'s bank (``dist.log_table`` of it).

        The table is computed once per parameter change and cached: a later
        call returns the same tensor while the bank keeps its storage and
        its version counter (every in-place write through the parameter,
        e.g. EM, ``copy_``, an optimiser step or ``load_state_dict``, bumps
        it; writes through ``param.data`` do not, so call `clear_leaf_tables`
        after those). No cache is used when ``bank`` is not the module's own
        parameter (``leaf_params``), when autograd records the parameters, or
        in inference mode.
        The cached table is stored category-major (``[Q, C, n]`` memory,
        returned as a ``[Q, n, C]`` view), so reading a few categories of
        every node is a contiguous row read.

        Args:
            i: a discrete leaf block.
            bank: the bank's parameters ``[Q, n, P]`` (default: the module's).

        Raises:
            ValueError: block ``i`` is not discrete.
        """
        blk = self.layout.leaf_blocks[i]
        if not isinstance(blk.dist, DiscreteDistribution):
            raise ValueError(f"i: leaf block {i} has {blk.dist!r} leaves, not a discrete family with a table")
        own = self.params[blk.bank]
        if bank is None:
            bank = own
        cacheable = bank.data_ptr() == own.data_ptr() and bank.shape == own.shape and bank.stride() == own.stride()
        inference = torch.is_inference_mode_enabled() or own.is_inference()  # its tensors cannot enter autograd later
        if not cacheable or (torch.is_grad_enabled() and bank.requires_grad) or inference:
            return blk.dist.log_table(bank)
        cache = self.__dict__.setdefault("_table_cache", {})
        hit = cache.get(blk.bank)
        key = (own.data_ptr(), own._version, own.dtype, own.device)
        if hit is not None and hit[0] == key:
            return hit[2]
        cache.pop(blk.bank, None)  # the stale table goes before the new one is computed
        with torch.no_grad():
            table = blk.dist.log_table(own.detach())  # [Q, n, C]
            table = table.transpose(1, 2).contiguous().transpose(1, 2)
        cache[blk.bank] = (key, own.detach(), table)  # the kept reference pins the storage (no address reuse)
        return table

    def leaf_table_exp(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(exp(table - m) [Q, n, C], m [Q, n, 1])`` of `leaf_table` ``i`` (``m``: finite row maxima).

        What a leaf under full soft evidence multiplies (one matrix product per
        block); cached with the table and computed on first use.
        """
        table = self.leaf_table(i)
        shifted = self._cached_table_exp(self.layout.leaf_blocks[i].bank, table)
        return shifted if shifted is not None else kernels.table_exp(table)

    def _cached_table_exp(self, bank: str, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`leaf_table_exp` of ``bank`` when ``table`` is its cached table (computed once), else None."""
        cache = self.__dict__.get("_table_cache", {})
        hit = cache.get(bank)
        if hit is None or hit[2] is not table:
            return None
        if len(hit) == 3:
            with torch.no_grad():  # from the parameters' own rows (reading the category-major table is slow)
                rows = self.layout.banks[bank].dist.log_table(hit[1])  # [Q, n, C], a new tensor
                hit = cache[bank] = (*hit, kernels.table_exp(rows, out=rows))
        return hit[3]

    def clear_leaf_tables(self) -> None:
        """Drops the cached leaf tables of `leaf_table` (needed only after writes through ``param.data``)."""
        self.__dict__.pop("_table_cache", None)

    def leaf_block_params(self, i: int, bank: torch.Tensor | None = None) -> torch.Tensor:
        """Parameters of leaf block ``i``: ``[G, n, P]``, or ``[1, n, P]`` when all its groups share one slot.

        The shared case (tied leaves, e.g. the emissions of a homogeneous HMM)
        broadcasts over the groups without copying the slot ``G`` times.

        Args:
            i: the leaf block.
            bank: the bank's parameters ``[Q, n, P]`` (default: the module's).
        """
        blk = self.layout.leaf_blocks[i]
        if bank is None:
            bank = self.params[blk.bank]
        shared = self._shared_leaf_slot(i)
        if shared is not None:
            return bank[shared : shared + 1]
        return bank.index_select(0, self._get(f"leaf{i}_slots"))

    def _shared_leaf_slot(self, i: int) -> int | None:
        """The one slot of every group of leaf block ``i``, or ``None`` if they differ (cached)."""
        cache = self.__dict__.setdefault("_shared_slot_cache", {})
        if i not in cache:
            slots = self.layout.leaf_blocks[i].slots
            cache[i] = int(slots[0]) if bool((slots == slots[0]).all()) else None
        return cache[i]

    def block_evidence(self, ev: Evidence, i: int) -> BlockEvidence:
        """The evidence of leaf block ``i``'s ``G`` groups, read at their variables (see
        [`BlockEvidence`][pcircuits.engine.circuit.BlockEvidence])."""
        blk = self.layout.leaf_blocks[i]
        vars_ = self._get(f"leaf{i}_vars")
        xs = ev.x_discrete if blk.dist.discrete else ev.x_continuous
        xb = xs.index_select(1, vars_)
        mb = None if ev.missing is None else ev.missing.index_select(1, vars_)
        sb = cb = None
        if ev.soft_evidence is not None and blk.dist.discrete:
            sb = ev.soft_evidence.index_select(1, vars_)
            if ev.candidates is None:
                sb = sb[:, :, : blk.dist.num_cats]
            else:
                cb = ev.candidates.index_select(1, vars_)
        return BlockEvidence(xb, mb, sb, cb)

    def leaf_block_inputs(
        self, ev: Evidence, i: int, params: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Parameters ``[G, n, P]`` (``None`` unless ``params``), values ``[B, G]``,
        missing ``[B, G]`` and full soft evidence ``[B, G, C]`` of leaf block ``i``.

        Candidate evidence is expanded to the full soft evidence it means
        (``-inf`` off the candidates); [`block_evidence`][pcircuits.engine.circuit.TensorCircuit.block_evidence] keeps
        it compact.
        """
        blk = self.layout.leaf_blocks[i]
        p = self.params[blk.bank].index_select(0, self._get(f"leaf{i}_slots")) if params else None
        if ev.candidates is not None and ev.soft_evidence is not None and blk.dist.discrete:
            ev = Evidence(ev.x_discrete, ev.x_continuous, ev.missing, dense_soft_evidence(ev, self.max_cats))
        be = self.block_evidence(ev, i)
        return p, be.x, be.missing, be.soft_evidence

    def _gather(self, li: int | str, g: Gather, outs: list[torch.Tensor]) -> torch.Tensor:
        """``[B, R]`` child values read by gather ``g`` (``li``: layer index or buffer prefix)."""
        prefix = f"l{li}" if isinstance(li, int) else li
        if g.identity:
            return outs[g.sources[0]]
        parts = []
        chunks = getattr(outs, "chunks", None)
        for si, s in enumerate(g.sources):
            start = g.starts[si]
            if start is not None:
                length = g.lengths[si]
                plan = self.layout.splits.get(s)
                if plan is not None and chunks is not None and (start, length) in plan[1]:
                    parts.append(chunks[s][plan[1][(start, length)]])
                else:
                    src = outs[s]
                    parts.append(src if start == 0 and length == src.shape[1] else src[:, start : start + length])
            else:
                parts.append(outs[s].index_select(1, self._get(f"{prefix}_src{si}")))
        if g.perm is None:
            return parts[0]
        if g.pad:
            ref = parts[0] if parts else next(o for o in outs if o is not None)
            parts.append(torch.zeros(ref.shape[0], 1, dtype=ref.dtype, device=ref.device))
        return torch.cat(parts, 1).index_select(1, self._get(f"{prefix}_perm"))

    def upward(
        self,
        ev: Evidence,
        semiring: str = "sum",
        log_weights: dict[str, torch.Tensor] | None = None,
        leaf_outputs: list[torch.Tensor] | None = None,
        keep_outputs: bool = True,
    ) -> list[torch.Tensor]:
        """Runs the upward pass and returns every layer's output.

        Args:
            ev: evidence from [`prepare`][pcircuits.engine.circuit.TensorCircuit.prepare].
            semiring: ``"sum"`` for probabilities, ``"max"`` for max-product (MPE).
            log_weights: normalised sum log-weights to use instead of the
                module's (as returned by [`sum_log_weights`][pcircuits.engine.circuit.TensorCircuit.sum_log_weights]).
            leaf_outputs: leaf block values to use instead of computing them
                (as returned by [`leaf_values`][pcircuits.engine.circuit.TensorCircuit.leaf_values]).
            keep_outputs: keep every layer's output; with False, an output is
                released after its last reader (lower peak memory) and only the
                root layer is returned filled in (the others are ``None``).

        Returns:
            ``[B, N_l]`` log-values for each layer ``l`` (the leaf layer
            first, the root layer ``[B, 1]`` last).
        """
        if semiring not in ("sum", "max"):
            raise ValueError(f"semiring must be 'sum' or 'max', got {semiring!r}")
        backend = self.resolve_backend()
        plan = self.execution_plan()
        with kernels.use_backend(backend):
            if leaf_outputs is None:
                leaf_outputs = self.leaf_values(ev, semiring)
            B = ev.batch_size
            flat = [o.reshape(B, -1) for o in leaf_outputs]
            outs = _ChunkedOutputs(self, plan.released)
            outs.append(flat[0] if len(flat) == 1 else torch.cat(flat, 1))
            lw = log_weights if log_weights is not None else self.sum_log_weights()
            ctx = _PassContext(lw, semiring, backend, B)
            for li, step in enumerate(plan.steps):
                outs.append(step(outs, ctx))
                if not keep_outputs:
                    outs.release_after(li + 1)
        return list(outs)

    # ------------------------------------------------------ execution plan
    def execution_plan(self) -> "_Plan":
        """The per-layer steps of an upward pass, built on first use and cached.

        Everything an upward pass decides from the layout alone (how each
        gather reads its sources, which sum blocks take the single-group
        path, which outputs can be released after which layer) is decided
        here once, so a pass runs one closure per layer. The cache lives
        with the buffers and is rebuilt after ``.to()``/``.double()``.
        """
        cache = self.__dict__.setdefault("_buffer_cache", {})
        plan = cache.get("plan")
        if plan is None:
            steps = []
            for li, layer in enumerate(self.layout.layers):
                if isinstance(layer, ProductLayer):
                    steps.append(self._product_step(li, layer))
                else:
                    steps.append(self._sum_step(li, layer))
            released: dict[int, list[int]] = {}
            for src, last in self.layout.last_use.items():
                released.setdefault(last, []).append(src)
            plan = cache["plan"] = _Plan(steps, released)
        return plan

    def _reader(self, prefix: str, g: Gather) -> Callable[["_ChunkedOutputs"], torch.Tensor]:
        """A function returning the ``[B, R]`` child values that gather ``g`` reads (see `_gather`)."""
        if g.identity:
            src = g.sources[0]
            return lambda outs: outs[src]
        if g.perm is None and g.starts[0] is not None:
            src, start, length = g.sources[0], g.starts[0], g.lengths[0]
            split = self.layout.splits.get(src)
            if split is not None and (start, length) in split[1]:
                chunk = split[1][(start, length)]
                return lambda outs: outs.chunks[src][chunk]
            if start == 0 and length == self.layout.layer_sizes[src]:
                return lambda outs: outs[src]
            return lambda outs: outs[src][:, start : start + length]
        if g.perm is None:
            src, idx = g.sources[0], self._get(f"{prefix}_src0")
            return lambda outs: outs[src].index_select(1, idx)
        return lambda outs: self._gather(prefix, g, outs)

    def _product_step(self, li: int, layer: ProductLayer) -> Callable:
        """The step of product layer ``li``: the sum of its ``k`` term gathers, ``[B, N]``."""
        first, *rest = [self._reader(f"l{li}t{j}", term) for j, term in enumerate(layer.terms)]
        if len(rest) == 1:
            second = rest[0]
            return lambda outs, ctx: first(outs) + second(outs)

        def step(outs: _ChunkedOutputs, ctx: _PassContext) -> torch.Tensor:
            out = first(outs)
            for read in rest:
                out = out + read(outs)
            return out

        return step

    def _sum_step(self, li: int, layer: SumLayer) -> Callable:
        """The step of sum layer ``li``, ``[B, N]``."""
        read = self._reader(f"l{li}", layer.gather)
        blocks = layer.blocks
        if len(blocks) == 1 and blocks[0].dense and blocks[0].num_groups == 1:
            blk = blocks[0]
            slot = blk.slot_start if blk.slot_start is not None else int(blk.slots[0])
            key = (blk.bank, slot)
            start, k = blk.ref_offset, blk.k

            def single(outs: _ChunkedOutputs, ctx: _PassContext) -> torch.Tensor:
                ch = read(outs)
                c = ch if k == ch.shape[1] else ch[:, start : start + k]
                if ctx.semiring == "sum" and ctx.backend == "torch":
                    # the common single-group layer: 2-D operations on cached transposed weights
                    wt = ctx.wt_cache.get(key)
                    if wt is None:
                        wt = ctx.wt_cache[key] = ctx.probs_of(blk.bank)[slot].t()  # [k, n]
                    return kernels.single_group_dense_sum(c, wt)
                if ctx.semiring == "max" and ctx.backend == "torch":
                    # the same layer in the max-product semiring, on cached transposed log-weights
                    mkey = ("max", *key)
                    lwt = ctx.wt_cache.get(mkey)
                    if lwt is None:
                        lwt = ctx.wt_cache[mkey] = ctx.lw[blk.bank][slot].t().contiguous()  # [k, n]
                    return kernels.single_group_max_plus(c, lwt)
                w = ctx.lw[blk.bank][slot : slot + 1]  # [1, n, k]
                return kernels.dense_sum(c.unsqueeze(1), w, ctx.semiring).reshape(ctx.B, -1)

            return single

        def step(outs: _ChunkedOutputs, ctx: _PassContext) -> torch.Tensor:
            ch = read(outs)
            parts = [self._sum_block(li, bi, blk, ch, ctx) for bi, blk in enumerate(blocks)]
            return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

        return step

    def _sum_block(self, li: int, bi: int, blk: SumBlock, ch: torch.Tensor, ctx: "_PassContext") -> torch.Tensor:
        """``[B, G * n]`` values of block ``bi`` of sum layer ``li`` from the layer's child values ``ch [B, R]``."""
        B, lw, semiring = ctx.B, ctx.lw, ctx.semiring
        if blk.slot_start is not None:  # contiguous slots: a view
            w = lw[blk.bank][blk.slot_start : blk.slot_start + blk.num_groups]  # [G, n, k]
        else:
            w = lw[blk.bank].index_select(0, self._get(f"l{li}b{bi}_slots"))
        if blk.dense:
            c = ch[:, blk.ref_offset : blk.ref_offset + blk.num_groups * blk.k]
            probs = None
            if semiring == "sum" and ctx.backend == "torch":
                pb = ctx.probs_of(blk.bank)
                if blk.slot_start is not None:
                    probs = pb[blk.slot_start : blk.slot_start + blk.num_groups]
                else:
                    probs = pb.index_select(0, self._get(f"l{li}b{bi}_slots"))
            y = kernels.dense_sum(c.reshape(B, blk.num_groups, blk.k), w, semiring, weights=probs)
        else:
            size = blk.num_groups * blk.num_nodes * blk.k
            c = ch[:, blk.ref_offset : blk.ref_offset + size]
            y = kernels.sparse_sum(c.reshape(B, blk.num_groups, blk.num_nodes, blk.k), w, semiring)
        return y.reshape(B, -1)

    def forward(
        self,
        x: torch.Tensor | np.ndarray,
        missing: torch.Tensor | np.ndarray | None = None,
        soft_evidence: torch.Tensor | np.ndarray | None = None,
        candidates: torch.Tensor | np.ndarray | None = None,
    ) -> torch.Tensor:
        """Log-likelihoods of a batch.

        Args:
            x: ``[B, V]`` values (category indices for discrete variables,
                reals for Gaussian ones).
            missing: ``[B, V]`` bool; True marginalises that variable.
            soft_evidence: ``[B, V, C]`` log-weights ``log w_i(c)`` on discrete
                variables (``C`` = `max_cats`), or ``[B, V, K]`` with ``candidates``.
            candidates: ``[B, V, K]`` category ids that ``soft_evidence`` weighs
                (every other id has weight 0); see [`prepare`][pcircuits.engine.circuit.TensorCircuit.prepare].

        Returns:
            ``[B]``: ``log sum_{x_missing} p(x) * prod_i w_i(x_i)`` (the factor
            is included for observed variables too; without soft evidence this
            is the (marginal) log-likelihood).
        """
        ev = self.prepare(x, missing, soft_evidence, candidates)
        return self.upward(ev, keep_outputs=False)[-1][:, 0]

    def extra_repr(self) -> str:
        return (
            f"num_vars={self.num_vars}, num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
            f"num_layers={len(self.layout.layers) + 1}, backend={self.backend!r}"
        )


class _PassContext:
    """What the steps of one upward pass share: weights, semiring, backend, batch size and per-pass caches."""

    __slots__ = ("lw", "semiring", "backend", "B", "wt_cache", "_probs")

    def __init__(self, lw: dict[str, torch.Tensor], semiring: str, backend: str, B: int):
        self.lw, self.semiring, self.backend, self.B = lw, semiring, backend, B
        self.wt_cache: dict[tuple, torch.Tensor] = {}
        self._probs: dict[str, torch.Tensor] = {}

    def probs_of(self, bank: str) -> torch.Tensor:
        """The bank's weights as probabilities ``[slots, n, k]``, exponentiated once per pass."""
        p = self._probs.get(bank)
        if p is None:
            p = self._probs[bank] = self.lw[bank].exp()
        return p


@dataclass
class _Plan:
    """The cached execution plan of an upward pass.

    Attributes:
        steps: one closure per inner layer, ``step(outs, ctx) -> [B, N_l]``.
        released: layer -> the outputs whose last reader it is.
    """

    steps: list[Callable]
    released: dict[int, list[int]]


class _ChunkedOutputs(list):
    """Layer outputs of one pass; outputs with a split plan are also kept as chunks."""

    def __init__(self, circuit: TensorCircuit, released: dict[int, list[int]] | None = None):
        super().__init__()
        self._splits = circuit.layout.splits
        if released is None:
            released = {}
            for src, last in circuit.layout.last_use.items():
                released.setdefault(last, []).append(src)
        self._readers_done = released
        self.chunks: dict[int, tuple[torch.Tensor, ...]] = {}

    def release_after(self, layer: int) -> None:
        """Drops the outputs whose last reader is ``layer``."""
        for src in self._readers_done.get(layer, ()):
            self[src] = None
            self.chunks.pop(src, None)

    def append(self, out: torch.Tensor) -> None:
        plan = self._splits.get(len(self))
        if plan is not None:
            self.chunks[len(self)] = out.split(plan[0], dim=1)
        super().append(out)


def _as_real_tensor(value, name: str) -> torch.Tensor:
    """``value`` (tensor, array or nested sequence of numbers) as a real or integer tensor.

    Raises:
        TypeError: bool, complex or non-numeric values.
        ValueError: a ragged sequence.
    """
    if not isinstance(value, torch.Tensor):
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a tensor, array or rectangular sequence of numbers: {err}") from None
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers, got values of numpy dtype {arr.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(arr))
    real = value.dtype.is_floating_point or _is_int(value.dtype)
    if value.dtype == torch.bool or value.dtype.is_complex or not real:
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    return value


def _is_int(dtype: torch.dtype) -> bool:
    return dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def compile(root: NodeGroup, seed: int = 0, backend: str = "auto") -> TensorCircuit:
    """Compiles a symbolic circuit into a [`TensorCircuit`][pcircuits.engine.circuit.TensorCircuit].

    Args:
        root: the root group (exactly one node) over variables ``0..V-1``.
        seed: seed of the random parameter initialisation.
        backend: ``"auto"`` (torch on every device; see `TensorCircuit.resolve_backend`),
            ``"torch"``, or ``"triton"`` (on CPU through ``TRITON_INTERPRET=1``).

    Raises:
        ValueError: the circuit is not valid (see [`build_layout`][pcircuits.engine.layout.build_layout]).
    """
    return TensorCircuit(root, seed=seed, backend=backend)
