"""Custom cells the package does not ship as layers, written as a user would (for :class:`recurrent.CustomRNN`).

Each is one ``step`` of elementwise math, so each also runs on kernels generated from that step
(``RECURRENT_BACKEND=triton``; :mod:`recurrent.kernels.triton.generated`). The tests check each
against its own TorchScript loop, and the compile check compiles their generated kernels.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor

from .custom import CustomCell

__all__ = ["IndRNNCell", "MinimalGatedUnit", "PeepholeLSTMCell"]


class MinimalGatedUnit(CustomCell):
    """Zhou et al. 2016's minimal gated unit: one gate f does the work of the GRU's r and z::

    f  = σ(W_if x + b_if + W_hf h + b_hf)
    n  = tanh(W_in x + b_in + f ⊙ (W_hn h + b_hn))
    h' = (1 − f) ⊙ h + f ⊙ n
    """

    gates = 2

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        i_f, i_n = gi.chunk(2, -1)
        h_f, h_n = gh.chunk(2, -1)
        f = torch.sigmoid(i_f + h_f)
        n = torch.tanh(i_n + f * h_n)
        h = torch.lerp(state[0], n, f)
        return h, [h]


class PeepholeLSTMCell(CustomCell):
    """Gers & Schmidhuber 2000's LSTM with peepholes: the gates also read the cell state, through
    per-unit weights w_ci, w_cf (the old c) and w_co (the new c), one parameter ``peephole`` (3H,)::

        i  = σ(a_i + w_ci ⊙ c)        f = σ(a_f + w_cf ⊙ c)        g = tanh(a_g)
        c' = f ⊙ c + i ⊙ g
        o  = σ(a_o + w_co ⊙ c')
        h' = o ⊙ tanh(c')

    with a = gi + gh split into the blocks i, f, g, o (torch.nn.LSTM's order).
    """

    gates = 4
    state_names = ("h", "c")

    def parameter_shapes(self, hidden_size: int) -> Dict[str, Tuple[int, ...]]:
        return {"peephole": (3 * hidden_size,)}

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        c = state[1]
        a_i, a_f, a_g, a_o = (gi + gh).chunk(4, -1)
        w_ci, w_cf, w_co = params[0].chunk(3, -1)
        i = torch.sigmoid(a_i + w_ci * c)
        f = torch.sigmoid(a_f + w_cf * c)
        c_new = f * c + i * torch.tanh(a_g)
        o = torch.sigmoid(a_o + w_co * c_new)
        h = o * torch.tanh(c_new)
        return h, [h, c_new]


class IndRNNCell(CustomCell):
    """An IndRNN-like cell (Li et al. 2018): each unit reads its own previous value through a
    recurrent weight u of its own (parameter ``recurrent``, (H,)), beside W_hh h, and the
    activation is a ReLU clipped at ``cap`` (IndRNN's remedy for exploding units)::

        h' = min(relu(gi + gh + u ⊙ h), cap)
    """

    gates = 1

    def __init__(self, cap: float = 6.0) -> None:
        super().__init__()
        self.cap = float(cap)

    def parameter_shapes(self, hidden_size: int) -> Dict[str, Tuple[int, ...]]:
        return {"recurrent": (hidden_size,)}

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        h = torch.clamp(torch.relu(gi + gh + params[0] * state[0]), max=self.cap)
        return h, [h]
