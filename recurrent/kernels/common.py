"""Pieces every sequence kernel shares, and the layout they share.

Rows layout. A sequence batch is held as rows, time-major: the rows of step t are the sequences
still running at t, so a padded (L, N, ·) batch is simply its L·N rows and a PackedSequence's data
is used as it is. ``batch_sizes[t]`` is the number of rows of step t (non-increasing, as in a
PackedSequence; all N for a padded batch).

Directions are batched on dim 0: a bidirectional layer runs both directions in one loop with one
batched hidden product per step. The reverse direction reads its rows reversed in time within each
sequence (the permutation :func:`reverse_index` builds), so both directions run "forward" over
their own rows. Shapes: gi (D, T, G), state (D, N, H), w_ih (D, G, I), w_hh (D, G, H), b_* (D, 1, G),
hs (D, T, H), with T the number of rows and G the gate width (H for RNN, 3H for GRU, 4H for LSTM;
an LSTM's state and hs have the projection size P in place of H when it has one).
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .._jit import script
from .products import packed_linear

# The eager layers call per_direction, join_directions, split_directions, sum_directions, previous_blocks
# and blocks_product from Python once per layer, where a TorchScript function's call can cost more than its
# work (blocks_product of one row, G = 600, H = 200: 49 µs scripted, 25 µs its one bmm alone): they are
# plain functions, which the TorchScript code that calls them compiles with itself.


@script
def hidden_product(h: Tensor, w_hh_t: Tensor, b_hh: Optional[Tensor], packed: Optional[List[Tensor]] = None) -> Tensor:
    """gh = h W_hhᵀ + b_hh for every direction at once; ``w_hh_t`` is (D, H, G); ``packed``: W_hh as
    :func:`.products.pack` laid it out, for oneDNN's product."""
    if packed is not None:
        return packed_linear(h, packed, b_hh)
    if b_hh is None:
        return torch.bmm(h, w_hh_t)
    return torch.baddbmm(b_hh, h, w_hh_t)


@script
def times_w_hh(x: Tensor, w_hh: Tensor, packed: Optional[List[Tensor]] = None) -> Tensor:
    """x W_hh for every direction at once (the backward's dh = da W_hh): x (D, N, G), ``w_hh`` (D, G, H);
    ``packed``: W_hhᵀ as :func:`.products.pack` laid it out, for oneDNN's product."""
    return torch.bmm(x, w_hh) if packed is None else packed_linear(x, packed, None)


@script
def tanh_slope(t: Tensor) -> Tensor:
    """tanh'(a) from t = tanh(a): 1 − t², in one pass and one new tensor."""
    return torch.addcmul(t.new_ones(1).expand_as(t), t, t, value=-1.0)


@script
def reverse_index(batch_sizes: List[int], device: torch.device) -> Tensor:
    """Row permutation that reverses every sequence in time within its own length (an involution)."""
    steps, batch = len(batch_sizes), batch_sizes[0]
    if batch_sizes[-1] == batch:  # a padded batch: plain time reversal
        return torch.arange(steps * batch, device=device).view(steps, batch).flip(0).reshape(-1)
    sizes = torch.tensor(batch_sizes, dtype=torch.long, device=device)
    starts = torch.cumsum(sizes, 0) - sizes
    lengths = (sizes.unsqueeze(1) > torch.arange(batch, device=device)).sum(0)
    step = torch.repeat_interleave(torch.arange(steps, device=device), sizes)
    sequence = torch.arange(step.numel(), device=device) - starts[step]
    return starts[lengths[sequence] - 1 - step] + sequence


def per_direction(rows: Tensor, reverse: Optional[Tensor]) -> Tensor:
    """(T, W) → (D, T, W): what each direction reads, the second one reversed in time."""
    if reverse is None:
        return rows.unsqueeze(0)
    return torch.stack([rows, rows.index_select(0, reverse)])


