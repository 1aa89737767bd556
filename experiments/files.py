"""Whole-or-nothing file writes, for outputs that a crash or a concurrent reader must never see half written."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

# The files of a run directory: the latest checkpoint, the best one, and the metrics so far.
LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.json"


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to fill; on success it replaces `path` (temp file in the same dir + fsync +
    os.replace), on error it is deleted: `path` is always the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def atomic_write(path: Path, payload: bytes) -> None:
    with atomic_file(path) as f:
        f.write(payload)


def write_json(obj: Any, path: Path) -> None:
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())
