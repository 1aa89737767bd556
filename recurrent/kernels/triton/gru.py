"""GRU: persistent Triton forward and backward kernels (the math of :func:`recurrent.cells.gru_step`)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import hidden_dot, previous_rows, sigmoid, step_rows, tanh


@triton.jit
def gru_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, b_ptr, hs_ptr, hn_ptr, rz_ptr, n_ptr, ghn_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, has_bias, save, packed,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, 3H), h0 (D, N, H), w = W_hhᵀ (D, H, 3H) by strides, b = b_hh (D, 3H) -> hs (D, T, H),
    h_n (D, N, H; holds h0 on entry), and with ``save`` rz (D, T, 2H), n and W_hn h + b_hn (D, T, H)."""
    d = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    seq = d * rows_total * H  # this direction's offset in (D, T, H)
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
            gh_r = hidden_dot(prev, active, w_d, cols, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            gh_z = hidden_dot(prev, active, w_d, cols + H, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            gh_n = hidden_dot(prev, active, w_d, cols + 2 * H, col_mask, H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            if has_bias:
                b = b_ptr + d * 3 * H + cols
                gh_r += tl.load(b, mask=col_mask, other=0.0).to(ACC)[None, :]
                gh_z += tl.load(b + H, mask=col_mask, other=0.0).to(ACC)[None, :]
                gh_n += tl.load(b + 2 * H, mask=col_mask, other=0.0).to(ACC)[None, :]
            gi = gi_ptr + 3 * out[:, None] + cols[None, :]
            r = sigmoid(tl.load(gi, mask=mask, other=0.0).to(ACC) + gh_r)
            z = sigmoid(tl.load(gi + H, mask=mask, other=0.0).to(ACC) + gh_z)
            n = tanh(tl.load(gi + 2 * H, mask=mask, other=0.0).to(ACC) + r * gh_n)
            h = tl.load(prev[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            new = (n + z * (h - n)).to(hs_ptr.dtype.element_ty)
            tl.store(hs_ptr + out[:, None] + cols[None, :], new, mask=mask)
            tl.store(hn_ptr + (d * batch + rows)[:, None] * H + cols[None, :], new, mask=mask)
            if save:
                ty = rz_ptr.dtype.element_ty
                tl.store(rz_ptr + 2 * out[:, None] + cols[None, :], r.to(ty), mask=mask)
                tl.store(rz_ptr + 2 * out[:, None] + H + cols[None, :], z.to(ty), mask=mask)
                tl.store(n_ptr + out[:, None] + cols[None, :], n.to(ty), mask=mask)
                tl.store(ghn_ptr + out[:, None] + cols[None, :], gh_n.to(ty), mask=mask)
        tl.debug_barrier()  # this step's states, written by every thread, are the next step's input


@triton.jit
def gru_backward_kernel(
    grad_hs_ptr, h0_ptr, hs_ptr, rz_ptr, n_ptr, ghn_ptr, w_ptr, dgi_ptr, dgh_ptr, dh_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Time in reverse; w = W_hh (D, 3H, H) by strides. ``dh`` (D, N, H) holds each row's gradient
    w.r.t. its running state: dh_n on entry, dh0 on exit. Per step: the gate gradients of every
    column (phase 1), a barrier, dh ← dh' z + dgh W_hh block by block (phase 2), a barrier."""
    d = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    seq = d * rows_total * H
    w_d = w_ptr + d * stride_wd
    dh_rows = dh_ptr + (d * batch + rows) * H
    for step in range(steps):
        t = steps - 1 - step
        size, start, prev_start = step_rows(t, batch, sizes_ptr, starts_ptr, packed)
        active = rows < size
        prev = previous_rows(t, d, rows, batch, prev_start, h0_ptr, hs_ptr, seq, H)
        out = seq + (start + rows) * H
        for j in range(0, H, BLOCK_N):
            cols = j + tl.arange(0, BLOCK_N)
            mask = active[:, None] & (cols < H)[None, :]
            at = out[:, None] + cols[None, :]
            dh = tl.load(dh_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            dh += tl.load(grad_hs_ptr + at, mask=mask, other=0.0).to(ACC)
            r = tl.load(rz_ptr + 2 * out[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            z = tl.load(rz_ptr + 2 * out[:, None] + H + cols[None, :], mask=mask, other=0.0).to(ACC)
            n = tl.load(n_ptr + at, mask=mask, other=0.0).to(ACC)
            ghn = tl.load(ghn_ptr + at, mask=mask, other=0.0).to(ACC)
            h = tl.load(prev[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            da_n = dh * (1.0 - z) * (1.0 - n * n)
            da_z = dh * (h - n) * z * (1.0 - z)
            da_r = da_n * ghn * r * (1.0 - r)
            gates = 3 * out[:, None] + cols[None, :]
            ty = dgi_ptr.dtype.element_ty
            tl.store(dgi_ptr + gates, da_r.to(ty), mask=mask)
            tl.store(dgi_ptr + gates + H, da_z.to(ty), mask=mask)
            tl.store(dgi_ptr + gates + 2 * H, da_n.to(ty), mask=mask)
            tl.store(dgh_ptr + gates, da_r.to(ty), mask=mask)
            tl.store(dgh_ptr + gates + H, da_z.to(ty), mask=mask)
            tl.store(dgh_ptr + gates + 2 * H, (da_n * r).to(ty), mask=mask)
        tl.debug_barrier()  # phase 2 reads every column of this step's dgh
        dgh_rows = dgh_ptr + 3 * out
        for j in range(0, H, BLOCK_N):
            cols = j + tl.arange(0, BLOCK_N)
            col_mask = cols < H
            mask = active[:, None] & col_mask[None, :]
            back = hidden_dot(dgh_rows, active, w_d, cols, col_mask, 3 * H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            dh = tl.load(dh_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            dh += tl.load(grad_hs_ptr + out[:, None] + cols[None, :], mask=mask, other=0.0).to(ACC)
            z = tl.load(rz_ptr + 2 * out[:, None] + H + cols[None, :], mask=mask, other=0.0).to(ACC)
            tl.store(dh_rows[:, None] + cols[None, :], (dh * z + back).to(dh_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the next (earlier) step reads these dh


def gru_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], extra: List[Tensor],
    batch_sizes: List[int], save: bool,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.gru.gru_forward`, in one launch for every step and direction."""
    directions, rows_total, hidden = gi.size(0), gi.size(1), gi.size(2) // 3
    gi, h0 = common.as_rows(gi), common.as_rows(state0[0])
    batch = h0.size(1)
    hs = gi.new_empty(directions, rows_total, hidden)
    h_n = h0.clone()  # rows that end early keep their last state: the kernel writes active rows only
    saved = [gi.new_empty(directions, rows_total, 2 * hidden), torch.empty_like(hs), torch.empty_like(hs)] if save else []
    config, table = common.blocks(hidden), common.steps(batch_sizes, gi.device)
    bias = b_hh.reshape(directions, 3 * hidden).contiguous() if b_hh is not None else gi
    gru_forward_kernel[common.grid(directions, batch, config)](
        gi, h0, w_hh_t, bias, hs, h_n, *(saved or [hs] * 3), table.sizes, table.starts,
        len(batch_sizes), batch, rows_total, hidden, *w_hh_t.stride(), b_hh is not None, save, table.packed,
        **common.launch_options(config, gi.dtype),
    )
    return hs, [h_n], saved


def gru_backward(
    grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, extra: List[Tensor], batch_sizes: List[int],
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.gru.gru_backward`, in one launch."""
    directions, rows_total, hidden = hs.shape
    h0 = common.as_rows(state0[0])
    batch = h0.size(1)
    dgi = hs.new_empty(directions, rows_total, 3 * hidden)
    dgh = torch.empty_like(dgi)
    dh = common.running_gradient(grad_finals[0])
    config, table = common.blocks(hidden), common.steps(batch_sizes, hs.device)
    gru_backward_kernel[common.grid(directions, batch, config)](
        common.as_rows(grad_hs), h0, common.as_rows(hs), *[common.as_rows(s) for s in saved], w_hh, dgi, dgh, dh,
        table.sizes, table.starts, len(batch_sizes), batch, rows_total, hidden, *w_hh.stride(), table.packed,
        **common.launch_options(config, hs.dtype),
    )
    return dgi, dgh, [dh.to(hs.dtype)], []
