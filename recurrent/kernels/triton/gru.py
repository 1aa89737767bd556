"""GRU: persistent Triton forward and backward kernels (the math of :func:`recurrent.cells.gru_step`)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import (
    PLAIN_ARGS, add_column_sums, column_block, gate_products, hidden_dot, load, load_pair, partial_row, program_rows,
    running_start, sigmoid, state_gradient, step_layout, store_pair, sum_partials, tanh, zero_row, zero_tickets,
)


@triton.jit(do_not_specialize=PLAIN_ARGS)
def gru_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, b_ptr, hs_ptr, hn_ptr, rz_ptr, n_ptr, ghn_ptr, copy_ptr, tickets_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, has_bias, save, has_h0, copy, sums,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, 3H), h0 (D, N, H; zeros without ``has_h0``), w = W_hhᵀ (D, H, 3H) by strides, b = b_hh
    (D, 3H) -> hs (D, T, H), h_n (D, N, H), and with ``save`` rz (D, T, 2H), n and W_hn h + b_hn (D, T, H);
    with ``copy`` hs once more into ``copy``; with ``sums`` the backward's ticket counters zeroed."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    zero_tickets(tickets_ptr, sums)
    for t in range(steps):
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        seen = active & ((t > 0) | has_h0)  # rows whose state before the step is read (not zero)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            gh_r, gh_z, gh_n, _ = gate_products(
                prev, seen, w_d, cols, col_mask, H, H, stride_wk, stride_wn, 3, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K,
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
            h = load(prev[:, None] + cols[None, :], seen[:, None] & col_mask[None, :], ACC)
            new = (n + z * (h - n)).to(hs_ptr.dtype.element_ty)
            tl.store(hs_ptr + out[:, None] + cols[None, :], new, mask=mask)
            tl.store(hn_ptr + state[:, None] + cols[None, :], new, mask=mask)
            if copy:
                tl.store(copy_ptr + out[:, None] + cols[None, :], new, mask=mask)
            if save:
                ty = n_ptr.dtype.element_ty
                store_pair(rz_ptr, out, cols, H, r, z, mask)
                tl.store(n_ptr + out[:, None] + cols[None, :], n.to(ty), mask=mask)
                tl.store(ghn_ptr + out[:, None] + cols[None, :], gh_n.to(ty), mask=mask)
        tl.debug_barrier()  # this step's states, written by every thread, are the next step's input


@triton.jit(do_not_specialize=PLAIN_ARGS)
def gru_backward_kernel(
    grad_hs_ptr, h0_ptr, hs_ptr, rz_ptr, n_ptr, ghn_ptr, w_ptr, dgi_ptr, dgh_ptr, dhn_ptr, dh_ptr, part_ptr, dbi_ptr, dbh_ptr,
    tickets_ptr, sizes_ptr, starts_ptr, steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    has_h0, has_dhn, sums,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Time in reverse; w = W_hh (D, 3H, H) by strides. ``dh`` (D, N, H) holds each row's gradient
    w.r.t. its running state: dh_n (``dhn``; zeros without ``has_dhn``) first, dh0 on exit. Per step:
    the gate gradients of every column (phase 1), a barrier, dh ← dh' z + dgh W_hh block by block
    (phase 2), a barrier. With ``sums`` the bias gradients too, db (D, 2, 3H): db_ih, then db_hh
    (:func:`.common.sum_partials`)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    part = partial_row(part_ptr, 6 * H)
    running_start(dhn_ptr, dh_ptr, state, rows < batch, H, has_dhn, ACC, BLOCK_N)
    if sums:
        zero_row(part, 6 * H, BLOCK_N)
    tl.debug_barrier()  # phase 1 reads every column of dh
    for step in range(steps):
        t = steps - 1 - step
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        seen = active & ((t > 0) | has_h0)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            at = out[:, None] + cols[None, :]
            dh = state_gradient(dh_ptr, state, grad_hs_ptr, out, cols, mask, ACC)
            r, z = load_pair(rz_ptr, out, cols, H, mask, ACC)
            n = load(n_ptr + at, mask, ACC)
            da_n = dh * (1.0 - z) * (1.0 - n * n)
            da_z = dh * (load(prev[:, None] + cols[None, :], seen[:, None] & col_mask[None, :], ACC) - n) * z * (1.0 - z)
            da_r = da_n * load(ghn_ptr + at, mask, ACC) * r * (1.0 - r)
            gates = 3 * out[:, None] + cols[None, :]
            ty = dgi_ptr.dtype.element_ty
            tl.store(dgi_ptr + gates, da_r.to(ty), mask=mask)
            tl.store(dgi_ptr + gates + H, da_z.to(ty), mask=mask)
            tl.store(dgi_ptr + gates + 2 * H, da_n.to(ty), mask=mask)
            tl.store(dgh_ptr + gates, da_r.to(ty), mask=mask)
            tl.store(dgh_ptr + gates + H, da_z.to(ty), mask=mask)
            tl.store(dgh_ptr + gates + 2 * H, (da_n * r).to(ty), mask=mask)
            if sums:
                gru_bias_sums(part, cols, col_mask, H, da_r.to(ty), da_z.to(ty), da_n.to(ty), (da_n * r).to(ty))
        tl.debug_barrier()  # phase 2 reads every column of this step's dgh
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            back = hidden_dot(dgh_ptr + 3 * out, active, w_d, cols, col_mask, 3 * H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            dh = state_gradient(dh_ptr, state, grad_hs_ptr, out, cols, mask, ACC)
            r, z = load_pair(rz_ptr, out, cols, H, mask, ACC)
            tl.store(dh_ptr + state[:, None] + cols[None, :], (dh * z + back).to(dh_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the next (earlier) step reads these dh
    if sums:
        sum_partials(part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, 6 * H, BLOCK_N)


@triton.jit
def gru_bias_sums(part, cols, col_mask, H, da_r, da_z, da_n, dgh_n):
    """Adds a tile's gate-gradient column sums to a partial row laid out as db (2, 3H): db_ih's r, z, n
    (dgi's), then db_hh's r, z (the same) and n (dgh's)."""
    add_column_sums(part, 0, cols, col_mask, da_r)
    add_column_sums(part, H, cols, col_mask, da_z)
    add_column_sums(part, 2 * H, cols, col_mask, da_n)
    add_column_sums(part, 3 * H, cols, col_mask, da_r)
    add_column_sums(part, 4 * H, cols, col_mask, da_z)
    add_column_sums(part, 5 * H, cols, col_mask, dgh_n)


def gru_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
    batch_sizes: List[int], save: bool, kernel=gru_forward_kernel, run=None, out: Optional[common.Outputs] = None,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.gru.gru_forward`, in one launch for every step and direction
    (``kernel`` and ``run``: another kernel of the same arguments and its launcher, the resident one's;
    ``state0`` [] for zeros, and ``out`` where the whole-stack op gives the kernel more to write)."""
    out = out or common.Outputs()
    gi, h0, hs, h_n = common.forward_buffers(gi, state0, w_hh_t.size(1), batch_sizes[0], out)
    w_hh_t = common.unit_stride(w_hh_t, 1)
    directions, rows, batch, hidden = gi.size(0), gi.size(1), h_n.size(1), h_n.size(2)
    saved = [gi.new_empty(directions, rows, 2 * hidden), torch.empty_like(hs), torch.empty_like(hs)] if save else []
    bias = b_hh.reshape(directions, 3 * hidden).contiguous() if b_hh is not None else gi
    extra = [hs if out.copy is None else out.copy, common.tickets_or_none(out.tickets, gi.device)]
    tensors = [gi, h0, w_hh_t, bias, hs, h_n, *(saved or [hs] * 3), *extra]
    own = (b_hh is not None, save, bool(state0), out.copy is not None, out.tickets is not None)
    (run or common.launch)(kernel, tensors, w_hh_t, batch_sizes, batch, hidden, own)
    return hs, [h_n], saved


def gru_backward(
    grad_hs: Tensor, grad_finals: List[Optional[Tensor]], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor], batch_sizes: List[int],
    kernel=gru_backward_kernel, run=None, out: Optional[common.Outputs] = None,
) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
    """The contract of :func:`recurrent.kernels.gru.gru_backward`, in one launch (``grad_finals`` [None] where
    h_n has no gradient; with ``out``'s ``bias`` and ``tickets`` the bias gradients too, db (D, 2, 3H))."""
    out = out or common.Outputs()
    dgi = hs.new_empty(hs.size(0), hs.size(1), 3 * hs.size(2))
    dgh = torch.empty_like(dgi)
    ends = common.backward_buffers(grad_finals[0], state0[0] if state0 else None, hs, batch_sizes[0], 6, out)
    rows = [common.as_rows(t) for t in [grad_hs, ends.h0, hs, *saved]]
    w_hh = common.unit_stride(w_hh, 2)
    tensors = [*rows, w_hh, dgi, dgh, ends.dhn, ends.dh, ends.part, ends.dbi, ends.dbh, ends.tickets]
    own = (bool(state0), grad_finals[0] is not None, out.tickets is not None)
    (run or common.launch)(kernel, tensors, w_hh, batch_sizes, batch_sizes[0], hs.size(2), own)
    return dgi, dgh, [ends.dh.to(hs.dtype)], []
