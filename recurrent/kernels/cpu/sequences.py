"""The native CPU kernels: each kind's kernel pair (contract: :mod:`..autograd`) as calls of its
sequence ops (``torch.ops.recurrent_cpu.*``, :mod:`.build`), which run the whole time loop in C++,
input projections included (``rows_forward``): without gradients no sequence-sized buffer of gate
inputs is made, and with them the gates go straight into the saved buffer.

What they save is what the TorchScript kernels save. To keep the backward's peak memory down, each
backward reads the incoming gradient as the output rows' (``JoinedGrad``: no per-direction copy)
and writes the gate gradients over the saved gates; the GRU's hands back the hidden gates' gradient
as its n block only (the r and z blocks are dgi's), over the saved ghn; the RNN's writes its
activation gradients over the saved outputs and sums dW_hh itself.
Plain Python: only the eager layers call them (a scripted model never refers to these ops).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from ..contract import JoinedGrad, SummedWeight
from . import build  # noqa: F401 - declares the ops' schemas

_ops = torch.ops.recurrent_cpu  # called by overload (.default): the packet's dispatch cost ~10 µs a call
Forward = Tuple[Tensor, List[Tensor], List[Tensor]]
Backward = Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]


def _flat(bias: Optional[Tensor]) -> Optional[Tensor]:
    """A stacked bias (D, 1, G) as the ops take it: (D, G)."""
    return None if bias is None else bias.reshape(bias.size(0), -1).contiguous()


def lstm_forward(
    x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], state0: List[Tensor], w_hh: Tensor, b_hh: Optional[Tensor],
    kind_weights: List[Tensor], batch_sizes: List[int], save: bool,
) -> Forward:  # fmt: skip
    """Returns (hs, [h_n, c_n], saved); with ``save``, saved = [gates (i, f, g, o), c] for every row."""
    h0, c0 = (s.contiguous() for s in state0)
    hs, h_n, c_n, gates, cs = _ops.lstm_sequence.default(
        x.contiguous(), w_ih.contiguous(), _flat(b_ih), h0, c0, w_hh.contiguous(), batch_sizes, save
    )
    return hs, [h_n, c_n], [gates, cs] if save else []


def lstm_backward(
    grad_hs: JoinedGrad, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor], batch_sizes: List[int],
) -> Backward:  # fmt: skip
    """Returns (dgates, dgates, [dh0, dc0], []); the op's comment has the formulas."""
    dh_n, dc_n = (g.contiguous() for g in grad_finals)
    dgates, dh0, dc0 = _ops.lstm_sequence_backward.default(
        *grad_hs, dh_n, dc_n, saved[0], saved[1], state0[1].contiguous(), w_hh.contiguous(), batch_sizes
    )
    return dgates, dgates, [dh0, dc0], []


def gru_forward(
    x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], state0: List[Tensor], w_hh: Tensor, b_hh: Optional[Tensor],
    kind_weights: List[Tensor], batch_sizes: List[int], save: bool,
) -> Forward:  # fmt: skip
    """Returns (hs, [h_n], saved); with ``save``, saved = [(r, z, n), W_hn h + b_hn] for every row."""
    hs, h_n, gates, ghn = _ops.gru_sequence.default(
        x.contiguous(), w_ih.contiguous(), _flat(b_ih), state0[0].contiguous(), w_hh.contiguous(), _flat(b_hh),
        batch_sizes, save,
    )  # fmt: skip
    return hs, [h_n], [gates, ghn] if save else []


def gru_backward(
    grad_hs: JoinedGrad, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor], batch_sizes: List[int],
) -> Backward:  # fmt: skip
    """Returns (dgi, dgh's n block, [dh0], [])."""
    dgi, dghn, dh0 = _ops.gru_sequence_backward.default(
        *grad_hs, grad_finals[0].contiguous(), saved[0], saved[1], hs, state0[0].contiguous(),
        w_hh.contiguous(), batch_sizes,
    )  # fmt: skip
    return dgi, dghn, [dh0], []


def rnn_forward(
    x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], state0: List[Tensor], w_hh: Tensor, b_hh: Optional[Tensor],
    kind_weights: List[Tensor], batch_sizes: List[int], save: bool, relu: bool,
) -> Forward:  # fmt: skip
    """Returns (hs, [h_n], []): the outputs are all the backward needs."""
    hs, h_n = _ops.rnn_sequence.default(
        x.contiguous(), w_ih.contiguous(), _flat(b_ih), state0[0].contiguous(), w_hh.contiguous(), batch_sizes, relu
    )
    return hs, [h_n], []


