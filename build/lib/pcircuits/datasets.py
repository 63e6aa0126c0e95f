"""Loading data files: the DEBD binary density-estimation benchmarks and plain arrays.

DEBD files (``NAME/NAME.{train,valid,test}.data``) hold one example per line
as comma-separated 0/1 values without a header; gzipped copies (``.gz``) are
read transparently. A copy of ``nltcs`` ships with the package.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import numpy as np

__all__ = ["DEBD_DATASETS", "SPLITS", "bundled_data_dir", "load_debd", "read_data_file"]

#: The binary benchmark data sets used by ``benchmarks/density.py``.
DEBD_DATASETS = ("nltcs", "plants", "baudio", "jester", "bnetflix", "accidents", "pumsb_star", "dna", "bbc")
#: Split names of a DEBD data set.
SPLITS = ("train", "valid", "test")


def bundled_data_dir() -> Path:
    """The folder of data files shipped with the package (holds ``nltcs``)."""
    return Path(__file__).resolve().parent / "data"


def read_data_file(path: str | os.PathLike) -> np.ndarray:
    """Reads a data matrix from a DEBD-style text file (optionally ``.gz``) or a ``.npy`` file.

    Args:
        path: a ``.data``/``.csv``/``.txt`` file of comma-separated integers
            (one example per line), the same gzipped (``.gz``), or a ``.npy``
            array of shape ``[N, V]``.

    Returns:
        ``[N, V]`` int64 array (``.npy`` files keep a floating dtype if they have one).

    Raises:
        ValueError: the file does not exist, cannot be read or parsed, is
            empty, or its rows have different lengths.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"path: no such file {os.fspath(path)!r}")
    name = os.fspath(path)
    if p.suffix == ".npy":
        return _read_npy(p, name)
    return _parse_rows(_read_text(p, name), name)


_READ_ERRORS = (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile)


def _read_npy(p: Path, name: str) -> np.ndarray:
    """The ``[N, V]`` array of a ``.npy`` file (``name``: the path as given): integers as int64, floats kept."""
    try:
        arr = np.load(p, allow_pickle=False)
    except _READ_ERRORS as e:
        raise ValueError(f"path: cannot read {name!r} ({type(e).__name__}: {e})") from None
    if arr.ndim != 2:
        raise ValueError(f"path: {name!r} holds an array of shape {arr.shape}, expected [N, V]")
    if arr.dtype.kind in "iub":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind != "f":
        raise ValueError(f"path: {name!r} holds dtype {arr.dtype}, expected integers or floats")
    if arr.shape[0] == 0:
        raise ValueError(f"path: {name!r} holds no examples")
    return arr


def _read_text(p: Path, name: str) -> str:
    """The ASCII text of a plain or gzipped (``.gz``) file (``name``: the path as given)."""
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            raw = f.read()
        return raw.decode("ascii")
    except _READ_ERRORS as e:
        raise ValueError(f"path: cannot read {name!r} ({type(e).__name__}: {e})") from None


def _parse_rows(text: str, name: str) -> np.ndarray:
    """The ``[N, V]`` int64 array of comma-separated integer lines (blank lines skipped)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"path: {name!r} holds no examples")
    width = lines[0].count(",") + 1
    for i, ln in enumerate(lines):
        if ln.count(",") + 1 != width:
            raise ValueError(f"path: line {i + 1} of {name!r} has {ln.count(',') + 1} values, expected {width}")
    try:
        return np.loadtxt(io.StringIO("\n".join(lines)), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"path: {name!r} is not comma-separated integers ({e})") from None


def _find(data_dir: Path, name: str, split: str) -> Path | None:
    for folder in (data_dir / name, data_dir):
        for suffix in (".data", ".data.gz"):
            cand = folder / f"{name}.{split}{suffix}"
            if cand.is_file():
                return cand
    return None


def load_debd(
    name: str, split: str | None = None, data_dir: str | os.PathLike | None = None
) -> np.ndarray | dict[str, np.ndarray]:
    """Loads a DEBD data set.

    Files are looked up as ``data_dir/NAME/NAME.SPLIT.data`` or
    ``data_dir/NAME.SPLIT.data``, each also with ``.gz``; without
    ``data_dir`` the bundled copy (``nltcs`` only) is used.

    Args:
        name: data set name, e.g. ``"nltcs"``.
        split: ``"train"``, ``"valid"`` or ``"test"``; ``None`` loads all three.
        data_dir: folder holding the data sets (``None``: the bundled data).

    Returns:
        One ``[N, V]`` int64 array of 0/1 values, or ``{split: array}`` for all splits.

    Raises:
        ValueError: unknown split, missing files, or unreadable files.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a data set name such as 'nltcs', got {name!r}")
    root = bundled_data_dir() if data_dir is None else Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data_dir: no such folder {os.fspath(root)!r}")
    out = {}
    for s in [split] if split is not None else list(SPLITS):
        path = _find(root, name, s)
        if path is None:
            raise ValueError(f"name: no file {name}.{s}.data(.gz) for data set {name!r} under {os.fspath(root)!r}")
        out[s] = read_data_file(path)
    return out[split] if split is not None else out
