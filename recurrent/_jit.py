"""TorchScript compilation for the library's own functions, quiet and optional.

torch 2.14 marks ``torch.jit.script`` deprecated and warns on every call; our users did not call it,
so they must not see that warning. Set ``RECURRENT_DISABLE_JIT=1`` (or run on a torch without
TorchScript) and every function stays plain eager Python: slower, same numbers. Any other failure
to compile is a bug in this library and raises: a silent fallback would only make it slower.
"""

from __future__ import annotations

import warnings
from typing import Callable, TypeVar

import torch

from . import settings

F = TypeVar("F", bound=Callable)

JIT_ENABLED: bool = not settings.jit_disabled() and hasattr(torch.jit, "script")


def script(fn: F) -> F:
    """``torch.jit.script(fn)`` without deprecation warnings; ``fn`` itself where TorchScript is off. A
    class's names resolve in its own module (torch.jit.script would look them up where it is called)."""
    if isinstance(fn, type):
        resolve = torch._jit_internal.createResolutionCallbackForClassMethods(fn)
        return _quietly(lambda cls: torch.jit.script(cls, _rcb=resolve), fn)
    return _quietly(torch.jit.script, fn)


def interface(cls: F) -> F:
    """``torch.jit.interface(cls)`` without deprecation warnings; ``cls`` itself where TorchScript is off."""
    return _quietly(torch.jit.interface, cls)


def _quietly(compile: Callable[[F], F], obj: F) -> F:
    if not JIT_ENABLED:
        return obj
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return compile(obj)
