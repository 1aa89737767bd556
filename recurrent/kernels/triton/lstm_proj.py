"""Projected LSTM (``proj_size`` P > 0): persistent Triton forward and backward kernels.

The state h and the outputs have P columns: h' = W_hr u with u = o ⊙ tanh(c'). Each step has one
more step-wide dependency than the plain LSTM, so one more phase and barrier: forward, the gates
and u for every column of H, then h' = u W_hrᵀ; backward, dh' for every column of P, then
du = dh' W_hr and the gate gradients, then dh = dgates W_hh. The launchers are in :mod:`.lstm`.
"""
import triton
import triton.language as tl

from .common import PLAIN_ARGS, column_block, hidden_dot, program_rows, state_gradient, step_layout
from .lstm_cell import lstm_columns_backward, lstm_columns_forward


@triton.jit(do_not_specialize=PLAIN_ARGS)
def lstm_proj_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, hr_ptr, hs_ptr, hn_ptr, cn_ptr, u_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, save, P, stride_rd, stride_rk, stride_rn,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """gi (D, T, 4H), h0 (D, N, P), w = W_hhᵀ (D, P, 4H) and hr = W_hrᵀ (D, H, P) by strides ->
    hs (D, T, P), h_n (D, N, P) and c_n (D, N, H) (h0 and c0 on entry; c_n is the running cell
    state), u (D, N, H) scratch; with ``save`` if (D, T, 2H), g, o and c (D, T, H)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    seq_p, state_p, hr_d = d * rows_total * P, (d * batch + rows) * P, hr_ptr + d * stride_rd
    for t in range(steps):
        active, prev, out_p = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state_p, seq_p, P)
        active, prev_c, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, cn_ptr, cn_ptr, state, seq, H)
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            u = lstm_columns_forward(
                prev, active, w_d, P, stride_wk, stride_wn, gi_ptr, cn_ptr, cn_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, save,
                state, out, cols, col_mask, mask, H, t, True, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K,
            )
            tl.store(u_ptr + state[:, None] + cols[None, :], u.to(u_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the projection reads every column of u
        for j in range(0, P, BLOCK_N):
            cols, col_mask, mask = column_block(j, P, active, BLOCK_N)
            h = hidden_dot(u_ptr + state, active, hr_d, cols, col_mask, H, stride_rk, stride_rn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            h = h.to(hs_ptr.dtype.element_ty)
            tl.store(hs_ptr + out_p[:, None] + cols[None, :], h, mask=mask)
            tl.store(hn_ptr + state_p[:, None] + cols[None, :], h, mask=mask)
        tl.debug_barrier()  # this step's h is the next step's input; u is rewritten next step


@triton.jit(do_not_specialize=PLAIN_ARGS)
def lstm_proj_backward_kernel(
    grad_hs_ptr, c0_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, w_ptr, hr_ptr, dgates_ptr, dhs_ptr, dh_ptr, dc_ptr,
    sizes_ptr, starts_ptr, steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    P, stride_rd, stride_rk, stride_rn,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Time in reverse; w = W_hh (D, 4H, P) and hr = W_hr (D, P, H) by strides; dh (D, N, P) and
    dc (D, N, H) are dh_n and dc_n on entry, dh0 and dc0 on exit; dhs (D, T, P) receives every
    row's dh' (for dW_hr = Σ dh'ᵀ u, formed after the kernel)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    seq_p, state_p, hr_d = d * rows_total * P, (d * batch + rows) * P, hr_ptr + d * stride_rd
    for step in range(steps):
        t = steps - 1 - step
        active, c_prev_rows, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, c0_ptr, cs_ptr, state, seq, H)
        active, prev_p, out_p = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, dhs_ptr, dhs_ptr, state_p, seq_p, P)
        for j in range(0, P, BLOCK_N):
            cols, col_mask, mask = column_block(j, P, active, BLOCK_N)
            dh = state_gradient(dh_ptr, state_p, grad_hs_ptr, out_p, cols, mask, ACC)
            tl.store(dhs_ptr + out_p[:, None] + cols[None, :], dh.to(dhs_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # du reads every column of dh'
        for j in range(0, H, BLOCK_N):
            cols, col_mask, mask = column_block(j, H, active, BLOCK_N)
            du = hidden_dot(dhs_ptr + out_p, active, hr_d, cols, col_mask, P, stride_rk, stride_rn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            lstm_columns_backward(
                du, if_ptr, g_ptr, o_ptr, cs_ptr, c_prev_rows, mask, dc_ptr, dgates_ptr, dc_ptr, False, state, out, cols,
                col_mask, mask, H, ACC,
            )
        tl.debug_barrier()  # dh reads every column of this step's dgates
        for j in range(0, P, BLOCK_N):
            cols, col_mask, mask = column_block(j, P, active, BLOCK_N)
            back = hidden_dot(dgates_ptr + 4 * out, active, w_d, cols, col_mask, 4 * H, stride_wk, stride_wn, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
            tl.store(dh_ptr + state_p[:, None] + cols[None, :], back.to(dh_ptr.dtype.element_ty), mask=mask)
        tl.debug_barrier()  # the next (earlier) step reads these dh
