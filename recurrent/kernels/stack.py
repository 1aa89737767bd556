"""A whole stack of layers in one TorchScript call, for when no hand-written backward is needed.

A scripted module runs it (TorchScript's autograd then differentiates every op of the loops), and
the eager layers run it when nothing needs a gradient: one call into TorchScript for the whole stack
instead of one per kernel piece, so inference pays no Python between layers.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from .._jit import script
from .autograd import gate_inputs, stack_weights
from .common import join_directions, per_direction, reverse_index
from .gru import gru_forward
from .lstm import lstm_forward
from .rnn import rnn_forward


@script
def sequence_forward(
    mode: str, gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], extra: List[Tensor],
    batch_sizes: List[int],
) -> Tuple[Tensor, List[Tensor]]:
    """The forward kernel of ``mode`` (a key of :data:`recurrent.kernels.KERNELS`), saving nothing."""
    if mode == "GRU":
        hs, finals, _ = gru_forward(gi, state0, w_hh_t, b_hh, extra, batch_sizes, False)
    elif mode == "LSTM":
        hs, finals, _ = lstm_forward(gi, state0, w_hh_t, b_hh, extra, batch_sizes, False)
    elif mode == "RNN_TANH" or mode == "RNN_RELU":
        hs, finals, _ = rnn_forward(gi, state0, w_hh_t, b_hh, extra, batch_sizes, False, mode == "RNN_RELU")
    else:
        raise ValueError("recurrent: unknown mode " + mode)
    return hs, finals


@script
def run_stack(
    mode: str, rows: Tensor, batch_sizes: List[int], state0: List[Tensor], weights: List[Tensor],
    num_layers: int, directions: int, bias: bool, proj: bool, fold_bias: bool, dropout: float, training: bool,
) -> Tuple[Tensor, List[Tensor]]:
    """Every layer over rows (T, I) from state0 [(layers·D, N, ·)], with dropout between layers;
    returns (output rows (T, D·H), final states [(layers·D, N, ·)])."""
    per_layer = directions * ((4 if bias else 2) + (1 if proj else 0))
    reverse: Optional[Tensor] = reverse_index(batch_sizes, rows.device) if directions == 2 else None
    finals: List[List[Tensor]] = [[] for _ in state0]
    for layer in range(num_layers):
        mine = [s[layer * directions : (layer + 1) * directions] for s in state0]
        w_ih, w_hh, b_ih, b_hh, extra = stack_weights(
            weights[layer * per_layer : (layer + 1) * per_layer], directions, bias, proj, fold_bias
        )
        gi = gate_inputs(per_direction(rows, reverse), w_ih, b_ih)
        hs, last = sequence_forward(mode, gi, mine, w_hh.transpose(1, 2), b_hh, extra, batch_sizes)
        rows = join_directions(hs, reverse)
        for i, state in enumerate(last):
            finals[i].append(state)
        if dropout > 0 and training and layer < num_layers - 1:
            rows = F.dropout(rows, dropout, True)
    return rows, [torch.cat(f, 0) for f in finals]
