"""Elman RNN (tanh or ReLU) over a whole sequence: forward loop and hand-written backward."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from ..cells import rnn_relu_step, rnn_tanh_step
from .common import hidden_product


@script
def rnn_forward(
    gi: Tensor, h0: Tensor, w_hh_t: Tensor, b_hh: Optional[Tensor], save: bool, relu: bool
) -> Tuple[Tensor, List[Tensor]]:
    """Runs the steps; the outputs hs are all the backward needs, so ``save`` adds nothing."""
    h = h0
    hs: List[Tensor] = []
    for t in range(gi.size(1)):
        gh = hidden_product(h, w_hh_t, b_hh)
        h = rnn_relu_step(gi[:, t], gh) if relu else rnn_tanh_step(gi[:, t], gh)
        hs.append(h)
    return torch.stack(hs, 1), []


@script
def rnn_backward(
    grad_hs: Tensor, h0: Tensor, hs: Tensor, saved: List[Tensor], w_hh: Tensor, relu: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (dgi, dgh, dh0). With a = gi + gh and h' = act(a): da = dh' ⊙ act'(a), dh = da W_hh."""
    # act'(a) from the outputs, for all steps at once: relu' = [h' > 0], tanh' = 1 − h'².
    slope = (hs > 0).to(hs.dtype) if relu else 1 - hs * hs
    dh = torch.zeros_like(h0)
    das: List[Tensor] = []
    for t in range(hs.size(1) - 1, -1, -1):
        da = (grad_hs[:, t] + dh) * slope[:, t]
        dh = torch.bmm(da, w_hh)
        das.append(da)
    das.reverse()
    da_all = torch.stack(das, 1)
    return da_all, da_all, dh
