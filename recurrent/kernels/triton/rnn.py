"""Elman RNN (tanh or ReLU): persistent Triton forward and backward kernels."""
from __future__ import annotations

from typing import List, Optional, Tuple

import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import hidden_dot, previous_rows, step_rows, tanh


@triton.jit
def rnn_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, hs_ptr, hn_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, H) with both biases folded in, h0 (D, N, H), w = W_hhᵀ (D, H, H) by strides ->
    hs (D, T, H) and h_n (D, N, H; holds h0 on entry): h' = act(gi + h W_hhᵀ)."""
    d = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    seq = d * rows_total * H
    w_d = w_ptr + d * stride_wd
    for t in range(steps):
        size, start, prev_start = step_rows(t, batch, sizes_ptr, starts_ptr, packed)
        active = rows < size
        prev = previous_rows(t, d, rows, batch, prev_start, h0_ptr, hs_ptr, seq, H)
        out = seq + (start + rows) * H
        for j in range(0, H, BLOCK_N):
            cols = j + tl.arange(0, BLOCK_N)
            col_mask = cols < H
            mask = active[:, None] & col_mask[None, :]
            pre = hidden_dot(prev, active, w_d, cols, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            pre += tl.load(gi_ptr + out[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            if RELU:
                new = tl.maximum(pre, 0.0)
            else:
                new = tanh(pre)
            new = new.to(hs_ptr.dtype.element_ty)
            tl.store(hs_ptr + out[:, None] + cols[None, :], new, mask=mask)
            tl.store(hn_ptr + (d * batch + rows)[:, None] * H + cols[None, :], new, mask=mask)
        tl.debug_barrier()  # this step's states, written by every thread, are the next step's input


@triton.jit
def rnn_backward_kernel(
    grad_hs_ptr, hs_ptr, w_ptr, da_ptr, dh_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Time in reverse; w = W_hh (D, H, H) by strides; ``dh`` (D, N, H) is dh_n on entry, dh0 on
    exit. Per step: da = dh' act'(a) from the outputs (phase 1), a barrier, dh ← da W_hh, a barrier."""
    d = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    seq = d * rows_total * H
    w_d = w_ptr + d * stride_wd
    dh_rows = dh_ptr + (d * batch + rows) * H
    for step in range(steps):
        t = steps - 1 - step
        size, start, prev_start = step_rows(t, batch, sizes_ptr, starts_ptr, packed)
        active = rows < size
        out = seq + (start + rows) * H
        for j in range(0, H, BLOCK_N):
            cols = j + tl.arange(0, BLOCK_N)
            mask = active[:, None] & (cols < H)[None, :]
            at = out[:, None] + cols[None, :]
            dh = tl.load(dh_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            dh += tl.load(grad_hs_ptr + at, mask=mask, other=0.0).to(ACC)
            h = tl.load(hs_ptr + at, mask=mask, other=0.0).to(ACC)
            if RELU:
                da = tl.where(h > 0, dh, 0.0)
            else:
                da = dh * (1.0 - h * h)
            tl.store(da_ptr + at, da.to(da_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # phase 2 reads every column of this step's da
        for j in range(0, H, BLOCK_N):
            cols = j + tl.arange(0, BLOCK_N)
            col_mask = cols < H
            back = hidden_dot(da_ptr + out, active, w_d, cols, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            tl.store(dh_rows[:, None] + cols[None, :], back.to(dh_ptr.dtype.element_ty), mask=active[:, None] & col_mask[None, :])
        tl.debug_barrier()  # the next (earlier) step reads these dh


def rnn_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], extra: List[Tensor],
    batch_sizes: List[int], save: bool, relu: bool,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.rnn.rnn_forward` (b_hh folded into gi), in one launch."""
    directions, rows_total, hidden = gi.shape
    gi, h0 = common.as_rows(gi), common.as_rows(state0[0])
    batch = h0.size(1)
    hs = gi.new_empty(directions, rows_total, hidden)
    h_n = h0.clone()  # rows that end early keep their last state: the kernel writes active rows only
    config, table = common.blocks(hidden), common.steps(batch_sizes, gi.device)
    rnn_forward_kernel[common.grid(directions, batch, config)](
        gi, h0, w_hh_t, hs, h_n, table.sizes, table.starts, len(batch_sizes), batch, rows_total, hidden,
        *w_hh_t.stride(), table.packed, RELU=relu, **common.launch_options(config, gi.dtype),
    )
    return hs, [h_n], []


def rnn_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, extra: List[Tensor], batch_sizes: List[int], relu: bool,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.rnn.rnn_backward`, in one launch."""
    directions, rows_total, hidden = hs.shape
    batch = state0[0].size(1)
    da = hs.new_empty(directions, rows_total, hidden)
    dh = common.running_gradient(grad_finals[0])
    config, table = common.blocks(hidden), common.steps(batch_sizes, hs.device)
    rnn_backward_kernel[common.grid(directions, batch, config)](
        common.as_rows(grad_hs), common.as_rows(hs), w_hh, da, dh, table.sizes, table.starts,
        len(batch_sizes), batch, rows_total, hidden, *w_hh.stride(), table.packed,
        RELU=relu, **common.launch_options(config, hs.dtype),
    )
    return da, da, [dh.to(hs.dtype)], []
