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
from .common import hidden_dot, previous_rows, sigmoid, step_rows, tanh


@triton.jit
def lstm_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, hs_ptr, hn_ptr, cn_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, save, packed,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, 4H) with both biases folded in, h0 (D, N, H), w = W_hhᵀ (D, H, 4H) by strides ->
    hs (D, T, H), h_n and c_n (D, N, H; h0 and c0 on entry; c_n is also the running cell state,
    which only its own column reads), and with ``save`` if (D, T, 2H), g, o and c (D, T, H)."""
    d = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    seq = d * rows_total * H
    w_d = w_ptr + d * stride_wd
    state = (d * batch + rows) * H  # this program's rows in (D, N, H)
    for t in range(steps):
        size, start, prev_start = step_rows(t, batch, sizes_ptr, starts_ptr, packed)
        active = rows < size
        prev = previous_rows(t, d, rows, batch, prev_start, h0_ptr, hs_ptr, seq, H)
        out = seq + (start + rows) * H
        for j in range(0, H, BLOCK_N):
            cols = j + tl.arange(0, BLOCK_N)
            col_mask = cols < H
            mask = active[:, None] & col_mask[None, :]
            gi = gi_ptr + 4 * out[:, None] + cols[None, :]
            a_i = hidden_dot(prev, active, w_d, cols, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            a_f = hidden_dot(prev, active, w_d, cols + H, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            a_g = hidden_dot(prev, active, w_d, cols + 2 * H, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            a_o = hidden_dot(prev, active, w_d, cols + 3 * H, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            i = sigmoid(a_i + tl.load(gi, mask=mask, other=0.0).to(ACC))
            f = sigmoid(a_f + tl.load(gi + H, mask=mask, other=0.0).to(ACC))
            g = tanh(a_g + tl.load(gi + 2 * H, mask=mask, other=0.0).to(ACC))
            o = sigmoid(a_o + tl.load(gi + 3 * H, mask=mask, other=0.0).to(ACC))
            c_at = cn_ptr + state[:, None] + cols[None, :]
            c = f * tl.load(c_at, mask=mask, other=0.0).to(ACC) + i * g
            h = (o * tanh(c)).to(hs_ptr.dtype.element_ty)
            tl.store(c_at, c.to(cn_ptr.dtype.element_ty), mask=mask)
            tl.store(hs_ptr + out[:, None] + cols[None, :], h, mask=mask)
            tl.store(hn_ptr + state[:, None] + cols[None, :], h, mask=mask)
            if save:
                ty = if_ptr.dtype.element_ty
                at = out[:, None] + cols[None, :]
                tl.store(if_ptr + 2 * out[:, None] + cols[None, :], i.to(ty), mask=mask)
                tl.store(if_ptr + 2 * out[:, None] + H + cols[None, :], f.to(ty), mask=mask)
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
    d = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    seq = d * rows_total * H
    w_d = w_ptr + d * stride_wd
    state = (d * batch + rows) * H
    for step in range(steps):
        t = steps - 1 - step
        size, start, prev_start = step_rows(t, batch, sizes_ptr, starts_ptr, packed)
        active = rows < size
        c_prev_rows = previous_rows(t, d, rows, batch, prev_start, c0_ptr, cs_ptr, seq, H)
        out = seq + (start + rows) * H
        for j in range(0, H, BLOCK_N):
            cols = j + tl.arange(0, BLOCK_N)
            mask = active[:, None] & (cols < H)[None, :]
            at = out[:, None] + cols[None, :]
            dh = tl.load(dh_ptr + state[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            dh += tl.load(grad_hs_ptr + at, mask=mask, other=0.0).to(ACC)
            i = tl.load(if_ptr + 2 * out[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            f = tl.load(if_ptr + 2 * out[:, None] + H + cols[None, :], mask=mask, other=0.0).to(ACC)
            g = tl.load(g_ptr + at, mask=mask, other=0.0).to(ACC)
            o = tl.load(o_ptr + at, mask=mask, other=0.0).to(ACC)
            tanh_c = tanh(tl.load(cs_ptr + at, mask=mask, other=0.0).to(ACC))
            c_prev = tl.load(c_prev_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            dc_at = dc_ptr + state[:, None] + cols[None, :]
            dc = tl.load(dc_at, mask=mask, other=0.0).to(ACC) + dh * o * (1.0 - tanh_c * tanh_c)
            gates = 4 * out[:, None] + cols[None, :]
            ty = dgates_ptr.dtype.element_ty
            tl.store(dgates_ptr + gates, (dc * g * i * (1.0 - i)).to(ty), mask=mask)
            tl.store(dgates_ptr + gates + H, (dc * c_prev * f * (1.0 - f)).to(ty), mask=mask)
            tl.store(dgates_ptr + gates + 2 * H, (dc * i * (1.0 - g * g)).to(ty), mask=mask)
            tl.store(dgates_ptr + gates + 3 * H, (dh * tanh_c * o * (1.0 - o)).to(ty), mask=mask)
            tl.store(dc_at, (dc * f).to(dc_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # phase 2 reads every column of this step's dgates
        for j in range(0, H, BLOCK_N):
            cols = j + tl.arange(0, BLOCK_N)
            col_mask = cols < H
            back = hidden_dot(dgates_ptr + 4 * out, active, w_d, cols, col_mask, 4 * H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            tl.store(dh_ptr + state[:, None] + cols[None, :], back.to(dh_ptr.dtype.element_ty), mask=active[:, None] & col_mask[None, :])
        tl.debug_barrier()  # the next (earlier) step reads these dh


def lstm_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], extra: List[Tensor],
    batch_sizes: List[int], save: bool,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.lstm.lstm_forward` without projection (b_hh folded into gi)."""
    directions, rows_total, hidden = gi.size(0), gi.size(1), gi.size(2) // 4
    gi, h0 = common.as_rows(gi), common.as_rows(state0[0])
    batch = h0.size(1)
    hs = gi.new_empty(directions, rows_total, hidden)
    h_n, c_n = h0.clone(), state0[1].clone(memory_format=torch.contiguous_format)
    saved = [gi.new_empty(directions, rows_total, 2 * hidden)] + [torch.empty_like(hs) for _ in range(3)] if save else []
    config, table = common.blocks(hidden), common.steps(batch_sizes, gi.device)
    lstm_forward_kernel[common.grid(directions, batch, config)](
        gi, h0, w_hh_t, hs, h_n, c_n, *(saved or [hs] * 4), table.sizes, table.starts,
        len(batch_sizes), batch, rows_total, hidden, *w_hh_t.stride(), save, table.packed,
        **common.launch_options(config, gi.dtype),
    )
    return hs, [h_n, c_n], saved


def lstm_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, extra: List[Tensor], batch_sizes: List[int],
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.lstm.lstm_backward` without projection, in one launch."""
    directions, rows_total, hidden = hs.shape
    c0 = common.as_rows(state0[1])
    batch = c0.size(1)
    dgates = hs.new_empty(directions, rows_total, 4 * hidden)
    dh, dc = common.running_gradient(grad_finals[0]), common.running_gradient(grad_finals[1])
    config, table = common.blocks(hidden), common.steps(batch_sizes, hs.device)
    lstm_backward_kernel[common.grid(directions, batch, config)](
        common.as_rows(grad_hs), c0, *[common.as_rows(s) for s in saved], w_hh, dgates, dh, dc,
        table.sizes, table.starts, len(batch_sizes), batch, rows_total, hidden, *w_hh.stride(), table.packed,
        **common.launch_options(config, hs.dtype),
    )
    return dgates, dgates, [dh.to(hs.dtype), dc.to(hs.dtype)], []
