"""GRU over a whole sequence: forward loop and hand-written backward."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from ..cells import gru_step
from .common import carry_rows, hidden_product, step_rows, tanh_slope
from .products import pack, packed_linear
from .scan import CellStep

# What the forward saves, [rz, n, W_hn h + b_hn]: each (D, T, k·H), the k in order (Kernel.saved_widths).
GRU_SAVED = (2, 1, 1)


@script
def gru_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
    batch_sizes: List[int], save: bool, onednn: bool = False,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """Returns (hs, [h_n], saved); with ``save``, saved = [rz, n, W_hn h + b_hn] for every row.
    ``onednn``: oneDNN's products (:mod:`.products`: float32 CPU, W_hh packed once) and the gate math in
    place."""
    h = state0[0]
    hidden = h.size(-1)
    hs: List[Tensor] = []
    rzs: List[Tensor] = []
    ns: List[Tensor] = []
    ghns: List[Tensor] = []
    packed = pack(w_hh_t.transpose(1, 2), batch_sizes[0]) if onednn else None
    start = 0
    for size in batch_sizes:
        h_t = step_rows(h, size)
        gh = hidden_product(h_t, w_hh_t, b_hh, packed)
        new, rz, n = gru_step(gi[:, start : start + size], gh, h_t, onednn)
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
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor], batch_sizes: List[int], onednn: bool = False,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """Returns (dgi, dgh, [dh0], []), with a_* the gate pre-activations and ghn = W_hn h + b_hn:

        da_n = dh' ⊙ (1 − z) ⊙ (1 − n²)        dgi_n = da_n,   dgh_n = da_n ⊙ r
        da_z = dh' ⊙ (h − n) ⊙ z(1 − z)        da_r  = da_n ⊙ ghn ⊙ r(1 − r)
        dh   = dh' ⊙ z + dgh W_hh
    Every factor that does not depend on dh' is formed for all steps before the loop, in the buffer
    that becomes dgh, so a step is one add, two multiplies (one in place) and one batched product.
    """
    rz, n, ghn = saved[0], saved[1], saved[2]
    directions, rows, hidden = hs.size(0), hs.size(1), hs.size(2)
    r = rz[..., :hidden]
    z = rz[..., hidden:]
    # Each factor is formed in its own slot with in-place ops (x z(1 − z) as x z − (x z) z), so
    # nothing beyond dgh and dn_factor is allocated: big temporaries cost page faults on CPU.
    dn_factor = tanh_slope(n)
    dn_factor.addcmul_(dn_factor, z, value=-1)  # (1 − n²)(1 − z)
    dgh = torch.empty(directions, rows, 3, hidden, dtype=hs.dtype, device=hs.device)
    torch.mul(dn_factor, ghn, out=dgh[:, :, 0]).mul_(r)
    dgh[:, :, 0].addcmul_(dgh[:, :, 0], r, value=-1)
    start = 0
    for block in h_prev:  # (h − n) z(1 − z), block by block of the previous states
        end = start + block.size(1)
        slot = dgh[:, start:end, 1]
        torch.sub(block, n[:, start:end], out=slot).mul_(z[:, start:end])
        slot.addcmul_(slot, z[:, start:end], value=-1)
        start = end
    torch.mul(dn_factor, r, out=dgh[:, :, 2])
    dh = grad_finals[0]
    dh_all = torch.empty_like(hs)
    packed = pack(w_hh.transpose(1, 2), batch_sizes[0]) if onednn else None
    end = rows
    for t in range(len(batch_sizes) - 1, -1, -1):
        start = end - batch_sizes[t]
        dh_t = torch.add(step_rows(dh, batch_sizes[t]), grad_hs[:, start:end], out=dh_all[:, start:end])
        dgh_t = dgh[:, start:end].mul_(dh_t.unsqueeze(-2))
        if packed is not None:
            back = packed_linear(dgh_t.flatten(-2), packed, None).addcmul_(dh_t, z[:, start:end])
        else:
            back = torch.baddbmm(dh_t * z[:, start:end], dgh_t.flatten(-2), w_hh)
        dh = carry_rows(back, dh)
        end = start
    dgh = dgh.flatten(-2)
    dgi = torch.empty_like(dgh)
    dgi[..., : 2 * hidden].copy_(dgh[..., : 2 * hidden])
    torch.mul(dh_all, dn_factor, out=dgi[..., 2 * hidden :])
    return dgi, dgh, [dh], kind_weights[:0]


@script
class GRUSequence:
    """:func:`gru_forward` as a :class:`.contract.SequenceKernel`, what the compiled stack loop calls."""

    def __init__(self, onednn: bool = False) -> None:
        self.onednn = onednn

    def forward(
        self, gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
        batch_sizes: List[int], save: bool,
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
        return gru_forward(gi, state0, w_hh_t, b_hh, kind_weights, batch_sizes, save, self.onednn)

    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        return w_hh


def gru_scan_step(kind_weights: List[Tensor]) -> CellStep:
    """The step of :mod:`.scan`'s loops (torch.export): :func:`recurrent.cells.gru_step`."""

    def step(gi: Tensor, gh: Tensor, state: List[Tensor], own: slice) -> Tuple[Tensor, List[Tensor]]:
        h = gru_step(gi, gh, state[0])[0]
        return h, [h]

    return step


def gru_gates(hs: Tensor, saved: List[Tensor]) -> Dict[str, Tensor]:
    """The gates :func:`gru_forward` saved, by name (D, T, H): what gate recording shows."""
    r, z = saved[0].chunk(2, -1)
    return {"r": r, "z": z, "n": saved[1]}
