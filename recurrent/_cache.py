"""Where the library keeps what it builds on the user's machine (the native CPU library, generated Triton
kernels), and which of those files it may load.

The folders tried, in order: ``RECURRENT_CACHE_DIR``, else ``~/.cache/recurrent``; then
``<tempdir>/recurrent-<uid>``. A file is loaded from a folder only when that folder and the cache's root
above it are directories owned by this user that no one else may write to (created with mode 0700), and
the file too is this user's and writable by no one else: a library or kernel found anywhere else could
have been planted by another user of the machine (the file names are hashes anyone can reproduce). When
no candidate passes (or none can be written), a fresh private folder made for this process
(``tempfile.mkdtemp``) serves instead. A missing file is written under a lock, so that processes started
together (DDP ranks, ``pytest -n``) make it once, and renamed into place, so that a reader sees the whole
file or none.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

from . import settings

try:  # POSIX; elsewhere each process writes its own copy and the rename keeps that safe
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

_PRIVATE: List[Path] = []  # this process's own folder, made once, when no shared one could be used


def _roots() -> List[Path]:
    """The cache roots to try, in order."""
    configured = settings.cache_dir()
    first = Path(configured) if configured else Path.home() / ".cache" / "recurrent"
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return [first, Path(tempfile.gettempdir()) / f"recurrent-{user}"]


def untrusted(path: Path, directory: bool = True) -> Optional[str]:
    """Why ``path`` may hold something another user put there (None when it is this user's alone): not a
    directory (or file), owned by someone else, or writable by the group or others."""
    info = os.stat(path)
    if directory != stat.S_ISDIR(info.st_mode) or (not directory and not stat.S_ISREG(info.st_mode)):
        return f"{path} is not a {'directory' if directory else 'regular file'}"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{path} is owned by uid {info.st_uid}, not this user ({os.getuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _private_folder(root: Path, kind: str) -> Path:
    """``root/kind``, made with mode 0700 where missing; OSError where it cannot be made or trusted."""
    for folder in (root, root / kind):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        reason = untrusted(folder)
        if reason:
            raise OSError(f"not used: {reason}")
    return root / kind


def cache_folders(kind: str, private: bool = True) -> Iterator[Tuple[Optional[Path], str]]:
    """(a trusted folder for ``kind``'s files, "") in the order to try them, or (None, why a candidate was
    passed over); with ``private``, last this process's own private folder (made when first reached)."""
    for root in _roots() + ([None] if private else []):
        if root is None:
            if not _PRIVATE:
                _PRIVATE.append(Path(tempfile.mkdtemp(prefix="recurrent-")))
            root = _PRIVATE[0]
        try:
            yield _private_folder(root, kind), ""
        except OSError as err:
            yield None, f"{root / kind}: {err}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (made if missing) while inside; no lock where there is no fcntl."""
    if fcntl is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_file(kind: str, name: str, write: Callable[[Path], None]) -> Path:
    """The path of ``name`` in the first trusted folder of ``kind`` that has it or takes it. A missing file
    is made by ``write(partial)`` into a file of this process's own, under the folder's lock for ``name``,
    and then renamed into place. A file there that is not this user's alone is replaced, never returned."""
    tried = []
    for folder, passed_over in cache_folders(kind):
        if folder is None:
            tried.append(passed_over)
            continue
        path = folder / name
        try:
            with _locked(folder / f"{name}.lock"):
                if path.exists() and untrusted(path, directory=False) is None:
                    return path
                partial = folder / f"{name}.{os.getpid()}.tmp"
                write(partial)
                os.chmod(partial, 0o600)
                os.replace(partial, path)
                return path
        except OSError as err:
            tried.append(f"{folder}: {err}")
    raise OSError(f"recurrent: no writable cache directory for {kind} ({'; '.join(tried)})")
