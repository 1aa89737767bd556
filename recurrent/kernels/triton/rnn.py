"""Elman RNN (tanh or ReLU): persistent Triton forward and backward kernels."""
from __future__ import annotations

from typing import List, Optional, Tuple

import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import (
    PLAIN_ARGS, add_column_sums, column_block, hidden_dot, load, partial_row, program_rows, running_start, state_gradient,
    step_layout, sum_partials, tanh, zero_row, zero_tickets,
)


@triton.jit(do_not_specialize=PLAIN_ARGS)
def rnn_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, b_ptr, hs_ptr, hn_ptr, copy_ptr, tickets_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, has_bias, has_h0, copy, sums,
    RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, H) with b_ih in (and b_hh, unless ``has_bias``: then b = b_hh (D, H)), h0 (D, N, H; zeros
    without ``has_h0``), w = W_hhᵀ (D, H, H) by strides -> hs (D, T, H) and h_n (D, N, H):
    h' = act(gi + h W_hhᵀ + b); with ``copy`` hs
    once more into ``copy``; with ``sums`` the backward's ticket counters zeroed."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    zero_tickets(tickets_ptr, sums)
    for t in range(steps):
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        seen = active & ((t > 0) | has_h0)  # rows whose state before the step is read (not zero)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            pre = hidden_dot(prev, seen, w_d, cols, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            pre += load(gi_ptr + out[:, None] + cols[None, :], mask, ACC)
            if has_bias:
                pre += load(b_ptr + d * H + cols, col_mask, ACC)[None, :]
            if RELU:
                new = tl.maximum(pre, 0.0)
            else:
                new = tanh(pre)
            new = new.to(hs_ptr.dtype.element_ty)
            tl.store(hs_ptr + out[:, None] + cols[None, :], new, mask=mask)
            tl.store(hn_ptr + state[:, None] + cols[None, :], new, mask=mask)
            if copy:
                tl.store(copy_ptr + out[:, None] + cols[None, :], new, mask=mask)
        tl.debug_barrier()  # this step's states, written by every thread, are the next step's input


@triton.jit(do_not_specialize=PLAIN_ARGS)
def rnn_backward_kernel(
    grad_hs_ptr, hs_ptr, w_ptr, da_ptr, dhn_ptr, dh_ptr, part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, has_dhn, sums,
    RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Time in reverse; w = W_hh (D, H, H) by strides; ``dh`` (D, N, H) starts as dh_n (``dhn``; zeros
    without ``has_dhn``) and ends as dh0. Per step: da = dh' act'(a) from the outputs (phase 1), a
    barrier, dh ← da W_hh, a barrier. With ``sums`` the bias gradients too, db (D, 2, H): both Σ da."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    part = partial_row(part_ptr, 2 * H)
    running_start(dhn_ptr, dh_ptr, state, rows < batch, H, has_dhn, ACC, BLOCK_N)
    if sums:
        zero_row(part, 2 * H, BLOCK_N)
    tl.debug_barrier()  # phase 1 reads every column of dh
    for step in range(steps):
        t = steps - 1 - step
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, hs_ptr, hs_ptr, state, seq, H)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            at = out[:, None] + cols[None, :]
            dh = state_gradient(dh_ptr, state, grad_hs_ptr, out, cols, mask, ACC)
            h = load(hs_ptr + at, mask, ACC)
            if RELU:
                da = tl.where(h > 0, dh, 0.0)
            else:
                da = dh * (1.0 - h * h)
            da = da.to(da_ptr.dtype.element_ty)
            tl.store(da_ptr + at, da, mask=mask)
            if sums:
                add_column_sums(part, 0, cols, col_mask, da)
                add_column_sums(part, H, cols, col_mask, da)
        tl.debug_barrier()  # phase 2 reads every column of this step's da
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            back = hidden_dot(da_ptr + out, active, w_d, cols, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            tl.store(dh_ptr + state[:, None] + cols[None, :], back.to(dh_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the next (earlier) step reads these dh
    if sums:
        sum_partials(part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, 2 * H, BLOCK_N)


def rnn_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
    batch_sizes: List[int], save: bool, relu: bool, kernel=rnn_forward_kernel, run=None,
    out: Optional[common.Outputs] = None,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.rnn.rnn_forward` (b_hh folded into gi, or given), in one launch
    (``kernel`` and ``run``: another kernel of the same arguments and its launcher, the resident one's;
    ``state0`` [] for zeros, and ``out`` where the whole-stack op gives the kernel more to write)."""
    out = out or common.Outputs()
    gi, h0, hs, h_n = common.forward_buffers(gi, state0, w_hh_t.size(1), batch_sizes[0], out)
    w_hh_t = common.unit_stride(w_hh_t, 1)
    bias = b_hh.reshape(gi.size(0), -1).contiguous() if b_hh is not None else gi
    extra = [hs if out.copy is None else out.copy, common.tickets_or_none(out.tickets, gi.device)]
    own = (b_hh is not None, bool(state0), out.copy is not None, out.tickets is not None)
    tensors = [gi, h0, w_hh_t, bias, hs, h_n, *extra]
    (run or common.launch)(kernel, tensors, w_hh_t, batch_sizes, h_n.size(1), h_n.size(2), own, RELU=relu)
    return hs, [h_n], []


def rnn_backward(
    grad_hs: Tensor, grad_finals: List[Optional[Tensor]], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor], batch_sizes: List[int], relu: bool,
    kernel=rnn_backward_kernel, run=None, out: Optional[common.Outputs] = None,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.rnn.rnn_backward`, in one launch (``grad_finals`` [None] where
    h_n has no gradient; with ``out``'s ``bias`` and ``tickets`` the bias gradients too, db (D, 2, H))."""
    out = out or common.Outputs()
    da = hs.new_empty(hs.shape)
    ends = common.backward_buffers(grad_finals[0], None, hs, batch_sizes[0], 2, out)
    w_hh = common.unit_stride(w_hh, 2)
    tensors = [common.as_rows(grad_hs), common.as_rows(hs), w_hh, da, ends.dhn, ends.dh, ends.part, ends.dbi, ends.dbh, ends.tickets]
    own = (grad_finals[0] is not None, out.tickets is not None)
    (run or common.launch)(kernel, tensors, w_hh, batch_sizes, batch_sizes[0], hs.size(2), own, RELU=relu)
    return da, da, [ends.dh.to(hs.dtype)], []
