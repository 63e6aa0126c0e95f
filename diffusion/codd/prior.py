"""The CoDD prior: a probabilistic circuit that couples the tokens of a window.

A masked diffusion backbone gives, for every masked position ``i`` of a
window ``x_t``, a distribution ``p_theta(x0^i | x_t)``; drawing several
positions independently from it ignores their dependencies. CoDD
multiplies these factors with a tractable prior ``p_omega`` over the window:

``p_hat(x0 | x_t) ∝ p_omega(x0) * prod_{i masked} p_theta(x0^i | x_t)^(1/tau)``

with the observed positions of ``x_t`` as evidence (their logits are
ignored). Because ``p_omega`` is a circuit, the normaliser, every marginal of
``p_hat`` and joint samples cost one or two passes through it: the backbone's
tempered log-probabilities enter as soft evidence on the circuit's leaves.

`CoDDPrior` hands the soft evidence to the circuit as top-``k`` candidate
evidence (`CoDDPrior.engine_evidence`, [`TensorCircuit.prepare`][pcircuits.engine.circuit.TensorCircuit.prepare])
and runs the engine's passes on it: `TensorCircuit.upward` for the
normaliser and the marginals, `pcircuits.engine.downward.downward` and
`selected_leaf_logits` for the latent path and the tokens given it. With
``top_k=k`` each masked position keeps only its ``k`` highest logits, and the
leaves cost ``O(window * k * states)`` instead of ``O(window * V * states)``.

**Backoff.** A prior trained on all mask ratios can be worse than the backbone
alone where the backbone already sees almost the whole window (low mask
ratios): both experts then use the same context and their product
double-counts it. `CoDDPrior.fit_backoff` fits, per bin of the window's mask
ratio ``r``, the weight ``lambda(r)`` of the mixture

``p_mix(x | x_t) = lambda(r) p_hat(x | x_t) + (1 - lambda(r)) prod_{i masked} q_i^tau(x_i)``

on held-out windows (``lambda = 1`` everywhere, the default, is plain CoDD;
the gamma gate of `diffusion.generate` is the special case ``lambda in {0, 1}``).
The mixture stays exact: its log-probability, marginals and samples combine
those of the two components; its mode is the better of theirs (see `mpe`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

import pcircuits as pc
from pcircuits.distributions.base import DiscreteDistribution
from pcircuits.engine.circuit import TensorCircuit
from pcircuits.engine.downward import downward, gumbel_argmax, selected_leaf_logits
from pcircuits.engine.evidence import Evidence
from pcircuits.atomic import atomic_directory, atomic_write
from pcircuits.io import load_with_extras
from pcircuits.nodes import NodeGroup

from ..proposals import logits_problem

__all__ = ["CoDDPrior", "SAMPLE_METHODS", "ORDER_RULES", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

SAMPLE_METHODS: tuple[str, ...] = ("latent", "latent_tempered", "exact", "any_order")
"""Accepted values of ``method`` in `CoDDPrior.sample`."""
ORDER_RULES: tuple[str, ...] = ("low_confidence", "margin", "entropy", "random")
"""Accepted commit orders of the ``any_order`` sampler."""

_DENSE_LIMIT = 1 << 24  # elements of a [B, G, n, K] leaf tensor above which the dense path uses a matmul


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    if temperature <= 0:
        raise ValueError(f"temperature: expected tau > 0, got {temperature!r}")
    return float(temperature)


def _check_logits(logits: torch.Tensor, masked: torch.Tensor) -> None:
    """Raises ``ValueError`` naming ``logits`` if a masked row ``[B, W]`` of ``logits [B, W, V]`` has NaN,
    ``+inf`` or only ``-inf`` (observed rows are ignored by every query)."""
    problem = logits_problem(logits, masked)
    if problem is not None:
        raise ValueError(f"logits: {problem[0]} at masked position {problem[1][1]} of batch row {problem[1][0]}")


_BACKOFF_KEY = "codd_backoff"  # name of the backoff weights among the extras of a prior file
MAX_BACKOFF_BINS = 1 << 16
_MAX_SIDECAR_BYTES = 1 << 20


def _backoff_path(path: str | Path) -> Path:
    """The sidecar of a version-1 prior file (read only; new saves keep the backoff inside the file)."""
    path = Path(path)
    return path.with_name(path.name + ".backoff.json")


def _is_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _read_backoff_sidecar(side: Path) -> torch.Tensor:
    """The backoff weights ``[n_bins]`` of a version-1 sidecar, checked to be a JSON list of numbers."""
    try:
        if side.stat().st_size > _MAX_SIDECAR_BYTES:
            raise ValueError(f"larger than {_MAX_SIDECAR_BYTES} bytes")
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"path: backoff sidecar {str(side)!r} is unreadable ({' '.join(str(e).split())})") from None
    values = data.get("backoff") if isinstance(data, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"path: backoff sidecar {str(side)!r} must hold {{\"backoff\": [numbers]}}")
    return torch.tensor(values, dtype=torch.float64)


CHECKPOINT_FORMAT = "codd-prior"
"""The ``format`` name in the ``config.json`` of a prior checkpoint directory."""
CHECKPOINT_VERSION = 1
"""The ``format_version`` of the checkpoints `CoDDPrior.save_pretrained` writes."""
CONFIG_NAME = "config.json"
"""The settings file of a prior checkpoint directory."""
CIRCUIT_NAME = "prior.safetensors"
"""The circuit file (with the backoff weights) of a prior checkpoint directory."""
_MAX_CONFIG_BYTES = 1 << 24
_CONFIG_KEYS = frozenset(
    {"format", "format_version", "window", "states", "vocab_size", "top_k", "backoff", "backbone", "training"}
)
_BACKBONE_KEYS = frozenset({"vocab_size", "mask_token_id"})


def _num_states(circuit: TensorCircuit) -> int:
    """Hidden states per position: the nodes of the largest leaf group (``H`` of an HMM prior)."""
    return max(int(blk.num_nodes) for blk in circuit.leaf_blocks())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _backbone_record(backbone: object) -> dict:
    """``{"vocab_size", "mask_token_id"}`` of a `diffusion.backbones.Backbone` (anything with those attributes)."""
    try:
        vocab, mask = backbone.vocab_size, backbone.mask_token_id
    except AttributeError:
        raise TypeError(
            f"backbone: expected a Backbone with vocab_size and mask_token_id, got {type(backbone).__name__}"
        ) from None
    vocab, mask = int(vocab), int(mask)
    if not 0 <= mask < vocab:
        raise ValueError(f"backbone: mask_token_id {mask} outside the vocabulary [0, {vocab})")
    return {"vocab_size": vocab, "mask_token_id": mask}


def _training_record(training: dict | None) -> dict | None:
    """``training`` checked to be a JSON-serialisable dict with string keys (finite numbers only)."""
    if training is None:
        return None
    if not isinstance(training, dict):
        raise TypeError(f"training: expected a dict of JSON values or None, got {type(training).__name__}")
    try:
        text = json.dumps(training, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"training: expected JSON-serialisable settings ({e})") from None
    out = json.loads(text)
    if out != training:  # non-string keys are silently converted by json
        raise ValueError("training: keys must be strings and values JSON types (dict, list, str, number, bool, null)")
    return out


def _config_error(where: str, what: str) -> ValueError:
    return ValueError(f"path: {where!r}: {what}")


def _parse_config(path: Path) -> object:
    """The JSON value of ``config.json`` (``ValueError`` naming ``path`` when missing, too large or not JSON)."""
    where = str(path)
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {_MAX_CONFIG_BYTES} bytes")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"path: {where!r} is missing (not a prior checkpoint directory)") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _config_error(where, f"unreadable ({' '.join(str(e).split())})") from None


def _read_config(path: Path) -> dict:
    """The parsed ``config.json`` of a checkpoint, checked whole (keys, types, ranges); not yet against the circuit."""
    where = str(path)
    cfg = _parse_config(path)
    if not isinstance(cfg, dict):
        raise _config_error(where, f"expected a JSON object, got {type(cfg).__name__}")
    missing, unknown = sorted(_CONFIG_KEYS - set(cfg)), sorted(set(cfg) - _CONFIG_KEYS)
    if missing:
        raise _config_error(where, f"missing keys {missing}")
    if unknown:
        raise _config_error(where, f"unknown keys {unknown}")
    if cfg["format"] != CHECKPOINT_FORMAT:
        raise _config_error(where, f"format must be {CHECKPOINT_FORMAT!r}, got {cfg['format']!r}")
    if cfg["format_version"] != CHECKPOINT_VERSION or not _is_int(cfg["format_version"]):
        raise _config_error(where, f"format_version must be {CHECKPOINT_VERSION}, got {cfg['format_version']!r}")
    for key, low in (("window", 1), ("states", 1), ("vocab_size", 2)):
        if not _is_int(cfg[key]) or cfg[key] < low:
            raise _config_error(where, f"{key} must be an int >= {low}, got {cfg[key]!r}")
    top_k = cfg["top_k"]
    if top_k is not None and (not _is_int(top_k) or not 1 <= top_k < cfg["vocab_size"]):
        raise _config_error(where, f"top_k must be null or an int in [1, vocab_size), got {top_k!r}")
    _check_config_backoff(where, cfg["backoff"])
    _check_config_backbone(where, cfg["backbone"], cfg["vocab_size"])
    if cfg["training"] is not None and not isinstance(cfg["training"], dict):
        raise _config_error(where, f"training must be an object or null, got {type(cfg['training']).__name__}")
    return cfg


def _check_config_backoff(where: str, backoff: object) -> None:
    if backoff is None:
        return
    ok = isinstance(backoff, list) and 1 <= len(backoff) <= MAX_BACKOFF_BINS
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in backoff)
    if not ok:
        raise _config_error(where, f"backoff must be null or a list of 1..{MAX_BACKOFF_BINS} numbers in [0, 1]")


def _check_config_backbone(where: str, backbone: object, vocab: int) -> None:
    if backbone is None:
        return
    if not isinstance(backbone, dict) or set(backbone) != _BACKBONE_KEYS:
        raise _config_error(where, f"backbone must be null or an object with keys {sorted(_BACKBONE_KEYS)}")
    bv, bm = backbone["vocab_size"], backbone["mask_token_id"]
    if not _is_int(bv) or bv != vocab:
        raise _config_error(where, f"backbone.vocab_size must equal vocab_size={vocab}, got {bv!r}")
    if not _is_int(bm) or not 0 <= bm < vocab:
        raise _config_error(where, f"backbone.mask_token_id must be an int in [0, {vocab}), got {bm!r}")


def _check_against_circuit(where: str, cfg: dict, prior: CoDDPrior) -> None:
    """Raises ``ValueError`` naming ``path`` if ``config.json`` disagrees with the circuit file."""
    have = {"window": prior.window, "vocab_size": prior.vocab_size, "states": _num_states(prior.circuit)}
    for key, value in have.items():
        if cfg[key] != value:
            raise _config_error(where, f"{key}={cfg[key]} but the circuit file {CIRCUIT_NAME} has {key}={value}")
    saved = None if prior.backoff is None else prior.backoff.tolist()
    if cfg["backoff"] != saved:
        raise _config_error(where, f"backoff {cfg['backoff']} differs from that of {CIRCUIT_NAME} ({saved})")


def _check_backbone_match(where: str, cfg: dict, backbone: object) -> None:
    """Raises ``ValueError`` naming ``backbone`` if the prior was trained for another vocabulary or mask id."""
    want = _backbone_record(backbone)
    if cfg["vocab_size"] != want["vocab_size"]:
        raise ValueError(
            f"backbone: the prior {where!r} has a vocabulary of {cfg['vocab_size']} tokens, "
            f"but the backbone has vocab_size={want['vocab_size']}"
        )
    rec = cfg["backbone"]
    if rec is not None and rec["mask_token_id"] != want["mask_token_id"]:
        raise ValueError(
            f"backbone: the prior {where!r} was trained with mask_token_id={rec['mask_token_id']}, "
            f"but the backbone has mask_token_id={want['mask_token_id']}"
        )


def _file_backoff(path: str | Path, extras: dict) -> torch.Tensor | None:
    """The backoff weights ``[n_bins]`` of a prior file (its extras, or a version-1 sidecar), validated."""
    where = os.fspath(path)
    if _BACKOFF_KEY in extras:
        backoff = extras[_BACKOFF_KEY]
    elif _is_zip(where) and _backoff_path(path).is_file():
        backoff = _read_backoff_sidecar(_backoff_path(path))
    else:
        return None
    if backoff.dim() != 1 or not 1 <= backoff.numel() <= MAX_BACKOFF_BINS:
        raise ValueError(
            f"path: {where!r}: backoff must hold 1..{MAX_BACKOFF_BINS} weights, got shape {list(backoff.shape)}"
        )
    if not bool(torch.isfinite(backoff).all()) or not bool(((backoff >= 0) & (backoff <= 1)).all()):
        raise ValueError(f"path: {where!r}: backoff weights must be finite and in [0, 1]")
    return backoff


class CoDDPrior:
    """A circuit prior over ``window`` categorical variables with ``vocab_size`` categories.

    Args:
        root_or_circuit: a compiled `pcircuits.TensorCircuit` or a root group
            (compiled with ``seed``); its variables ``0..window-1`` must all be
            categorical with ``vocab_size`` categories.
        window: the window length ``W``.
        vocab_size: the vocabulary size ``V`` (that of the backbone's logits).
        top_k: restrict the soft evidence of each masked position to its
            ``top_k`` highest logits (``None``: all ``V``).
        seed: seed of the parameter initialisation when a root is given.

    Attributes:
        circuit: the compiled circuit ``p_omega``.
        window: ``W``.
        vocab_size: ``V``.
        top_k: the candidate restriction, or ``None``.
        backoff: ``FloatTensor[n_bins]`` weight ``lambda`` of ``p_hat`` per
            equal-width bin of the window's mask ratio (masked positions over
            ``W``), or ``None`` (plain CoDD); see `fit_backoff`.

    Raises:
        ValueError: the circuit's variables or categories do not match
            ``window`` / ``vocab_size``, a leaf is not discrete, or a bad ``top_k``.
    """

    def __init__(
        self,
        root_or_circuit: NodeGroup | TensorCircuit,
        window: int,
        vocab_size: int,
        top_k: int | None = None,
        seed: int = 0,
    ):
        if isinstance(root_or_circuit, TensorCircuit):
            circuit = root_or_circuit
        else:
            circuit = pc.compile(root_or_circuit, seed=seed)
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window: expected a positive int, got {window!r}")
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size: expected an int >= 2, got {vocab_size!r}")
        if circuit.num_vars != window:
            raise ValueError(f"window: the circuit has {circuit.num_vars} variables, not window={window}")
        cats = circuit.var_cats.tolist()
        if bool(circuit.continuous.any()) or any(c != vocab_size for c in cats):
            raise ValueError(
                f"vocab_size: the circuit's variables have {sorted(set(cats), key=str)} categories, not {vocab_size}"
            )
        for blk in circuit.leaf_blocks():
            if not isinstance(blk.dist, DiscreteDistribution):
                raise ValueError(
                    f"root_or_circuit: leaf family {type(blk.dist).__name__} is not supported (categorical leaves only)"
                )
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k: expected a positive int or None, got {top_k!r}")
        self.circuit = circuit
        self.window = window
        self.vocab_size = vocab_size
        self.top_k = None if top_k is None or top_k >= vocab_size else top_k
        self.backoff: torch.Tensor | None = None

    # ------------------------------------------------------------------ build
    @classmethod
    def hmm(
        cls,
        window: int,
        num_latents: int,
        vocab_size: int,
        homogeneous: bool = True,
        seed: int = 0,
        top_k: int | None = None,
    ) -> CoDDPrior:
        """A prior backed by a hidden Markov model (`pcircuits.structures.hmm`).

        Args:
            window: window length ``W`` (HMM steps).
            num_latents: hidden states ``H``.
            vocab_size: vocabulary ``V``.
            homogeneous: one tied transition matrix and one tied emission table.
            seed: seed of the random initialisation.
            top_k: candidate restriction (see `CoDDPrior`).

        Returns:
            The prior.
        """
        from pcircuits.structures import hmm

        return cls(
            pc.compile(hmm(window, num_latents, vocab_size, homogeneous=homogeneous), seed=seed),
            window,
            vocab_size,
            top_k,
        )

    @classmethod
    def load(cls, path: str | Path, top_k: int | None | str = "config") -> CoDDPrior:
        """Loads a prior saved by `save` (one file) or `save_pretrained` (a checkpoint directory).

        A directory is read by `from_pretrained`. A file is one
        `pcircuits.save` file holding the circuit and the backoff; priors
        written by earlier versions (a version-1 ``.npz`` circuit with the
        backoff weights in a ``<path>.backoff.json`` sidecar) still load.
        Every part is validated before use (see `pcircuits.load`); the backoff
        weights must be finite, in ``[0, 1]`` and of the declared length.

        Args:
            path: the prior file or checkpoint directory.
            top_k: candidate restriction; ``"config"`` (default): that of a
                checkpoint's ``config.json``, ``None`` for a single file.

        Returns:
            The prior (window and vocabulary read from the circuit).

        Raises:
            ValueError: a malformed file, sidecar or checkpoint, or a circuit
                that is not a CoDD prior (the message names ``path``).
        """
        if os.path.isdir(path):
            return cls.from_pretrained(path, top_k=top_k)
        if top_k == "config":
            top_k = None
        where = os.fspath(path)
        circuit, extras = load_with_extras(path)
        unknown = sorted(set(extras) - {_BACKOFF_KEY})
        if unknown:
            raise ValueError(f"path: {where!r} holds extras {unknown} that a CoDD prior does not use")
        try:
            prior = cls(circuit, circuit.num_vars, int(circuit.max_cats), top_k)
        except ValueError as e:
            if str(e).startswith("top_k"):
                raise
            raise ValueError(f"path: {where!r} is not a CoDD prior ({e})") from None
        backoff = _file_backoff(path, extras)
        if backoff is not None:
            prior.set_backoff(backoff)
        return prior

    def save(self, path: str | Path) -> None:
        """Writes the circuit and the backoff weights as one file (`pcircuits.save` with an extra tensor).

        The write is atomic: a failed save leaves a previous file intact. A
        ``<path>.backoff.json`` sidecar left by an earlier version is removed
        once the new file is in place.
        """
        extras = None if self.backoff is None else {_BACKOFF_KEY: self.backoff.detach().cpu()}
        pc.save(self.circuit, path, extras=extras)
        _backoff_path(path).unlink(missing_ok=True)

    def save_pretrained(
        self, directory: str | Path, backbone: object | None = None, training: dict | None = None
    ) -> Path:
        """Writes the prior as a checkpoint directory: ``config.json`` and ``prior.safetensors``.

        ``config.json`` records the format (`CHECKPOINT_FORMAT`, version
        `CHECKPOINT_VERSION`), ``window``, ``states`` (hidden states per
        position), ``vocab_size``, ``top_k``, the ``backoff`` weights (or
        null), the ``backbone``'s ``vocab_size`` and ``mask_token_id`` (or
        null) and the ``training`` settings (or null); ``prior.safetensors``
        is the circuit with its backoff (`save`). The whole directory is
        replaced atomically (`pcircuits.atomic.atomic_directory`): a failed
        save leaves a previous checkpoint loadable. Files of ``directory``
        other than these two are kept.

        Args:
            directory: the checkpoint directory (created with its parents).
            backbone: the `diffusion.backbones.Backbone` the prior was trained
                for (its ``vocab_size`` must equal the prior's), or ``None``.
            training: JSON-serialisable training settings, or ``None``.

        Returns:
            The checkpoint directory.

        Raises:
            ValueError: ``directory`` is an existing file, the backbone's
                vocabulary differs from the prior's, or ``training`` is not
                JSON-serialisable.
            TypeError: ``backbone`` lacks ``vocab_size`` / ``mask_token_id``
                or ``training`` is not a dict.
        """
        record = None if backbone is None else _backbone_record(backbone)
        if record is not None and record["vocab_size"] != self.vocab_size:
            raise ValueError(
                f"backbone: vocab_size={record['vocab_size']} differs from the prior's vocab_size={self.vocab_size}"
            )
        config = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "window": self.window,
            "states": _num_states(self.circuit),
            "vocab_size": self.vocab_size,
            "top_k": self.top_k,
            "backoff": None if self.backoff is None else self.backoff.tolist(),
            "backbone": record,
            "training": _training_record(training),
        }
        target = Path(directory)
        with atomic_directory(target) as tmp:
            self.save(tmp / CIRCUIT_NAME)
            with atomic_write(tmp / CONFIG_NAME, "w") as f:
                json.dump(config, f, indent=2)
                f.write("\n")
        return target

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, backbone: object | None = None, top_k: int | None | str = "config"
    ) -> CoDDPrior:
        """Loads a checkpoint directory written by `save_pretrained`, checked whole.

        ``config.json`` is validated (every key present, no unknown key,
        types and ranges) and against ``prior.safetensors`` (window, states,
        vocabulary and backoff must agree). With a ``backbone``, a prior
        trained for another vocabulary size or mask token id is refused.

        Args:
            directory: the checkpoint directory.
            backbone: the `diffusion.backbones.Backbone` the prior will be used
                with, or ``None`` (no check).
            top_k: candidate restriction; ``"config"`` (default): the saved one.

        Returns:
            The prior, with its backoff weights.

        Raises:
            ValueError: a missing or malformed ``config.json`` or circuit file
                (naming ``path``), or a prior that does not match ``backbone``
                (naming ``backbone`` and both values).
        """
        root = Path(directory)
        if not root.is_dir():
            raise ValueError(f"path: {os.fspath(directory)!r} is not a prior checkpoint directory")
        cfg = _read_config(root / CONFIG_NAME)
        circuit_file = root / CIRCUIT_NAME
        if not circuit_file.is_file():
            raise ValueError(f"path: {str(circuit_file)!r} is missing (not a prior checkpoint directory)")
        if backbone is not None:
            _check_backbone_match(os.fspath(directory), cfg, backbone)
        prior = cls.load(circuit_file, cfg["top_k"] if top_k == "config" else top_k)
        _check_against_circuit(str(root / CONFIG_NAME), cfg, prior)
        return prior

    def to(self, *args, **kwargs) -> CoDDPrior:
        """Moves / casts the circuit (``prior.to(torch.float64)``); returns ``self``."""
        self.circuit.to(*args, **kwargs)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.circuit.dtype

    @property
    def device(self) -> torch.device:
        return self.circuit.device

    # -------------------------------------------------------------- checking
    def _check(
        self, x: torch.Tensor, logits: torch.Tensor, masked: torch.Tensor, name: str = "x"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.window:
            got = getattr(x, "shape", type(x))
            raise ValueError(f"{name}: expected LongTensor[B, {self.window}] (the prior's window), got {got}")
        B = x.shape[0]
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (B, self.window, self.vocab_size):
            raise ValueError(
                f"logits: expected [B, W, V] = [{B}, {self.window}, {self.vocab_size}] "
                "(the prior's window and vocabulary), "
                f"got {getattr(logits, 'shape', type(logits))}"
            )
        if (
            not isinstance(masked, torch.Tensor)
            or masked.dtype != torch.bool
            or tuple(masked.shape) != (B, self.window)
        ):
            raise ValueError(
                f"masked: expected BoolTensor[{B}, {self.window}], got {getattr(masked, 'shape', type(masked))}"
            )
        if x.dtype.is_floating_point or x.dtype.is_complex:
            raise TypeError(f"{name}: expected an integer tensor of token ids, got {x.dtype}")
        if not logits.dtype.is_floating_point:
            raise TypeError(f"logits: expected a float tensor, got {logits.dtype}")
        dev = self.device
        x, logits, masked = x.to(dev).long(), logits.to(dev), masked.to(dev)
        bad = ~masked & ((x < 0) | (x >= self.vocab_size))
        if bool(bad.any()):
            raise ValueError(f"{name}: observed ids must lie in [0, {self.vocab_size})")
        _check_logits(logits, masked)
        return x, logits, masked

    def _soft(
        self, logits: torch.Tensor, masked: torch.Tensor, temperature: float, top_k: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tempered log-probabilities (top-``k`` restricted) of the masked positions.

        Returns:
            ``(w [B, W, K], cand [B, W, K] or None)``; ``w`` is
            ``log_softmax(logits / tau)`` over the kept candidates, 0 at
            observed positions.
        """
        z = logits.to(self.dtype)
        if temperature != 1.0:
            z = z / temperature
        cand = None
        if top_k is not None:
            z, cand = z.topk(top_k, dim=-1)
        w = F.log_softmax(z, dim=-1)
        w = torch.where(masked.unsqueeze(-1), w, torch.zeros((), dtype=w.dtype, device=w.device))
        return w, cand

    def evidence(
        self, x0: torch.Tensor, logits: torch.Tensor, masked: torch.Tensor, tau: float, candidates: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Checked inputs on the prior's device with their soft evidence.

        Args:
            x0: ``LongTensor[B, W]`` tokens (those at masked positions are scored).
            logits: ``FloatTensor[B, W, V]`` backbone logits (``candidates=None``;
                the prior's ``top_k`` is applied), or ``[B, W, K]`` values of
                the ``candidates`` token ids.
            masked: ``BoolTensor[B, W]``.
            tau: the temperature ``> 0`` of the soft evidence.
            candidates: ``LongTensor[B, W, K]`` token ids of ``logits``, or None.

        Returns:
            ``(x0 [B, W], masked [B, W], w [B, W, K], cand [B, W, K] or None)``:
            ``w = log_softmax(logits / tau)`` over the kept candidates (0 at
            observed positions), the inputs of `conditional_ll`.

        Raises:
            TypeError, ValueError: inputs of the wrong type, shape or range.
        """
        if candidates is None:
            x0, logits, masked = self._check(x0, logits, masked, "x0")
            w, cand = self._soft(logits, masked, tau, self.top_k)
            return x0, masked, w, cand
        self._check_candidates(x0, logits, masked, candidates)
        dev = self.device
        x0, masked, cand = x0.to(dev), masked.to(dev), candidates.to(dev)
        w = F.log_softmax(logits.to(dev, self.dtype) / tau, -1)
        return x0, masked, torch.where(masked.unsqueeze(-1), w, torch.zeros_like(w)), cand

    def _check_candidates(
        self, x0: torch.Tensor, logits: torch.Tensor, masked: torch.Tensor, candidates: torch.Tensor
    ) -> None:
        """Checks ``x0 [B, W]``, ``masked [B, W]``, ``candidates [B, W, K]`` ids and their ``logits [B, W, K]``."""
        if not isinstance(x0, torch.Tensor) or x0.dim() != 2 or x0.shape[1] != self.window:
            raise ValueError(
                f"x0: expected LongTensor[B, {self.window}] (the prior's window), got {getattr(x0, 'shape', type(x0))}"
            )
        if x0.dtype.is_floating_point or x0.dtype.is_complex:
            raise TypeError(f"x0: expected an integer tensor of token ids, got {x0.dtype}")
        if bool(((x0 < 0) | (x0 >= self.vocab_size)).any()):
            raise ValueError(f"x0: ids must lie in [0, {self.vocab_size})")
        want = (x0.shape[0], self.window)
        if not isinstance(candidates, torch.Tensor) or candidates.dim() != 3 or tuple(candidates.shape[:2]) != want:
            got = getattr(candidates, "shape", type(candidates))
            raise ValueError(f"candidates: expected LongTensor[B, {self.window}, K] matching x0, got {got}")
        if candidates.dtype.is_floating_point or candidates.dtype.is_complex or candidates.dtype == torch.bool:
            raise TypeError(f"candidates: expected an integer tensor of token ids, got {candidates.dtype}")
        if bool(((candidates < 0) | (candidates >= self.vocab_size)).any()):
            raise ValueError(f"candidates: token ids must lie in [0, {self.vocab_size})")
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != tuple(candidates.shape):
            raise ValueError(
                f"logits: expected the shape of candidates {list(candidates.shape)}, "
                f"got {getattr(logits, 'shape', type(logits))}"
            )
        if not logits.dtype.is_floating_point:
            raise TypeError(f"logits: expected a float tensor, got {logits.dtype}")
        if (
            not isinstance(masked, torch.Tensor)
            or masked.dtype != torch.bool
            or tuple(masked.shape) != tuple(candidates.shape[:2])
        ):
            raise ValueError(
                f"masked: expected BoolTensor{list(candidates.shape[:2])}, got {getattr(masked, 'shape', type(masked))}"
            )
        _check_logits(logits, masked.to(logits.device))

    # --------------------------------------------------------------- leaves
    def engine_evidence(
        self,
        x: torch.Tensor,
        masked: torch.Tensor,
        w: torch.Tensor,
        cand: torch.Tensor | None,
        dense: bool | None = None,
    ) -> Evidence:
        """The circuit's evidence for the soft evidence ``w`` on the masked positions.

        Masked positions carry the candidate evidence ``(cand, w)`` (all ``V``
        ids without top-``k``); observed ones the candidates ``[x, x+1, ...]``
        (mod ``V``) with log-weights ``[0, -inf, ...]``, so an observed leaf is
        ``log E(x)`` whatever ``w`` holds there. Without top-``k``, when the
        ``[B, N_0, V]`` candidate gather of the leaf layer would exceed
        ``_DENSE_LIMIT`` elements, the full soft evidence ``[B, W, V]`` (0 at
        observed positions) is passed instead (one matrix product per leaf block).
        ``dense=True`` takes that path whatever the size (passes that do not
        differentiate the parameters use the circuit's cached exponentiated
        table, so the product is the cheaper path at every size).

        Args:
            x: ``LongTensor[B, W]`` (masked entries are ignored).
            masked: ``BoolTensor[B, W]``.
            w: ``FloatTensor[B, W, K]`` log-weights (``K = V`` without ``cand``).
            cand: ``LongTensor[B, W, K]`` token ids, or None.
            dense: without ``cand``, True for the full soft evidence, None to decide by size.

        Returns:
            `pcircuits.engine.evidence.Evidence` over ``B`` rows.
        """
        circuit = self.circuit
        B, W = x.shape
        V = self.vocab_size
        xo = torch.where(masked, torch.zeros_like(x), x)
        on = masked.unsqueeze(-1)
        if cand is None:
            width = sum(blk.num_groups * blk.num_nodes for blk in circuit.leaf_blocks())
            if dense or B * width * V > _DENSE_LIMIT:
                return circuit.prepare(xo, masked, torch.where(on, w, torch.zeros((), dtype=w.dtype, device=w.device)))
            cand = torch.arange(V, device=x.device).expand(B, W, V)
        K = cand.shape[-1]
        steps = torch.arange(K, device=x.device)
        own = torch.remainder(xo.unsqueeze(-1) + steps, V)  # [B, W, K] distinct ids, x first
        one = torch.where(steps == 0, 0.0, -math.inf).to(w.dtype)  # [K]
        return circuit.prepare(xo, masked, torch.where(on, w, one), torch.where(on, cand, own))

    def _upward(
        self,
        x: torch.Tensor,
        masked: torch.Tensor,
        w: torch.Tensor,
        cand: torch.Tensor | None,
        detach: bool = True,
        semiring: str = "sum",
    ) -> list[torch.Tensor]:
        """Every layer's output ``[B, N_l]`` under the soft evidence (see `engine_evidence`).

        ``detach`` cuts the graph to the circuit's parameters (the graph to ``w`` is kept).
        """
        circuit = self.circuit
        ev = self.engine_evidence(x, masked, w, cand, dense=True if detach and semiring == "sum" else None)
        lw = circuit.sum_log_weights()
        if not detach:
            return circuit.upward(ev, semiring, log_weights=lw)
        lw = {k: v.detach() for k, v in lw.items()}
        params = {blk.bank: circuit.params[blk.bank].detach() for blk in circuit.leaf_blocks()}
        leaves = circuit.leaf_values(ev, semiring, leaf_params=params)
        return circuit.upward(ev, semiring, log_weights=lw, leaf_outputs=leaves)

    # --------------------------------------------------------------- queries
    def log_prob(
        self,
        x0: torch.Tensor,
        logits: torch.Tensor,
        masked: torch.Tensor,
        temperature: float = 1.0,
        requires_grad: bool = False,
    ) -> torch.Tensor:
        """``log p_hat(x0 on the masked positions | observed positions, logits)``.

        ``p_hat(x | x_t) = p_omega(x) prod_{i masked} q_i(x_i) / Z`` with
        ``q_i = softmax(logits_i / tau)`` (restricted to the top-``k``
        candidates when ``top_k`` is set) and the sum ``Z`` over the masked
        positions' values with the observed ones fixed to ``x0``.

        Args:
            x0: ``LongTensor[B, W]`` clean tokens (all positions).
            logits: ``FloatTensor[B, W, V]`` backbone logits (rows of
                observed positions are ignored).
            masked: ``BoolTensor[B, W]`` positions whose tokens are scored.
            temperature: ``tau > 0``.
            requires_grad: keep the graph to the circuit's parameters (training).

        Returns:
            ``FloatTensor[B]`` log-probabilities (0 where nothing is masked,
            ``-inf`` where ``x0`` is outside the top-``k`` candidates or has
            probability 0).

        Raises:
            TypeError: ``x0`` not integer or ``logits`` not float.
            ValueError: shapes that do not match the prior's window or
                vocabulary, ``tau <= 0``, or logits with NaN, ``+inf`` or only
                ``-inf`` at a masked position.
        """
        tau = _check_temperature(temperature)
        x0, logits, masked = self._check(x0, logits, masked, "x0")
        if not bool((x0[masked] >= 0).all() and (x0[masked] < self.vocab_size).all()):
            raise ValueError(f"x0: ids must lie in [0, {self.vocab_size})")
        with torch.set_grad_enabled(requires_grad):
            w, cand = self._soft(logits, masked, tau, self.top_k)
            return self.conditional_ll(x0, masked, w, cand, detach=not requires_grad)

    def conditional_ll(
        self, x0: torch.Tensor, masked: torch.Tensor, w: torch.Tensor, cand: torch.Tensor | None, detach: bool
    ) -> torch.Tensor:
        """``log p_hat(x0_masked | x0_observed)`` from soft evidence, backoff mixed in (no input checks).

        Args:
            x0: ``LongTensor[B, W]`` windows, as returned by `evidence`.
            masked: ``BoolTensor[B, W]`` masked positions.
            w: ``[B, W, K]`` soft-evidence log-weights.
            cand: ``LongTensor[B, W, K]`` candidate ids, or None (full vocabulary).
            detach: False keeps the graph to the circuit's parameters (training).

        Returns:
            ``FloatTensor[B]``.
        """
        wx = self._factorized_ll(x0, masked, w, cand)
        nothing = torch.zeros_like(masked)
        num = self._upward(x0, nothing, torch.zeros_like(w), cand, detach=detach)[-1][:, 0]
        den = self._upward(x0, masked, w, cand, detach=detach)[-1][:, 0]
        joint = num + wx
        out = torch.where(torch.isfinite(joint), joint - den, torch.full_like(joint, -math.inf))
        return out if self.backoff is None else self._mix(masked, out, wx)

    @staticmethod
    def _factorized_ll(
        x0: torch.Tensor, masked: torch.Tensor, w: torch.Tensor, cand: torch.Tensor | None
    ) -> torch.Tensor:
        """``sum_{i masked} w_i(x0_i)`` ``[B]``: the factorized log-probability under the soft evidence."""
        if cand is None:
            wx = w.gather(-1, x0.unsqueeze(-1))[..., 0]
        else:
            hit = cand == x0.unsqueeze(-1)
            wx = torch.where(hit, w, torch.full_like(w, -math.inf)).amax(-1)
        return torch.where(masked, wx, torch.zeros_like(wx)).sum(-1)

    # --------------------------------------------------------------- backoff
    def set_backoff(self, weights: Sequence[float] | torch.Tensor | None) -> None:
        """Sets the weight ``lambda`` of ``p_hat`` per mask-ratio bin (see the module docstring).

        Args:
            weights: ``n_bins`` values in ``[0, 1]`` for equal-width bins of
                the window's mask ratio (bin ``min(floor(r * n_bins), n_bins - 1)``),
                or ``None`` for plain CoDD.

        Raises:
            TypeError: ``weights`` is not a sequence of numbers.
            ValueError: no weight, or a weight outside ``[0, 1]``.
        """
        if weights is None:
            self.backoff = None
            return
        try:
            w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"weights: expected a sequence of numbers in [0, 1] or None, got {weights!r}") from err
        if w.numel() < 1 or not bool(((w >= 0) & (w <= 1)).all()):
            raise ValueError(f"weights: expected at least one value, all in [0, 1], got {w.tolist()}")
        self.backoff = w

    def mix_weight(self, masked: torch.Tensor) -> torch.Tensor:
        """``lambda`` of each window from its mask ratio.

        Args:
            masked: ``BoolTensor[B, W]``.

        Returns:
            ``FloatTensor[B]`` (float64; ones without a backoff).
        """
        if self.backoff is None:
            return torch.ones(masked.shape[0], dtype=torch.float64, device=masked.device)
        n = self.backoff.numel()
        ratio = masked.sum(1).double() / masked.shape[1]
        idx = (ratio * n).floor().long().clamp(0, n - 1)
        return self.backoff.to(masked.device)[idx]

    @torch.no_grad()
    def partial_log_prob(
        self,
        x0: torch.Tensor,
        logits: torch.Tensor,
        scored: torch.Tensor,
        summed_out: torch.Tensor,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``log p_hat(x0[scored] | observed)`` with the ``summed_out`` positions marginalised, backoff mixed in.

        The evidence is the full-vocabulary tempered softmax of ``logits`` at the
        scored and summed-out positions (the other positions are observed).

        Args:
            x0: ``LongTensor[B, W]`` windows.
            logits: ``FloatTensor[B, W, V]`` backbone logits.
            scored: ``BoolTensor[B, W]`` positions whose tokens are scored.
            summed_out: ``BoolTensor[B, W]`` masked positions summed out (disjoint from ``scored``).
            temperature: ``tau``.

        Returns:
            ``FloatTensor[B]`` log-probabilities.
        """
        both = scored | summed_out
        x0, logits, both = self._check(x0, logits, both, "x0")
        scored, summed_out = scored.to(both.device), summed_out.to(both.device)
        if bool((scored & summed_out).any()):
            raise ValueError("summed_out: must not overlap scored")
        w = F.log_softmax(logits.to(self.dtype) / _check_temperature(temperature), -1)
        w = torch.where(both.unsqueeze(-1), w, torch.zeros_like(w))
        wx = w.gather(-1, x0.unsqueeze(-1))[..., 0]
        wx = torch.where(scored, wx, torch.zeros_like(wx)).sum(-1)
        num = self._upward(x0, summed_out, w, None)[-1][:, 0]
        den = self._upward(x0, both, w, None)[-1][:, 0]
        lp = num + wx - den
        return self._mix(both, lp, wx) if self.backoff is not None else lp

    def _mix(self, masked: torch.Tensor, lp_codd: torch.Tensor, lp_fact: torch.Tensor) -> torch.Tensor:
        """``log(lambda p_hat + (1 - lambda) prod q)`` ``[B]`` from the two log-probabilities."""
        lam = self.mix_weight(masked).to(lp_codd.dtype)
        return torch.logaddexp(torch.log(lam) + lp_codd, torch.log1p(-lam) + lp_fact)

    def fit_backoff(
        self,
        x0: torch.Tensor,
        logits: torch.Tensor,
        masked: torch.Tensor,
        bins: int = 5,
        temperature: float = 1.0,
        batch_size: int = 256,
        candidates: torch.Tensor | None = None,
    ) -> list[float]:
        """Fits the backoff weights on windows the circuit was *not* trained on.

        In each of ``bins`` equal-width bins of the window's mask ratio,
        ``lambda`` maximises ``sum_windows log(lambda p_hat(x0) + (1 - lambda) prod_i q_i(x0_i))``
        over a grid of step 0.001 on ``[0, 1]`` (the objective is concave in
        ``lambda``); a bin without windows keeps ``lambda = 1``. Sets and
        returns the weights.

        Args:
            x0: ``LongTensor[M, W]`` clean windows.
            logits: ``FloatTensor[M, W, V]`` the backbone's logits, or
                ``[M, W, K]`` values of ``candidates``.
            masked: ``BoolTensor[M, W]`` masked positions.
            bins: number of mask-ratio bins.
            temperature: ``tau`` of the soft evidence.
            batch_size: windows per pass.
            candidates: ``LongTensor[M, W, K]`` token ids of top-``k`` logits
                (from `diffusion.codd.training.topk_with_target`), or ``None``.

        Returns:
            The ``bins`` weights.

        Raises:
            ValueError: mismatched shapes, ``bins < 1``, ``batch_size < 1``,
                ``tau <= 0``, or logits with NaN, ``+inf`` or only ``-inf`` at a
                masked position.
        """
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins: expected a positive int, got {bins!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if not isinstance(x0, torch.Tensor) or x0.dim() != 2 or x0.shape[0] == 0:
            raise ValueError(
                f"x0: expected LongTensor[M, {self.window}] with M >= 1 windows, got {getattr(x0, 'shape', type(x0))}"
            )
        tau = _check_temperature(temperature)
        saved, self.backoff = self.backoff, None  # p_hat alone; restored if an input is refused
        lc, lf, mk = [], [], []
        try:
            with torch.no_grad():
                for s in range(0, x0.shape[0], batch_size):
                    sl = slice(s, s + batch_size)
                    cb = None if candidates is None else candidates[sl]
                    xb, mb, w, cand = self.evidence(x0[sl], logits[sl], masked[sl], tau, cb)
                    lc.append(self.conditional_ll(xb, mb, w, cand, detach=True).double().cpu())
                    lf.append(self._factorized_ll(xb, mb, w, cand).double().cpu())
                    mk.append(mb.cpu())
        except Exception:
            self.backoff = saved
            raise
        out = _best_mix_weights(torch.cat(lc), torch.cat(lf), torch.cat(mk), bins)
        self.set_backoff(out)
        return out

    def _factorized_probs(
        self, x: torch.Tensor, masked: torch.Tensor, w: torch.Tensor, cand: torch.Tensor | None
    ) -> torch.Tensor:
        """``prod_i q_i`` as per-position probabilities ``[B, W, V]`` (one-hot at observed positions)."""
        B, W = x.shape
        q = torch.exp(w)
        if cand is not None:
            q = torch.zeros(B, W, self.vocab_size, dtype=q.dtype, device=q.device).scatter_add_(-1, cand, q)
        onehot = F.one_hot(torch.where(masked, torch.zeros_like(x), x), self.vocab_size).to(q.dtype)
        return torch.where(masked.unsqueeze(-1), q, onehot)

    def _factorized_draw(
        self,
        x: torch.Tensor,
        masked: torch.Tensor,
        w: torch.Tensor,
        cand: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """A draw (``generator``) or the mode (``generator=False``) of ``prod_i q_i`` on the masked positions."""
        pick = w.argmax(-1) if generator is False else gumbel_argmax(w, generator)
        tok = pick if cand is None else cand.gather(-1, pick.unsqueeze(-1))[..., 0]
        return torch.where(masked, tok, x)

    def marginals(
        self, x: torch.Tensor, logits: torch.Tensor, masked: torch.Tensor, temperature: float = 1.0
    ) -> torch.Tensor:
        """Exact per-position marginals of ``p_hat``.

        One upward pass and its backward pass: ``d log Z / d w_i(c)`` is the
        posterior probability of token ``c`` at position ``i``.

        Args:
            x: ``LongTensor[B, W]`` current tokens (masked entries are ignored).
            logits: ``FloatTensor[B, W, V]`` backbone logits.
            masked: ``BoolTensor[B, W]``.
            temperature: ``tau > 0``.

        Returns:
            ``FloatTensor[B, W, V]`` probabilities: one-hot rows at observed
            positions, ``p_hat(x_i = c | ...)`` at masked ones (0 outside the
            top-``k`` candidates).

        Raises:
            TypeError: ``x`` not integer or ``logits`` not float.
            ValueError: mismatched shapes, ``tau <= 0``, or logits with NaN,
                ``+inf`` or only ``-inf`` at a masked position.
        """
        tau = _check_temperature(temperature)
        x, logits, masked = self._check(x, logits, masked)
        post = self._marginals(x, logits, masked, tau)[0]
        if self.backoff is None:
            return post
        with torch.no_grad():
            w, cand = self._soft(logits, masked, tau, self.top_k)
            lam = self.mix_weight(masked).to(post.dtype).view(-1, 1, 1)
            return lam * post + (1 - lam) * self._factorized_probs(x, masked, w, cand)

    def _marginals(
        self, x: torch.Tensor, logits: torch.Tensor, masked: torch.Tensor, tau: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Marginals ``[B, W, V]`` and ``log Z`` ``[B]`` (checked inputs)."""
        w, cand = self._soft(logits.detach(), masked, tau, self.top_k)
        post, root, _ = self._marginal_pass(x, masked, w, cand)
        return post, root

    def _marginal_pass(
        self, x: torch.Tensor, masked: torch.Tensor, w: torch.Tensor, cand: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One upward pass and its backward pass under the soft evidence ``w [B, W, K]`` (candidates ``cand``).

        Returns:
            ``(post [B, W, V], log Z [B], outs)``: the marginals (one-hot at
            observed positions, NaN rows where ``Z = 0``), the log-normaliser
            and the upward pass's layer outputs ``[B, N_l]`` (detached), which
            a downward pass can reuse.
        """
        B, W = x.shape
        V = self.vocab_size
        with torch.enable_grad():
            w = w.detach().requires_grad_()
            outs = self._upward(x, masked, w, cand, detach=True)
            root = outs[-1][:, 0]
            finite = torch.isfinite(root)
            total = torch.where(finite, root, torch.zeros_like(root)).sum()
            (g,) = torch.autograd.grad(total, w, allow_unused=True)
        g = torch.zeros_like(w) if g is None else g.detach()
        if cand is None:
            post = g.clone()
        else:
            post = torch.zeros(B, W, V, dtype=g.dtype, device=g.device).scatter_add_(-1, cand, g)
        obs = ~masked
        if bool(obs.any()):  # one-hot rows at observed positions
            b, i = obs.nonzero(as_tuple=True)
            post[b, i] = 0.0
            post[b, i, x[b, i]] = 1.0
        if not bool(finite.all()):
            post = post.masked_fill((~finite).view(B, 1, 1) & masked.unsqueeze(-1), math.nan)
        return post, root.detach(), [o.detach() for o in outs]

    def marginals_and_sample(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        masked: torch.Tensor,
        temperature: float = 1.0,
        method: str = "latent",
        generator: torch.Generator | None = None,
        order: str = "low_confidence",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`marginals` and a `sample` of the same inputs, sharing their passes where the evidence is the same.

        Returns what ``sample(x, logits, masked, temperature, method,
        generator, order)`` followed by ``marginals(x, logits, masked,
        temperature)`` return, drawing the same random numbers in the same
        order (so the same generator state gives the same tokens). When the
        path is drawn under the marginals' evidence (``"exact"``,
        ``"latent_tempered"``, or ``"latent"`` at ``temperature=1``) one
        upward pass serves both: its backward pass gives the marginals and a
        downward pass over its outputs the latent path. Otherwise the two
        are computed one after the other.

        Args:
            x: ``[B, W]`` window tokens, as in `sample`.
            logits: ``[B, W, V]`` backbone logits, as in `sample`.
            masked: ``[B, W]`` bool, the positions to fill, as in `sample`.
            temperature: tau, as in `sample`.
            method: the sampler, as in `sample`.
            generator: the random generator, as in `sample`.
            order: the order rule, as in `sample`.

        Returns:
            ``(marginals [B, W, V], tokens [B, W])``.

        Raises:
            ValueError: as `sample` (evidence of probability 0 raises), and for an unknown ``order``.
            TypeError: as `sample`.
        """
        tau = _check_temperature(temperature)
        shared = method in ("exact", "latent_tempered") or (method == "latent" and tau == 1.0)
        if method not in SAMPLE_METHODS or not shared:
            tokens = self.sample(x, logits, masked, temperature, method, generator, order)
            return self.marginals(x, logits, masked, temperature), tokens
        if order not in ORDER_RULES:
            raise ValueError(f"order: unknown rule {order!r}; expected one of {', '.join(ORDER_RULES)}")
        x, logits, masked = self._check(x, logits, masked)
        with torch.no_grad():
            use = None
            if self.backoff is not None:  # the mixture's component of each row, drawn first as in sample
                lam = self.mix_weight(masked)
                use = torch.rand(lam.shape, generator=generator, dtype=lam.dtype, device=lam.device) < lam
            w, cand = self._soft(logits, masked, tau, self.top_k)
            post, root, outs = self._marginal_pass(x, masked, w, cand)
            out = torch.where(masked, torch.zeros_like(x), x).clone()
            if bool(masked.any()):
                _check_root(root)
                cond = self._leaf_logits_given_path(x, masked, outs, w, cand, generator, "sum")
                out = _tokens_from(cond, cand, masked, out, generator, "sum")
            if use is None:
                return post, out
            out = torch.where(use.unsqueeze(1), out, self._factorized_draw(x, masked, w, cand, generator))
            lam = self.mix_weight(masked).to(post.dtype).view(-1, 1, 1)
            return lam * post + (1 - lam) * self._factorized_probs(x, masked, w, cand), out

    def sample(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        masked: torch.Tensor,
        temperature: float = 1.0,
        method: str = "latent",
        generator: torch.Generator | None = None,
        order: str = "low_confidence",
    ) -> torch.Tensor:
        """Joint draw of the masked positions.

        Methods (``q_i^tau = softmax(logits_i / tau)``, ``E`` the circuit's leaves):

        * ``"exact"``: a sample of ``p_hat(x) ∝ p_omega(x) prod_i q_i^tau(x_i)``
          (one upward pass with the tempered soft evidence, a top-down
          pass, then each token from its selected leaf times ``q_i^tau``).
        * ``"latent"`` (the paper's default): the latent path ``z`` (the
          sum-node choices; for an HMM the hidden states) is drawn from its
          posterior under the *untempered* evidence,
          ``P(z | x_obs, q^1) ∝ p_omega(z, x_obs) prod_{i masked} sum_c E_{z_i}(c) q_i^1(c)``,
          then every masked token independently from
          ``x_i | z ~ E_{z_i}(x_i) q_i^tau(x_i) / sum_c E_{z_i}(c) q_i^tau(c)``.
          So ``p_latent(x) = sum_z P(z | x_obs, q^1) prod_i E_{z_i}(x_i) q_i^tau(x_i) / N_i(z_i)``;
          at ``tau = 1`` it equals ``"exact"``.
        * ``"latent_tempered"`` (the official CoDD code): the path is drawn
          under the *tempered* evidence, ``P(z | x_obs, q^tau)``, then every
          masked token from ``E_{z_i}(x_i) q_i^tau(x_i) / N_i(z_i)`` (see
          `path_conditionals`). As a joint draw of the window this is
          exactly ``p_hat`` (the same distribution as ``"exact"``, for every
          tau); it differs from ``"exact"`` inside `diffusion.generate`,
          where the per-position conditionals given the path set the
          remasking confidence and the greedy / temperature-``T`` token.
        * ``"any_order"``: tokens committed one at a time, each from its exact
          conditional given the tokens committed before it, in the order
          ``order`` computed from the current marginals (``low_confidence``:
          largest max-probability first; ``margin``: largest top-1 minus
          top-2; ``entropy``: lowest entropy; ``random``). The order depends
          only on the marginals, never on the value about to be drawn, so by
          the chain rule the joint is exactly ``p_hat`` (one upward and
          backward pass per masked position).

        Args:
            x: ``LongTensor[B, W]`` current tokens.
            logits: ``FloatTensor[B, W, V]`` backbone logits.
            masked: ``BoolTensor[B, W]`` positions to draw.
            temperature: ``tau > 0``.
            method: ``"latent"``, ``"latent_tempered"``, ``"exact"`` or ``"any_order"``.
            generator: random generator.
            order: commit order of ``"any_order"`` (one of `ORDER_RULES`).

        Returns:
            ``LongTensor[B, W]``: ``x`` with the masked positions filled.

        Raises:
            TypeError: ``x`` not integer or ``logits`` not float.
            ValueError: logits with NaN, ``+inf`` or only ``-inf`` at a masked
                position, mismatched shapes, ``tau <= 0``, an unknown method or
                order, or evidence of probability 0.
        """
        tau = _check_temperature(temperature)
        if method not in SAMPLE_METHODS:
            raise ValueError(f"method: unknown sampler {method!r}; expected one of {', '.join(SAMPLE_METHODS)}")
        if order not in ORDER_RULES:
            raise ValueError(f"order: unknown rule {order!r}; expected one of {', '.join(ORDER_RULES)}")
        x, logits, masked = self._check(x, logits, masked)
        with torch.no_grad():
            use = None
            if self.backoff is not None:  # the mixture's component of each row
                lam = self.mix_weight(masked)
                use = torch.rand(lam.shape, generator=generator, dtype=lam.dtype, device=lam.device) < lam
            if method == "any_order":
                out = self._sample_any_order(x, logits, masked, tau, generator, order)
            elif method in ("exact", "latent_tempered"):
                out = self._topdown(x, logits, masked, tau, tau, generator, "sum")
            else:
                out = self._topdown(x, logits, masked, 1.0, tau, generator, "sum")
            if use is None:
                return out
            w, cand = self._soft(logits, masked, tau, self.top_k)
            return torch.where(use.unsqueeze(1), out, self._factorized_draw(x, masked, w, cand, generator))

    def mpe(
        self, x: torch.Tensor, logits: torch.Tensor, masked: torch.Tensor, temperature: float = 1.0
    ) -> torch.Tensor:
        """Max-product (Viterbi) completion of the masked positions.

        The tokens of the most probable joint assignment of tokens and latent
        choices, ``argmax_{x, z} p_hat(x, z)`` (for an HMM ``z`` is the hidden
        path): a max-product upward pass, backtracking, then each token as the
        argmax of its selected leaf times its soft evidence. This is the MPE
        of the circuit; it is ``argmax_x p_hat(x)`` for deterministic circuits
        and its standard approximation otherwise (with the latent path summed
        out, the exact mode of an HMM's marginal is NP-hard in general).

        With a backoff each row takes whichever of two candidates, the
        Viterbi completion above and the per-position argmax of ``q``, has
        the higher mixture probability (so ``lambda = 0`` gives the argmax of
        ``q``, and ``lambda = 1`` the candidate with the higher ``p_hat``).

        Args:
            x: ``LongTensor[B, W]``.
            logits: ``FloatTensor[B, W, V]``.
            masked: ``BoolTensor[B, W]``.
            temperature: ``tau > 0``.

        Returns:
            ``LongTensor[B, W]``.

        Raises:
            TypeError: ``x`` not integer or ``logits`` not float.
            ValueError: mismatched shapes, ``tau <= 0``, or logits with NaN,
                ``+inf`` or only ``-inf`` at a masked position.
        """
        tau = _check_temperature(temperature)
        x, logits, masked = self._check(x, logits, masked)
        with torch.no_grad():
            out = self._topdown(x, logits, masked, tau, tau, None, "max")
            if self.backoff is None:
                return out
            w, cand = self._soft(logits, masked, tau, self.top_k)
            alt = self._factorized_draw(x, masked, w, cand, False)
            better = self.conditional_ll(alt, masked, w, cand, True) > self.conditional_ll(out, masked, w, cand, True)
            return torch.where(better.unsqueeze(1), alt, out)

    def _topdown(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        masked: torch.Tensor,
        tau_path: float,
        tau_leaf: float,
        generator: torch.Generator | None,
        semiring: str,
    ) -> torch.Tensor:
        """Tokens from a selected latent path.

        Each masked token is the draw (``semiring="sum"``) or the argmax (``"max"``) of its conditional given the path.
        """
        out = torch.where(masked, torch.zeros_like(x), x).clone()
        if not bool(masked.any()):
            return out
        cond, cand = self._path_leaf_logits(x, logits, masked, tau_path, tau_leaf, generator, semiring)
        return _tokens_from(cond, cand, masked, out, generator, semiring)

    def _path_leaf_logits(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        masked: torch.Tensor,
        tau_path: float,
        tau_leaf: float,
        generator: torch.Generator | None,
        semiring: str,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Selects a latent path and returns each position's unnormalised token log-weights given it.

        The path is drawn (``semiring="sum"``) from its posterior, or taken as
        the max-product path (``semiring="max"``), under the soft evidence
        ``log_softmax(logits / tau_path)``; then masked position ``i`` gets
        ``log E_{z_i}(c) + log_softmax(logits_i / tau_leaf)(c)`` over its
        candidates ``c``.

        Returns:
            ``(cond [B, W, K], cand [B, W, K] or None)``: ``K = V`` without
            top-k (``cand`` None); ``cond`` is 0 at observed positions.

        Raises:
            ValueError: evidence of probability 0 under the prior.
        """
        w_path, cand = self._soft(logits, masked, tau_path, self.top_k)
        w_leaf = w_path if tau_leaf == tau_path else self._soft(logits, masked, tau_leaf, self.top_k)[0]
        outs = self._upward(x, masked, w_path, cand, detach=True, semiring=semiring)
        _check_root(outs[-1][:, 0])
        return self._leaf_logits_given_path(x, masked, outs, w_leaf, cand, generator, semiring), cand

    def _leaf_logits_given_path(
        self,
        x: torch.Tensor,
        masked: torch.Tensor,
        outs: list[torch.Tensor],
        w_leaf: torch.Tensor,
        cand: torch.Tensor | None,
        generator: torch.Generator | None,
        semiring: str,
    ) -> torch.Tensor:
        """``cond [B, W, K]``: a downward pass over the upward ``outs``, then ``log E_{z_i}(c) + w_leaf_i(c)``."""
        circuit = self.circuit
        lw = {k: v.detach() for k, v in circuit.sum_log_weights().items()}
        rows = torch.arange(x.shape[0], device=x.device)
        sel = downward(circuit, outs, rows, semiring, generator, lw)
        ev_leaf = circuit.prepare(torch.where(masked, torch.zeros_like(x), x), masked, w_leaf, cand)
        return selected_leaf_logits(circuit, sel, ev_leaf, rows)  # [B, W, K], 0 at observed positions

    def path_conditionals(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        masked: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-position token distributions given one latent path drawn under tempered evidence.

        The step of the official CoDD code (``sampler="latent_tempered"`` of
        `diffusion.generate`): the latent path ``z`` (for an HMM the hidden
        states) is drawn from ``P(z | x_obs, q^tau) ∝ p_omega(z, x_obs)
        prod_{i masked} sum_c E_{z_i}(c) q_i^tau(c)`` (``q_i^tau =
        softmax(logits_i / tau)``), and position ``i`` gets
        ``p(x_i = c | z) = E_{z_i}(c) q_i^tau(c) / sum_c' E_{z_i}(c') q_i^tau(c')``.
        Drawing every masked token from these conditionals samples ``p_hat``
        exactly (the same distribution as ``method="exact"``); the generation
        loop instead uses them as the step's logits: the remasking confidence
        is ``p(x_i | z)`` and the token is drawn from them at the generation
        temperature ``T`` (argmax at ``T = 0``), i.e. from
        ``sum_z P(z | x_obs, q^tau) prod_i p(x_i | z)^(1/T) / sum_c p(c | z)^(1/T)``.

        With a backoff each row keeps, with probability ``1 - lambda``, the
        factorized component: ``q_i^tau`` itself.

        Args:
            x: ``LongTensor[B, W]`` current tokens (masked entries are ignored).
            logits: ``FloatTensor[B, W, V]`` backbone logits.
            masked: ``BoolTensor[B, W]``.
            temperature: ``tau > 0``.
            generator: random generator (the path draw).

        Returns:
            ``FloatTensor[B, W, V]`` log-probabilities: ``log p(x_i | z)`` at
            masked positions (``-inf`` outside the top-``k`` candidates), the
            one-hot of ``x_i`` (0 / ``-inf``) at observed ones.

        Raises:
            TypeError: ``x`` not integer or ``logits`` not float.
            ValueError: mismatched shapes, ``tau <= 0``, logits with NaN,
                ``+inf`` or only ``-inf`` at a masked position, or evidence of
                probability 0.
        """
        tau = _check_temperature(temperature)
        x, logits, masked = self._check(x, logits, masked)
        B, W = x.shape
        V = self.vocab_size
        with torch.no_grad():
            use = None
            if self.backoff is not None:
                lam = self.mix_weight(masked)
                use = torch.rand(lam.shape, generator=generator, dtype=lam.dtype, device=lam.device) < lam
            if bool(masked.any()):
                cond, cand = self._path_leaf_logits(x, logits, masked, tau, tau, generator, "sum")
            else:
                cond, cand = self._soft(logits, masked, tau, self.top_k)
            if use is not None:
                w, _ = self._soft(logits, masked, tau, self.top_k)
                cond = torch.where(use.view(B, 1, 1), cond, w)
            cond = F.log_softmax(cond, -1)
            if cand is not None:
                cond = torch.full((B, W, V), -math.inf, dtype=cond.dtype, device=cond.device).scatter(-1, cand, cond)
            onehot = torch.full((B, W, V), -math.inf, dtype=cond.dtype, device=cond.device)
            onehot.scatter_(-1, torch.where(masked, torch.zeros_like(x), x).unsqueeze(-1), 0.0)
            return torch.where(masked.unsqueeze(-1), cond, onehot)

    def _sample_any_order(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        masked: torch.Tensor,
        tau: float,
        generator: torch.Generator | None,
        order: str,
    ) -> torch.Tensor:
        out = torch.where(masked, torch.zeros_like(x), x).clone()
        left = masked.clone()
        B = x.shape[0]
        rows = torch.arange(B, device=x.device)
        while bool(left.any()):
            post, root = self._marginals(out, logits, left, tau)
            if not bool(torch.isfinite(root[left.any(1)]).all()):
                raise ValueError("the evidence has probability 0 under the prior; nothing to sample")
            post = post.clamp_min(0.0)
            score = order_scores(post, order, generator)
            score = score.masked_fill(~left, -math.inf)
            pos = score.argmax(1)  # [B]
            active = left.any(1)
            p = post[rows, pos]  # [B, V]
            p = torch.where(active.unsqueeze(1), p, torch.ones_like(p))
            tok = torch.multinomial(p.double(), 1, generator=generator)[:, 0]
            out[rows[active], pos[active]] = tok[active]
            left[rows[active], pos[active]] = False
        return out


def _check_root(root: torch.Tensor) -> None:
    """Raises ``ValueError`` if a row's ``log Z`` (``root [B]``) is not finite: nothing to sample."""
    if not bool(torch.isfinite(root).all()):
        b = int((~torch.isfinite(root)).nonzero()[0])
        raise ValueError(f"the evidence of row {b} has probability 0 under the prior; nothing to sample")


def _tokens_from(
    cond: torch.Tensor,
    cand: torch.Tensor | None,
    masked: torch.Tensor,
    out: torch.Tensor,
    generator: torch.Generator | None,
    semiring: str,
) -> torch.Tensor:
    """``out [B, W]`` with each masked token drawn from (``"sum"``) or the argmax of (``"max"``) ``cond [B, W, K]``."""
    pick = cond.argmax(-1) if semiring == "max" else gumbel_argmax(cond, generator)  # [B, W]
    tok = pick if cand is None else cand.gather(-1, pick.unsqueeze(-1))[..., 0]
    return torch.where(masked, tok, out)


def _best_mix_weights(lp_codd: torch.Tensor, lp_fact: torch.Tensor, masked: torch.Tensor, bins: int) -> list[float]:
    """Per mask-ratio bin, the ``lambda`` on a 0.001 grid of ``[0, 1]`` maximising the mixture's log-likelihood.

    Args:
        lp_codd: ``FloatTensor[M]`` ``log p_hat`` of each window.
        lp_fact: ``FloatTensor[M]`` factorized log-probability of each window.
        masked: ``BoolTensor[M, W]``.
        bins: equal-width bins of the mask ratio.

    Returns:
        ``bins`` weights (1.0 for a bin without windows).
    """
    idx = ((masked.sum(1).double() / masked.shape[1]) * bins).floor().long().clamp(0, bins - 1)
    grid = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    out = []
    for b in range(bins):
        sel = (idx == b) & masked.any(1)
        if not bool(sel.any()):
            out.append(1.0)
            continue
        obj = torch.logaddexp(
            torch.log(grid)[:, None] + lp_codd[sel][None], torch.log1p(-grid)[:, None] + lp_fact[sel][None]
        )
        obj = torch.where(torch.isnan(obj), torch.full_like(obj, -math.inf), obj).sum(1)
        out.append(float(grid[int(obj.argmax())]))
    return out


def order_scores(post: torch.Tensor, rule: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Commit-order scores from marginals (higher first), independent of any draw.

    Args:
        post: ``FloatTensor[B, W, V]`` marginals.
        rule: one of `ORDER_RULES`.
        generator: random generator for ``"random"``.

    Returns:
        ``FloatTensor[B, W]``.
    """
    if rule == "low_confidence":
        return post.amax(-1)
    if rule == "margin":
        top2 = post.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if rule == "entropy":
        return (post * torch.log(post.clamp_min(1e-300))).sum(-1)
    if rule == "random":
        return torch.rand(post.shape[:2], generator=generator, dtype=post.dtype, device=post.device)
    raise ValueError(f"order: unknown rule {rule!r}; expected one of {', '.join(ORDER_RULES)}")
