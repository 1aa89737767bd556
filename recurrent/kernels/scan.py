"""A layer's time loops as torch's scan operator, for ``torch.export`` (and the exporters built on
it): the graph holds one loop per layer and direction, whatever the example's length, so one
exported program serves every batch size and sequence length. A Python loop would be unrolled at the
example's length, and its per-step slicing would pin the length to the example's. (torch.compile
gets one opaque op per layer instead: :mod:`.ops`.)

Padded input only (a PackedSequence's per-step batch sizes are data, not a shape). The route
(:mod:`recurrent.routes`) decides when a call scans; the stack loop then runs each layer here, the
kind's step (its registry entry's ``scan_step``: the cells' step functions, the same gate math as
every other path's) inside the scan.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

try:  # torch >= 2.5 has the operator; older torch exports the unrolled loop at a static shape
    from torch._higher_order_ops.scan import scan
except ImportError:  # pragma: no cover - depends on the torch version
    scan = None

# (gi of the step (1, N, G), gh = h W_hhᵀ + b_hh (1, N, G), states before the step, the direction's
# slice d:d+1 of the stacked weights) -> (the step's output (1, N, H_out), the states after it).
CellStep = Callable[[Tensor, Tensor, List[Tensor], slice], Tuple[Tensor, List[Tensor]]]


def exporting() -> bool:
    """Whether torch.export traces now (the dynamo ONNX exporter included)."""
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and getattr(compiler, "is_exporting", lambda: False)()


def scan_layer(
    rows: Tensor,
    batch: int,
    state0: List[Tensor],
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor],
    b_hh: Optional[Tensor],
    cell_step: CellStep,
) -> Tuple[Tensor, List[Tensor]]:
    """One layer over the rows (L·N, I) of a padded batch of N, from weights stacked by direction
    (w_ih (D, G, I), w_hh (D, G, H), biases (D, 1, G)): (output rows (L·N, D·H_out), final states).
    One scan per direction, the reverse one over the batch flipped in time. (One scan over both
    directions stacked exports too, but the ONNX exporter fails on it for GRU and LSTM.)"""
    x = rows.view(-1, batch, rows.size(-1))
    outputs: List[Tensor] = []
    finals: List[List[Tensor]] = [[] for _ in state0]
    for d in range(w_ih.size(0)):
        own = slice(d, d + 1)  # this direction's weights, keeping the direction dim of size 1
        gi = torch.matmul(x if d == 0 else x.flip(0), w_ih[own].transpose(1, 2))  # (L, N, G) @ (1, I, G)
        if b_ih is not None:
            gi = gi + b_ih[own]
        step = _scan_step(cell_step, w_hh[own].transpose(1, 2), None if b_hh is None else b_hh[own], own)
        last, hs = scan(step, [s[own] for s in state0], gi.unsqueeze(1))  # hs (L, 1, N, H_out)
        outputs.append(hs[:, 0] if d == 0 else hs[:, 0].flip(0))
        for i, state in enumerate(last):
            finals[i].append(state)
    out = torch.cat(outputs, -1)
    return out.reshape(-1, out.size(-1)), [torch.cat(f, 0) for f in finals]


def _scan_step(cell_step: CellStep, w_hh_t: Tensor, b_hh: Optional[Tensor], own: slice):
    """scan's step for the direction ``own``: (carry = states, gi row block (1, N, G)) -> (carry, output)."""

    def step(carry: List[Tensor], g: Tensor):
        # gh as plain ops, not the TorchScript hidden_product: Inductor retraces the step on fake tensors
        gh = torch.bmm(carry[0], w_hh_t) if b_hh is None else torch.baddbmm(b_hh, carry[0], w_hh_t)
        output, new = cell_step(g, gh, carry, own)
        # scan wants fresh tensors out: no output aliasing the carry, no carry aliasing an input (an
        # LSTM step's c is one under autograd)
        return [s.clone() for s in new], output.clone()

    return step
