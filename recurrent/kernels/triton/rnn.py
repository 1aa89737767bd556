"""Elman RNN (tanh or ReLU): persistent Triton forward and backward kernels."""
from __future__ import annotations

from typing import List, Optional, Tuple

import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import PLAIN_ARGS, column_block, hidden_dot, load, program_rows, state_gradient, step_layout, tanh


@triton.jit(do_not_specialize=PLAIN_ARGS)
def rnn_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, hs_ptr, hn_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, H) with both biases folded in, h0 (D, N, H), w = W_hhᵀ (D, H, H) by strides ->
    hs (D, T, H) and h_n (D, N, H; holds h0 on entry): h' = act(gi + h W_hhᵀ)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    for t in range(steps):
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            pre = hidden_dot(prev, active, w_d, cols, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            pre += load(gi_ptr + out[:, None] + cols[None, :], mask, ACC)
            if RELU:
                new = tl.maximum(pre, 0.0)
            else:
                new = tanh(pre)
            new = new.to(hs_ptr.dtype.element_ty)
            tl.store(hs_ptr + out[:, None] + cols[None, :], new, mask=mask)
            tl.store(hn_ptr + state[:, None] + cols[None, :], new, mask=mask)
        tl.debug_barrier()  # this step's states, written by every thread, are the next step's input


@triton.jit(do_not_specialize=PLAIN_ARGS)
def rnn_backward_kernel(
    grad_hs_ptr, hs_ptr, w_ptr, da_ptr, dh_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Time in reverse; w = W_hh (D, H, H) by strides; ``dh`` (D, N, H) is dh_n on entry, dh0 on
    exit. Per step: da = dh' act'(a) from the outputs (phase 1), a barrier, dh ← da W_hh, a barrier."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
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
            tl.store(da_ptr + at, da.to(da_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # phase 2 reads every column of this step's da
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            back = hidden_dot(da_ptr + out, active, w_d, cols, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            tl.store(dh_ptr + state[:, None] + cols[None, :], back.to(dh_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the next (earlier) step reads these dh


def rnn_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
    batch_sizes: List[int], save: bool, relu: bool, kernel=rnn_forward_kernel, run=None,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.rnn.rnn_forward` (b_hh folded into gi), in one launch
    (``kernel`` and ``run``: another kernel of the same arguments and its launcher, the resident one's)."""
    gi, h0, hs, h_n = common.forward_buffers(gi, state0[0])
    w_hh_t = common.unit_stride(w_hh_t, 1)
    (run or common.launch)(kernel, [gi, h0, w_hh_t, hs, h_n], w_hh_t, batch_sizes, h0.size(1), h0.size(2), RELU=relu)
    return hs, [h_n], []


def rnn_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor], batch_sizes: List[int], relu: bool,
    kernel=rnn_backward_kernel, run=None,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.rnn.rnn_backward`, in one launch."""
    da = hs.new_empty(hs.shape)
    dh = common.running_gradient(grad_finals[0])
    w_hh = common.unit_stride(w_hh, 2)
    tensors = [common.as_rows(grad_hs), common.as_rows(hs), w_hh, da, dh]
    (run or common.launch)(kernel, tensors, w_hh, batch_sizes, dh.size(1), hs.size(2), RELU=relu)
    return da, da, [dh.to(hs.dtype)], []

