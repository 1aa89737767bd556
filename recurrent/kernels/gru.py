"""GRU over a whole sequence: forward loop and hand-written backward."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from ..cells import gru_step
from .common import carry_rows, hidden_product, step_rows


@script
def gru_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], batch_sizes: List[int], save: bool
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """Returns (hs, [h_n], saved); with ``save``, saved = [rz, n, W_hn h + b_hn] for every row."""
    h = state0[0]
    hidden = h.size(-1)
    hs: List[Tensor] = []
    rzs: List[Tensor] = []
    ns: List[Tensor] = []
    ghns: List[Tensor] = []
    start = 0
    for size in batch_sizes:
        h_t = step_rows(h, size)
        gh = hidden_product(h_t, w_hh_t, b_hh)
        new, rz, n = gru_step(gi[:, start : start + size], gh, h_t)
        hs.append(new)
        if save:
            rzs.append(rz)
            ns.append(n)
            ghns.append(gh[..., 2 * hidden :])
        h = carry_rows(new, h)
        start += size
    saved: List[Tensor] = [torch.cat(rzs, 1), torch.cat(ns, 1), torch.cat(ghns, 1)] if save else []
    return torch.cat(hs, 1), [h], saved


@script
def gru_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: Tensor,
    saved: List[Tensor], w_hh: Tensor, batch_sizes: List[int],
) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """Returns (dgi, dgh, [dh0]), with a_* the gate pre-activations and ghn = W_hn h + b_hn:

        da_n = dh' ⊙ (1 − z) ⊙ (1 − n²)        dgi_n = da_n,   dgh_n = da_n ⊙ r
        da_z = dh' ⊙ (h − n) ⊙ z(1 − z)        da_r  = da_n ⊙ ghn ⊙ r(1 − r)
        dh   = dh' ⊙ z + dgh W_hh
    Every factor that does not depend on dh' is formed for all steps before the loop, so a step
    is one add, two multiplies and one batched product.
    """
    rz, n, ghn = saved[0], saved[1], saved[2]
    hidden = hs.size(-1)
    r = rz[..., :hidden]
    z = rz[..., hidden:]
    dn_factor = (1 - z) * (1 - n * n)
    # d gh / d h' per gate block (r, z, n), side by side as in gh itself.
    dgh_factor = torch.cat([dn_factor * ghn * r * (1 - r), (h_prev - n) * z * (1 - z), dn_factor * r], -1)
    dgh_factor = dgh_factor.unflatten(-1, (3, hidden))
    dh = grad_finals[0]
    dhs: List[Tensor] = []
    dghs: List[Tensor] = []
    end = hs.size(1)
    for t in range(len(batch_sizes) - 1, -1, -1):
        start = end - batch_sizes[t]
        dh_t = step_rows(dh, batch_sizes[t]) + grad_hs[:, start:end]
        dgh = (dgh_factor[:, start:end] * dh_t.unsqueeze(-2)).flatten(-2)
        dhs.append(dh_t)
        dghs.append(dgh)
        dh = carry_rows(torch.baddbmm(dh_t * z[:, start:end], dgh, w_hh), dh)
        end = start
    dhs.reverse()
    dghs.reverse()
    dgh_all = torch.cat(dghs, 1)
    dgi = torch.cat([dgh_all[..., : 2 * hidden], torch.cat(dhs, 1) * dn_factor], -1)
    return dgi, dgh_all, [dh]
