"""LSTM (optionally projected) over a whole sequence: forward loop and hand-written backward."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from ..cells import lstm_step
from .common import carry_rows, hidden_product, previous_blocks, step_rows, tanh_slope, times_w_hh
from .products import pack
from .scan import CellStep

# What the forward saves, [if, g, o, c]: each (D, T, k·H), the k in order (Kernel.saved_widths).
LSTM_SAVED = (2, 1, 1, 1)


@script
def lstm_forward(
    gi: Tensor,
    state0: List[Tensor],
    w_hh_t: Tensor,
    b_hh: Optional[Tensor],
    kind_weights: List[Tensor],
    batch_sizes: List[int],
    save: bool,
    onednn: bool = False,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """Returns (hs, [h_n, c_n], saved); with ``save``, saved = [if, g, o, c] for every row.
    ``kind_weights`` is [w_hr] for a projected LSTM: the state and output h is then W_hr (o ⊙ tanh(c)).
    ``onednn``: oneDNN's products (:mod:`.products`: float32 CPU, W_hh packed once) and the gate math in
    place."""
    h, c = state0[0], state0[1]
    w_hr_t = kind_weights[0].transpose(1, 2) if len(kind_weights) > 0 else None
    hs: List[Tensor] = []
    ifs: List[Tensor] = []
    gs: List[Tensor] = []
    os: List[Tensor] = []
    cs: List[Tensor] = []
    packed = pack(w_hh_t.transpose(1, 2), batch_sizes[0]) if onednn else None
    start = 0
    for size in batch_sizes:
        gh = hidden_product(step_rows(h, size), w_hh_t, b_hh, packed)
        new_h, new_c, i_f, g, o = lstm_step(gi[:, start : start + size], gh, step_rows(c, size), onednn)
        if w_hr_t is not None:
            new_h = torch.bmm(new_h, w_hr_t)
        hs.append(new_h)
        if save:
            ifs.append(i_f)
            gs.append(g)
            os.append(o)
            cs.append(new_c)
        h = carry_rows(new_h, h)
        c = carry_rows(new_c, c)
        start += size
    saved: List[Tensor] = [torch.cat(ifs, 1), torch.cat(gs, 1), torch.cat(os, 1), torch.cat(cs, 1)] if save else []
    return torch.cat(hs, 1), [h, c], saved


@script
def gate_factors(saved: List[Tensor], c0: Tensor, batch_sizes: List[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """The backward's factors that do not depend on the incoming gradients, for all rows: (dgates
    (D, T, 4, H) holding g i(1 − i), c_prev f(1 − f), i(1 − g²), tanh(c') o(1 − o); du_to_dc =
    o(1 − tanh²(c')); tanh(c')). Each factor is formed in its own slot with in-place ops (x s(1 − s)
    as x s − (x s) s), so nothing else is allocated: big temporaries cost page faults on CPU."""
    i_f, g, o, cs = saved[0], saved[1], saved[2], saved[3]
    directions, rows, hidden = cs.size(0), cs.size(1), cs.size(2)
    i = i_f[..., :hidden]
    f = i_f[..., hidden:]
    tanh_c = torch.tanh(cs)
    du_to_dc = tanh_slope(tanh_c).mul_(o)
    dgates = torch.empty(directions, rows, 4, hidden, dtype=cs.dtype, device=cs.device)
    slot = torch.mul(g, i, out=dgates[:, :, 0])
    slot.addcmul_(slot, i, value=-1)
    start = 0
    for block in previous_blocks(c0, cs, batch_sizes):  # c_prev f(1 − f), block by block
        end = start + block.size(1)
        slot = torch.mul(block, f[:, start:end], out=dgates[:, start:end, 1])
        slot.addcmul_(slot, f[:, start:end], value=-1)
        start = end
    slot = torch.mul(i, g, out=dgates[:, :, 2]).mul_(g)
    torch.sub(i, slot, out=slot)  # i(1 − g²)
    slot = torch.mul(tanh_c, o, out=dgates[:, :, 3])
    slot.addcmul_(slot, o, value=-1)
    return dgates, du_to_dc, tanh_c


@script
def lstm_backward(
    grad_hs: Tensor,
    grad_finals: List[Tensor],
    state0: List[Tensor],
    hs: Tensor,
    h_prev: List[Tensor],
    saved: List[Tensor],
    w_hh: Tensor,
    kind_weights: List[Tensor],
    batch_sizes: List[int],
    onednn: bool = False,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """Returns (dgates, dgates, [dh0, dc0], [dW_hr] or []); gi and gh enter the gates as a sum, so
    their gradients are the same. With u = o ⊙ tanh(c') the unprojected output (u = h' without
    projection) and a_* the gate pre-activations:

        du   = dh' W_hr (or dh')                    dc   = dc' + du ⊙ o ⊙ (1 − tanh²(c'))
        da_i = dc ⊙ g ⊙ i(1 − i)                    da_f = dc ⊙ c ⊙ f(1 − f)
        da_g = dc ⊙ i ⊙ (1 − g²)                    da_o = du ⊙ tanh(c') ⊙ o(1 − o)
        dh   = da W_hh                              dc_prev = dc ⊙ f
    The factors that do not depend on the incoming gradients are formed for all rows before the loop
    (:func:`gate_factors`), in the buffer that the loop turns into dgates in place.
    """
    i_f, o, cs = saved[0], saved[2], saved[3]
    f = i_f[..., cs.size(2) :]
    dgates, du_to_dc, tanh_c = gate_factors(saved, state0[1], batch_sizes)
    projected = len(kind_weights) > 0
    dh, dc = grad_finals[0], grad_finals[1]
    dhs_out = torch.empty_like(hs) if projected else hs[:, :0]
    packed = pack(w_hh.transpose(1, 2), batch_sizes[0]) if onednn else None
    end = cs.size(1)
    for t in range(len(batch_sizes) - 1, -1, -1):
        size = batch_sizes[t]
        start = end - size
        dh_t = step_rows(dh, size) + grad_hs[:, start:end]
        if projected:
            dhs_out[:, start:end] = dh_t
            dh_t = torch.bmm(dh_t, kind_weights[0])
        dc_t = torch.addcmul(step_rows(dc, size), dh_t, du_to_dc[:, start:end])
        dgates_t = dgates[:, start:end]
        dgates_t[:, :, :3].mul_(dc_t.unsqueeze(-2))
        dgates_t[:, :, 3].mul_(dh_t)
        dh = carry_rows(times_w_hh(dgates_t.flatten(-2), w_hh, packed), dh)
        dc = carry_rows(dc_t * f[:, start:end], dc)
        end = start
    dgates = dgates.flatten(-2)
    dw_hr: List[Tensor] = []
    if projected:
        dw_hr.append(torch.bmm(dhs_out.transpose(1, 2), o * tanh_c))  # dW_hr = Σ dh'ᵀ u
    return dgates, dgates, [dh, dc], dw_hr


@script
class LSTMSequence:
    """:func:`lstm_forward` as a :class:`.contract.SequenceKernel`, what the compiled stack loop calls."""

    def __init__(self, onednn: bool = False) -> None:
        self.onednn = onednn

    def forward(
        self, gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
        batch_sizes: List[int], save: bool,
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
        return lstm_forward(gi, state0, w_hh_t, b_hh, kind_weights, batch_sizes, save, self.onednn)

    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        return w_hh


def lstm_scan_step(kind_weights: List[Tensor]) -> CellStep:
    """The step of :mod:`.scan`'s loops (torch.export): :func:`recurrent.cells.lstm_step`, then the
    projection W_hr where ``kind_weights`` holds it (D, P, H)."""

    def step(gi: Tensor, gh: Tensor, state: List[Tensor], own: slice) -> Tuple[Tensor, List[Tensor]]:
        h, c = lstm_step(gi, gh, state[1])[:2]
        if kind_weights:
            h = torch.bmm(h, kind_weights[0][own].transpose(1, 2))
        return h, [h, c]

    return step


def lstm_gates(hs: Tensor, saved: List[Tensor]) -> Dict[str, Tensor]:
    """The gates :func:`lstm_forward` saved, and the cell state, by name (D, T, H)."""
    i, f = saved[0].chunk(2, -1)
    return {"i": i, "f": f, "g": saved[1], "o": saved[2], "c": saved[3]}
