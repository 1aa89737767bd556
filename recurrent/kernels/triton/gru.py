"""GRU: persistent Triton forward and backward kernels (the math of :func:`recurrent.cells.gru_step`)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import (
    PLAIN_ARGS, column_block, gate_products, hidden_dot, load, load_pair, program_rows, sigmoid, state_gradient, step_layout,
    store_pair, tanh,
)


@triton.jit(do_not_specialize=PLAIN_ARGS)
def gru_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, b_ptr, hs_ptr, hn_ptr, rz_ptr, n_ptr, ghn_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, has_bias, save,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, 3H), h0 (D, N, H), w = W_hhᵀ (D, H, 3H) by strides, b = b_hh (D, 3H) -> hs (D, T, H),
    h_n (D, N, H; holds h0 on entry), and with ``save`` rz (D, T, 2H), n and W_hn h + b_hn (D, T, H)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    for t in range(steps):
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            gh_r, gh_z, gh_n, _ = gate_products(
                prev, active, w_d, cols, col_mask, H, H, stride_wk, stride_wn, 3, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K,
            )
            if has_bias:
                b = b_ptr + d * 3 * H + cols
                gh_r += load(b, col_mask, ACC)[None, :]
                gh_z += load(b + H, col_mask, ACC)[None, :]
                gh_n += load(b + 2 * H, col_mask, ACC)[None, :]
            gi = gi_ptr + 3 * out[:, None] + cols[None, :]
            r = sigmoid(load(gi, mask, ACC) + gh_r)
            z = sigmoid(load(gi + H, mask, ACC) + gh_z)
            n = tanh(load(gi + 2 * H, mask, ACC) + r * gh_n)
            h = load(prev[:, None] + cols[None, :], mask, ACC)
            new = (n + z * (h - n)).to(hs_ptr.dtype.element_ty)
            tl.store(hs_ptr + out[:, None] + cols[None, :], new, mask=mask)
            tl.store(hn_ptr + state[:, None] + cols[None, :], new, mask=mask)
            if save:
                ty = n_ptr.dtype.element_ty
                store_pair(rz_ptr, out, cols, H, r, z, mask)
                tl.store(n_ptr + out[:, None] + cols[None, :], n.to(ty), mask=mask)
                tl.store(ghn_ptr + out[:, None] + cols[None, :], gh_n.to(ty), mask=mask)
        tl.debug_barrier()  # this step's states, written by every thread, are the next step's input


@triton.jit(do_not_specialize=PLAIN_ARGS)
def gru_backward_kernel(
    grad_hs_ptr, h0_ptr, hs_ptr, rz_ptr, n_ptr, ghn_ptr, w_ptr, dgi_ptr, dgh_ptr, dh_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Time in reverse; w = W_hh (D, 3H, H) by strides. ``dh`` (D, N, H) holds each row's gradient
    w.r.t. its running state: dh_n on entry, dh0 on exit. Per step: the gate gradients of every
    column (phase 1), a barrier, dh ← dh' z + dgh W_hh block by block (phase 2), a barrier."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    for step in range(steps):
        t = steps - 1 - step
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            at = out[:, None] + cols[None, :]
            dh = state_gradient(dh_ptr, state, grad_hs_ptr, out, cols, mask, ACC)
            r, z = load_pair(rz_ptr, out, cols, H, mask, ACC)
            n = load(n_ptr + at, mask, ACC)
            da_n = dh * (1.0 - z) * (1.0 - n * n)
            da_z = dh * (load(prev[:, None] + cols[None, :], mask, ACC) - n) * z * (1.0 - z)
            da_r = da_n * load(ghn_ptr + at, mask, ACC) * r * (1.0 - r)
            gates = 3 * out[:, None] + cols[None, :]
            ty = dgi_ptr.dtype.element_ty
            tl.store(dgi_ptr + gates, da_r.to(ty), mask=mask)
            tl.store(dgi_ptr + gates + H, da_z.to(ty), mask=mask)
            tl.store(dgi_ptr + gates + 2 * H, da_n.to(ty), mask=mask)
            tl.store(dgh_ptr + gates, da_r.to(ty), mask=mask)
            tl.store(dgh_ptr + gates + H, da_z.to(ty), mask=mask)
            tl.store(dgh_ptr + gates + 2 * H, (da_n * r).to(ty), mask=mask)
        tl.debug_barrier()  # phase 2 reads every column of this step's dgh
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            back = hidden_dot(dgh_ptr + 3 * out, active, w_d, cols, col_mask, 3 * H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            dh = state_gradient(dh_ptr, state, grad_hs_ptr, out, cols, mask, ACC)
            r, z = load_pair(rz_ptr, out, cols, H, mask, ACC)
            tl.store(dh_ptr + state[:, None] + cols[None, :], (dh * z + back).to(dh_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the next (earlier) step reads these dh


def gru_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
    batch_sizes: List[int], save: bool, kernel=gru_forward_kernel, run=None,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.gru.gru_forward`, in one launch for every step and direction
    (``kernel`` and ``run``: another kernel of the same arguments and its launcher, the resident one's)."""
    gi, h0, hs, h_n = common.forward_buffers(gi, state0[0])
    w_hh_t = common.unit_stride(w_hh_t, 1)
    directions, rows, batch, hidden = gi.size(0), gi.size(1), h0.size(1), h0.size(2)
    saved = [gi.new_empty(directions, rows, 2 * hidden), torch.empty_like(hs), torch.empty_like(hs)] if save else []
    bias = b_hh.reshape(directions, 3 * hidden).contiguous() if b_hh is not None else gi
    tensors = [gi, h0, w_hh_t, bias, hs, h_n, *(saved or [hs] * 3)]
    (run or common.launch)(kernel, tensors, w_hh_t, batch_sizes, batch, hidden, (b_hh is not None, save))
    return hs, [h_n], saved


def gru_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor], batch_sizes: List[int],
    kernel=gru_backward_kernel, run=None,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.gru.gru_backward`, in one launch."""
    dgi = hs.new_empty(hs.size(0), hs.size(1), 3 * hs.size(2))
    dgh = torch.empty_like(dgi)
    dh = common.running_gradient(grad_finals[0])
    rows = [common.as_rows(t) for t in [grad_hs, state0[0], hs, *saved]]
    w_hh = common.unit_stride(w_hh, 2)
    (run or common.launch)(kernel, [*rows, w_hh, dgi, dgh, dh], w_hh, batch_sizes, dh.size(1), hs.size(2))
    return dgi, dgh, [dh.to(hs.dtype)], []
