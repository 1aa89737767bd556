"""The LSTM's gate math for one block of state columns, shared by the plain and projected kernels
(:mod:`.lstm`, :mod:`.lstm_proj`); the formulas are :func:`recurrent.cells.lstm_step`'s."""
import triton
import triton.language as tl

from .common import add_column_sums, gate_products, load, load_pair, sigmoid, store_pair, tanh


@triton.jit
def lstm_columns_forward(
    prev, active, w_d, K, stride_wk, stride_wn, gi_ptr, c0_ptr, cn_ptr, if_ptr, g_ptr, o_ptr, cs_ptr, save,
    state, out, cols, col_mask, mask, H, t, has_c0,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The four gates of one column block from the previous state (K wide; ``active`` its rows read) and gi;
    updates the running cell state in c_n (read from c0 at step 0: zeros without ``has_c0``), stores the
    activations with ``save``; returns o ⊙ tanh(c')."""
    gi = gi_ptr + 4 * out[:, None] + cols[None, :]
    a_i, a_f, a_g, a_o = gate_products(
        prev, active, w_d, cols, col_mask, K, H, stride_wk, stride_wn, 4, ACC, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K,
    )
    i = sigmoid(a_i + load(gi, mask, ACC))
    f = sigmoid(a_f + load(gi + H, mask, ACC))
    g = tanh(a_g + load(gi + 2 * H, mask, ACC))
    o = sigmoid(a_o + load(gi + 3 * H, mask, ACC))
    c_at = cn_ptr + state[:, None] + cols[None, :]
    c_prev = load(tl.where(t == 0, c0_ptr, cn_ptr) + state[:, None] + cols[None, :], mask & ((t > 0) | has_c0), ACC)
    c = f * c_prev + i * g
    tl.store(c_at, c.to(cn_ptr.dtype.element_ty), mask=mask)  # only this column block reads it
    if save:
        at = out[:, None] + cols[None, :]
        store_pair(if_ptr, out, cols, H, i, f, mask)
        tl.store(g_ptr + at, g.to(g_ptr.dtype.element_ty), mask=mask)
        tl.store(o_ptr + at, o.to(o_ptr.dtype.element_ty), mask=mask)
        tl.store(cs_ptr + at, c.to(cs_ptr.dtype.element_ty), mask=mask)
    return o * tanh(c)


@triton.jit
def lstm_columns_backward(
    du, if_ptr, g_ptr, o_ptr, cs_ptr, c_prev_rows, prev_mask, dc_ptr, dgates_ptr, part, sums, state, out, cols,
    col_mask, mask, H, ACC: tl.constexpr,
):
    """From du (the gradient of o ⊙ tanh(c'): dh' itself without projection) of one column block:
    the four gate gradients (stored; with ``sums`` their column sums added to ``part``, as [db_ih | db_hh],
    both the same: b_hh is folded into gi) and dc ← dc' f (column-local, in place), c_prev read where
    ``prev_mask``:

        dc   = dc' + du ⊙ o ⊙ (1 − tanh²(c'))       da_o = du ⊙ tanh(c') ⊙ o(1 − o)
        da_i = dc ⊙ g ⊙ i(1 − i)   da_f = dc ⊙ c ⊙ f(1 − f)   da_g = dc ⊙ i ⊙ (1 − g²)
    """
    at = out[:, None] + cols[None, :]
    i, f = load_pair(if_ptr, out, cols, H, mask, ACC)
    g = load(g_ptr + at, mask, ACC)
    o = load(o_ptr + at, mask, ACC)
    tanh_c = tanh(load(cs_ptr + at, mask, ACC))
    dc_at = dc_ptr + state[:, None] + cols[None, :]
    dc = load(dc_at, mask, ACC) + du * o * (1.0 - tanh_c * tanh_c)
    c_prev = load(c_prev_rows[:, None] + cols[None, :], prev_mask, ACC)
    gates = dgates_ptr + 4 * out[:, None] + cols[None, :]
    ty = dgates_ptr.dtype.element_ty
    da_i = (dc * g * i * (1.0 - i)).to(ty)
    da_f = (dc * c_prev * f * (1.0 - f)).to(ty)
    da_g = (dc * i * (1.0 - g * g)).to(ty)
    da_o = (du * tanh_c * o * (1.0 - o)).to(ty)
    tl.store(gates, da_i, mask=mask)
    tl.store(gates + H, da_f, mask=mask)
    tl.store(gates + 2 * H, da_g, mask=mask)
    tl.store(gates + 3 * H, da_o, mask=mask)
    tl.store(dc_at, (dc * f).to(dc_ptr.dtype.element_ty), mask=mask)
    if sums:
        lstm_bias_sums(part, cols, col_mask, H, da_i, da_f, da_g, da_o)


@triton.jit
def lstm_bias_sums(part, cols, col_mask, H, da_i, da_f, da_g, da_o):
    """Adds a tile's gate-gradient column sums to a partial row laid out as [db_ih | db_hh], the two the same
    (b_hh is folded into gi)."""
    for half in range(2):
        add_column_sums(part, (4 * half) * H, cols, col_mask, da_i)
        add_column_sums(part, (4 * half + 1) * H, cols, col_mask, da_f)
        add_column_sums(part, (4 * half + 2) * H, cols, col_mask, da_g)
        add_column_sums(part, (4 * half + 3) * H, cols, col_mask, da_o)
