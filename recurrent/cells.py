"""One-step gate math, and torch.nn-compatible cells built on it.

The step functions here are the only place each gate formula is written: the cells call them once
per step, and the sequence kernels in :mod:`recurrent.kernels` call them inside their time loops.
The products are computed by the caller (``gi = W_ih x + b_ih``, ``gh = W_hh h + b_hh``; the Elman
step takes their sum), so the layers can hoist the input product out of the loop.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import checks
from ._jit import script


@script
def tanh(x: Tensor) -> Tensor:
    """tanh(x), as 2σ(2x) − 1 on the CPU: torch's CPU tanh is not vectorised (about 3× the time of
    these four ops at the shapes of benchmarks/speed.py); the difference is an ulp or two."""
    if x.is_cpu:
        return (torch.sigmoid(x * 2) * 2).sub_(1)  # in place only on the temporary: σ keeps its output
    return torch.tanh(x)


@script
def rnn_tanh_step(pre: Tensor) -> Tensor:
    """Elman step, tanh: h' = tanh(a), with a = W_ih x + b_ih + W_hh h + b_hh summed by the caller."""
    return tanh(pre)


@script
def rnn_relu_step(pre: Tensor) -> Tensor:
    """Elman step, ReLU: h' = relu(a), with a = W_ih x + b_ih + W_hh h + b_hh summed by the caller."""
    return torch.relu(pre)


@script
def gru_step(gi: Tensor, gh: Tensor, h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """GRU step with torch.nn's gate order (r, z, n) along the last dimension of gi and gh.

        r  = σ(W_ir x + b_ir + W_hr h + b_hr)
        z  = σ(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    Returns ``(h', rz, n)``: the kernels keep ``rz`` (r and z side by side) and ``n`` for the backward.
    """
    hidden = h.size(-1)
    rz = torch.sigmoid(gi[..., : 2 * hidden] + gh[..., : 2 * hidden])
    r = rz[..., :hidden]
    z = rz[..., hidden:]
    n = tanh(torch.addcmul(gi[..., 2 * hidden :], r, gh[..., 2 * hidden :]))
    return torch.lerp(n, h, z), rz, n


class RNNCellBase(nn.Module):
    """Parameters, initialisation and input checks shared by the cells (torch.nn's layout)."""

    __constants__ = ["input_size", "hidden_size", "bias"]

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device=None, dtype=None
    ) -> None:
        super().__init__()
        checks.check_sizes(input_size=input_size, hidden_size=hidden_size)
        checks.check_bool("bias", bias)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        factory = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(num_chunks * hidden_size, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(num_chunks * hidden_size, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory))
            self.bias_hh = nn.Parameter(torch.empty(num_chunks * hidden_size, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ±1/sqrt(hidden_size), in registration order, as torch.nn does."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if "bias" in self.__dict__ and self.bias is not True:
            s += ", bias={bias}"
        if "nonlinearity" in self.__dict__ and self.nonlinearity != "tanh":
            s += ", nonlinearity={nonlinearity}"
        return s.format(**self.__dict__)

    def _projections(self, input: Tensor, hx: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor, bool]:
        """Checks the arguments, adds the batch dimension if missing; returns (gi, gh, h, batched)."""
        checks.check_cell_input(input, hx, self.input_size, self.hidden_size, self.weight_ih)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            h = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        else:
            h = hx if batched else hx.unsqueeze(0)
        gi = F.linear(input, self.weight_ih, self.bias_ih)
        gh = F.linear(h, self.weight_hh, self.bias_hh)
        return gi, gh, h, batched


class RNNCell(RNNCellBase):
    """Elman cell, ``torch.nn.RNNCell``'s API: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh | relu."""

    __constants__ = ["input_size", "hidden_size", "bias", "nonlinearity"]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device=None,
        dtype=None,
    ) -> None:
        checks.check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        gi, gh, _, batched = self._projections(input, hx)
        pre = gi + gh
        h = rnn_relu_step(pre) if self.nonlinearity == "relu" else rnn_tanh_step(pre)
        return h if batched else h.squeeze(0)


class GRUCell(RNNCellBase):
    """Gated recurrent unit cell, ``torch.nn.GRUCell``'s API; the math is :func:`gru_step`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        gi, gh, h, batched = self._projections(input, hx)
        h = gru_step(gi, gh, h)[0]
        return h if batched else h.squeeze(0)
