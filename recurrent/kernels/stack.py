"""The stack loop: every layer over the rows, directions batched, dropout between layers.

One loop, :func:`stack_layers`, serves every path. Compiled by TorchScript as :data:`run_stack`, it
runs each layer's forward kernel in TorchScript: what a scripted module runs (TorchScript's autograd
then differentiates every op of the loops), and what the eager layers run when nothing needs a
gradient on the TorchScript backend (one call for the whole stack, no Python between layers). Run
as plain Python with an ``eager_backend``, each layer goes through :func:`.autograd.run_layer` on
that backend (the hand-written backward when gradients are needed). TorchScript drops that branch
when compiling (``torch.jit.is_scripting()`` is constant there).
"""

from functools import partial
from typing import (
    Callable,
    List,
    NamedTuple,
    Optional,
    Tuple,
)  # no postponed annotations: TorchScript reads StackSpec's

import torch
from torch import Tensor
from torch.nn import functional as F

from .._jit import script
from .autograd import LayerSpec, gate_inputs, run_layer
from .common import join_directions, per_direction, reverse_index
from .cpu import native_kernel
from .gru import gru_forward
from .lstm import lstm_forward
from .registry import KINDS, Kernel
from .rnn import rnn_forward
from .scan import kind_step, scan_layer, unrolled_scan
from .weights import stack_weights

# Called after each layer of a stack run from Python, with the layer's spec and inputs (rows after
# inter-layer dropout, initial states, parameters). What observes layers from above (gate recording)
# registers here; while the list is not empty, layer calls run their stacks from Python.
LAYER_OBSERVERS: List[Callable[[LayerSpec, Tensor, List[Tensor], List[Tensor]], None]] = []


class StackSpec(NamedTuple):
    """What a layer module is, as the stack loop needs it (TorchScript-compatible)."""

    mode: str  # a key of recurrent.kernels.KINDS
    num_layers: int
    directions: int
    bias: bool
    proj: bool
    fold_bias: bool
    dropout: float
    training: bool
    fast: bool  # the TorchScript kernels' fast CPU path (:mod:`.products`; eager float32 CPU layers only)


@script
def sequence_forward(
    mode: str,
    gi: Tensor,
    state0: List[Tensor],
    w_hh_t: Tensor,
    b_hh: Optional[Tensor],
    extra: List[Tensor],
    batch_sizes: List[int],
    fast: bool = False,
) -> Tuple[Tensor, List[Tensor]]:
    """The TorchScript forward kernel of ``mode``, saving nothing: one branch per cell kind."""
    if mode == "GRU":
        hs, finals, _ = gru_forward(gi, state0, w_hh_t, b_hh, extra, batch_sizes, False, fast)
    elif mode == "LSTM":
        hs, finals, _ = lstm_forward(gi, state0, w_hh_t, b_hh, extra, batch_sizes, False, fast)
    elif mode == "RNN_TANH" or mode == "RNN_RELU":
        relu = mode == "RNN_RELU"
        hs, finals, _ = rnn_forward(gi, state0, w_hh_t, b_hh, extra, batch_sizes, False, relu, fast)
    else:
        raise ValueError("recurrent: no branch for mode " + mode + " in kernels.stack.sequence_forward")
    return hs, finals


@script
def layer_forward(
    spec: StackSpec,
    rows: Tensor,
    state0: List[Tensor],
    params: List[Tensor],
    batch_sizes: List[int],
    reverse: Optional[Tensor],
) -> Tuple[Tensor, List[Tensor]]:
    """One layer, all directions, in TorchScript: (output rows (T, D·H), final states)."""
    w_ih, w_hh, b_ih, b_hh, extra = stack_weights(params, spec.directions, spec.bias, spec.proj, spec.fold_bias)
    gi = gate_inputs(per_direction(rows, reverse), w_ih, b_ih, spec.fast)
    hs, finals = sequence_forward(spec.mode, gi, state0, w_hh.transpose(1, 2), b_hh, extra, batch_sizes, spec.fast)
    return join_directions(hs, reverse), finals


