"""Elman RNN (tanh or ReLU) over a whole sequence: forward loop and hand-written backward."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from ..cells import rnn_relu_step, rnn_tanh_step
from .common import carry_rows, step_rows, tanh_slope, times_w_hh
from .products import pack, packed_linear
from .scan import CellStep

# What the forward saves (nothing: its outputs suffice), each (D, T, k·H), the k in order (Kernel.saved_widths).
RNN_SAVED = ()


@script
def rnn_forward(
    gi: Tensor,
    state0: List[Tensor],
    w_hh_t: Tensor,
    b_hh: Optional[Tensor],
    kind_weights: List[Tensor],
    batch_sizes: List[int],
    save: bool,
    relu: bool,
    onednn: bool = False,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """Returns (hs, [h_n], saved). The outputs hs are all the backward needs: nothing else is saved.
    ``b_hh`` is None: the kind folds it into gi, so a step is one batched product and one activation.
    ``onednn``: oneDNN's products (:mod:`.products`: float32 CPU, W_hh packed once) and the gate math in
    place."""
    h = state0[0]
    hs: List[Tensor] = []
    packed = pack(w_hh_t.transpose(1, 2), batch_sizes[0]) if onednn else None
    start = 0
    for size in batch_sizes:
        if packed is not None:
            pre = packed_linear(step_rows(h, size), packed, None).add_(gi[:, start : start + size])
        else:
            pre = torch.baddbmm(gi[:, start : start + size], step_rows(h, size), w_hh_t)
        new = rnn_relu_step(pre) if relu else rnn_tanh_step(pre, onednn)
        hs.append(new)
        h = carry_rows(new, h)
        start += size
    return torch.cat(hs, 1), [h], []


@script
def rnn_backward(
    grad_hs: Tensor,
    grad_finals: List[Tensor],
    state0: List[Tensor],
    hs: Tensor,
    h_prev: List[Tensor],
    saved: List[Tensor],
    w_hh: Tensor,
    kind_weights: List[Tensor],
    batch_sizes: List[int],
    relu: bool,
    onednn: bool = False,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """Returns (dgi, dgh, [dh0], []). With a = gi + gh and h' = act(a): da = dh' ⊙ act'(a), dh = da W_hh.
    act'(a) comes from the outputs, step by step (relu' = [h' > 0], tanh' = 1 − h'²): one step's
    slope is small and hot in cache, where the slope of all rows would be one more big buffer."""
    da = torch.empty_like(hs)
    dh = grad_finals[0]
    packed = pack(w_hh.transpose(1, 2), batch_sizes[0]) if onednn else None
    end = hs.size(1)
    for t in range(len(batch_sizes) - 1, -1, -1):
        start = end - batch_sizes[t]
        da_t = torch.add(step_rows(dh, batch_sizes[t]), grad_hs[:, start:end], out=da[:, start:end])
        if relu:
            da_t.masked_fill_(hs[:, start:end] <= 0, 0.0)
        else:
            da_t.mul_(tanh_slope(hs[:, start:end]))
        dh = carry_rows(times_w_hh(da_t, w_hh, packed), dh)
        end = start
    return da, da, [dh], kind_weights[:0]


@script
class RNNSequence:
    """:func:`rnn_forward` (tanh, or ReLU with ``relu``) as a :class:`.contract.SequenceKernel`, what the
    compiled stack loop calls."""

    def __init__(self, relu: bool, onednn: bool = False) -> None:
        self.relu = relu
        self.onednn = onednn

    def forward(
        self, gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
        batch_sizes: List[int], save: bool,
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
        return rnn_forward(gi, state0, w_hh_t, b_hh, kind_weights, batch_sizes, save, self.relu, self.onednn)

    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        return w_hh


def rnn_scan_step(relu: bool, kind_weights: List[Tensor]) -> CellStep:
    """The step of :mod:`.scan`'s loops (torch.export): the activation of gi + gh."""

    def step(gi: Tensor, gh: Tensor, state: List[Tensor], own: slice) -> Tuple[Tensor, List[Tensor]]:
        h = rnn_relu_step(gi + gh) if relu else rnn_tanh_step(gi + gh)
        return h, [h]

    return step


def rnn_gates(hs: Tensor, saved: List[Tensor]) -> Dict[str, Tensor]:
    """An Elman RNN has no gates: its recorded state h (D, T, H)."""
    return {"h": hs}
