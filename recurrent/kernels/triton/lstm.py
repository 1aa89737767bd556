"""LSTM: persistent Triton forward and backward kernels (the math of :func:`recurrent.cells.lstm_step`,
per column block in :mod:`.lstm_cell`), and the launchers for these and the projected kernels
(:mod:`.lstm_proj`)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import (
    PLAIN_ARGS, column_block, hidden_dot, partial_row, program_rows, running_start, state_gradient, step_layout,
    sum_partials, zero_row, zero_tickets,
)
from .lstm_cell import lstm_columns_backward, lstm_columns_forward
from .lstm_proj import lstm_proj_backward_kernel, lstm_proj_forward_kernel


@triton.jit(do_not_specialize=PLAIN_ARGS)
def lstm_forward_kernel(
    gi_ptr, h0_ptr, c0_ptr, w_ptr, hs_ptr, hn_ptr, cn_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, copy_ptr, tickets_ptr,
    sizes_ptr, starts_ptr, steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, save, has_h0, copy, sums,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, 4H) with both biases folded in, h0 and c0 (D, N, H; zeros without ``has_h0``), w = W_hhᵀ
    (D, H, 4H) by strides -> hs (D, T, H), h_n and c_n (D, N, H; c_n is also the running cell state, which
    only its own column reads), and with ``save`` if (D, T, 2H), g, o and c (D, T, H); with ``copy`` hs once
    more into ``copy``; with ``sums`` the backward's ticket counters zeroed."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    zero_tickets(tickets_ptr, sums)
    for t in range(steps):
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        seen = active & ((t > 0) | has_h0)  # rows whose state before the step is read (not zero)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            h = lstm_columns_forward(
                prev, seen, w_d, H, stride_wk, stride_wn, gi_ptr, c0_ptr, cn_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, save,
                state, out, cols, col_mask, mask, H, t, has_h0, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K,
            ).to(hs_ptr.dtype.element_ty)
            tl.store(hs_ptr + out[:, None] + cols[None, :], h, mask=mask)
            tl.store(hn_ptr + state[:, None] + cols[None, :], h, mask=mask)
            if copy:
                tl.store(copy_ptr + out[:, None] + cols[None, :], h, mask=mask)
        tl.debug_barrier()  # this step's h, written by every thread, is the next step's input


@triton.jit(do_not_specialize=PLAIN_ARGS)
def lstm_backward_kernel(
    grad_hs_ptr, c0_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, w_ptr, dgates_ptr, dhn_ptr, dcn_ptr, dh_ptr, dc_ptr,
    part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, has_h0, has_dhn, has_dcn, sums,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Time in reverse; w = W_hh (D, 4H, H) by strides; ``dh`` and ``dc`` (D, N, H) start as dh_n and dc_n
    (``dhn``, ``dcn``; zeros without ``has_dhn``, ``has_dcn``) and end as dh0 and dc0. Per step: the gate
    gradients and dc ← dc' f (column-local) in phase 1, a barrier, dh ← dgates W_hh block by block in
    phase 2, a barrier. With ``sums`` the bias gradients too (both Σ dgates: b_hh is folded)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    part = partial_row(part_ptr, 8 * H)
    running_start(dhn_ptr, dh_ptr, state, rows < batch, H, has_dhn, ACC, BLOCK_N)
    running_start(dcn_ptr, dc_ptr, state, rows < batch, H, has_dcn, ACC, BLOCK_N)
    if sums:
        zero_row(part, 8 * H, BLOCK_N)
    tl.debug_barrier()  # phase 1 reads every column of dh
    for step in range(steps):
        t = steps - 1 - step
        active, c_prev_rows, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, c0_ptr, cs_ptr, state, seq, H)
        seen = active & ((t > 0) | has_h0)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            dh = state_gradient(dh_ptr, state, grad_hs_ptr, out, cols, mask, ACC)
            lstm_columns_backward(
                dh, if_ptr, g_ptr, o_ptr, cs_ptr, c_prev_rows, seen[:, None] & col_mask[None, :], dc_ptr, dgates_ptr,
                part, sums, state, out, cols, col_mask, mask, H, ACC,
            )
        tl.debug_barrier()  # phase 2 reads every column of this step's dgates
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            back = hidden_dot(dgates_ptr + 4 * out, active, w_d, cols, col_mask, 4 * H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            tl.store(dh_ptr + state[:, None] + cols[None, :], back.to(dh_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the next (earlier) step reads these dh
    if sums:
        sum_partials(part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, 8 * H, BLOCK_N)


def lstm_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
    batch_sizes: List[int], save: bool, kernel=lstm_forward_kernel, run=None, out: Optional[common.Outputs] = None,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.lstm.lstm_forward` (b_hh folded into gi): ``kind_weights`` is
    [w_hr (D, P, H)] for a projected LSTM, whose state and outputs h then have P columns (``kernel`` and
    ``run``: another kernel of the unprojected one's arguments and its launcher, the resident one's; ``state0``
    [] for zeros and ``out``, where the whole-stack op gives the kernel more to write: unprojected only)."""
    out = out or common.Outputs()
    hidden = gi.size(2) // 4
    gi, h0, hs, h_n = common.forward_buffers(gi, state0[:1], w_hh_t.size(1), batch_sizes[0], out)
    w_hh_t = common.unit_stride(w_hh_t, 1)
    directions, rows, batch = gi.size(0), gi.size(1), batch_sizes[0]
    saved = [gi.new_empty(directions, rows, 2 * hidden)] + [gi.new_empty(directions, rows, hidden) for _ in range(3)]
    buffers = saved if save else [hs] * 4
    if not kind_weights:
        c0 = common.as_rows(state0[1]) if state0 else h0
        c_n = gi.new_empty(directions, batch, hidden) if out.c_n is None else out.c_n  # also the running cell state
        extra = [hs if out.copy is None else out.copy, common.tickets_or_none(out.tickets, gi.device)]
        tensors = [gi, h0, c0, w_hh_t, hs, h_n, c_n, *buffers, *extra]
        own = (save, bool(state0), out.copy is not None, out.tickets is not None)
        (run or common.launch)(kernel, tensors, w_hh_t, batch_sizes, batch, hidden, own)
    else:
        c_n = state0[1].clone(memory_format=torch.contiguous_format)  # also the running cell state
        w_hr_t = common.unit_stride(kind_weights[0].transpose(1, 2), 1)
        u = gi.new_empty(directions, batch, hidden)  # o ⊙ tanh(c') of the running step
        tensors = [gi, h0, w_hh_t, w_hr_t, hs, h_n, c_n, u, *buffers]
        own = (save, h0.size(2), *w_hr_t.stride())
        common.launch(lstm_proj_forward_kernel, tensors, w_hh_t, batch_sizes, batch, hidden, own)
    return hs, [h_n, c_n], saved if save else []


