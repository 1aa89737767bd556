"""The native CPU kernels: each kind's TorchScript time loop around its fused step op
(``torch.ops.recurrent_cpu.*``, :mod:`.build`), with oneDNN's products and W_hh packed once
(:mod:`..products`). Same contract as the TorchScript kernels (:mod:`..autograd`); what they save
differs (``saved`` is read only by the matching backward).

Per step, a TorchScript kernel's fast path runs a dozen ATen ops over the gates, each a pass over
memory with its own dispatch; here one op does the step's gate math in one pass, writing straight
into the sequence's buffers (no per-step lists to concatenate afterwards). The forward ops overwrite
gi, which the layer made for this call alone, with what the backward keeps (the LSTM's gates, the
GRU's r, z, n, the RNN's outputs): one buffer the size of the sequence less to allocate and fault in.
The products come back one (N, G) tensor per direction, which the step ops take as they are.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..._jit import script
from ..common import carry_rows, step_rows
from ..products import direction_linears, pack
from . import build  # noqa: F401 - declares the step ops' schemas, which scripting these loops resolves


@script
def each_rows(state: List[Tensor], size: int) -> List[Tensor]:
    """:func:`..common.step_rows` for a state held one (N, W) tensor per direction."""
    return state if size == state[0].size(0) else [s[:size] for s in state]


@script
def carry_each(new: List[Tensor], state: List[Tensor]) -> List[Tensor]:
    """:func:`..common.carry_rows` for a state held one (N, W) tensor per direction."""
    if new[0].size(0) == state[0].size(0):
        return new
    return [torch.cat([n, s[n.size(0) :]]) for n, s in zip(new, state)]


@script
def before(seq: Tensor, first: Tensor, batch_sizes: List[int], t: int, start: int) -> Tensor:
    """The rows of ``seq`` (D, T, W) one step before step t (which starts at row ``start``): ``first``'s at t = 0."""
    if t == 0:
        return first[:, : batch_sizes[0]]
    previous = start - batch_sizes[t - 1]
    return seq[:, previous : previous + batch_sizes[t]]


@script
def lstm_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], extra: List[Tensor],
    batch_sizes: List[int], save: bool,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """Returns (hs, [h_n, c_n], saved); with ``save``, saved = [gates (i, f, g, o) (in gi), c] for every row."""
    h, c = state0[0].contiguous(), state0[1].contiguous()
    directions, rows, hidden = gi.size(0), gi.size(1), h.size(2)
    hs = gi.new_empty(directions, rows, hidden)
    cs = gi.new_empty(directions, rows if save else 0, hidden)
    packed = pack(w_hh_t.transpose(1, 2), batch_sizes[0])
    start = 0
    for size in batch_sizes:
        end = start + size
        h_t = hs[:, start:end]
        c_t = cs[:, start:end] if save else gi.new_empty(directions, size, hidden)
        gh = direction_linears(step_rows(h, size), packed, b_hh)
        torch.ops.recurrent_cpu.lstm_cell(gh, gi[:, start:end], step_rows(c, size), h_t, c_t)
        h = carry_rows(h_t, h)
        c = carry_rows(c_t, c)
        start = end
    saved: List[Tensor] = [gi, cs] if save else []
    # The final states are views of hs and cs: copies, so that the caller's in-place changes reach neither.
    return hs, [h.clone(), c.clone()], saved


@script
def lstm_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, extra: List[Tensor], batch_sizes: List[int],
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """Returns (dgates, dgates, [dh0, dc0], []); the step op's comment has the formulas."""
    gates, cs = saved[0], saved[1]
    grad_hs = grad_hs.contiguous()
    dgates = torch.empty_like(gates)
    dh = list(grad_finals[0].contiguous().unbind(0))
    dc = grad_finals[1].contiguous()
    c0 = state0[1].contiguous()
    packed = pack(w_hh.transpose(1, 2), batch_sizes[0])
    end = cs.size(1)
    for t in range(len(batch_sizes) - 1, -1, -1):
        size = batch_sizes[t]
        start = end - size
        dgates_t = dgates[:, start:end]
        dc_t = torch.ops.recurrent_cpu.lstm_cell_backward(
            each_rows(dh, size), grad_hs[:, start:end], step_rows(dc, size), gates[:, start:end],
            before(cs, c0, batch_sizes, t, start), cs[:, start:end], dgates_t,
        )  # fmt: skip
        dh = carry_each(direction_linears(dgates_t, packed, None), dh)
        dc = carry_rows(dc_t, dc)
        end = start
    return dgates, dgates, [torch.stack(dh), dc], extra[:0]


