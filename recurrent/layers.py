"""RNN, GRU and LSTM: stacked, optionally bidirectional layers with torch.nn's API, parameters and semantics.

Per layer, the input of every step and both directions is projected in one batched product and
both directions' time loops run together (the reverse one over each sequence reversed in time); the
joined outputs feed the next layer. Padded batches and PackedSequences both become time-major rows
(see :mod:`recurrent.kernels.common`). The stack loop is :func:`recurrent.kernels.stack_layers`:
in eager mode each layer runs on the backend :func:`recurrent.kernels.select_backend` picks, with
the kernel's hand-written backward when gradients are needed; otherwise (TorchScript backend), and
in a scripted module, the whole stack is one TorchScript call, which TorchScript's autograd
differentiates op by op when scripted.
"""

import math
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _amp, checks, kernels

class RNNBase(nn.Module):
    """What RNN, GRU and LSTM share: parameters, checks, stacking, directions, dropout, packing."""

    __constants__ = [
        "mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
        "proj_size",
    ]
    __jit_unused_properties__ = ["all_weights"]
    _rejects_proj_size = False  # True for RNN and GRU

    def __new__(cls, *args, **kwargs):
        # torch.nn's RNN and GRU take (*args, **kwargs) and reject a proj_size keyword with this
        # ValueError. Ours keep torch.nn's documented signatures, which have no proj_size, so the
        # keyword is caught here, before __init__ would reject it with a TypeError.
        if cls._rejects_proj_size and "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        return super().__new__(cls)

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        gates: Optional[int] = None,
        extra_params: Sequence[Tuple[str, Tuple[int, ...]]] = (),
    ) -> None:
        """``gates`` (default: the registered kind's) and ``extra_params`` ((name, shape) per
        layer-direction, registered after torch.nn's own) are for layers of custom cells
        (:class:`recurrent.CustomRNN`); the built-in kinds take them from their registry entry."""
        super().__init__()
        checks.check_sizes(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
        checks.check_proj_size(proj_size, hidden_size)
        for name, flag in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            checks.check_bool(name, flag)
        checks.check_dropout(dropout)
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout acts between recurrent layers, so non-zero dropout expects num_layers greater "
                f"than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        self.mode = mode
        # A custom cell gets gi and gh apart, so its b_hh never folds into the input projection.
        self._fold_bias = kernels.KINDS[mode].folds_bias if gates is None else False
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size

        directions = 2 if bidirectional else 1
        gate_size = (kernels.KINDS[mode].gates if gates is None else gates) * hidden_size
        output_size = proj_size or hidden_size
        factory = {"device": device, "dtype": dtype}
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else output_size * directions
            for direction in range(directions):
                suffix = "_reverse" if direction == 1 else ""
                shapes = kernels.layer_param_shapes(bias, gate_size, layer_input, hidden_size, output_size, proj_size)
                shapes += list(extra_params)
                names = []
                for kind, shape in shapes:
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self._init_flat_weights()
        self.reset_parameters()

    # -- parameters ---------------------------------------------------------------------------
    def _init_flat_weights(self) -> None:
        # The list a scripted module reads its weights from (TorchScript cannot getattr by name).
        # A deleted weight is None, as in torch.nn, so the module still converts (e.g. .double()).
        self._flat_weights: List[Tensor] = [getattr(self, name, None) for name in self._flat_weights_names]

    def __setattr__(self, name: str, value) -> None:
        if name in self.__dict__.get("_flat_weights_names", ()) and "_flat_weights" in self.__dict__:
            self._flat_weights[self._flat_weights_names.index(name)] = value
        super().__setattr__(name, value)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._init_flat_weights()
        return result

    def flatten_parameters(self) -> None:
        """Kept for drop-in compatibility with torch.nn: our weights need no flat cuDNN buffer."""

    def reset_parameters(self) -> None:
        """Uniform in ±1/sqrt(hidden_size), in registration order, as torch.nn does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        return s.format(**self.__dict__)

    # -- forward ------------------------------------------------------------------------------
    # forward takes a Tensor or (in eager mode) a PackedSequence. torch.nn declares two TorchScript
    # overloads instead, but a module scripted that way has no callable forward of its own; so a
    # scripted module takes packed input through forward_packed.
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting() and isinstance(input, PackedSequence):
            return self.forward_packed(input, hx)
        output, finals = self._run(input, None if hx is None else [hx])
        return output, finals[0]

    @torch.jit.export
    def forward_packed(self, input: PackedSequence, hx: Optional[Tensor] = None) -> Tuple[PackedSequence, Tensor]:
        """forward for a PackedSequence; what a scripted module calls (eager forward dispatches here)."""
        packed, finals = self._run_packed(input, None if hx is None else [hx])
        return packed, finals[0]

    def _state_sizes(self) -> List[int]:
        """The last dimension of each state: [h] for RNN and GRU; LSTM overrides this."""
        return [self.hidden_size]

    def _run(self, input: Tensor, hx: Optional[List[Tensor]]) -> Tuple[Tensor, List[Tensor]]:
        """Padded (or unbatched) input: checks, layout, the stack, and back to the caller's layout."""
        weights = self._flat_weights
        if not torch.jit.is_scripting():
            input, hx, weights = self._eager_arguments(input, hx)
        x, state0, batched = self._checked(input, hx, weights[0])
        steps, batch = x.size(0), x.size(1)
        if batch == 0:
            output, finals = self._empty_batch(x, state0, weights)
        else:
            rows, finals = self._stack(x.reshape(steps * batch, -1), [batch] * steps, state0, weights)
            output = rows.view(steps, batch, -1)
        if not batched:
            return output.squeeze(1), [f.squeeze(1) for f in finals]
        return (output.transpose(0, 1) if self.batch_first else output), finals

    def _run_packed(self, input: PackedSequence, hx: Optional[List[Tensor]]) -> Tuple[PackedSequence, List[Tensor]]:
        """PackedSequence input: its data are the rows, its batch_sizes the steps (sorted by length)."""
        data, weights = input.data, self._flat_weights
        if not torch.jit.is_scripting():
            data, hx, weights = self._eager_arguments(data, hx)
        checks.check_packed_input(data, self.input_size, weights[0])  # torch.nn's order: before the states
        if hx is not None:
            for state, name in zip(hx, self._state_names()):
                checks.check_hidden_dim(name, state, True, True)
        batch_sizes: List[int] = input.batch_sizes.tolist()
        state0 = self._initial_states(hx, batch_sizes[0], data, weights[0], True)
        sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices  # locals refine Optional
        if sorted_indices is not None:
            state0 = [s.index_select(1, sorted_indices) for s in state0]
        rows, finals = self._stack(data, batch_sizes, state0, weights)
        if unsorted_indices is not None:
            finals = [f.index_select(1, unsorted_indices) for f in finals]
        return PackedSequence(rows, input.batch_sizes, input.sorted_indices, input.unsorted_indices), finals

    def _state_names(self) -> List[str]:
        return ["hx"] if len(self._state_sizes()) == 1 else ["h0", "c0"]

    def _checked(self, input: Tensor, hx: Optional[List[Tensor]], weight: Tensor) -> Tuple[Tensor, List[Tensor], bool]:
        """Checks padded or unbatched input and the initial states in torch.nn's order (see
        :mod:`recurrent.checks`); returns (input time-major with a batch dimension, the initial
        states (layers*directions, batch, size), whether the input was batched)."""
        checks.check_layer_dim(input)
        batched = input.dim() == 3
        if hx is not None:
            for state, name in zip(hx, self._state_names()):
                checks.check_hidden_dim(name, state, batched)
        checks.check_layer_features(input, self.input_size, weight)
        if not batched:
            x = input.unsqueeze(1)
        elif self.batch_first:
            x = input.transpose(0, 1)
        else:
            x = input
        state0 = self._initial_states(hx, x.size(1), x, weight, batched)
        checks.check_sequence_length(x.size(0), input)
        return x, state0, batched

    def _initial_states(
        self, hx: Optional[List[Tensor]], batch: int, like: Tensor, weight: Tensor, batched: bool
    ) -> List[Tensor]:
        """The given states checked (their dimensions were, before), with the batch dimension; or zeros."""
        layers = (2 if self.bidirectional else 1) * self.num_layers
        sizes = self._state_sizes()
        if hx is None:
            return [torch.zeros(layers, batch, size, dtype=like.dtype, device=like.device) for size in sizes]
        names = self._state_names()
        if len(sizes) == 1:
            labels, lasts = ["hidden"], ["hidden_size"]
        else:
            labels, lasts = ["hidden[0]", "hidden[1]"], ["proj_size" if self.proj_size > 0 else "hidden_size", "hidden_size"]
        states: List[Tensor] = []
        for i in range(len(sizes)):
            state = hx[i]
            checks.check_hidden(names[i], labels[i], state, [layers, batch, sizes[i]], weight, batched, lasts[i])
            states.append(state if batched else state.unsqueeze(1))
        return states

    def _empty_batch(self, x: Tensor, state0: List[Tensor], weights: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """An empty batch (x of shape (L, 0, I)): torch.nn returns empty outputs, (L, 0, D*H_out) and
        states of state0's shapes, whose gradients reach the input and states (empty) and the weights
        (zeros). Nothing to compute: the kernels are not run on an empty batch; the outputs hang from
        a zero built from every input so that autograd gives those gradients."""
        zero = x.sum() * 0
        for t in state0 + weights:
            zero = zero + t.sum() * 0
        directions = 2 if self.bidirectional else 1
        size = self.proj_size if self.proj_size > 0 else self.hidden_size
        output = x.new_zeros([x.size(0), 0, directions * size]) + zero
        return output, [s.new_zeros(s.size()) + zero for s in state0]

    def _stack_spec(self) -> kernels.StackSpec:
        return kernels.StackSpec(
            mode=self.mode, num_layers=self.num_layers, directions=2 if self.bidirectional else 1, bias=self.bias,
            proj=self.proj_size > 0, fold_bias=self._fold_bias, dropout=self.dropout, training=self.training,
        )

    def _stack(
        self, rows: Tensor, batch_sizes: List[int], state0: List[Tensor], weights: List[Tensor]
    ) -> Tuple[Tensor, List[Tensor]]:
        """Runs every layer over rows (T, I) from state0 [(layers·D, N, H)]; returns (rows, finals)."""
        if not torch.jit.is_scripting():
            return self._eager_stack(rows, batch_sizes, state0, weights)
        return kernels.run_stack(self._stack_spec(), rows, batch_sizes, state0, weights, "")

    @torch.jit.unused
    def _eager_stack(
        self, rows: Tensor, batch_sizes: List[int], state0: List[Tensor], weights: List[Tensor]
    ) -> Tuple[Tensor, List[Tensor]]:
        """On the TorchScript backend without gradients the whole stack is one TorchScript call;
        otherwise each layer runs from Python on its backend (an autograd Function when gradients are
        needed). Under autocast everything is already in its dtype (see _eager_arguments), so
        autocast is switched off for the kernels. Under a torch.func transform or with forward-AD
        dual tensors, even without gradients, each layer runs from Python as plain ops
        (kernels.autograd.needs_plain_ops): TorchScript would fumble the transform's wrapped tensors."""
        spec = self._stack_spec()
        backend = self._backend(rows)
        with _amp.disabled(rows.device):
            tensors = [rows, *state0, *weights]
            needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            # With layer observers (gate recording) each layer runs from Python, where they see it.
            whole_stack = not needs_grad and not kernels.LAYER_OBSERVERS and not kernels.autograd.needs_plain_ops(tensors)
            if backend == "torchscript" and whole_stack:
                return kernels.run_stack(spec, rows, batch_sizes, state0, weights, "")
            return kernels.stack_layers(spec, rows, batch_sizes, state0, weights, backend)

    @torch.jit.unused
    def _backend(self, rows: Tensor) -> str:
        return kernels.select_backend(self.mode, rows.device, rows.dtype, self.hidden_size)

    @torch.jit.unused
    def _eager_arguments(
        self, input: Tensor, hx: Optional[List[Tensor]]
    ) -> Tuple[Tensor, Optional[List[Tensor]], List[Tensor]]:
        """(input, hx, weights) for the eager path. The weights are looked up by name on every call,
        so torch.func.functional_call and reassigned weights work; under torch.autocast all three
        come in autocast's dtype."""
        weights = [getattr(self, name) for name in self._flat_weights_names]
        dtype = _amp.autocast_dtype(input.device)
        if dtype is None:
            return input, hx, weights
        return _amp.cast([input], dtype)[0], None if hx is None else _amp.cast(hx, dtype), _amp.cast(weights, dtype)


class RNN(RNNBase):
    """Elman RNN with ``torch.nn.RNN``'s API: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    _rejects_proj_size = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        checks.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        mode = "RNN_RELU" if nonlinearity == "relu" else "RNN_TANH"
        super().__init__(
            mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype
        )


class GRU(RNNBase):
    """Multi-layer GRU with ``torch.nn.GRU``'s API; the gate math is :func:`recurrent.cells.gru_step`."""

    _rejects_proj_size = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            "GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype
        )


class LSTM(RNNBase):
    """Multi-layer LSTM with ``torch.nn.LSTM``'s API, ``proj_size`` included; the gate math is
    :func:`recurrent.cells.lstm_step`. Takes an optional ``(h0, c0)``, returns ``(output, (h_n, c_n))``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
            device, dtype,
        )

    def forward(  # type: ignore[override]
        self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if not torch.jit.is_scripting() and isinstance(input, PackedSequence):
            return self.forward_packed(input, hx)
        output, finals = self._run(input, self._state_list(hx, input))
        return output, (finals[0], finals[1])

    @torch.jit.export
    def forward_packed(  # type: ignore[override]
        self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None
    ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        """forward for a PackedSequence; what a scripted module calls (eager forward dispatches here)."""
        packed, finals = self._run_packed(input, self._state_list(hx, None))
        return packed, (finals[0], finals[1])

    def _state_list(self, hx: Optional[Tuple[Tensor, Tensor]], input: Optional[Tensor]) -> Optional[List[Tensor]]:
        """hx as [h0, c0] (None when not given); in eager mode checked as :meth:`_eager_states` says.
        ``input`` is the padded input, None for a PackedSequence."""
        if not torch.jit.is_scripting():
            return self._eager_states(hx, input)
        if hx is None:
            return None
        return [hx[0], hx[1]]

    @torch.jit.unused
    def _eager_states(self, hx, input: Optional[Tensor]) -> Optional[List[Tensor]]:
        """[h0, c0] from hx, which must be a pair (h0, c0) (TorchScript's types enforce that when
        scripted). Rejects others as torch.nn does: a single tensor with a TypeError once its rows
        hx[0], hx[1] pass the state checks (torch.nn reads it as that pair, and its checks raise
        first); more than two states with a RuntimeError, fewer with an IndexError. ``input`` is the
        padded input, None for a PackedSequence."""
        if hx is None:
            return None
        if isinstance(hx, Tensor):
            if input is not None:
                checked_input, states, weights = self._eager_arguments(input, [hx[0], hx[1]])
                self._checked(checked_input, states, weights[0])
            raise TypeError(
                f"{type(self).__name__} takes hx as a tuple (h0, c0) of two tensors, got a single Tensor of shape {list(hx.size())}"
            )
        if isinstance(hx, (tuple, list)) and len(hx) != 2:
            message = f"{type(self).__name__} expects two hidden states (h0, c0), got a {type(hx).__name__} of {len(hx)}"
            raise RuntimeError(message) if len(hx) > 2 else IndexError(message)
        return [hx[0], hx[1]]

    def _state_sizes(self) -> List[int]:
        return [self.proj_size if self.proj_size > 0 else self.hidden_size, self.hidden_size]



def backend_for(layer: RNNBase, input: Union[Tensor, PackedSequence]) -> str:
    """The backend ``layer(input)`` runs its time loops on, in eager mode: ``"triton"`` or
    ``"torchscript"`` (``RECURRENT_BACKEND`` and the rules in :mod:`recurrent.kernels.dispatch`).
    Raises as the call would where ``RECURRENT_BACKEND=triton`` cannot be honoured. A scripted
    module always runs the TorchScript loop."""
    if layer.mode not in kernels.KINDS:  # a custom cell (recurrent.CustomRNN): always the TorchScript loop
        return "torchscript"
    data = input.data if isinstance(input, PackedSequence) else input
    dtype = _amp.autocast_dtype(data.device) or data.dtype
    return kernels.select_backend(layer.mode, data.device, dtype, layer.hidden_size)
