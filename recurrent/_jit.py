"""TorchScript compilation for the library's own functions, quiet and optional.

torch 2.14 marks ``torch.jit.script`` deprecated and warns on every call; our users did not call it,
so they must not see that warning. Set ``RECURRENT_DISABLE_JIT=1`` (or run on a torch without
TorchScript) and every function stays plain eager Python: slower, same numbers. Any other failure
to compile is a bug in this library and raises: a silent fallback would only make it slower.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)

JIT_ENABLED: bool = os.environ.get("RECURRENT_DISABLE_JIT", "0") in ("", "0") and hasattr(torch.jit, "script")


def script(fn: F) -> F:
    """``torch.jit.script(fn)`` without deprecation warnings; ``fn`` itself where TorchScript is off."""
    if not JIT_ENABLED:
        return fn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(fn)
