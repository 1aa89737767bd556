"""Elman RNN (tanh or ReLU) over a whole sequence: forward loop and hand-written backward."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from ..cells import rnn_relu_step, rnn_tanh_step
from .common import carry_rows, hidden_product, step_rows


@script
def rnn_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], batch_sizes: List[int],
    save: bool, relu: bool,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """Returns (hs, [h_n], saved). The outputs hs are all the backward needs: nothing else is saved."""
    h = state0[0]
    hs: List[Tensor] = []
    start = 0
    for size in batch_sizes:
        gh = hidden_product(step_rows(h, size), w_hh_t, b_hh)
        gi_t = gi[:, start : start + size]
        new = rnn_relu_step(gi_t, gh) if relu else rnn_tanh_step(gi_t, gh)
        hs.append(new)
        h = carry_rows(new, h)
        start += size
    return torch.cat(hs, 1), [h], []


@script
def rnn_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: Tensor,
    saved: List[Tensor], w_hh: Tensor, batch_sizes: List[int], relu: bool,
) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """Returns (dgi, dgh, [dh0]). With a = gi + gh and h' = act(a): da = dh' ⊙ act'(a), dh = da W_hh."""
    # act'(a) from the outputs, for all steps at once: relu' = [h' > 0], tanh' = 1 − h'².
    slope = (hs > 0).to(hs.dtype) if relu else 1 - hs * hs
    dh = grad_finals[0]
    das: List[Tensor] = []
    end = hs.size(1)
    for t in range(len(batch_sizes) - 1, -1, -1):
        start = end - batch_sizes[t]
        da = (step_rows(dh, batch_sizes[t]) + grad_hs[:, start:end]) * slope[:, start:end]
        das.append(da)
        dh = carry_rows(torch.bmm(da, w_hh), dh)
        end = start
    das.reverse()
    da_all = torch.cat(das, 1)
    return da_all, da_all, [dh]
