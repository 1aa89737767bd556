"""Gate recording: every gate's activation at every step, from any model holding our RNN, GRU or LSTM.

    with recurrent.record_gates(model) as record:
        model(x)
    z = record["rnn"][0]["z"]   # module name -> one entry per forward call -> gate -> tensor

Each tensor is (num_layers, num_directions, batch, time, hidden_size): batch-major and in natural
time whatever the layer's ``batch_first``, the batch in the caller's order; for a PackedSequence,
zeros after each sequence's end. The gates, as the step functions in :mod:`recurrent.cells` name them:
GRU ``r``, ``z``, ``n``; LSTM ``i``, ``f``, ``g``, ``o`` and the cell state ``c``; RNN ``h`` (it has no gates).
A :class:`recurrent.CustomRNN` records its step's named intermediates: every local variable of the
cell's ``step`` (its arguments aside) that holds a (directions, rows, hidden_size) tensor when the
step returns, by its name, e.g. ``f``, ``n`` and ``h`` of a minimal gated unit.

How: while a recording is open, forward hooks on the model's layers mark each layer call, and an
observer of the stack loop (:data:`recurrent.kernels.stack.LAYER_OBSERVERS`) sees every layer's
inputs (after inter-layer dropout); the route then runs layer calls from Python (eager mode only; a
scripted module records nothing). After each layer the observer asks the layer's cell kind for its
gates (its registry entry's ``gates_of``): a built-in kind runs its plain kernel once more without
gradients on those inputs, saving its activations; a custom layer runs its loop once more in plain
Python and reads each step's locals as the step returns (``sys.setprofile``; a step that draws random
numbers, zoneout in training, draws afresh there). One extra forward pass per layer, only while
recording. With no recording open nothing changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .kernels.autograd import LayerSpec
from .kernels.stack import LAYER_OBSERVERS
from .layers import RNNBase

Gates = Dict[str, Tensor]
# The layer calls running under one recording, innermost last: (per-layer gates, batch sizes).
Calls = List[Tuple[List[Gates], List[int]]]


class GateRecord(Dict[str, List[Gates]]):
    """Module name -> one dict of gates per forward call, in call order."""


@contextmanager
def record_gates(model: nn.Module) -> Iterator[GateRecord]:
    """Records the gates of every :class:`recurrent.RNN`, ``GRU`` and ``LSTM`` inside ``model`` (itself
    included) for each forward call made inside the ``with`` block (see the module docstring)."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, RNNBase)}
    if not layers:
        raise ValueError(
            f"record_gates: {type(model).__name__} holds no recurrent RNN, GRU, LSTM or CustomRNN layer to record"
        )
    record, calls = GateRecord(), []
    handles = []
    for name, layer in layers.items():
        handles.append(layer.register_forward_pre_hook(partial(_call_starts, calls)))
        handles.append(layer.register_forward_hook(partial(_call_ends, calls, record, name), always_call=True))
    observer = partial(_capture, calls)
    LAYER_OBSERVERS.append(observer)
    try:
        yield record
    finally:
        LAYER_OBSERVERS.remove(observer)
        for handle in handles:
            handle.remove()


def _call_starts(calls: Calls, layer: nn.Module, args: tuple) -> None:
    calls.append(([], []))


def _call_ends(calls: Calls, record: GateRecord, name: str, layer: nn.Module, args: tuple, output) -> None:
    """After a recorded layer call (or its exception): its layers' gates as one entry of the record,
    batch-major, the batch in the caller's order."""
    per_layer, batch_sizes = calls.pop()
    if output is None or not per_layer:
        return
    gates = {gate: _batch_major(torch.stack([g[gate] for g in per_layer]), batch_sizes) for gate in per_layer[0]}
    order: Optional[Tensor] = args[0].unsorted_indices if isinstance(args[0], PackedSequence) else None
    if order is not None:
        gates = {k: v.index_select(2, order.to(v.device)) for k, v in gates.items()}
    record.setdefault(name, []).append(gates)


def _capture(calls: Calls, spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]) -> None:
    """The observer: after each layer of a recorded call, that layer's gates."""
    if not calls:
        return
    with torch.no_grad():
        gates = spec.kind.gates_of(spec, rows, state0, params)
    _keep(calls, gates, spec.reverse, spec.batch_sizes)


def _keep(calls: Calls, gates: Gates, reverse: Optional[Tensor], batch_sizes: List[int]) -> None:
    """One layer's gates (D, T rows, H), in natural time for both directions, into the open call."""
    if reverse is not None:  # the second direction ran over its rows reversed in time
        gates = {k: torch.stack([v[0], v[1].index_select(0, reverse)]) for k, v in gates.items()}
    per_layer, sizes = calls[-1]
    per_layer.append(gates)
    sizes[:] = batch_sizes


def _batch_major(rows: Tensor, batch_sizes: List[int]) -> Tensor:
    """(layers, D, T rows, H) time-major rows -> (layers, D, N, L, H), zeros after each sequence's end."""
    steps, batch = len(batch_sizes), batch_sizes[0]
    out = rows.new_zeros(rows.size(0), rows.size(1), steps, batch, rows.size(-1))
    start = 0
    for t, size in enumerate(batch_sizes):
        out[:, :, t, :size] = rows[:, :, start : start + size]
        start += size
    return out.transpose(2, 3)
