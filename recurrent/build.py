"""``python -m recurrent.build``: build the native CPU kernels now, not on a user's first call.

For a Docker image (``RUN python -m recurrent.build``), a cluster whose nodes share a home directory, or
to see which path float32 CPU layers will take here. It builds the library for this CPU (or for
``RECURRENT_NATIVE_MARCH``) into the cache, or finds it there, loads it, and prints what happened; it
exits 0 whether or not a compiler is present: without one the layers run the ATen path, with the same
numbers, slower. A build that failed before is tried again.
"""

from __future__ import annotations

import sys
from typing import List, Optional

import torch

from . import __version__
from .kernels.cpu import build


def report(loaded: bool, status: str) -> List[str]:
    """The lines :func:`main` prints."""
    path = "the native kernels" if loaded else "the ATen path (oneDNN's products; the same numbers, slower)"
    return [
        f"recurrent {__version__}, torch {torch.__version__}",
        f"native CPU kernels: {status}",
        f"float32 CPU layers will run {path}",
    ]


def main(argv: Optional[List[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv:
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv[0] in ("-h", "--help") else 2
    print("\n".join(report(*build.prebuild())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
