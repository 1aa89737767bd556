"""LSTM (without projection): persistent Triton forward and backward kernels (the math of
:func:`recurrent.cells.lstm_step`). A projected LSTM stays on the TorchScript loop: its W_hr
product is one more step-wide dependency (and barrier) per step, not written yet."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import (
    column_block, hidden_dot, load, load_pair, program_rows, sigmoid, state_gradient, step_layout, store_pair, tanh,
)


@triton.jit
def lstm_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, hs_ptr, hn_ptr, cn_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, save,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, 4H) with both biases folded in, h0 (D, N, H), w = W_hhᵀ (D, H, 4H) by strides ->
    hs (D, T, H), h_n and c_n (D, N, H; h0 and c0 on entry; c_n is also the running cell state,
    which only its own column reads), and with ``save`` if (D, T, 2H), g, o and c (D, T, H)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    for t in range(steps):
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            gi = gi_ptr + 4 * out[:, None] + cols[None, :]
            a_i = hidden_dot(prev, active, w_d, cols, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            a_f = hidden_dot(prev, active, w_d, cols + H, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            a_g = hidden_dot(prev, active, w_d, cols + 2 * H, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            a_o = hidden_dot(prev, active, w_d, cols + 3 * H, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            i = sigmoid(a_i + load(gi, mask, ACC))
            f = sigmoid(a_f + load(gi + H, mask, ACC))
            g = tanh(a_g + load(gi + 2 * H, mask, ACC))
            o = sigmoid(a_o + load(gi + 3 * H, mask, ACC))
            c_at = cn_ptr + state[:, None] + cols[None, :]
            c = f * load(c_at, mask, ACC) + i * g
            h = (o * tanh(c)).to(hs_ptr.dtype.element_ty)
            tl.store(c_at, c.to(cn_ptr.dtype.element_ty), mask=mask)
            tl.store(hs_ptr + out[:, None] + cols[None, :], h, mask=mask)
            tl.store(hn_ptr + state[:, None] + cols[None, :], h, mask=mask)
            if save:
                ty = if_ptr.dtype.element_ty
                at = out[:, None] + cols[None, :]
                store_pair(if_ptr, out, cols, H, i, f, mask)
                tl.store(g_ptr + at, g.to(ty), mask=mask)
                tl.store(o_ptr + at, o.to(ty), mask=mask)
                tl.store(cs_ptr + at, c.to(ty), mask=mask)
        tl.debug_barrier()  # this step's h, written by every thread, is the next step's input


@triton.jit
def lstm_backward_kernel(
    grad_hs_ptr, c0_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, w_ptr, dgates_ptr, dh_ptr, dc_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Time in reverse; w = W_hh (D, 4H, H) by strides; ``dh`` and ``dc`` (D, N, H) are dh_n and
    dc_n on entry, dh0 and dc0 on exit. Per step: the gate gradients and dc ← dc' f (column-local)
    in phase 1, a barrier, dh ← dgates W_hh block by block in phase 2, a barrier."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    for step in range(steps):
        t = steps - 1 - step
        active, c_prev_rows, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, c0_ptr, cs_ptr, state, seq, H)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            at = out[:, None] + cols[None, :]
            dh = state_gradient(dh_ptr, state, grad_hs_ptr, out, cols, mask, ACC)
            i, f = load_pair(if_ptr, out, cols, H, mask, ACC)
            g = load(g_ptr + at, mask, ACC)
            o = load(o_ptr + at, mask, ACC)
            tanh_c = tanh(load(cs_ptr + at, mask, ACC))
            dc_at = dc_ptr + state[:, None] + cols[None, :]
            dc = load(dc_at, mask, ACC) + dh * o * (1.0 - tanh_c * tanh_c)
            gates = 4 * out[:, None] + cols[None, :]
            ty = dgates_ptr.dtype.element_ty
            c_prev = load(c_prev_rows[:, None] + cols[None, :], mask, ACC)
            tl.store(dgates_ptr + gates, (dc * g * i * (1.0 - i)).to(ty), mask=mask)
            tl.store(dgates_ptr + gates + H, (dc * c_prev * f * (1.0 - f)).to(ty), mask=mask)
            tl.store(dgates_ptr + gates + 2 * H, (dc * i * (1.0 - g * g)).to(ty), mask=mask)
            tl.store(dgates_ptr + gates + 3 * H, (dh * tanh_c * o * (1.0 - o)).to(ty), mask=mask)
            tl.store(dc_at, (dc * f).to(dc_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # phase 2 reads every column of this step's dgates
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            back = hidden_dot(dgates_ptr + 4 * out, active, w_d, cols, col_mask, 4 * H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            tl.store(dh_ptr + state[:, None] + cols[None, :], back.to(dh_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the next (earlier) step reads these dh


def lstm_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], extra: List[Tensor],
    batch_sizes: List[int], save: bool,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.lstm.lstm_forward` without projection (b_hh folded into gi)."""
    gi, h0, hs, h_n = common.forward_buffers(gi, state0[0])
    directions, rows, batch, hidden = gi.size(0), gi.size(1), h0.size(1), h0.size(2)
    c_n = state0[1].clone(memory_format=torch.contiguous_format)  # also the running cell state
    saved = [gi.new_empty(directions, rows, 2 * hidden)] + [torch.empty_like(hs) for _ in range(3)] if save else []
    tensors = [gi, h0, w_hh_t, hs, h_n, c_n, *(saved or [hs] * 4)]
    common.launch(lstm_forward_kernel, tensors, w_hh_t, batch_sizes, batch, hidden, (save,))
    return hs, [h_n, c_n], saved


def lstm_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, extra: List[Tensor], batch_sizes: List[int],
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.lstm.lstm_backward` without projection, in one launch."""
    dgates = hs.new_empty(hs.size(0), hs.size(1), 4 * hs.size(2))
    dh, dc = common.running_gradient(grad_finals[0]), common.running_gradient(grad_finals[1])
    rows = [common.as_rows(t) for t in [grad_hs, state0[1], *saved]]
    common.launch(lstm_backward_kernel, [*rows, w_hh, dgates, dh, dc], w_hh, batch_sizes, dh.size(1), hs.size(2))
    return dgates, dgates, [dh.to(hs.dtype), dc.to(hs.dtype)], []
