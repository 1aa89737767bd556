"""Every ``RECURRENT_*`` environment variable, read here and nowhere else.

Those that choose a layer call's route are read on every call, as one snapshot (:func:`current`), so that
a value set between two calls takes effect at the next one:

- ``RECURRENT_BACKEND``: ``default`` (or unset, or ``auto``), or a kernel asked for every call:
  ``native``, ``onednn``, ``torchscript``, ``triton`` or ``resident`` (:mod:`recurrent.routes` says what each
  does);
- ``RECURRENT_NATIVE_CPU=0``: never the native CPU kernels (and do not build them);
- ``RECURRENT_FAST_CPU=0``: never oneDNN's products on the CPU, nor the native kernels, whose other products
  they are (the plain ATen kernels instead);
- ``RECURRENT_SCAN=0``: torch.export records the loops unrolled, at the example's shape, not as scans.

The others are read when what they configure happens: ``RECURRENT_DISABLE_JIT=1`` at import (it decides
whether the library's functions are compiled by TorchScript); ``RECURRENT_CACHE_DIR`` when the cache is
used; ``RECURRENT_NATIVE_MARCH`` and ``RECURRENT_NATIVE_SANITIZE`` when the native library is built.
"""

from __future__ import annotations

import os
from typing import List, NamedTuple, Optional

BACKENDS = ("default", "auto", "native", "onednn", "torchscript", "triton", "resident")


class Settings(NamedTuple):
    """The route-choosing variables at one moment."""

    backend: str  # one of BACKENDS ("" read as "default")
    native_cpu: bool  # RECURRENT_NATIVE_CPU is not "0"
    onednn: bool  # RECURRENT_FAST_CPU is not "0"
    scan: bool  # RECURRENT_SCAN is not "0"


def _on(name: str) -> bool:
    return os.environ.get(name, "1") != "0"


def native_cpu() -> bool:
    """``RECURRENT_NATIVE_CPU`` is not ``0``: the native CPU kernels may be built and run."""
    return _on("RECURRENT_NATIVE_CPU")


_ROUTE_VARIABLES = ("RECURRENT_BACKEND", "RECURRENT_NATIVE_CPU", "RECURRENT_FAST_CPU", "RECURRENT_SCAN")
# os.environ's own store, read raw: its get() encodes the name and decodes the value, 2 µs a variable, which
# every layer call paid four times. What it holds is what os.environ.get reads (os.environ updates both).
_STORE = getattr(os.environ, "_data", None)
_KEYS = tuple(os.environ.encodekey(name) for name in _ROUTE_VARIABLES) if _STORE is not None else ()
_seen: dict = {}  # the raw values -> their Settings (a few: one per combination a process sets)


def current() -> Settings:
    """The route-choosing variables now; a ValueError for an unknown ``RECURRENT_BACKEND``."""
    if _STORE is None:
        return _read()
    raw = tuple([_STORE.get(key) for key in _KEYS])
    found = _seen.get(raw)
    if found is None:
        if len(_seen) > 64:  # a process that keeps changing them: forget the old ones
            _seen.clear()
        found = _seen[raw] = _read()
    return found


def _read() -> Settings:
    backend = os.environ.get("RECURRENT_BACKEND", "") or "default"
    if backend not in BACKENDS:
        raise ValueError(f"RECURRENT_BACKEND must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return Settings(backend, native_cpu(), _on("RECURRENT_FAST_CPU"), _on("RECURRENT_SCAN"))


def jit_disabled() -> bool:
    """``RECURRENT_DISABLE_JIT`` set to anything but 0: every function stays plain eager Python."""
    return os.environ.get("RECURRENT_DISABLE_JIT", "0") not in ("", "0")


def cache_dir() -> Optional[str]:
    """``RECURRENT_CACHE_DIR``, or None (the cache's default, ``~/.cache/recurrent``)."""
    return os.environ.get("RECURRENT_CACHE_DIR") or None


def native_march() -> str:
    """The CPU the native library is built for, as ``-march`` takes it: ``RECURRENT_NATIVE_MARCH``, else native."""
    return os.environ.get("RECURRENT_NATIVE_MARCH", "") or "native"


def native_sanitizers() -> List[str]:
    """The sanitizers the native library is built under (``RECURRENT_NATIVE_SANITIZE``, comma-separated)."""
    return [s for s in os.environ.get("RECURRENT_NATIVE_SANITIZE", "").split(",") if s]
