"""Atomic file writes: a failed save never destroys the file it replaces.

Every writer of the project (circuits, priors, backbones, CLI outputs) goes
through :func:`atomic_write`: the content is written to a temporary file in
the target's own directory, flushed and ``fsync``-ed, then renamed over the
target in one step (``os.replace``). If anything fails before the rename
(an exception, a full disk, a file-size limit), the temporary file is removed
and the previous target is left bit-identical.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_write"]


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
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
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
