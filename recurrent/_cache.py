"""Where the library writes what it builds on the user's machine (generated Triton kernels, the
native CPU library): ``RECURRENT_CACHE_DIR``, else ``~/.cache/recurrent``; the temp directory
where neither can be written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, List


def cache_dirs(kind: str) -> List[Path]:
    """The folders for ``kind``'s files, in the order to try them."""
    configured = os.environ.get("RECURRENT_CACHE_DIR")
    first = Path(configured) if configured else Path.home() / ".cache" / "recurrent"
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return [first / kind, Path(tempfile.gettempdir()) / f"recurrent-{user}" / kind]


def cached_file(kind: str, name: str, write: Callable[[Path], None]) -> Path:
    """The path of ``name`` in the first folder of ``kind`` that has it or takes it. A missing file is
    made by ``write(partial)`` into a file of this process's own and then renamed into place, so a
    reader (another process too) sees the whole file or none."""
    tried = []
    for folder in cache_dirs(kind):
        path = folder / name
        try:
            if path.is_file():
                return path
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f"{name}.{os.getpid()}.tmp"
            write(partial)
            os.replace(partial, path)
            return path
        except OSError as err:
            tried.append(f"{folder}: {err}")
    raise OSError(f"recurrent: no writable cache directory for {kind} ({'; '.join(tried)})")