def join_directions(per_dir: Tensor, reverse: Optional[Tensor]) -> Tensor:
    """(D, T, W) → (T, D·W) in natural time, written in place into one new tensor."""
    if reverse is None:
        return per_dir[0]
    width = per_dir.size(2)
    joined = torch.empty(per_dir.size(1), 2 * width, dtype=per_dir.dtype, device=per_dir.device)
    joined[:, :width].copy_(per_dir[0])
    joined[:, width:].index_copy_(0, reverse, per_dir[1])  # the permutation is its own inverse
    return joined


def gather_directions(per_dir: Tensor, reverse: Optional[Tensor]) -> Tensor:
    """:func:`join_directions` without in-place writes, which vmap cannot batch (torch.func and
    forward-AD paths): the reverse index is its own inverse, so gathering with it puts the second
    direction back in natural time. Plain Python: these paths must not run through TorchScript."""
    if reverse is None:
        return per_dir[0]
    return torch.cat([per_dir[0], per_dir[1].index_select(0, reverse)], 1)


def split_directions(rows: Tensor, reverse: Optional[Tensor]) -> Tensor:
    """(T, D·W) → (D, T, W): the inverse of :func:`join_directions` (backward only: writes with out=)."""
    if reverse is None:
        return rows.unsqueeze(0)
    width = rows.size(1) // 2
    split = torch.empty(2, rows.size(0), width, dtype=rows.dtype, device=rows.device)
    split[0].copy_(rows[:, :width])
    torch.index_select(rows[:, width:], 0, reverse, out=split[1])
    return split


def sum_directions(per_dir: Tensor, reverse: Optional[Tensor]) -> Tensor:
    """(D, T, W) → (T, W): gradients of what :func:`per_direction` handed out, added back up."""
    if reverse is None:
        return per_dir[0]
    return per_dir[0].index_add(0, reverse, per_dir[1])


@script
def previous_states(h0: Tensor, hs: Tensor, batch_sizes: List[int]) -> Tensor:
    """(D, T, H) whose row for (t, n) is sequence n's state before step t: h0 at t = 0."""
    pieces: List[Tensor] = [h0[:, : batch_sizes[0]]]
    start = 0
    for t in range(1, len(batch_sizes)):
        pieces.append(hs[:, start : start + batch_sizes[t]])
        start += batch_sizes[t - 1]
    return torch.cat(pieces, 1)


def previous_blocks(h0: Tensor, hs: Tensor, batch_sizes: List[int]) -> List[Tensor]:
    """The state before every row, as consecutive row blocks (D, ·, H) covering rows 0..T in order.
    For a padded batch that is h0, then hs one step behind: two views, nothing copied."""
    if batch_sizes[-1] == batch_sizes[0]:
        return [h0, hs[:, : hs.size(1) - batch_sizes[0]]]
    return [previous_states(h0, hs, batch_sizes)]


def blocks_product(grad: Tensor, blocks: List[Tensor]) -> Tensor:
    """Σ over rows of gradᵀ · state, with the states given as consecutive row blocks: (D, G, H)."""
    total = torch.bmm(grad[:, : blocks[0].size(1)].transpose(1, 2), blocks[0])
    start = blocks[0].size(1)
    for block in blocks[1:]:
        if block.size(1) > 0:  # a one-step call's states before its rows are h0 alone
            total = torch.baddbmm(total, grad[:, start : start + block.size(1)].transpose(1, 2), block)
        start += block.size(1)
    return total


@script
def step_rows(state: Tensor, size: int) -> Tensor:
    """The rows of ``state`` (D, N, ·) still running at a step with ``size`` rows."""
    return state if size == state.size(1) else state[:, :size]


@script
def carry_rows(new: Tensor, state: Tensor) -> Tensor:
    """The state after a step: new values for the running rows, the finished rows kept as they were."""
    return new if new.size(1) == state.size(1) else torch.cat([new, state[:, new.size(1) :]], 1)
