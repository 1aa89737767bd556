"""What the persistent Triton kernels share: the math helpers, the hidden product, launch settings.

Design (one launch per layer and pass): the grid is (direction, block of BLOCK_B batch rows). Each
program loops over time inside the kernel and owns its rows for the whole sequence. Per step it
forms the hidden product for one block of BLOCK_N state columns at a time, K-chunked (BLOCK_K),
reading W_hh and the previous state from global memory (L2) so that shared memory and registers
stay independent of the hidden size (a gated kind's forward loads each chunk of the state once
for all its gates); then the gate math for those columns; then the stores. The next step reads
the states that other threads of the same program wrote, so every step ends with a barrier
inside the program (programs never share rows, so no grid-wide synchronisation).

Rows layout and shapes as in :mod:`recurrent.kernels.common`. For a packed batch the kernels read
the per-step row counts and row offsets from two small int32 tensors; for a padded batch they
compute them (no host-to-device copy, so a padded call stays CUDA-graph-safe).

Interpreter (``TRITON_INTERPRET=1``): libdevice's tanh is missing there, so tanh is written through
exp there (:func:`tanh_through_exp`); compiled kernels call libdevice's. Precision: on CUDA, float32
hidden products use TF32 tensor cores where ``torch.backends.cudnn.allow_tf32`` allows it (True by
default), the switch torch.nn's cuDNN RNNs obey, and are exact IEEE where it is off (and always on
CPU); 16-bit dots accumulate in float32 and the gate math runs in float32; float64 stays float64.
"""
from __future__ import annotations

import os
from typing import List, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.extra import libdevice

ROWS = 16  # batch rows per program, in every Triton kernel (tl.dot's smallest M)
MAX_HIDDEN = 512  # the largest hidden size the configurations below are compile-checked for
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# Launch arguments Triton should not specialize on (value 1, divisibility by 16): sequence length and
# row counts vary from call to call and gain nothing from it, and each specialization is one more
# compiled variant, which the compile check would have to cover.
PLAIN_ARGS = ["steps", "batch", "rows_total"]


class Blocks(NamedTuple):
    rows: int  # BLOCK_B: batch rows per program (tl.dot needs at least 16)
    cols: int  # BLOCK_N: state columns per gate-math block
    k: int  # BLOCK_K: reduction chunk of the hidden product
    warps: int
    stages: int  # software-pipelining depth of the K loop
    registers: int  # per thread (maxnreg); stated, as ptxas otherwise caps it to fit two programs an SM, and spills


# The column widths per kind of dot, small hidden sizes first: (largest hidden size, BLOCK_N); the last
# entry serves every larger size. tools/triton_check.py compiles each.
WIDTHS = {
    "fma": ((16, 16), (None, 32)),  # IEEE float32 and float64: FMA dots, operand tiles in registers
    "tensor-core": ((16, 16), (32, 32), (None, 64)),  # TF32, float16 and bfloat16
}


def dot_kind(dtype: torch.dtype, precision: str) -> str:
    return "tensor-core" if precision == "tf32" or dtype in (torch.float16, torch.bfloat16) else "fma"


