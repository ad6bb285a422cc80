"""Locks across the processes of one machine (fcntl.flock on a file), the one home of file locking."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import IO


class Held(Exception):
    """The lock is held by another process (only when not waiting for it)."""


@contextlib.contextmanager
def exclusive(path: Path, wait: bool = True, mode: str = "a") -> Iterator[IO[str]]:
    """Hold an exclusive lock on `path` (made if missing) for the block; yields the open file.

    wait=False raises Held at once when another process holds it. The lock ends with the block, or
    with the process: the kernel releases it when the file is closed, so a killed holder leaves none.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Held(str(path)) from None
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