def rnn_backward(
    grad_hs: JoinedGrad, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor, h_prev: List[Tensor],
    saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor], batch_sizes: List[int], relu: bool,
) -> Backward:  # fmt: skip
    """Returns (da, dW_hh summed, [dh0], []), da = (dh' + grad) act'(a) written over hs, dh = da W_hh."""
    dh0, dw_hh = _ops.rnn_sequence_backward.default(
        *grad_hs, grad_finals[0].contiguous(), hs, state0[0].contiguous(), w_hh.contiguous(), batch_sizes,
        relu,
    )  # fmt: skip
    return hs, SummedWeight(dw_hh, hs), [dh0], []


def stack_forward(
    mode: str, spec: Any, rows: Tensor, batch_sizes: List[int], state0: List[Tensor], weights: List[Tensor],
    save: bool = False,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """A whole stack in one op, ``spec`` its ``kernels.StackSpec`` (the layers' numbers, dropout between
    them where nothing is saved): (output rows (T, D·H), final states, saved: what :func:`stack_backward`
    takes). Where a layer's Python cost more than its op (a one-step call), one call in all."""
    dropout = spec.dropout if spec.training else 0.0
    return _ops.stack_forward.default(
        mode, rows.contiguous(), state0, weights, spec.num_layers, spec.directions == 2, batch_sizes, dropout,
        spec.training, save,
    )  # fmt: skip


def stack_backward(
    mode: str, spec: Any, grad_out: Tensor, grad_finals: List[Tensor], rows: Tensor, state0: List[Tensor],
    weights: List[Tensor], saved: List[Tensor], batch_sizes: List[int], input_grad: bool,
) -> Tuple[Optional[Tensor], List[Tensor], List[Tensor]]:  # fmt: skip
    """(dx where ``input_grad``, dstate0, each weight's gradient) of :func:`stack_forward`'s saving call, in one
    op that writes over ``saved``."""
    dx, dstate0, dweights = _ops.stack_backward.default(
        mode, grad_out, [g.contiguous() for g in grad_finals], rows.contiguous(), state0, weights, saved,
        spec.num_layers, spec.directions == 2, batch_sizes, input_grad,
    )  # fmt: skip
    return dx if input_grad else None, dstate0, dweights


def cell_forward(
    mode: str, x: Tensor, h: Optional[Tensor], c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
    b_ih: Optional[Tensor], b_hh: Optional[Tensor],
) -> List[Tensor]:  # fmt: skip
    """A cell's step in one op: [h' (, c'), what :func:`cell_backward` takes] (the RNN's: nothing but h')."""
    return _ops.cell_forward.default(mode, x, h, c, w_ih, w_hh, b_ih, b_hh)


def cell_backward(
    mode: str, grad_h: Tensor, grad_c: Optional[Tensor], x: Tensor, h: Optional[Tensor], c: Optional[Tensor],
    w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], saved: List[Tensor], input_grad: bool,
    state_grad: bool,
) -> List[Tensor]:  # fmt: skip
    """[dx, dh(, dc), dW_ih, dW_hh(, db_ih, db_hh)] of :func:`cell_forward` (dx and the states' empty where not
    asked for), in one op that writes over ``saved`` (the RNN's h' it only reads)."""
    return _ops.cell_backward.default(
        mode, grad_h, grad_c, x, h, c, w_ih, w_hh, b_ih, b_hh, saved, input_grad, state_grad
    )  # fmt: skip


def weight_grad(grad: Tensor, x: List[Tensor], h: List[Tensor], bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(Σ gradᵀ x, Σ gradᵀ h, Σ grad) over rows per direction, in one pass over grad (D, R, G), x and h
    as row blocks (D, ·, I) and (D, ·, H) (h's may be none: an empty gradient), the sum empty without
    ``bias``; no transposed copies. A grad or block read with a column stride is copied first."""
    x_blocks, h_blocks = [_unit_columns(b) for b in x], [_unit_columns(b) for b in h]
    return _ops.weight_grad.default(_unit_columns(grad), x_blocks, h_blocks, bias)


def _unit_columns(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()