def blocks(hidden: int, dtype: torch.dtype = torch.float32, precision: str = "ieee", widest: int = 0) -> Blocks:
    """The pinned configuration for a hidden size and dot (no autotuning: the compile check covers
    each). Per step and column block, the gated kinds' forward runs one K loop for all their gates
    (each chunk of the state loaded once, the gates' weight tiles in flight together); three stages
    let Triton prefetch the next chunks while this one multiplies. Chunks of 16 keep the FMA dots of
    IEEE float32 (whose operand tiles live in registers) from spilling; up to 255 registers a thread
    keep every compiled variant spill-free (8 warps of those fill an SM's register file, so one
    program runs per SM: the grid, directions × batch/16, is small beside the SM count).
    Measured per time step on an H200 (benchmarks/triton_tune.py, the speed shapes up to H = 256):
    three stages against two, IEEE float32 backward 0.60x to 0.66x, forward 0.92x to 0.97x; 64
    columns a block against 32, with TF32 dots (three stages) forward 0.51x to 0.56x, backward 0.48x
    to 0.52x, with bfloat16 (two stages) forward 0.59x to 0.64x, backward 0.52x to 0.76x. IEEE
    float32 keeps 32 (64 made its forward 1.4x to 1.5x slower). ``widest`` (if set) caps the columns:
    kernels generated from a custom cell's step take 32 where 64 would spill (.generated)."""
    widths = WIDTHS[dot_kind(dtype, precision)]
    cols = next(cols for limit, cols in widths if limit is None or hidden <= limit)
    return _pinned(min(cols, widest) if widest else cols)


def configurations(dtype: torch.dtype, precision: str) -> List[Blocks]:
    """Every configuration :func:`blocks` can answer for a dot (what the compile check compiles)."""
    return [_pinned(cols) for _, cols in WIDTHS[dot_kind(dtype, precision)]]


def _pinned(cols: int) -> Blocks:
    return Blocks(rows=ROWS, cols=cols, k=16, warps=8, stages=3, registers=255)


def launch_options(config: Blocks, dtype: torch.dtype, precision: str) -> dict:
    """The compile-time settings shared by every kernel launch (and by the compile check)."""
    return dict(
        ACC=tl.float64 if dtype == torch.float64 else tl.float32, PRECISION=precision,
        BLOCK_B=config.rows, BLOCK_N=config.cols, BLOCK_K=config.k, num_warps=config.warps, num_stages=config.stages,
        **register_limit(config.registers),
    )


def launch(kernel, tensors: List[Tensor], w: Tensor, batch_sizes: List[int], batch: int, hidden: int,
           own: Tuple = (), widest: int = 0, **constants) -> None:
    """Runs ``kernel`` once for every step and direction, in the configuration of :func:`blocks`."""
    precision = dot_precision(tensors[0])
    config = blocks(hidden, tensors[0].dtype, precision, widest)
    options = launch_options(config, tensors[0].dtype, precision)
    run(kernel, options, tensors, w, batch_sizes, batch, hidden, own, constants)


def run(kernel, options: dict, tensors: List[Tensor], w: Tensor, batch_sizes: List[int], batch: int, hidden: int,
        own: Tuple, constants: dict) -> None:
    """One launch on the grid (direction, block of ROWS batch rows). Every kernel takes its tensors, then
    (sizes, starts, steps, batch, rows, H, W_hh's three strides, packed, its own arguments, constants)."""
    table = steps(batch_sizes, w.device)
    kernel[(w.size(0), programs(batch))](
        *tensors, table.sizes, table.starts, len(batch_sizes), batch, sum(batch_sizes), hidden, *w.stride(),
        table.packed, *own, **options, **constants,
    )


def programs(batch: int) -> int:
    """The programs per direction: one per block of ROWS batch rows."""
    return triton.cdiv(batch, ROWS)


def no_tickets(device: torch.device) -> Tensor:
    """What a kernel's ``tickets`` pointer gets where it sums no bias gradients (never read)."""
    return torch.empty(0, dtype=torch.int32, device=device)


