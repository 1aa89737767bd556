"""What the persistent Triton kernels share: the math helpers, the hidden product, launch settings.

Design (one launch per layer and pass): the grid is (direction, block of BLOCK_B batch rows). Each
program loops over time inside the kernel and owns its rows for the whole sequence. Per step it
forms the hidden product for one block of BLOCK_N state columns at a time, K-chunked (BLOCK_K),
reading W_hh and the previous state from global memory (L2) so that shared memory and registers
stay independent of the hidden size; then the gate math for those columns; then the stores. The
next step reads the states that other threads of the same program wrote, so every step ends with
a barrier inside the program (programs never share rows, so no grid-wide synchronisation).

Rows layout and shapes as in :mod:`recurrent.kernels.common`. For a packed batch the kernels read
the per-step row counts and row offsets from two small int32 tensors; for a padded batch they
compute them (no host-to-device copy, so a padded call stays CUDA-graph-safe).

Interpreter (``TRITON_INTERPRET=1``): libdevice's tanh is missing there, so tanh is written through
exp, the same form on both. Precision: float32 dots are exact IEEE unless
``torch.backends.cuda.matmul.allow_tf32`` is set; 16-bit dots accumulate in float32 and the gate
math runs in float32; float64 stays float64.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_HIDDEN = 512  # the largest hidden size the configurations below are compile-checked for
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class Blocks(NamedTuple):
    rows: int  # BLOCK_B: batch rows per program (tl.dot needs at least 16)
    cols: int  # BLOCK_N: state columns per gate-math block
    k: int  # BLOCK_K: reduction chunk of the hidden product
    warps: int
    stages: int  # software-pipelining depth of the K loop
    registers: int  # per thread; stated, as ptxas otherwise spills a few bytes to raise occupancy


WIDTHS = (16, 32)  # every BLOCK_N = BLOCK_K the dispatcher can pick (benchmarks/triton_check.py compiles each)


def blocks(hidden: int) -> Blocks:
    """The pinned configuration for a hidden size (no autotuning: the compile check covers each).
    With eight warps, one stage, K chunks of 16 and 128 registers a thread, no kernel spills
    (IEEE float32 dots run on FMA units, whose tiles live in registers)."""
    width = WIDTHS[0] if hidden <= WIDTHS[0] else WIDTHS[1]
    return Blocks(rows=16, cols=width, k=16, warps=8, stages=1, registers=128)


def launch_options(config: Blocks, dtype: torch.dtype, precision: Optional[str] = None) -> dict:
    """The compile-time settings shared by every kernel launch (and by the compile check)."""
    return dict(
        ACC=tl.float64 if dtype == torch.float64 else tl.float32, PRECISION=precision or dot_precision(dtype),
        BLOCK_B=config.rows, BLOCK_N=config.cols, BLOCK_K=config.k, num_warps=config.warps, num_stages=config.stages,
        **({"maxnreg": config.registers} if _HAS_MAXNREG else {}),
    )


def _has_maxnreg() -> bool:
    """Whether this Triton takes a register limit (older ones choose their own)."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "maxnreg" in getattr(CUDAOptions, "__dataclass_fields__", {})


_HAS_MAXNREG = _has_maxnreg()


def dot_precision(dtype: torch.dtype) -> str:
    """IEEE float32 dots unless the user allowed TF32 for matmuls (torch's own switch)."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


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


def grid(directions: int, batch: int, config: Blocks) -> Tuple[int, int]:
    return directions, triton.cdiv(batch, config.rows)


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the gate math, and of the backward's running state gradients."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # 2σ(2x) − 1 written so that it neither overflows nor loses the sign for large |x|.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def step_rows(t, batch, sizes_ptr, starts_ptr, packed):
    """(rows of step t, first row of step t, first row of step t − 1) in the rows layout."""
    size = batch
    start = t * batch
    prev_start = (t - 1) * batch
    if packed:
        size = tl.load(sizes_ptr + t)
        start = tl.load(starts_ptr + t)
        prev_start = tl.load(starts_ptr + tl.maximum(t - 1, 0))
    return size, start.to(tl.int64), prev_start.to(tl.int64)


@triton.jit
def previous_rows(t, d, rows, batch, prev_start, first_ptr, outs_ptr, seq, H):
    """Row pointers to the state before step t: the initial state at t = 0, else step t − 1's outputs."""
    return tl.where(t == 0, first_ptr + (d * batch + rows) * H, outs_ptr + seq + (prev_start + rows) * H)


@triton.jit
def hidden_dot(
    row_ptrs, row_mask, w_ptr, cols, col_mask, K, stride_wk, stride_wn,
    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Σ_k A[row, k] W[k, col] for a (BLOCK_B, BLOCK_N) tile: A's rows start at ``row_ptrs`` (unit
    column stride), W is addressed by strides. K-chunked, so only BLOCK_K-wide tiles are on chip."""
    acc = tl.zeros((BLOCK_B, BLOCK_N), ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        a = tl.load(row_ptrs[:, None] + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(
            w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn,
            mask=k_mask[:, None] & col_mask[None, :], other=0.0,
        )
        acc += tl.dot(a, w, input_precision=PRECISION, out_dtype=ACC)
    return acc


def running_gradient(grad_final: Tensor) -> Tensor:
    """The backward's running state gradient (D, N, ·): a contiguous copy of the final state's
    gradient, in the accumulator dtype (16-bit models accumulate it in float32)."""
    dtype = accumulator_dtype(grad_final.dtype)
    return grad_final.to(dtype, memory_format=torch.contiguous_format, copy=True)


def as_rows(t: Tensor) -> Tensor:
    """A (D, ·, W) tensor with unit column stride and rows W apart, as the kernels address it."""
    return t.contiguous()
