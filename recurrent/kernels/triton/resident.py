"""Triton kernels that hold W_hh on-chip for the whole sequence (opt-in: ``RECURRENT_BACKEND=resident``).

The persistent kernels of :mod:`.gru` and friends read W_hh from L2 in K-chunks at every step, so that
they fit any hidden size: at H = 128 that is 196 KB a step for a float32 GRU, which dominated their step
time on an H200. These kernels are for the sizes where one batch block's whole W_hh fits one SM: each
program loads every gate's (HP × HP) tile of W_hh once, before the time loop (HP, the hidden size padded
to a power of two, zero-padded), and the compiler keeps the tiles in shared memory for the loop; the
running state (h, and the LSTM's c; in the backward their gradients) is carried in registers from one
step to the next, so a step has no barrier and reads only its own rows of gi and the saved activations.

Grid, row layout, step tables, saved activations and contracts are the persistent kernels' (:mod:`.common`),
so these are drop-in pairs for the same layer code. The running state is rounded to the layer's dtype
after every step, as the other kernels store and reload it. Which sizes fit (:func:`fit`) is decided
from the shared memory the tiles take and, for FMA dots (IEEE float32, float64), from registers:
``tools/triton_check.py`` compiles every configuration :func:`fit` accepts, checks the compiled shared
memory against :func:`shared_bytes` and that no weight load sits inside the time loop.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import (
    DTYPES, PLAIN_ARGS, dot_kind, load, load_pair, partial_row, program_rows, sigmoid, step_layout, store_pair,
    sum_partials, tanh, zero_row, zero_tickets,
)
from .lstm_cell import lstm_bias_sums

WARPS = 8  # 4 spill at HP = 128 (registers hold the dot operands' fragments and the running state)
SCRATCH = 32768  # bytes of shared memory the compiler adds to the tiles (layout conversions), an upper bound
# The widest padded hidden size per kind of dot: FMA dots (IEEE float32, float64) keep operand fragments in
# registers, which spill beyond 32 columns in the backward since it sums the bias gradients (64 did before);
# tensor-core dots are bounded by shared memory alone.
MAX_PADDED = {"fma": 32, "tensor-core": 256}
# A hidden size that is not a multiple of 16 masks every tile (and Triton cannot vectorize its rows), which
# costs registers: compiled spill-free up to these padded widths (tools/triton_check.py).
UNALIGNED_MAX_PADDED = {"fma": 32, "tensor-core": 64}
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}
# Bytes of shared memory one block may use (opt-in), by architecture: sm_90 (H100/H200, 227 KiB), what CPU runs
# assume, and sm_80 (A100, 163 KiB); tools/triton_check.py checks every configuration against both.
SHARED_LIMITS = {90: 232448, 80: 166912}
SHARED_LIMIT = SHARED_LIMITS[90]


def padded(hidden: int) -> int:
    """HP: the tiles' width, the hidden size rounded up to a power of two of at least 16."""
    return max(16, triton.next_power_of_2(hidden))


def shared_bytes(mode: str, dtype: torch.dtype, hidden: int) -> int:
    """The shared memory a program needs: every gate's (HP × HP) tile, and the compiler's scratch."""
    return GATES[mode] * padded(hidden) ** 2 * torch.empty(0, dtype=dtype).element_size() + SCRATCH


def fit(mode: str, dtype: torch.dtype, precision: str, hidden: int, shared_limit: int = SHARED_LIMIT) -> Optional[str]:
    """Why the resident kernels cannot hold this layer's W_hh on-chip, or None when they can."""
    if mode not in GATES:
        return f"no resident kernels for {mode}"
    if dtype not in DTYPES:
        return f"dtype {dtype} (supported: {', '.join(str(d) for d in DTYPES)})"
    dots = "fma" if dtype == torch.float64 else dot_kind(dtype, precision)
    if padded(hidden) > MAX_PADDED[dots]:
        return f"hidden_size {hidden}: {dots} dots hold at most {MAX_PADDED[dots]} columns in registers"
    if hidden % 16 and padded(hidden) > UNALIGNED_MAX_PADDED[dots]:
        widest = UNALIGNED_MAX_PADDED[dots]
        return f"hidden_size {hidden}: not a multiple of 16, which {dots} dots hold in registers up to {widest} only"
    need = shared_bytes(mode, dtype, hidden)
    if need > shared_limit:
        return f"W_hh of hidden_size {hidden} in {dtype} needs {need} B of shared memory, over the {shared_limit} B a block has"
    return None


