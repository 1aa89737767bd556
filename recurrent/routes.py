"""Which code runs a layer call: one decision, made here, from the call's facts and the settings.

:func:`decide` takes what a call is (:class:`Call`: its kind, device, dtype, whether anything needs a
gradient, whether a tracer or torch.func is at work, ...) and one snapshot of the ``RECURRENT_*``
settings (:mod:`recurrent.settings`), and returns a :class:`Route`: how the stack runs, which kernel
runs each layer, how it is differentiated, and why, in words. The layers run what it says and nothing
else decides. :func:`route_for` answers for a layer and an input without running it.

The kernels (:data:`KERNELS`): ``native``, ``onednn``, ``torchscript``, ``triton``, ``resident``,
``generated``, ``scan``, ``onnx``, ``plain`` and ``none``. ``RECURRENT_BACKEND`` asks for one of ``native``,
``onednn``, ``torchscript``, ``triton`` or ``resident`` for every call (a call it cannot run raises, saying why; a
custom cell asked for ``triton`` runs kernels generated from its step, or its TorchScript loop where the
step cannot become one, the reason naming the op); unset, ``default`` or ``auto`` leave the choice to
:func:`decide`: on the CPU in float32 the native kernels where the library loaded, else oneDNN's
products; on CUDA the Triton kernels where a GPU run measured them faster (``AUTO_MAX_HIDDEN``); the
TorchScript kernels elsewhere. Custom cells keep their TorchScript loop unless asked for ``triton``.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

import torch

from . import settings as _settings
from .kernels import products
from .kernels.contract import Kernel
from .kernels.registry import KINDS, CellKind
from .kernels.scan import exporting, scan

KERNELS = {
    "native": "the native C++ CPU ops (recurrent/kernels/cpu), float32",
    "onednn": "the TorchScript kernels on oneDNN's products (float32 CPU)",
    "torchscript": "the TorchScript kernels on ATen's ops (a custom cell's: its loop)",
    "triton": "the built-in Triton kernels (CUDA)",
    "resident": "the Triton kernels that hold W_hh on-chip for the whole sequence (CUDA; opt-in, small hidden sizes)",
    "generated": "Triton kernels generated from a custom cell's step",
    "scan": "torch's scan operator over the cells' steps (torch.export)",
    "onnx": "ONNX's RNN, GRU and LSTM operators (the TorchScript-based ONNX exporter)",
    "plain": "the kernels' ops one by one, differentiable and vmappable (torch.func, forward-mode AD)",
    "none": "nothing: an empty batch",
}
STACKS = {
    "layers": "each layer from Python",
    "whole": "the whole stack in one call (TorchScript's, the native ops', or the Triton kernels' from one function)",
    "ops": "each layer as one opaque torch op",
    "scan": "each layer as scans",
    "onnx": "one ONNX operator per layer",
    "empty": "no layer runs",
    "cell": "a cell's step: the native cell op, or the cell's own products and step function (recurrent.cells)",
}
BACKWARDS = {"hand-written": "hand-written backward", "autograd": "autograd through its ops", "none": "no backward"}
FORCIBLE = ("native", "onednn", "torchscript", "triton", "resident")
AUTO_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Above this the Triton kernels' grid (directions x batch/16 programs) leaves most of a large GPU idle
# while each program walks all H columns: on an H200 they beat the TorchScript loop at H = 128 and 256
# in every mode (1.1x to 2.2x faster) and lost to it at H = 512 (1.6x to 2.7x slower).
AUTO_MAX_HIDDEN = 256


class Call(NamedTuple):
    """The facts of one layer call that choose its route."""

    kind: CellKind
    cell: Any  # a custom layer's cell (recurrent.CustomRNN); None for a built-in kind
    device: str  # the device type
    dtype: torch.dtype  # what it computes in (autocast's dtype under autocast)
    hidden_size: int
    projected: bool  # an LSTM with proj_size
    bidirectional: bool
    needs_grad: bool  # grad mode on and an input, a state or a weight requiring grad
    packed: bool
    empty: bool  # a batch of 0
    tracer: str  # "onnx" (the TorchScript-based exporter), "export", "compile", "jit" (torch.jit.trace) or ""
    transform: bool  # a torch.func transform is active, or forward-mode AD dual tensors are among the inputs
    observed: bool  # gate recording is open
    dropout: bool  # dropout between layers is on (training, p > 0)


class Route(NamedTuple):
    """How one call runs: ``stack`` (:data:`STACKS`), ``kernel`` (:data:`KERNELS`), ``backward``
    (:data:`BACKWARDS`) and ``reason``, a line that says why."""

    stack: str
    kernel: str
    backward: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kernel} kernels, {STACKS[self.stack]}, {BACKWARDS[self.backward]}: {self.reason}"


# Dynamo runs it rather than tracing into it (under torch.compile: it may build the library, read files).
@torch._dynamo.assume_constant_result
def _native_library() -> Optional[str]:
    """Why the native library is not loaded here (building or finding it on first use), or None."""
    from .kernels import cpu

    return None if cpu.available() else f"the native library is {cpu.status()}"


def _triton_missing(call: Call) -> Optional[str]:
    """Why no Triton kernel can run on the call's device here (None when one can)."""
    if call.device != "cuda" and not (call.device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return f"tensors on {call.device} (the Triton kernels need CUDA, or CPU with TRITON_INTERPRET=1)"
    try:
        from .kernels import triton  # noqa: F401
    except ImportError as err:
        return f"Triton is not importable ({err})"
    return None


def _triton_kernels(call: Call) -> Optional[str]:
    """Why the Triton kernels (a custom cell's: generated from its step) cannot run the call, or None."""
    from .kernels import triton

    if call.cell is not None:
        return triton.custom_refusal(call.cell, call.dtype, call.hidden_size)
    return triton.refusal(call.kind.mode, call.dtype, call.hidden_size)


def _resident_kernels(call: Call) -> Optional[str]:
    """Why the resident kernels cannot hold this call's W_hh on-chip, or None."""
    from .kernels import triton

    device = torch.device("cuda") if call.device == "cuda" else torch.device("cpu")
    return triton.resident_refusal(call.kind.mode, call.projected, call.dtype, call.hidden_size, device)


def refusal(kernel: str, call: Call, settings: _settings.Settings) -> Optional[str]:
    """Why ``kernel`` cannot run ``call`` (None when it can)."""
    if kernel not in call.kind.kernels and kernel != "torchscript":
        return f"no {kernel} kernels for {call.kind.mode if call.cell is None else type(call.cell).__name__}"
    if kernel in ("native", "onednn") and (call.device != "cpu" or call.dtype != torch.float32):
        return f"{call.dtype} tensors on {call.device} (the {kernel} kernels are float32 CPU ones)"
    if kernel == "native":
        if not settings.native_cpu:
            return "RECURRENT_NATIVE_CPU=0"
        if call.projected:
            return "no native kernel for a projected LSTM"
        if not (settings.onednn and products.ONEDNN):  # the products around the native ops are oneDNN's
            return "RECURRENT_FAST_CPU=0 or no oneDNN linear in torch (the native kernels' other products)"
        return _native_library()
    if kernel == "onednn":
        return None if settings.onednn and products.ONEDNN else "RECURRENT_FAST_CPU=0 or no oneDNN linear in torch"
    if kernel in ("triton", "generated"):
        return _triton_missing(call) or _triton_kernels(call)
    if kernel == "resident":
        return _triton_missing(call) or _resident_kernels(call)
    return None


def _auto(call: Call, settings: _settings.Settings) -> tuple:
    """(kernel, reason) of a built-in kind's call left to the default."""
    if call.tracer:
        return "torchscript", f"{call.tracer} traces the call: ATen's ops, which it records"
    if call.device == "cpu" and call.dtype == torch.float32:
        native = refusal("native", call, settings)
        if native is None:
            return "native", "float32 on the CPU, the native library loaded"
        onednn = refusal("onednn", call, settings)
        return ("onednn", f"float32 on the CPU; not native: {native}") if onednn is None else ("torchscript", onednn)
    if call.device == "cuda" and call.dtype in AUTO_DTYPES and call.hidden_size <= AUTO_MAX_HIDDEN:
        triton = refusal("triton", call, settings)
        return (
            ("triton", "CUDA, measured faster than the TorchScript loop") if triton is None else ("torchscript", triton)
        )
    if call.device == "cuda":
        return "torchscript", f"{call.dtype}, hidden size {call.hidden_size}: the TorchScript loop measured faster"
    return "torchscript", f"{call.dtype} tensors on {call.device}"


def _custom(call: Call, settings: _settings.Settings) -> tuple:
    """(kernel, reason) of a custom cell's call: generated kernels only when asked for (opt-in), and the
    cell's TorchScript loop where its step cannot become one, the reason naming the op."""
    if settings.backend in ("native", "onednn", "resident"):
        return "torchscript", f"custom cells have no {settings.backend} kernels: the cell's TorchScript loop runs"
    if settings.backend != "triton":
        return "torchscript", "custom cells run generated kernels only with RECURRENT_BACKEND=triton (opt-in)"
    if call.tracer:  # tracing make_fx inside dynamo's trace would fail; the compilers trace the loop instead
        return "torchscript", "torch.compile or torch.export is tracing"
    missing = _triton_missing(call)
    if missing is not None:
        name = type(call.cell).__name__
        raise RuntimeError(
            f"recurrent: RECURRENT_BACKEND=triton, but the Triton kernels cannot run this {name} layer: {missing}"
        )
    why = refusal("generated", call, settings)
    return ("generated", "RECURRENT_BACKEND=triton") if why is None else ("torchscript", why)


def _kernel(call: Call, settings: _settings.Settings) -> tuple:
    """(kernel, reason) of a call that runs layer by layer or as one stack."""
    if call.cell is not None:
        return _custom(call, settings)
    if settings.backend in FORCIBLE:
        why = refusal(settings.backend, call, settings)
        if why is not None:
            raise RuntimeError(
                f"recurrent: RECURRENT_BACKEND={settings.backend}, but the {settings.backend} kernels cannot run "
                f"this {call.kind.mode} layer: {why}"
            )
        return settings.backend, f"RECURRENT_BACKEND={settings.backend}"
    return _auto(call, settings)


def _traced(call: Call, settings: _settings.Settings) -> Optional[Route]:
    """The route while an exporter or compiler traces the call, where it has one of its own."""
    if call.tracer == "onnx":
        from . import onnx_native

        why = onnx_native.refusal(call.kind, call.projected)
        if why is not None:
            raise RuntimeError(why)
        return Route("onnx", "onnx", "none", "the TorchScript-based ONNX exporter traces: ONNX's own operators")
    if call.packed and call.tracer == "export":
        raise RuntimeError(
            "recurrent: a PackedSequence cannot be exported (its batch sizes are data, not shapes); "
            "export the model on padded input instead"
        )
    if call.tracer == "compile" and call.cell is None and not (call.empty or call.transform):
        # The kernel eager would run, as one op per layer that dynamo does not enter (kernels/ops.py); a kind
        # whose kernel has no backward of its own is differentiated through its ops, which dynamo traces.
        kernel, reason = _kernel(call._replace(tracer=""), settings)
        # (The native and Triton kernels all have one; their loaders import modules, which dynamo cannot trace.)
        own = (
            kernel in ("native", "triton", "resident") or call.kind.kernel(kernel, call.projected).backward is not None
        )
        if own or not call.needs_grad:
            backward = "hand-written" if call.needs_grad else "none"
            return Route("ops", kernel, backward, f"torch.compile traces: one op per layer, any length; {reason}")
    if call.packed or scan is None or not settings.scan or call.tracer != "export":
        return None
    backward = "autograd" if call.needs_grad else "none"
    return Route("scan", "scan", backward, "torch.export traces: one scan per layer and direction, any length")


def _own(call: Call, kernel: str) -> Optional[Kernel]:
    """The kind's kernel pair that ``kernel`` names (one :func:`refusal` found able to run the call)."""
    return call.kind.kernel(kernel, call.projected)


def decide(call: Call, settings: _settings.Settings) -> Route:
    """The route of ``call`` under ``settings``; raises as the call would where what is asked cannot run."""
    traced = _traced(call, settings) if call.tracer else None
    if traced is not None:
        return traced
    if call.empty:
        return Route("empty", "none", "autograd" if call.needs_grad else "none", "an empty batch: nothing to run")
    if call.transform:
        return Route("layers", "plain", "autograd", "a torch.func transform or forward-mode AD: plain ops")
    kernel, reason = _kernel(call, settings)
    own = _own(call, kernel)
    # A kernel's own stack ops run every layer in one call (a layer's Python cost more than a one-step call's
    # op); an observer must see each layer, and their backward has no dropout to go through.
    stacked = own is not None and own.stack is not None and not call.observed
    if not call.needs_grad:
        whole = stacked or (kernel in ("torchscript", "onednn") and not call.observed)
        return Route("whole" if whole else "layers", kernel, "none", reason)
    if stacked and own.stack_backward is not None and not call.dropout:
        return Route("whole", kernel, "hand-written", reason)
    return Route("layers", kernel, "hand-written" if own.backward is not None else "autograd", reason)


def decide_cell(call: Call, settings: _settings.Settings) -> Route:
    """The route of a cell call (its facts as a one-layer, one-step layer's): the native kernel's cell op where
    the native kernels can run it, as :func:`decide` would choose them, else the cell's own step, which runs
    any call (a backend asked for is the layers'; no cell call raises for it)."""
    backward = "hand-written" if call.needs_grad else "none"
    if settings.backend not in ("default", "auto", "native"):
        why = f"RECURRENT_BACKEND={settings.backend}"
    elif call.tracer or call.transform or call.empty:
        why = "a tracer, a torch.func transform or an empty batch"
    else:
        why = refusal("native", call, settings) or (None if _own(call, "native").cell else "no native cell op")
    if why is None:
        return Route("cell", "native", backward, "float32 on the CPU, the native library loaded: one op a step")
    backward = "autograd" if call.needs_grad else "none"
    return Route("cell", "torchscript", backward, f"the cell's own step on ATen's ops: {why}")


def _tracer() -> str:
    if torch.jit.is_tracing() and torch.onnx.is_in_onnx_export():  # the cheap question first
        return "onnx"
    if exporting():
        return "export"
    if torch.compiler.is_compiling():
        return "compile"
    return "jit" if torch.jit.is_tracing() else ""


# Read on every call: the module rebinds it as dual levels open (-1: none open).
_forward_ad = torch.autograd.forward_ad


def _transformed(tensors) -> bool:
    """A torch.func transform is active, or a forward-AD dual tensor at the open level is among ``tensors``."""
    if torch._C._are_functorch_transforms_active():
        return True
    return _forward_ad._current_level >= 0 and any(_forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def facts(layer: Any, tensors: list, packed: bool, empty: bool, dtype: torch.dtype, observed: bool) -> Call:
    """The facts of a call of ``layer`` (an RNNBase) over ``tensors`` (its input or rows, states and weights:
    their device, whether they need gradients, whether they are dual tensors), computing in ``dtype``."""
    return Call(
        layer.kind(), layer._custom_cell(), tensors[0].device.type, dtype, layer.hidden_size,
        layer.proj_size > 0, layer.bidirectional,
        torch.is_grad_enabled() and any(t.requires_grad for t in tensors), packed, empty, _tracer(),
        _transformed(tensors), observed, layer.training and layer.dropout > 0,
    )  # fmt: skip


def cell_facts(cell: Any, tensors: list) -> Call:
    """The facts of a call of ``cell`` (a recurrent.cells cell) over ``tensors`` (its input, given states and
    weights, all of one dtype and device), as those of a one-layer, one-step layer's."""
    return Call(
        KINDS[cell.mode()], None, tensors[0].device.type, tensors[0].dtype, cell.hidden_size, False, False,
        torch.is_grad_enabled() and any(t.requires_grad for t in tensors), False, False, _tracer(),
        _transformed(tensors), False, False,
    )  # fmt: skip


def route_for(layer: Any, input: Any) -> Route:
    """The route ``layer(input)`` takes now, in eager mode (a scripted module always runs the TorchScript
    kernels), without running it; raises as the call would where what is asked for cannot run."""
    return layer.route(input)
