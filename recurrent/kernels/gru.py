"""GRU over a whole sequence: forward loop and hand-written backward."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from ..cells import gru_step
from .common import hidden_product


@script
def gru_forward(
    gi: Tensor, h0: Tensor, w_hh_t: Tensor, b_hh: Optional[Tensor], save: bool
) -> Tuple[Tensor, List[Tensor]]:
    """Runs the steps; with ``save`` also returns [rz, n, W_hn h + b_hn] for every step."""
    hidden = h0.size(-1)
    h = h0
    hs: List[Tensor] = []
    rzs: List[Tensor] = []
    ns: List[Tensor] = []
    ghns: List[Tensor] = []
    for t in range(gi.size(1)):
        gh = hidden_product(h, w_hh_t, b_hh)
        h, rz, n = gru_step(gi[:, t], gh, h)
        hs.append(h)
        if save:
            rzs.append(rz)
            ns.append(n)
            ghns.append(gh[..., 2 * hidden :])
    if not save:
        return torch.stack(hs, 1), []
    return torch.stack(hs, 1), [torch.stack(rzs, 1), torch.stack(ns, 1), torch.stack(ghns, 1)]


@script
def gru_backward(
    grad_hs: Tensor, h0: Tensor, hs: Tensor, saved: List[Tensor], w_hh: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (dgi, dgh, dh0), with a_* the gate pre-activations and ghn = W_hn h + b_hn:

        da_n = dh' ⊙ (1 − z) ⊙ (1 − n²)        dgi_n = da_n,   dgh_n = da_n ⊙ r
        da_z = dh' ⊙ (h − n) ⊙ z(1 − z)        da_r  = da_n ⊙ ghn ⊙ r(1 − r)
        dh   = dh' ⊙ z + dgh W_hh
    Every factor that does not depend on dh' is formed for all steps before the loop, so a step
    is one add, two multiplies and one batched product.
    """
    rz, n, ghn = saved[0], saved[1], saved[2]
    hidden = h0.size(-1)
    r = rz[..., :hidden]
    z = rz[..., hidden:]
    h_prev = torch.cat([h0.unsqueeze(1), hs[:, :-1]], 1)
    dn_factor = (1 - z) * (1 - n * n)
    # d gh / d h' per gate block (r, z, n), side by side as in gh itself.
    dgh_factor = torch.cat([dn_factor * ghn * r * (1 - r), (h_prev - n) * z * (1 - z), dn_factor * r], -1)
    dgh_factor = dgh_factor.unflatten(-1, (3, hidden))
    dh = torch.zeros_like(h0)
    dhs: List[Tensor] = []
    dghs: List[Tensor] = []
    for t in range(hs.size(1) - 1, -1, -1):
        dh = grad_hs[:, t] + dh
        dgh = (dgh_factor[:, t] * dh.unsqueeze(-2)).flatten(-2)
        dhs.append(dh)
        dghs.append(dgh)
        dh = torch.baddbmm(dh * z[:, t], dgh, w_hh)
    dhs.reverse()
    dghs.reverse()
    dgh_all = torch.stack(dghs, 1)
    dgi = torch.cat([dgh_all[..., : 2 * hidden], torch.stack(dhs, 1) * dn_factor], -1)
    return dgi, dgh_all, dh