def _has_maxnreg() -> bool:
    """Whether this Triton takes a register limit (older ones choose their own)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "maxnreg" in getattr(CUDAOptions, "__dataclass_fields__", {})


_HAS_MAXNREG = _has_maxnreg()


def register_limit(count: int) -> dict:
    """The launch option that allows ``count`` registers a thread, where this Triton takes one."""
    return {"maxnreg": count} if _HAS_MAXNREG else {}


def dot_precision(t: Tensor) -> str:
    """TF32 float32 dots on CUDA where torch.backends.cudnn.allow_tf32 allows them, as torch.nn's cuDNN
    RNNs compute (and as fast); IEEE otherwise: torch.backends.cudnn.allow_tf32 = False gives exact
    float32 products on both."""
    return dot_precision_for(t.dtype, t.device)


def dot_precision_for(dtype: torch.dtype, device: torch.device) -> str:
    """:func:`dot_precision` of a tensor of ``dtype`` on ``device``."""
    tf32 = dtype == torch.float32 and device.type == "cuda" and torch.backends.cudnn.allow_tf32
    return "tf32" if tf32 else "ieee"


class Steps(NamedTuple):
    """Per-step row counts and offsets for a packed batch (empty for a padded one)."""

    packed: bool
    sizes: Tensor  # int32 (T,): rows of step t
    starts: Tensor  # int32 (T,): first row of step t


def steps(batch_sizes: List[int], device: torch.device) -> Steps:
    """The step tables of a rows layout; a padded batch needs none (and no host-to-device copy)."""
    if batch_sizes[-1] == batch_sizes[0]:
        empty = torch.empty(0, dtype=torch.int32, device=device)
        return Steps(False, empty, empty)
    sizes = torch.tensor(batch_sizes, dtype=torch.int32)
    starts = torch.cumsum(sizes, 0, dtype=torch.int32) - sizes
    return Steps(True, sizes.to(device), starts.to(device))


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the gate math, and of the backward's running state gradients."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh_through_exp(x):
    # (1 − e)/(1 + e) with e = e^{−2|x|}, x's sign: it neither overflows nor loses the sign, but near 0
    # 1 − e cancels, to 1e-7 absolute in float32 (1e-16 in float64, far below its tests' 1e-9). So in
    # float32 and below, near 0, an odd polynomial keeps tanh accurate relative to its value, as
    # libdevice's is: the native CPU kernels' formula (recurrent/kernels/cpu/gate_math.h).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0, -t, t)
    if x.dtype != tl.float64:
        u = x * x
        p = u * -5.691985600e-3 + 2.062629163e-2
        p = p * u + -5.373531953e-2
        p = p * u + 1.333138198e-1
        p = p * u + -3.333328068e-1
        t = tl.where(tl.abs(x) < 0.625, x + (x * u) * p, t)
    return t


# The interpreter has no libdevice; compiled kernels get CUDA's own tanh, the one torch's kernels call.
tanh = tanh_through_exp if os.environ.get("TRITON_INTERPRET") == "1" else libdevice.tanh


@triton.jit
def program_rows(w_ptr, stride_wd, batch, rows_total, H, BLOCK_B: tl.constexpr):
    """This program's direction d, its batch rows, d's offset in (D, T, H) tensors, d's W_hh, and
    the rows' offsets in (D, N, H) state tensors."""
    d = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    return d, rows, d * rows_total * H, w_ptr + d * stride_wd, (d * batch + rows) * H


@triton.jit
def step_layout(t, rows, batch, sizes_ptr, starts_ptr, packed, first_ptr, outs_ptr, state, seq, H):
    """For step t: which of the rows run, pointers to their state before the step (``first_ptr``'s
    rows, e.g. h0, at t = 0; else step t − 1's rows of ``outs_ptr``), and their offsets in (D, T, H)."""
    size = batch
    start = t * batch
    prev_start = (t - 1) * batch
    if packed:
        size = tl.load(sizes_ptr + t)
        start = tl.load(starts_ptr + t)
        prev_start = tl.load(starts_ptr + tl.maximum(t - 1, 0))
    prev = tl.where(t == 0, first_ptr + state, outs_ptr + seq + (prev_start.to(tl.int64) + rows) * H)
    return rows < size, prev, seq + (start.to(tl.int64) + rows) * H


@triton.jit
def column_block(j, H, active, BLOCK_N: tl.constexpr):
    """State columns j … j + BLOCK_N − 1: (columns, their mask, the tile mask with the active rows)."""
    cols = j + tl.arange(0, BLOCK_N)
    col_mask = cols < H
    return cols, col_mask, active[:, None] & col_mask[None, :]


