"""Atomic file writes: a failed save never destroys the file it replaces.

Every writer of the project (circuits, priors, backbones, CLI outputs) goes
through [`atomic_write`][pcircuits.atomic.atomic_write]: the content is written to a temporary file in
the target's own directory, flushed and ``fsync``-ed, then renamed over the
target in one step (``os.replace``). If anything fails before the rename
(an exception, a full disk, a file-size limit), the temporary file is removed
and the previous target is left bit-identical.

Savers that write a whole directory (a backbone with its tokenizer) use
[`atomic_directory`][pcircuits.atomic.atomic_directory]: the files are written into a temporary sibling
directory, which is then swapped in for the target, so a failed save leaves
the previous directory loadable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "atomic_directory"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file that replaces ``path`` when the block exits cleanly.

    Args:
        path: the target file; its directory must exist.
        mode: ``"wb"`` (bytes) or ``"w"`` (text, UTF-8).

    Raises:
        ValueError: ``mode`` is not ``"wb"`` or ``"w"``, the target's directory
            does not exist, or the target is a directory.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise ValueError(f"path: directory {directory!r} does not exist")
    if os.path.isdir(target):
        raise ValueError(f"path: {os.fspath(path)!r} is a directory, expected a file path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {os.fspath(path)!r} ({e.strerror})") from None
    try:
        encoding = None if mode == "wb" else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(target):
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, carry_over: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Yields a temporary sibling directory that replaces the directory ``path`` when the block exits cleanly.

    On a clean exit, the entries of an existing ``path`` that the block did
    not write and that ``carry_over(name)`` accepts (all of them when
    ``carry_over`` is ``None``) are hard-linked (or copied) into the new
    directory, every file is ``fsync``-ed, and the new directory is renamed
    into place; the old one is then deleted. If the block raises (or is
    killed), the temporary directory is removed and ``path`` is untouched.
    The swap is two renames; a crash between them leaves the old directory
    under a hidden ``.<name>.*.old`` sibling name.

    Args:
        path: the target directory (created with its parents if absent).
        carry_over: which of the existing entries (by name) to keep.

    Raises:
        ValueError: ``path`` exists and is not a directory.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    if target.exists() and not target.is_dir():
        raise ValueError(f"path: {os.fspath(path)!r} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.is_dir():
            _carry_over(target, tmp, carry_over)
            os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
        _fsync_tree(tmp)
        if target.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old)  # onto the empty placeholder
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _carry_over(old: Path, new: Path, keep: Callable[[str], bool] | None) -> None:
    for entry in old.iterdir():
        dest = new / entry.name
        if dest.exists() or dest.is_symlink() or (keep is not None and not keep(entry.name)):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dest)
        elif entry.is_dir():
            shutil.copytree(entry, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, dest)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