@torch.jit.unused
def eager_layer(
    spec: StackSpec,
    backend: str,
    rows: Tensor,
    state0: List[Tensor],
    params: List[Tensor],
    batch_sizes: List[int],
    reverse: Optional[Tensor],
    last: bool,
) -> Tuple[Tensor, List[Tensor]]:
    """One layer on ``backend``'s kernels, from Python (autograd Functions cannot run in TorchScript);
    ``last``: the stack's last layer. The ``"scan"`` backend (:func:`.scan.scanning`, padded input,
    no layer observers) is the layer as scan loops (:mod:`.scan`); ``"unrolled"`` the same steps in a Python loop."""
    if backend == "scan" or backend == "unrolled":
        w_ih, w_hh, b_ih, b_hh, extra = stack_weights(params, spec.directions, spec.bias, spec.proj, spec.fold_bias)
        loop = unrolled_scan if backend == "unrolled" else None
        return scan_layer(rows, batch_sizes[0], state0, w_ih, w_hh, b_ih, b_hh, kind_step(spec.mode, extra), loop)
    kernel = KINDS[spec.mode].kernel(backend)
    fast = spec.fast and backend == "torchscript"
    if fast:
        native = native_kernel(spec.mode, spec.proj)
        kernel = native or Kernel(partial(kernel.forward, fast=True), partial(kernel.backward, fast=True))
    layer = LayerSpec(
        spec.mode, kernel, spec.directions, spec.bias, spec.proj, spec.fold_bias, batch_sizes, reverse, last, fast
    )
    result = run_layer(layer, rows, state0, params)
    for observe in LAYER_OBSERVERS:
        observe(layer, rows, state0, params)
    return result


# torch >= 2.0 has it (torch.func's own code uses it); a stand-in keeps the eager path importable.
_disable_functorch = getattr(torch._C, "_DisableFuncTorch", None)


@torch.jit.unused
def eager_reverse_index(batch_sizes: List[int], device: torch.device) -> Tensor:
    """:func:`.common.reverse_index` for the eager path, built with torch.func's transforms switched off.
    It depends on batch_sizes alone, but inside a transform TorchScript's ``torch.tensor`` would make
    a functorch wrapper and fail filling it ("Cannot access data pointer of Tensor that doesn't have
    storage": torch.func over packed bidirectional input). A plain index serves every transform."""
    if _disable_functorch is None or not torch._C._are_functorch_transforms_active():
        return reverse_index(batch_sizes, device)
    with _disable_functorch():
        return reverse_index(batch_sizes, device)


def layer_reverse_index(batch_sizes: List[int], device: torch.device) -> Tensor:
    """The reverse index of a bidirectional layer, for a stack loop that runs both compiled and from
    Python: :func:`.common.reverse_index` in TorchScript, :func:`eager_reverse_index` from Python."""
    if torch.jit.is_scripting():
        return reverse_index(batch_sizes, device)
    return eager_reverse_index(batch_sizes, device)


def stack_layers(
    spec: StackSpec,
    rows: Tensor,
    batch_sizes: List[int],
    state0: List[Tensor],
    weights: List[Tensor],
    eager_backend: str,
) -> Tuple[Tensor, List[Tensor]]:
    """Every layer over rows (T, I) from state0 [(layers·D, N, ·)], with dropout between layers;
    returns (output rows (T, D·H), final states [(layers·D, N, ·)]). ``eager_backend`` is '' in
    TorchScript, else the backend each layer runs on from Python ("scan": see :func:`eager_layer`)."""
    directions = spec.directions
    per_layer = len(weights) // spec.num_layers
    # The padded backends reverse their batch in time by themselves: no row permutation to build.
    needs_reverse = directions == 2 and eager_backend != "scan" and eager_backend != "unrolled"
    reverse: Optional[Tensor] = layer_reverse_index(batch_sizes, rows.device) if needs_reverse else None
    finals: List[List[Tensor]] = [[] for _ in state0]
    for layer in range(spec.num_layers):
        mine = [s[layer * directions : (layer + 1) * directions] for s in state0]
        params = weights[layer * per_layer : (layer + 1) * per_layer]
        if eager_backend != "" and not torch.jit.is_scripting():
            rows, last = eager_layer(
                spec, eager_backend, rows, mine, params, batch_sizes, reverse, layer == spec.num_layers - 1
            )
        else:
            rows, last = layer_forward(spec, rows, mine, params, batch_sizes, reverse)
        for i, state in enumerate(last):
            finals[i].append(state)
        if spec.dropout > 0 and spec.training and layer < spec.num_layers - 1:
            rows = F.dropout(rows, spec.dropout, True)
    return rows, [torch.cat(f, 0) for f in finals]


run_stack = script(stack_layers)
