"""The stack with its time loops as torch's scan operator, for ``torch.export`` (and the exporters built
on it): the exported graph holds one loop per layer, whatever the example's length, so one program
serves every batch size and sequence length. A Python loop would be unrolled at the example's
length, and its per-step slicing would pin the length to the example's.

Padded input only (a PackedSequence's per-step batch sizes are data, not a shape). The stack loop
(:func:`.stack.stack_layers`) runs its layers here as its ``"scan"`` backend, which the layers choose
only while exporting (:func:`exporting`). The gate math is the cells' step functions, the same as
every other path's.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..cells import gru_step, lstm_step, rnn_relu_step, rnn_tanh_step

try:  # torch >= 2.5 has the operator; older torch exports the unrolled loop at a static shape
    from torch._higher_order_ops.scan import scan
except ImportError:  # pragma: no cover - depends on the torch version
    scan = None


def exporting() -> bool:
    """Whether torch.export is tracing now, and scan is there to keep the loops loops."""
    compiler = getattr(torch, "compiler", None)
    return scan is not None and compiler is not None and getattr(compiler, "is_exporting", lambda: False)()


def scan_layer(
    mode: str,
    rows: Tensor,
    batch: int,
    state0: List[Tensor],
    weights: Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], List[Tensor]],
) -> Tuple[Tensor, List[Tensor]]:
    """One layer over the rows (L·N, I) of a padded batch of N, from its stacked ``weights``
    (:func:`.weights.stack_weights`): (output rows (L·N, D·H_out), final states). One scan per
    direction, the reverse one over the batch flipped in time. (One scan over both directions
    stacked exports too, but the ONNX exporter fails on it for GRU and LSTM.)"""
    w_ih, w_hh, b_ih, b_hh, extra = weights
    x = rows.view(-1, batch, rows.size(-1))
    outputs: List[Tensor] = []
    finals: List[List[Tensor]] = [[] for _ in state0]
    for d in range(w_ih.size(0)):
        own = slice(d, d + 1)  # this direction's weights, keeping the direction dim of size 1
        gi = torch.matmul(x if d == 0 else x.flip(0), w_ih[own].transpose(1, 2))  # (L, N, G) @ (1, I, G)
        if b_ih is not None:
            gi = gi + b_ih[own]
        step = _step(mode, w_hh[own].transpose(1, 2), None if b_hh is None else b_hh[own], extra, d)
        last, hs = scan(step, [s[own] for s in state0], gi.unsqueeze(1))  # hs (L, 1, N, H_out)
        outputs.append(hs[:, 0] if d == 0 else hs[:, 0].flip(0))
        for i, state in enumerate(last):
            finals[i].append(state)
    out = torch.cat(outputs, -1)
    return out.reshape(-1, out.size(-1)), [torch.cat(f, 0) for f in finals]


def _step(mode: str, w_hh_t: Tensor, b_hh: Optional[Tensor], extra: List[Tensor], direction: int):
    """scan's step for one direction: (carry [h] or [h, c], gi row block (1, N, G)) -> (carry, h)."""
    w_hr_t = extra[0][direction : direction + 1].transpose(1, 2) if extra else None

    def step(carry: List[Tensor], g: Tensor):
        h = carry[0]
        gh = torch.bmm(h, w_hh_t) if b_hh is None else torch.baddbmm(b_hh, h, w_hh_t)
        if mode == "GRU":
            new = [gru_step(g, gh, h)[0]]
        elif mode == "LSTM":
            new_h, new_c = lstm_step(g, gh, carry[1])[:2]
            new = [new_h if w_hr_t is None else torch.bmm(new_h, w_hr_t), new_c]
        else:
            new = [rnn_relu_step(g + gh) if mode == "RNN_RELU" else rnn_tanh_step(g + gh)]
        return new, new[0].clone()  # scan's outputs must not alias its carry

    return step
