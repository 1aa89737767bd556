"""Gate recording: every gate's activation at every step, from any model holding our RNN, GRU or LSTM.

    with recurrent.record_gates(model) as record:
        model(x)
    z = record["rnn"][0]["z"]   # module name -> one entry per forward call -> gate -> tensor

Each tensor is (num_layers, num_directions, batch, time, hidden_size): batch-major and in natural
time whatever the layer's ``batch_first``, the batch in the caller's order; for a PackedSequence,
zeros after each sequence's end. The gates, as the step functions in :mod:`recurrent.cells` name them:
GRU ``r``, ``z``, ``n``; LSTM ``i``, ``f``, ``g``, ``o`` and the cell state ``c``; RNN ``h`` (it has no gates).

How: while a recording is open, a layer call runs its stack from Python (eager mode only; a scripted
module records nothing) and, after each layer, runs that layer's TorchScript forward kernel once
more without gradients on the very inputs the layer got (after inter-layer dropout), saving its
activations. That is one extra forward pass per layer, only while recording; when no recording is
open the layers check one module-level list, and nothing else changes.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .kernels.autograd import LayerSpec, _layer_forward
from .kernels.registry import KINDS

Gates = Dict[str, Tensor]

# The open recordings: (the model's layers by id -> name, the record). Empty when nothing records.
OPEN: List[Tuple[Dict[int, str], "GateRecord"]] = []
# The layer call now running under a recording: (its name, record, its layers' gates so far).
_current: List[Tuple[str, "GateRecord", List[Gates]]] = []


class GateRecord(Dict[str, List[Gates]]):
    """Module name -> one dict of gates per forward call, in call order."""


@contextmanager
def record_gates(model: nn.Module) -> Iterator[GateRecord]:
    """Records the gates of every :class:`recurrent.RNN`, ``GRU`` and ``LSTM`` inside ``model`` (itself
    included) for each forward call made inside the ``with`` block (see the module docstring)."""
    from .layers import RNNBase  # layers imports this module

    names = {id(m): name for name, m in model.named_modules() if isinstance(m, RNNBase) and m.mode in KINDS}
    if not names:
        raise ValueError(f"record_gates: {type(model).__name__} holds no recurrent RNN, GRU or LSTM layer to record")
    record = GateRecord()
    entry = (names, record)
    OPEN.append(entry)
    try:
        yield record
    finally:
        OPEN.remove(entry)


def _innermost(layer: nn.Module) -> Optional[Tuple[str, GateRecord]]:
    """(layer's name, record) of the innermost open recording that holds ``layer``: the one it writes to."""
    found = [(names[id(layer)], record) for names, record in OPEN if id(layer) in names]
    return found[-1] if found else None


@contextmanager
def layer_call(layer: nn.Module, batch_sizes: List[int]) -> Iterator[None]:
    """Around one layer module's stack: collects its layers' gates into one entry of the record."""
    found = _innermost(layer)
    if found is None:
        yield
        return
    name, record = found
    _current.append((name, record, []))
    try:
        yield
        per_layer = _current[-1][2]
        record.setdefault(name, []).append(
            {gate: _batch_major(torch.stack([g[gate] for g in per_layer]), batch_sizes) for gate in per_layer[0]}
        )
    finally:
        _current.pop()


def capture(spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]) -> None:
    """Called by the eager stack after each layer: that layer's gates, if a layer call is recording."""
    if not _current:
        return
    torchscript = spec._replace(kernel=KINDS[spec.mode].kernel("torchscript"))
    with torch.no_grad():
        hs, _, saved, _ = _layer_forward(torchscript, rows, state0, params, save=True)
    gates = _gates(spec.mode, hs, saved)
    if spec.reverse is not None:  # the second direction ran over its rows reversed in time
        gates = {k: torch.stack([v[0], v[1].index_select(0, spec.reverse)]) for k, v in gates.items()}
    _current[-1][2].append(gates)


def _gates(mode: str, hs: Tensor, saved: List[Tensor]) -> Gates:
    """The kind's saved activations (D, T, ·) as named gates (D, T, H)."""
    if mode == "GRU":
        r, z = saved[0].chunk(2, -1)
        return {"r": r, "z": z, "n": saved[1]}
    if mode == "LSTM":
        i, f = saved[0].chunk(2, -1)
        return {"i": i, "f": f, "g": saved[1], "o": saved[2], "c": saved[3]}
    return {"h": hs}


def _batch_major(rows: Tensor, batch_sizes: List[int]) -> Tensor:
    """(layers, D, T rows, H) time-major rows -> (layers, D, N, L, H), zeros after each sequence's end."""
    steps, batch = len(batch_sizes), batch_sizes[0]
    out = rows.new_zeros(rows.size(0), rows.size(1), steps, batch, rows.size(-1))
    start = 0
    for t, size in enumerate(batch_sizes):
        out[:, :, t, :size] = rows[:, :, start : start + size]
        start += size
    return out.transpose(2, 3)


def reorder_last(layer: nn.Module, order: Optional[Tensor]) -> None:
    """Puts the batch of ``layer``'s latest recorded call in the caller's order (packed input)."""
    found = _innermost(layer)
    if order is None or found is None:
        return
    name, record = found
    record[name][-1] = {k: v.index_select(2, order.to(v.device)) for k, v in record[name][-1].items()}