def device_shared_limit(device: torch.device) -> int:
    """The shared memory one block may opt in to on ``device`` (CPU, under the interpreter: sm_90's)."""
    if device.type != "cuda":
        return SHARED_LIMIT
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", SHARED_LIMIT)


def launch_options(dtype: torch.dtype, precision: str, hidden: int) -> dict:
    """The compile-time settings of a launch (and of the compile check)."""
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    return dict(
        ACC=acc, PRECISION=precision, BLOCK_B=common.ROWS, HP=padded(hidden), num_warps=WARPS, num_stages=1,
        **common.register_limit(255),  # else ptxas caps them to fit two programs an SM, and spills
    )


def launch(kernel, tensors: List[Tensor], w: Tensor, batch_sizes: List[int], batch: int, hidden: int,
           own: Tuple = (), **constants) -> None:
    """:func:`.common.launch` for these kernels: the same arguments, the settings of :func:`launch_options`."""
    options = launch_options(tensors[0].dtype, common.dot_precision(tensors[0]), hidden)
    common.run(kernel, options, tensors, w, batch_sizes, batch, hidden, own, constants)


@triton.jit
def weight_tile(w_d, k0, n0, H, stride_wk, stride_wn, HP: tl.constexpr):
    """W[k0 + k, n0 + n] for k, n < HP (0 past H): one gate's block of W_hhᵀ (forward, n0 = g·H) or of
    W_hh (backward, k0 = g·H)."""
    ks = tl.arange(0, HP)
    mask = (ks[:, None] < H) & (ks[None, :] < H)
    return tl.load(w_d + (k0 + ks)[:, None] * stride_wk + (n0 + ks)[None, :] * stride_wn, mask=mask, other=0.0)


