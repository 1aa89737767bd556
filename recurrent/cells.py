"""One-step gate math, and torch.nn-compatible cells built on it.

The step functions here are the only place each gate formula is written: the cells call them once
per step, and the sequence kernels in :mod:`recurrent.kernels` call them inside their time loops.
The products are computed by the caller (``gi = W_ih x + b_ih``, ``gh = W_hh h + b_hh``; the Elman
step takes their sum), so the layers can hoist the input product out of the loop.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import _amp, checks
from ._jit import script


@script
def rnn_tanh_step(pre: Tensor, in_place: bool = False) -> Tensor:
    """Elman step, tanh: h' = tanh(a), with a = W_ih x + b_ih + W_hh h + b_hh summed by the caller.
    ``in_place``: on ``pre`` (the oneDNN kernels' way: no new tensor per step)."""
    return pre.tanh_() if in_place else torch.tanh(pre)


@script
def rnn_relu_step(pre: Tensor) -> Tensor:
    """Elman step, ReLU: h' = relu(a), with a = W_ih x + b_ih + W_hh h + b_hh summed by the caller."""
    return torch.relu(pre)


@script
def gru_step(gi: Tensor, gh: Tensor, h: Tensor, in_place: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """GRU step with torch.nn's gate order (r, z, n) along the last dimension of gi and gh.

        r  = σ(W_ir x + b_ir + W_hr h + b_hr)
        z  = σ(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    Returns ``(h', rz, n)``: the kernels keep ``rz`` (r and z side by side) and ``n`` for the backward.
    ``in_place``: n's tanh in place (the oneDNN kernels' way).
    """
    hidden = h.size(-1)
    rz = torch.sigmoid(gi[..., : 2 * hidden] + gh[..., : 2 * hidden])
    r = rz[..., :hidden]
    z = rz[..., hidden:]
    a_n = torch.addcmul(gi[..., 2 * hidden :], r, gh[..., 2 * hidden :])
    n = a_n.tanh_() if in_place else torch.tanh(a_n)
    return torch.lerp(n, h, z), rz, n


@script
def lstm_step(
    gi: Tensor, gh: Tensor, c: Tensor, in_place: bool = False
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """LSTM step with torch.nn's gate order (i, f, g, o) along the last dimension of gi and gh.

        i  = σ(W_ii x + b_ii + W_hi h + b_hi)
        f  = σ(W_if x + b_if + W_hf h + b_hf)
        g  = tanh(W_ig x + b_ig + W_hg h + b_hg)
        o  = σ(W_io x + b_io + W_ho h + b_ho)
        c' = f ⊙ c + i ⊙ g
        h' = o ⊙ tanh(c')

    Returns ``(h', c', if, g, o)``, ``if`` being i and f side by side; the kernels keep the gates
    for the backward. (A projected LSTM then maps h' to W_hr h'; the layer kernel does that.)
    ``in_place``: on ``gh`` (the oneDNN kernels' way: one new tensor per step fewer).
    """
    hidden = c.size(-1)
    if in_place:
        gates = gh.add_(gi)
        i_f = gates[..., : 2 * hidden].sigmoid_()
        g = gates[..., 2 * hidden : 3 * hidden].tanh_()
        o = gates[..., 3 * hidden :].sigmoid_()
        c_new = torch.addcmul(i_f[..., hidden:] * c, i_f[..., :hidden], g)
        return torch.tanh(c_new).mul_(o), c_new, i_f, g, o
    pre = gi + gh
    i_f = torch.sigmoid(pre[..., : 2 * hidden])
    g = torch.tanh(pre[..., 2 * hidden : 3 * hidden])
    o = torch.sigmoid(pre[..., 3 * hidden :])
    c_new = torch.addcmul(i_f[..., hidden:] * c, i_f[..., :hidden], g)
    return o * torch.tanh(c_new), c_new, i_f, g, o


def _mm_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """F.linear for a 2-D input, as a product and a sum (for cells of input_size or hidden_size 0)."""
    out = torch.mm(input, weight.t())
    return out if bias is None else out + bias


# What runs a cell call on other kernels than its own step, set from above (recurrent.cell_calls, which asks
# the route): it returns the new states, or None to leave the call to the cell's own path below.
ROUTED: List[Callable[[RNNCellBase, Tensor, List[Optional[Tensor]]], Optional[List[Tensor]]]] = []


class RNNCellBase(nn.Module):
    """Parameters, initialisation and input checks shared by the cells (torch.nn's layout)."""

    __constants__ = ["input_size", "hidden_size", "bias"]
    __jit_ignored_attributes__ = ["_last_route"]

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device=None, dtype=None) -> None:
        super().__init__()
        checks.check_cell_sizes(input_size=input_size, hidden_size=hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias  # as given: torch.nn's cells take any object and register biases by its truth
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

    def __getstate__(self) -> dict:
        # The last route decision (recurrent.cell_calls) holds the kind's functions, which do not pickle.
        state = super().__getstate__()
        return {name: value for name, value in state.items() if name != "_last_route"}

    def reset_parameters(self) -> None:
        """Uniform in ±1/sqrt(hidden_size), in registration order, as torch.nn does (a cell of
        hidden_size 0 has empty parameters: bound 0)."""
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

    def _run(self, input: Tensor, given: List[Optional[Tensor]], names: List[str]) -> List[Tensor]:
        """One step from the given states (zeros for None), with the dimensions the caller used."""
        if not torch.jit.is_scripting():
            routed = self._routed(input, given)
            if routed is not None:
                return routed
        x, states, batched = self._prepare(input, given, names)
        gi, gh = self._projections(x, states[0])
        if torch.jit.is_scripting():
            new = self._step(gi, gh, states)
        else:
            new = self._eager_step(gi, gh, states)
        return new if batched else [s.squeeze(0) for s in new]

    def _step(self, gi: Tensor, gh: Tensor, states: List[Tensor]) -> List[Tensor]:
        """The new states from the projections and the old states: each cell kind's gate math."""
        raise NotImplementedError

    def _prepare(
        self, input: Tensor, states: List[Optional[Tensor]], names: List[str]
    ) -> Tuple[Tensor, List[Tensor], bool]:
        """Checks the input and states and adds the batch dimension if missing; returns
        (input, states with zeros for those not given, batched). Under torch.autocast the input and
        states come in autocast's dtype."""
        like = self.weight_ih
        if not torch.jit.is_scripting():
            input, states, like = self._autocast(input, states)
        # torch.nn's order (see recurrent.checks): dimensions, sizes, then dtypes and devices.
        checks.check_cell_dims(input, states, names)
        checks.check_cell_features(input, self.input_size)
        for i in range(len(states)):
            state = states[i]
            if state is not None:
                checks.check_cell_state(input, state, self.hidden_size, names[i], i)
        checks.check_like_weight("input", input, like)
        for i in range(len(states)):
            state = states[i]
            if state is not None:
                checks.check_like_weight(names[i], state, like)
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        full: List[Tensor] = []
        for state in states:
            if state is None:
                full.append(torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device))
            else:
                full.append(state if batched else state.unsqueeze(0))
        return input, full, batched

    def _projections(self, input: Tensor, h: Tensor) -> Tuple[Tensor, Tensor]:
        """gi = W_ih x + b_ih and gh = W_hh h + b_hh (under autocast, F.linear casts the weights)."""
        if self.hidden_size == 0 or self.input_size == 0:
            # Empty weights: TorchScript's derivative of linear reshapes to (-1, 0), which fails.
            return _mm_linear(input, self.weight_ih, self.bias_ih), _mm_linear(h, self.weight_hh, self.bias_hh)
        return F.linear(input, self.weight_ih, self.bias_ih), F.linear(h, self.weight_hh, self.bias_hh)

    @torch.jit.unused
    def _routed(self, input: Tensor, given: List[Optional[Tensor]]) -> Optional[List[Tensor]]:
        return ROUTED[0](self, input, given) if ROUTED else None

    @torch.jit.unused
    def mode(self) -> str:
        """The cell kind's registry name (recurrent.kernels.KINDS): the layer mode it is one step of."""
        raise NotImplementedError

    @torch.jit.unused
    def _eager_step(self, gi: Tensor, gh: Tensor, states: List[Tensor]) -> List[Tensor]:
        # Under autocast the tensors already share its dtype; the scripted step functions must not
        # be autocast again (TorchScript's autocast pass would mix dtypes inside them).
        with _amp.disabled(gi.device):
            return self._step(gi, gh, states)

    @torch.jit.unused
    def _autocast(self, input: Tensor, states: List[Optional[Tensor]]) -> Tuple[Tensor, List[Optional[Tensor]], Tensor]:
        """(input, states, a tensor of the dtype and device they must have) for the eager path."""
        dtype = _amp.autocast_dtype(input.device)
        if dtype is None:
            return input, states, self.weight_ih
        cast_states = [None if s is None else _amp.cast([s], dtype)[0] for s in states]
        return _amp.cast([input], dtype)[0], cast_states, self.weight_ih.new_empty(0, dtype=dtype)


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

    @torch.jit.unused
    def mode(self) -> str:
        return "RNN_RELU" if self.nonlinearity == "relu" else "RNN_TANH"

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._run(input, [hx], ["hx"])[0]

    def _step(self, gi: Tensor, gh: Tensor, states: List[Tensor]) -> List[Tensor]:
        pre = gi + gh
        return [rnn_relu_step(pre) if self.nonlinearity == "relu" else rnn_tanh_step(pre)]


class GRUCell(RNNCellBase):
    """Gated recurrent unit cell, ``torch.nn.GRUCell``'s API; the math is :func:`gru_step`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)

    @torch.jit.unused
    def mode(self) -> str:
        return "GRU"

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        return self._run(input, [hx], ["hx"])[0]

    def _step(self, gi: Tensor, gh: Tensor, states: List[Tensor]) -> List[Tensor]:
        return [gru_step(gi, gh, states[0])[0]]


class LSTMCell(RNNCellBase):
    """Long short-term memory cell, ``torch.nn.LSTMCell``'s API; the math is :func:`lstm_step`."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)

    @torch.jit.unused
    def mode(self) -> str:
        return "LSTM"

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        given: List[Optional[Tensor]] = [None, None]
        if not torch.jit.is_scripting():
            given = self._eager_states(input, hx)
        elif hx is not None:
            given[0], given[1] = hx[0], hx[1]
        h, c = self._run(input, given, ["h0", "c0"])
        return h, c

    @torch.jit.unused
    def _eager_states(self, input: Tensor, hx) -> List[Optional[Tensor]]:
        """[h0, c0] from hx, which must be a pair (h0, c0) (TorchScript's types enforce that when
        scripted). Rejected as torch.nn rejects them: an element not 1-D or 2-D (ValueError, checked
        first over whatever hx iterates over), a single tensor (TypeError), more or fewer than two
        states (RuntimeError; IndexError for fewer with unbatched input). Where torch.nn's unbatched
        path reads any indexable as (hx[0], hx[1]), a tensor or a longer tuple, ours rejects it too."""
        if hx is None:
            return [None, None]
        checks.check_cell_dims(input, [], [])
        for index, value in enumerate(hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"Expected hx[{index}] to be 1D or 2D, got {value.dim()}D instead")
        if isinstance(hx, Tensor):
            raise TypeError(
                f"LSTMCell takes hx as a tuple (h0, c0) of two tensors, got a single Tensor of shape {list(hx.size())}"
            )
        if isinstance(hx, (tuple, list)) and len(hx) != 2:
            message = f"LSTMCell expects two hidden states (h0, c0), got a {type(hx).__name__} of {len(hx)}"
            raise IndexError(message) if len(hx) < 2 and input.dim() == 1 else RuntimeError(message)
        return [hx[0], hx[1]]

    def _step(self, gi: Tensor, gh: Tensor, states: List[Tensor]) -> List[Tensor]:
        h, c, _, _, _ = lstm_step(gi, gh, states[1])
        return [h, c]