@triton.jit
def load(ptr, mask, ACC: tl.constexpr):
    """A masked tile in the accumulator dtype (0 where masked)."""
    return tl.load(ptr, mask=mask, other=0.0).to(ACC)


@triton.jit
def load_pair(ptr, out, cols, H, mask, ACC: tl.constexpr):
    """Two gates kept side by side in a (D, T, 2H) tensor (the GRU's r and z, the LSTM's i and f)."""
    at = ptr + 2 * out[:, None] + cols[None, :]
    return load(at, mask, ACC), load(at + H, mask, ACC)


@triton.jit
def store_pair(ptr, out, cols, H, first, second, mask):
    at = ptr + 2 * out[:, None] + cols[None, :]
    tl.store(at, first.to(ptr.dtype.element_ty), mask=mask)
    tl.store(at + H, second.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def state_gradient(dh_ptr, state, grad_hs_ptr, out, cols, mask, ACC: tl.constexpr):
    """dh' for a tile of this step's rows: what step t + 1 carried back plus the output's own gradient."""
    carried = load(dh_ptr + state[:, None] + cols[None, :], mask, ACC)
    return carried + load(grad_hs_ptr + out[:, None] + cols[None, :], mask, ACC)


@triton.jit
def state_chunk(row_ptrs, row_mask, k0, K, BLOCK_K: tl.constexpr):
    """Columns k0 … k0 + BLOCK_K − 1 of the rows that start at ``row_ptrs`` (unit column stride; 0 past
    K and on masked rows), with their indices and mask: the left operand of one K chunk."""
    ks = k0 + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    return tl.load(row_ptrs[:, None] + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0), ks, k_mask


@triton.jit
def chunk_product(a, w_ptr, ks, k_mask, cols, col_mask, stride_wk, stride_wn, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """a (BLOCK_B, BLOCK_K) times the (ks, cols) tile of W, addressed by strides."""
    w = tl.load(w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
    return tl.dot(a, w, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def gate_products(
    row_ptrs, row_mask, w_ptr, cols, col_mask, K, H, stride_wk, stride_wn, GATES: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The hidden products of GATES (1 to 4) gates for one column block, gate g's columns being
    g·H + cols, in one K loop: each chunk of the state is loaded once and the gates' weight tiles
    are in flight together. Gates past GATES come back as zeros."""
    g0 = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    g1 = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    g2 = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    g3 = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    for k0 in range(0, K, BLOCK_K):
        a, ks, k_mask = state_chunk(row_ptrs, row_mask, k0, K, BLOCK_K)
        g0 += chunk_product(a, w_ptr, ks, k_mask, cols, col_mask, stride_wk, stride_wn, ACC, PRECISION)
        if GATES >= 2:
            g1 += chunk_product(a, w_ptr, ks, k_mask, cols + H, col_mask, stride_wk, stride_wn, ACC, PRECISION)
        if GATES >= 3:
            g2 += chunk_product(a, w_ptr, ks, k_mask, cols + 2 * H, col_mask, stride_wk, stride_wn, ACC, PRECISION)
        if GATES == 4:
            g3 += chunk_product(a, w_ptr, ks, k_mask, cols + 3 * H, col_mask, stride_wk, stride_wn, ACC, PRECISION)
    return g0, g1, g2, g3


@triton.jit
def hidden_dot(
    row_ptrs, row_mask, w_ptr, cols, col_mask, K, stride_wk, stride_wn,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Σ_k A[row, k] W[k, col] for a (BLOCK_B, BLOCK_N) tile: A's rows start at ``row_ptrs``, W is
    addressed by strides. K-chunked, so only BLOCK_K-wide tiles are on chip."""
    acc = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    for k0 in range(0, K, BLOCK_K):
        a, ks, k_mask = state_chunk(row_ptrs, row_mask, k0, K, BLOCK_K)
        acc += chunk_product(a, w_ptr, ks, k_mask, cols, col_mask, stride_wk, stride_wn, ACC, PRECISION)
    return acc


@triton.jit
def running_start(dhn_ptr, dh_ptr, state, rows_mask, H, has_dhn, ACC: tl.constexpr, BLOCK_N: tl.constexpr):
    """The backward's running gradient (D, N, H) at its start: dh_n where one came (``has_dhn``), else zeros."""
    for j in range(0, H, BLOCK_N):
        cols = j + tl.arange(0, BLOCK_N)
        mask = rows_mask[:, None] & (cols < H)[None, :]
        at = state[:, None] + cols[None, :]
        tl.store(dh_ptr + at, load(dhn_ptr + at, mask & has_dhn, ACC).to(dh_ptr.dtype.element_ty), mask=mask)


@triton.jit
def partial_row(part_ptr, W):
    """This program's row of a (D, programs per direction, W) buffer of partial bias-gradient sums."""
    return part_ptr + (tl.program_id(0).to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * W


@triton.jit
def zero_row(row_ptr, W, BLOCK: tl.constexpr):
    for c in range(0, W, BLOCK):
        cols = c + tl.arange(0, BLOCK)
        tl.store(row_ptr + cols, tl.zeros((BLOCK,), row_ptr.dtype.element_ty), mask=cols < W)


@triton.jit
def add_column_sums(row_ptr, offset, cols, col_mask, tile):
    """Adds the column sums of a gate-gradient tile (masked rows hold zeros) to a partial row."""
    at = row_ptr + offset + cols
    tl.store(at, tl.load(at, mask=col_mask, other=0.0) + tl.sum(tile.to(row_ptr.dtype.element_ty), 0), mask=col_mask)


@triton.jit
def sum_partials(part_ptr, dbi_ptr, dbh_ptr, tickets_ptr, W, BLOCK: tl.constexpr):
    """The bias gradients of direction d, db_ih and db_hh (D, W/2) each: the sums over its programs' partial
    rows (each [db_ih | db_hh]), in program order (deterministic), made by whichever program finishes last.
    Each program takes a ticket once its own row is written (the barrier orders its threads' stores before
    the release); the holder of the last one reads every row (acquire) and leaves the counter at 0 for the
    next use. The counter starts at 0: the forward kernel of the same layer zeroes it (:func:`zero_tickets`)."""
    d = tl.program_id(0).to(tl.int64)
    programs = tl.num_programs(1)
    half = W // 2
    tl.debug_barrier()
    ticket = tl.atomic_add(tickets_ptr + d, 1, sem="acq_rel", scope="gpu")
    if ticket == programs - 1:
        for c in range(0, half, BLOCK):
            cols = c + tl.arange(0, BLOCK)
            total_i = tl.zeros((BLOCK,), part_ptr.dtype.element_ty)
            total_h = tl.zeros((BLOCK,), part_ptr.dtype.element_ty)
            for p in range(programs):
                row = part_ptr + (d * programs + p) * W + cols
                total_i += tl.load(row, mask=cols < half, other=0.0, volatile=True)
                total_h += tl.load(row + half, mask=cols < half, other=0.0, volatile=True)
            tl.store(dbi_ptr + d * half + cols, total_i.to(dbi_ptr.dtype.element_ty), mask=cols < half)
            tl.store(dbh_ptr + d * half + cols, total_h.to(dbh_ptr.dtype.element_ty), mask=cols < half)
        tl.store(tickets_ptr + d, 0)


@triton.jit
def zero_tickets(tickets_ptr, sums):
    """Sets direction d's ticket counter of :func:`sum_partials` to 0 (one program per direction)."""
    if sums:
        if tl.program_id(1) == 0:
            tl.store(tickets_ptr + tl.program_id(0), 0)


class Outputs(NamedTuple):
    """What the whole-stack op (:mod:`.stack`) has a kernel write beyond the contract's outputs: h_n into its
    slice of the stack's final states, a copy of hs (the caller's output), the running gradient into its slice
    of the stack's dh0, the bias gradients (db_ih and db_hh, (D, G) each); and the ticket counters (D,) that
    the bias sums of the layer's backward use (:func:`sum_partials`), which its forward zeroes. None: the
    kernel's own buffer, or not at all."""

    h_n: Optional[Tensor] = None
    c_n: Optional[Tensor] = None
    copy: Optional[Tensor] = None
    tickets: Optional[Tensor] = None
    dh: Optional[Tensor] = None
    dc: Optional[Tensor] = None
    bias: Optional[Tuple[Tensor, Tensor]] = None


def forward_buffers(
    gi: Tensor, state0: List[Tensor], hidden: int, batch: int, out: Outputs
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(gi and h0 laid out for the kernels (h0: any pointer where ``state0`` is [], zeros), the outputs hs
    (D, T, H) to fill, and h_n (D, N, H), which the kernels write whole: every row runs its first step)."""
    gi = as_rows(gi)
    h_n = gi.new_empty(gi.size(0), batch, hidden) if out.h_n is None else out.h_n
    return gi, as_rows(state0[0]) if state0 else gi, gi.new_empty(gi.size(0), gi.size(1), hidden), h_n


class BackwardBuffers(NamedTuple):
    h0: Tensor  # the first state (any tensor where there is none)
    dhn: Tensor  # the final state's gradient as given (any tensor where there is none)
    dh: Tensor  # the running gradient, dh0 at the end (accumulator dtype)
    part: Tensor  # (D, programs, W) partial bias sums (accumulator dtype)
    dbi: Tensor  # (D, G) the input bias's gradient
    dbh: Tensor  # (D, G) the hidden bias's gradient
    tickets: Tensor  # int32 (D,)


def backward_buffers(
    grad_final: Optional[Tensor], h0: Optional[Tensor], hs: Tensor, batch: int, width: int, out: Outputs
) -> BackwardBuffers:
    """A backward kernel's buffers: the running gradient in ``out.dh`` where that has the accumulator dtype,
    ``width`` partial sums per hidden unit and program where ``out`` asks for the bias gradients."""
    acc = accumulator_dtype(hs.dtype)
    dh = out.dh if out.dh is not None and out.dh.dtype == acc else hs.new_empty(hs.size(0), batch, hs.size(2), dtype=acc)
    sums = out.tickets is not None
    part = hs.new_empty(hs.size(0), programs(batch), width * hs.size(2), dtype=acc) if sums else dh
    return BackwardBuffers(
        hs if h0 is None else h0, dh if grad_final is None else as_rows(grad_final), dh, part,
        *(out.bias if sums else (hs, hs)), out.tickets if sums else no_tickets(hs.device),
    )


def tickets_or_none(tickets: Optional[Tensor], device: torch.device) -> Tensor:
    return no_tickets(device) if tickets is None else tickets


def running_gradient(grad_final: Tensor) -> Tensor:
    """The backward's running state gradient (D, N, ·): a contiguous copy of the final state's
    gradient, in the accumulator dtype (16-bit models accumulate it in float32)."""
    dtype = accumulator_dtype(grad_final.dtype)
    return grad_final.to(dtype, memory_format=torch.contiguous_format, copy=True)


def as_rows(t: Tensor) -> Tensor:
    """A (D, ·, W) tensor with unit column stride and rows W apart, as the kernels address it."""
    return t.contiguous()


def unit_stride(w: Tensor, dim: int) -> Tensor:
    """``w`` with stride 1 along ``dim`` (itself when it has it, as the stacked weights do): Triton
    specializes a unit stride at compile time, and the compile check compiles that variant."""
    return w if w.stride(dim) == 1 else w.transpose(dim, -1).contiguous().transpose(dim, -1)
