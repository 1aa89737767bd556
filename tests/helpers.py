"""Building a torch.nn reference and our module with the same weights, and comparing them."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

import recurrent

TOLERANCE = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def pair(kind: str, *args, **kwargs):
    """(torch.nn module, our module) with ours loaded from torch.nn's state_dict."""
    reference = getattr(nn, kind)(*args, **kwargs)
    ours = getattr(recurrent, kind)(*args, **kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def scripted(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(module)


def grads(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> list:
    """Gradients of a loss that weighs every output element differently (catches transposed grads)."""
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view_as(o)).sum() for o in outputs)
    # retain_graph: the reference and ours may share the graph of their input (e.g. a PackedSequence).
    return list(torch.autograd.grad(loss, list(inputs), allow_unused=True, retain_graph=True))


def assert_close(actual, expected, dtype: torch.dtype, what: str) -> None:
    torch.testing.assert_close(actual, expected, **TOLERANCE[dtype], msg=lambda m: f"{what}: {m}")