@script
def gru_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], extra: List[Tensor],
    batch_sizes: List[int], save: bool,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """Returns (hs, [h_n], saved); with ``save``, saved = [(r, z, n) (in gi), W_hn h + b_hn] for every row."""
    h = state0[0].contiguous()
    directions, rows, hidden = gi.size(0), gi.size(1), h.size(2)
    hs = gi.new_empty(directions, rows, hidden)
    ghn = gi.new_empty(directions, rows if save else batch_sizes[0], hidden)
    packed = pack(w_hh_t.transpose(1, 2), batch_sizes[0])
    start = 0
    for size in batch_sizes:
        end = start + size
        h_rows, h_t = step_rows(h, size), hs[:, start:end]
        ghn_t = ghn[:, start:end] if save else ghn[:, :size]
        torch.ops.recurrent_cpu.gru_cell(direction_linears(h_rows, packed, b_hh), gi[:, start:end], h_rows, ghn_t, h_t)
        h = carry_rows(h_t, h)
        start = end
    saved: List[Tensor] = [gi, ghn] if save else []
    return hs, [h.clone()], saved


@script
def gru_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, extra: List[Tensor], batch_sizes: List[int],
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """Returns (dgi, dgh, [dh0], []); the step op's comment has the formulas."""
    gates, ghn = saved[0], saved[1]
    grad_hs = grad_hs.contiguous()
    directions, rows, hidden = hs.size(0), hs.size(1), hs.size(2)
    dgi = hs.new_empty(directions, rows, 3 * hidden)
    dgh = torch.empty_like(dgi)
    dh = list(grad_finals[0].contiguous().unbind(0))
    h0 = state0[0].contiguous()
    packed = pack(w_hh.transpose(1, 2), batch_sizes[0])
    end = rows
    for t in range(len(batch_sizes) - 1, -1, -1):
        size = batch_sizes[t]
        start = end - size
        direct = torch.ops.recurrent_cpu.gru_cell_backward(
            each_rows(dh, size), grad_hs[:, start:end], gates[:, start:end], ghn[:, start:end],
            before(hs, h0, batch_sizes, t, start), dgi[:, start:end], dgh[:, start:end],
        )  # fmt: skip
        back = direction_linears(dgh[:, start:end], packed, None)
        dh = carry_each([back[d].add_(direct[d]) for d in range(directions)], dh)
        end = start
    return dgi, dgh, [torch.stack(dh)], extra[:0]


@script
def rnn_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], extra: List[Tensor],
    batch_sizes: List[int], save: bool, relu: bool,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """Returns (hs, [h_n], []): the outputs (written into gi) are all the backward needs."""
    h = state0[0].contiguous()
    packed = pack(w_hh_t.transpose(1, 2), batch_sizes[0])
    start = 0
    for size in batch_sizes:
        end = start + size
        h_t = gi[:, start:end]
        torch.ops.recurrent_cpu.rnn_cell(direction_linears(step_rows(h, size), packed, b_hh), h_t, relu)
        h = carry_rows(h_t, h)
        start = end
    return gi, [h.clone()], extra[:0]


@script
def rnn_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, extra: List[Tensor], batch_sizes: List[int], relu: bool,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """Returns (da, da, [dh0], []): da = (dh' + grad) act'(a), dh = da W_hh."""
    grad_hs = grad_hs.contiguous()
    # Two directions' grad_hs is the backward's own copy of the incoming gradient (split_directions):
    # da overwrites it, one buffer of the sequence's size less at the backward's peak.
    da = grad_hs if grad_hs.size(0) == 2 else torch.empty_like(hs)
    dh = list(grad_finals[0].contiguous().unbind(0))
    packed = pack(w_hh.transpose(1, 2), batch_sizes[0])
    end = hs.size(1)
    for t in range(len(batch_sizes) - 1, -1, -1):
        start = end - batch_sizes[t]
        da_t = da[:, start:end]
        dh_t = each_rows(dh, batch_sizes[t])
        torch.ops.recurrent_cpu.rnn_cell_backward(dh_t, grad_hs[:, start:end], hs[:, start:end], da_t, relu)
        dh = carry_each(direction_linears(da_t, packed, None), dh)
        end = start
    return da, da, [torch.stack(dh)], extra[:0]
