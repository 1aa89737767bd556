"""Which backend runs a layer call: the TorchScript loop or the Triton kernels.

``RECURRENT_BACKEND`` (read on every call) chooses:

- unset, ``default`` or ``auto``: the Triton kernels for CUDA tensors where an H200 measured them
  faster than the TorchScript loop (``benchmarks/gpu_check.sh``, ``benchmarks/RESULTS.md``): Triton
  importable, float32, float16 or bfloat16, hidden size up to ``AUTO_MAX_HIDDEN``, and not while
  torch.compile or torch.export traces (they trace the loop this library has tested them on). Else
  the TorchScript loop (always on CPU).
- ``triton``: the Triton kernels for every layer call (on CPU tensors only with ``TRITON_INTERPRET=1``,
  Triton's interpreter); a call they cannot run raises, saying why.
- ``torchscript``: the TorchScript loop for every call.

The scripted path (``torch.jit.script(model)``) is always the TorchScript loop.

A custom cell's layer (:class:`recurrent.CustomRNN`) runs on kernels generated from its step
(:mod:`.triton.generated`) under ``triton`` where its step can become one; where it cannot, it runs
the TorchScript loop and ``recurrent.backend_for(layer, x).reason`` names the op that stopped it.
Unset, ``default`` and ``auto`` keep custom cells on the TorchScript loop until a GPU run has timed
and verified the generated kernels (``benchmarks/gpu_check.sh``), as the built-in kinds' kernels were
before theirs.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

CHOICES = ("default", "auto", "triton", "torchscript")
AUTO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Above this the Triton kernels' grid (directions x batch/16 programs) leaves most of a large GPU idle
# while each program walks all H columns: on an H200 they beat the TorchScript loop at H = 128 and 256
# in every mode (1.1x to 2.2x faster) and lost to it at H = 512 (1.6x to 2.7x slower).
AUTO_MAX_HIDDEN = 256


def requested_backend() -> str:
    choice = os.environ.get("RECURRENT_BACKEND", "") or "default"
    if choice not in CHOICES:
        raise ValueError(f"RECURRENT_BACKEND must be one of {', '.join(CHOICES)}; got {choice!r}")
    return choice


def _unavailable(device: torch.device) -> Optional[str]:
    """Why no Triton kernel can run on ``device`` here, or None."""
    if device.type != "cuda" and not (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return f"tensors on {device.type} (the Triton kernels need CUDA, or CPU with TRITON_INTERPRET=1)"
    try:
        from . import triton  # noqa: F401
    except ImportError as err:
        return f"Triton is not importable ({err})"
    return None


def triton_refusal(mode: str, device: torch.device, dtype: torch.dtype, hidden_size: int) -> Optional[str]:
    """Why the Triton kernels cannot run this layer call, or None when they can."""
    unavailable = _unavailable(device)
    if unavailable:
        return unavailable
    from . import triton as triton_kernels

    return triton_kernels.refusal(mode, dtype, hidden_size)


def _tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and compiler.is_compiling()


def select_backend(mode: str, device: torch.device, dtype: torch.dtype, hidden_size: int) -> str:
    """The backend for one layer call: 'triton' or 'torchscript' (see the module docstring)."""
    choice = requested_backend()
    if choice == "torchscript":
        return "torchscript"
    if choice in ("default", "auto"):
        if device.type != "cuda" or dtype not in AUTO_DTYPES or hidden_size > AUTO_MAX_HIDDEN or _tracing():
            return "torchscript"
        return "torchscript" if triton_refusal(mode, device, dtype, hidden_size) else "triton"
    refusal = triton_refusal(mode, device, dtype, hidden_size)
    if refusal:
        raise RuntimeError(
            f"recurrent: RECURRENT_BACKEND=triton, but the Triton kernels cannot run this {mode} layer: {refusal}"
        )
    return "triton"


class Backend(str):
    """A backend's name ('triton' or 'torchscript') with ``reason``: why a custom cell's layer runs
    the TorchScript loop ('' otherwise)."""

    reason: str

    def __new__(cls, name: str, reason: str = "") -> Backend:
        backend = super().__new__(cls, name)
        backend.reason = reason
        return backend


def select_custom_backend(cell, device: torch.device, dtype: torch.dtype, hidden_size: int) -> Backend:
    """The backend of a custom cell's layer call: generated kernels only when RECURRENT_BACKEND=triton
    and the step can become one; a step that cannot (an op with no Triton form, a reduction across
    hidden units, a random draw) runs the TorchScript loop, the reason naming the op."""
    if requested_backend() != "triton":
        return Backend("torchscript", "custom cells run generated kernels only with RECURRENT_BACKEND=triton (opt-in)")
    if _tracing():  # tracing make_fx inside dynamo's trace would fail; the compilers trace the loop instead
        return Backend("torchscript", "torch.compile or torch.export is tracing")
    unavailable = _unavailable(device)
    if unavailable:
        raise RuntimeError(
            f"recurrent: RECURRENT_BACKEND=triton, but the Triton kernels cannot run this {type(cell).__name__} "
            f"layer: {unavailable}"
        )
    from . import triton as triton_kernels

    refusal = triton_kernels.custom_refusal(cell, dtype, hidden_size)
    return Backend("torchscript", refusal) if refusal else Backend("triton")


def generated_loop(cell):
    """The cell's loop on its generated Triton kernels (after :func:`select_custom_backend` chose them)."""
    from . import triton as triton_kernels

    return triton_kernels.generated_loop(cell)