@triton.jit
def times(a, w, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """a (BLOCK_B, HP) times an on-chip tile, a rounded to the tile's dtype as the other kernels' loads are."""
    return tl.dot(a.to(w.dtype), w, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def bias_row(b_ptr, d, gate, H, has_bias, cols, ACC: tl.constexpr, G: tl.constexpr):
    """Gate ``gate``'s b_hh as a row (zeros without a bias)."""
    b = tl.zeros(cols.shape, ACC)
    if has_bias:
        b = load(b_ptr + d * G * H + gate * H + cols, cols < H, ACC)
    return b[None, :]


@triton.jit
def running(ptr, state, cols, rows_mask, H, ACC: tl.constexpr):
    """A (D, N, H) state's rows for this program, as the loop's starting value."""
    return load(ptr + state[:, None] + cols[None, :], rows_mask[:, None] & (cols < H)[None, :], ACC)


@triton.jit
def store_sum(part, offset, cols, H, total):
    """One gate's column sums into this program's partial row (:func:`.common.sum_partials`)."""
    tl.store(part + offset + cols, total, mask=cols < H)


@triton.jit(do_not_specialize=PLAIN_ARGS)
def rnn_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, b_ptr, hs_ptr, hn_ptr, copy_ptr, tickets_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, has_bias, has_h0, copy, sums,
    RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, HP: tl.constexpr,
):
    """h' = act(gi + h W_hhᵀ + b): gi (D, T, H) with b_ih in (and b_hh, unless ``has_bias``: b = b_hh),
    w = W_hhᵀ (D, H, H) -> hs, h_n (the persistent kernel's flags: ``has_h0``, ``copy``, ``sums``)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    zero_tickets(tickets_ptr, sums)
    cols = tl.arange(0, HP)
    w = weight_tile(w_d, 0, 0, H, stride_wk, stride_wn, HP)
    b = bias_row(b_ptr, d, 0, H, has_bias, cols, ACC, 1)
    h = running(h0_ptr, state, cols, (rows < batch) & has_h0, H, ACC)
    for t in range(steps):
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        mask = active[:, None] & (cols < H)[None, :]
        pre = times(h, w, ACC, PRECISION) + load(gi_ptr + out[:, None] + cols[None, :], mask, ACC) + b
        if RELU:
            new = tl.maximum(pre, 0.0).to(hs_ptr.dtype.element_ty)
        else:
            new = tanh(pre).to(hs_ptr.dtype.element_ty)
        tl.store(hs_ptr + out[:, None] + cols[None, :], new, mask=mask)
        if copy:
            tl.store(copy_ptr + out[:, None] + cols[None, :], new, mask=mask)
        h = tl.where(mask, new.to(ACC), h)  # rows that have ended (packed) keep their last state
    tl.store(hn_ptr + state[:, None] + cols[None, :], h.to(hn_ptr.dtype.element_ty), mask=(rows < batch)[:, None] & (cols < H)[None, :])


@triton.jit(do_not_specialize=PLAIN_ARGS)
def rnn_backward_kernel(
    grad_hs_ptr, hs_ptr, w_ptr, da_ptr, dhn_ptr, dh_ptr, part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, has_dhn, sums,
    RELU: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, HP: tl.constexpr,
):
    """Time in reverse, w = W_hh (D, H, H): da = dh' act'(a), dh ← da W_hh; dh_n in (``dhn``, zeros without
    ``has_dhn``), dh0 out (``dh``); with ``sums`` the bias gradients (D, 2, H)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    cols = tl.arange(0, HP)
    w = weight_tile(w_d, 0, 0, H, stride_wk, stride_wn, HP)
    dh = running(dhn_ptr, state, cols, (rows < batch) & has_dhn, H, ACC)
    s_a = tl.zeros((HP,), ACC)
    for step in range(steps):
        t = steps - 1 - step
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, hs_ptr, hs_ptr, state, seq, H)
        mask = active[:, None] & (cols < H)[None, :]
        at = out[:, None] + cols[None, :]
        grad = dh + load(grad_hs_ptr + at, mask, ACC)
        h = load(hs_ptr + at, mask, ACC)
        if RELU:
            da = tl.where(h > 0, grad, 0.0)
        else:
            da = grad * (1.0 - h * h)
        da = da.to(da_ptr.dtype.element_ty)
        tl.store(da_ptr + at, da, mask=mask)
        s_a += column_sum(da, mask, ACC)
        dh = tl.where(mask, times(da, w, ACC, PRECISION), dh)
    tl.store(dh_ptr + state[:, None] + cols[None, :], dh, mask=(rows < batch)[:, None] & (cols < H)[None, :])
    if sums:
        part = partial_row(part_ptr, 2 * H)
        store_sum(part, 0, cols, H, s_a)
        store_sum(part, H, cols, H, s_a)
        sum_partials(part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, 2 * H, HP)