def lstm_backward(
    grad_hs: Tensor, grad_finals: List[Optional[Tensor]], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor], batch_sizes: List[int],
    kernel=lstm_backward_kernel, run=None, out: Optional[common.Outputs] = None,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.lstm.lstm_backward`, in one launch (dW_hr after it; unprojected:
    ``grad_finals`` None where a final state has no gradient, and ``out``'s bias sums as the others')."""
    cs = saved[3]
    dgates = cs.new_empty(cs.size(0), cs.size(1), 4 * cs.size(2))
    w_hh = common.unit_stride(w_hh, 2)
    if not kind_weights:
        out = out or common.Outputs()
        c0 = state0[1] if state0 else None  # the kernel's first state: it reads c0, not h0
        ends = common.backward_buffers(grad_finals[0], c0, hs, batch_sizes[0], 8, out)
        cell = common.backward_buffers(grad_finals[1], c0, hs, batch_sizes[0], 8, common.Outputs(dh=out.dc))
        rows = [common.as_rows(t) for t in [grad_hs, ends.h0, *saved]]
        tensors = [*rows, w_hh, dgates, ends.dhn, cell.dhn, ends.dh, cell.dh, ends.part, ends.dbi, ends.dbh, ends.tickets]
        own = (bool(state0), grad_finals[0] is not None, grad_finals[1] is not None, out.tickets is not None)
        (run or common.launch)(kernel, tensors, w_hh, batch_sizes, batch_sizes[0], cs.size(2), own)
        return dgates, dgates, [ends.dh.to(hs.dtype), cell.dh.to(hs.dtype)], []
    dh, dc = common.running_gradient(grad_finals[0]), common.running_gradient(grad_finals[1])
    rows = [common.as_rows(t) for t in [grad_hs, state0[1], *saved]]
    dhs = torch.empty_like(hs)  # every row's dh', for dW_hr
    w_hr = common.unit_stride(kind_weights[0], 2)
    tensors = [*rows, w_hh, w_hr, dgates, dhs, dh, dc]
    own = (hs.size(2), *w_hr.stride())
    common.launch(lstm_proj_backward_kernel, tensors, w_hh, batch_sizes, dc.size(1), cs.size(2), own)
    u = saved[2] * torch.tanh(cs)  # o ⊙ tanh(c'), as the TorchScript kernel forms it
    return dgates, dgates, [dh.to(hs.dtype), dc.to(hs.dtype)], [torch.bmm(dhs.transpose(1, 2), u)]