@triton.jit(do_not_specialize=PLAIN_ARGS)
def gru_forward_kernel(
    gi_ptr, h0_ptr, w_ptr, b_ptr, hs_ptr, hn_ptr, rz_ptr, n_ptr, ghn_ptr, copy_ptr, tickets_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, has_bias, save, has_h0, copy, sums,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, HP: tl.constexpr,
):
    """:func:`recurrent.cells.gru_step` over the sequence: gi (D, T, 3H), w = W_hhᵀ (D, H, 3H), b = b_hh
    (D, 3H) -> hs, h_n, and with ``save`` rz (D, T, 2H), n and W_hn h + b_hn (D, T, H) (the persistent
    kernel's flags: ``has_h0``, ``copy``, ``sums``)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    zero_tickets(tickets_ptr, sums)
    cols = tl.arange(0, HP)
    w_r = weight_tile(w_d, 0, 0, H, stride_wk, stride_wn, HP)
    w_z = weight_tile(w_d, 0, H, H, stride_wk, stride_wn, HP)
    w_n = weight_tile(w_d, 0, 2 * H, H, stride_wk, stride_wn, HP)
    b_r = bias_row(b_ptr, d, 0, H, has_bias, cols, ACC, 3)
    b_z = bias_row(b_ptr, d, 1, H, has_bias, cols, ACC, 3)
    b_n = bias_row(b_ptr, d, 2, H, has_bias, cols, ACC, 3)
    h = running(h0_ptr, state, cols, (rows < batch) & has_h0, H, ACC)
    for t in range(steps):
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        mask = active[:, None] & (cols < H)[None, :]
        gi = gi_ptr + 3 * out[:, None] + cols[None, :]
        # One gate after another, each product consumed before the next: fewer live registers.
        r = sigmoid(load(gi, mask, ACC) + times(h, w_r, ACC, PRECISION) + b_r)
        z = sigmoid(load(gi + H, mask, ACC) + times(h, w_z, ACC, PRECISION) + b_z)
        gh_n = times(h, w_n, ACC, PRECISION) + b_n
        n = tanh(load(gi + 2 * H, mask, ACC) + r * gh_n)
        new = (n + z * (h - n)).to(hs_ptr.dtype.element_ty)
        tl.store(hs_ptr + out[:, None] + cols[None, :], new, mask=mask)
        if copy:
            tl.store(copy_ptr + out[:, None] + cols[None, :], new, mask=mask)
        if save:
            ty = n_ptr.dtype.element_ty
            store_pair(rz_ptr, out, cols, H, r, z, mask)
            tl.store(n_ptr + out[:, None] + cols[None, :], n.to(ty), mask=mask)
            tl.store(ghn_ptr + out[:, None] + cols[None, :], gh_n.to(ty), mask=mask)
        h = tl.where(mask, new.to(ACC), h)
    tl.store(hn_ptr + state[:, None] + cols[None, :], h.to(hn_ptr.dtype.element_ty), mask=(rows < batch)[:, None] & (cols < H)[None, :])


@triton.jit(do_not_specialize=PLAIN_ARGS)
def gru_backward_kernel(
    grad_hs_ptr, h0_ptr, hs_ptr, rz_ptr, n_ptr, ghn_ptr, w_ptr, dgi_ptr, dgh_ptr, dhn_ptr, dh_ptr, part_ptr, dbi_ptr, dbh_ptr,
    tickets_ptr, sizes_ptr, starts_ptr, steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed,
    has_h0, has_dhn, sums,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, HP: tl.constexpr,
):
    """Time in reverse, w = W_hh (D, 3H, H): the gate gradients (stored as dgi and dgh), and
    dh ← dh' z + [da_r, da_z, da_n r] W_hh; dh_n in (``dhn``, zeros without ``has_dhn``), dh0 out (``dh``);
    with ``sums`` the bias gradients, db (D, 2, 3H) laid out as the persistent kernel's."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    cols = tl.arange(0, HP)
    w_r, w_z = weight_tile(w_d, 0, 0, H, stride_wk, stride_wn, HP), weight_tile(w_d, H, 0, H, stride_wk, stride_wn, HP)
    w_n = weight_tile(w_d, 2 * H, 0, H, stride_wk, stride_wn, HP)
    dh = running(dhn_ptr, state, cols, (rows < batch) & has_dhn, H, ACC)
    s_r = tl.zeros((HP,), ACC)
    s_z = tl.zeros((HP,), ACC)
    s_n = tl.zeros((HP,), ACC)
    s_hn = tl.zeros((HP,), ACC)
    for step in range(steps):
        t = steps - 1 - step
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        mask = active[:, None] & (cols < H)[None, :]
        seen = mask & ((t > 0) | has_h0)
        at = out[:, None] + cols[None, :]
        grad = dh + load(grad_hs_ptr + at, mask, ACC)
        r, z = load_pair(rz_ptr, out, cols, H, mask, ACC)
        n = load(n_ptr + at, mask, ACC)
        ty = dgi_ptr.dtype.element_ty
        da_n = (grad * (1.0 - z) * (1.0 - n * n)).to(ty)
        da_z = (grad * (load(prev[:, None] + cols[None, :], seen, ACC) - n) * z * (1.0 - z)).to(ty)
        da_r = (da_n.to(ACC) * load(ghn_ptr + at, mask, ACC) * r * (1.0 - r)).to(ty)
        dgh_n = (da_n.to(ACC) * r).to(ty)
        gates = 3 * out[:, None] + cols[None, :]
        store_gates(dgi_ptr + gates, H, da_r, da_z, da_n, mask)
        store_gates(dgh_ptr + gates, H, da_r, da_z, dgh_n, mask)
        s_r += column_sum(da_r, mask, ACC)
        s_z += column_sum(da_z, mask, ACC)
        s_n += column_sum(da_n, mask, ACC)
        s_hn += column_sum(dgh_n, mask, ACC)
        back = times(da_r, w_r, ACC, PRECISION) + times(da_z, w_z, ACC, PRECISION) + times(dgh_n, w_n, ACC, PRECISION)
        dh = tl.where(mask, grad * z + back, dh)
    tl.store(dh_ptr + state[:, None] + cols[None, :], dh, mask=(rows < batch)[:, None] & (cols < H)[None, :])
    if sums:
        part = partial_row(part_ptr, 6 * H)
        for half in range(2):  # [db_ih | db_hh]: r and z the same, n from dgi, then from dgh
            store_sum(part, 3 * half * H, cols, H, s_r)
            store_sum(part, (3 * half + 1) * H, cols, H, s_z)
        store_sum(part, 2 * H, cols, H, s_n)
        store_sum(part, 5 * H, cols, H, s_hn)
        sum_partials(part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, 6 * H, HP)


@triton.jit
def store_gates(ptr, H, first, second, third, mask):
    """Three gates' tiles side by side, H apart (the GRU's r, z, n)."""
    tl.store(ptr, first, mask=mask)
    tl.store(ptr + H, second, mask=mask)
    tl.store(ptr + 2 * H, third, mask=mask)


@triton.jit
def column_sum(tile, mask, ACC: tl.constexpr):
    """A gate-gradient tile's column sums over the rows that ran (ended rows carry dh, not gradients)."""
    return tl.sum(tl.where(mask, tile.to(ACC), 0.0), 0)


@triton.jit(do_not_specialize=PLAIN_ARGS)
def lstm_forward_kernel(
    gi_ptr, h0_ptr, c0_ptr, w_ptr, hs_ptr, hn_ptr, cn_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, copy_ptr, tickets_ptr,
    sizes_ptr, starts_ptr, steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, save, has_h0, copy, sums,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, HP: tl.constexpr,
):
    """:func:`recurrent.cells.lstm_step` over the sequence: gi (D, T, 4H) with both biases in, h0 and c0
    (D, N, H), w = W_hhᵀ (D, H, 4H) -> hs, h_n, c_n, and with ``save`` if (D, T, 2H), g, o and c (D, T, H)
    (the persistent kernel's flags: ``has_h0``, ``copy``, ``sums``)."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    zero_tickets(tickets_ptr, sums)
    cols = tl.arange(0, HP)
    w_i = weight_tile(w_d, 0, 0, H, stride_wk, stride_wn, HP)
    w_f = weight_tile(w_d, 0, H, H, stride_wk, stride_wn, HP)
    w_g = weight_tile(w_d, 0, 2 * H, H, stride_wk, stride_wn, HP)
    w_o = weight_tile(w_d, 0, 3 * H, H, stride_wk, stride_wn, HP)
    h = running(h0_ptr, state, cols, (rows < batch) & has_h0, H, ACC)
    c = running(c0_ptr, state, cols, (rows < batch) & has_h0, H, ACC)
    for t in range(steps):
        active, prev, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, h0_ptr, hs_ptr, state, seq, H)
        mask = active[:, None] & (cols < H)[None, :]
        gi = gi_ptr + 4 * out[:, None] + cols[None, :]
        i = sigmoid(times(h, w_i, ACC, PRECISION) + load(gi, mask, ACC))
        f = sigmoid(times(h, w_f, ACC, PRECISION) + load(gi + H, mask, ACC))
        g = tanh(times(h, w_g, ACC, PRECISION) + load(gi + 2 * H, mask, ACC))
        o = sigmoid(times(h, w_o, ACC, PRECISION) + load(gi + 3 * H, mask, ACC))
        c_new = f * c + i * g
        new = (o * tanh(c_new)).to(hs_ptr.dtype.element_ty)
        tl.store(hs_ptr + out[:, None] + cols[None, :], new, mask=mask)
        if copy:
            tl.store(copy_ptr + out[:, None] + cols[None, :], new, mask=mask)
        if save:
            at = out[:, None] + cols[None, :]
            store_pair(if_ptr, out, cols, H, i, f, mask)
            tl.store(g_ptr + at, g.to(g_ptr.dtype.element_ty), mask=mask)
            tl.store(o_ptr + at, o.to(o_ptr.dtype.element_ty), mask=mask)
            tl.store(cs_ptr + at, c_new.to(cs_ptr.dtype.element_ty), mask=mask)
        h = tl.where(mask, new.to(ACC), h)
        c = tl.where(mask, c_new.to(cn_ptr.dtype.element_ty).to(ACC), c)
    final = (rows < batch)[:, None] & (cols < H)[None, :]
    tl.store(hn_ptr + state[:, None] + cols[None, :], h.to(hn_ptr.dtype.element_ty), mask=final)
    tl.store(cn_ptr + state[:, None] + cols[None, :], c.to(cn_ptr.dtype.element_ty), mask=final)


@triton.jit(do_not_specialize=PLAIN_ARGS)
def lstm_backward_kernel(
    grad_hs_ptr, c0_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, w_ptr, dgates_ptr, dhn_ptr, dcn_ptr, dh_ptr, dc_ptr,
    part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, sizes_ptr, starts_ptr,
    steps, batch, rows_total, H, stride_wd, stride_wk, stride_wn, packed, has_h0, has_dhn, has_dcn, sums,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, HP: tl.constexpr,
):
    """Time in reverse, w = W_hh (D, 4H, H); dh_n and dc_n in (``dhn``, ``dcn``; zeros without ``has_dhn``,
    ``has_dcn``), dh0 and dc0 out; with ``sums`` the bias gradients. Per step (the formulas of :func:`.lstm_cell.
    lstm_columns_backward`, every column at once): the four gate gradients, dc ← dc' f and dh ← dgates W_hh."""
    d, rows, seq, w_d, state = program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B)
    cols = tl.arange(0, HP)
    w_i, w_f = weight_tile(w_d, 0, 0, H, stride_wk, stride_wn, HP), weight_tile(w_d, H, 0, H, stride_wk, stride_wn, HP)
    w_g, w_o = weight_tile(w_d, 2 * H, 0, H, stride_wk, stride_wn, HP), weight_tile(w_d, 3 * H, 0, H, stride_wk, stride_wn, HP)
    dh = running(dhn_ptr, state, cols, (rows < batch) & has_dhn, H, ACC)
    dc = running(dcn_ptr, state, cols, (rows < batch) & has_dcn, H, ACC)
    # Bias sums step by step into the partial row (four running sums spilled); barriers order its reads and writes.
    part = partial_row(part_ptr, 8 * H)
    if sums:
        zero_row(part, 8 * H, HP)
        tl.debug_barrier()
    for step in range(steps):
        t = steps - 1 - step
        active, c_prev_rows, out = step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, c0_ptr, cs_ptr, state, seq, H)
        mask = active[:, None] & (cols < H)[None, :]
        at = out[:, None] + cols[None, :]
        du = dh + load(grad_hs_ptr + at, mask, ACC)
        i, f = load_pair(if_ptr, out, cols, H, mask, ACC)
        g, o = load(g_ptr + at, mask, ACC), load(o_ptr + at, mask, ACC)
        tanh_c = tanh(load(cs_ptr + at, mask, ACC))
        dc_t = dc + du * o * (1.0 - tanh_c * tanh_c)
        c_prev = load(c_prev_rows[:, None] + cols[None, :], mask & ((t > 0) | has_h0), ACC)
        ty = dgates_ptr.dtype.element_ty
        da_i = (dc_t * g * i * (1.0 - i)).to(ty)
        da_f = (dc_t * c_prev * f * (1.0 - f)).to(ty)
        da_g = (dc_t * i * (1.0 - g * g)).to(ty)
        da_o = (du * tanh_c * o * (1.0 - o)).to(ty)
        gates = dgates_ptr + 4 * out[:, None] + cols[None, :]
        store_gates(gates, H, da_i, da_f, da_g, mask)
        tl.store(gates + 3 * H, da_o, mask=mask)
        if sums:  # (ended rows' gate gradients are zeros: their gates were read as zeros)
            lstm_bias_sums(part, cols, cols < H, H, da_i, da_f, da_g, da_o)
            tl.debug_barrier()
        back = times(da_i, w_i, ACC, PRECISION) + times(da_f, w_f, ACC, PRECISION)
        back += times(da_g, w_g, ACC, PRECISION) + times(da_o, w_o, ACC, PRECISION)
        dh, dc = tl.where(mask, back, dh), tl.where(mask, dc_t * f, dc)
    final = (rows < batch)[:, None] & (cols < H)[None, :]
    tl.store(dh_ptr + state[:, None] + cols[None, :], dh, mask=final)
    tl.store(dc_ptr + state[:, None] + cols[None, :], dc, mask=final)
    if sums:
        sum_partials(part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, 8 * H, HP)

