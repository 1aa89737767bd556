"""RNN, GRU and LSTM: stacked, optionally bidirectional layers with torch.nn's API, parameters and semantics.

Per layer, the input of every step and both directions is projected in one batched product and
both directions' time loops run together (the reverse one over each sequence reversed in time); the
joined outputs feed the next layer. Padded batches and PackedSequences both become time-major rows
(see :mod:`recurrent.kernels.common`). Each eager call takes one route, decided by
:func:`recurrent.routes.decide` (which kernel runs each layer, whether the stack runs layer by layer or
as one TorchScript call, how it is differentiated); the stack loops are :mod:`recurrent.kernels.stack`'s.
A scripted module runs the whole stack on the TorchScript kernels, which TorchScript's autograd
differentiates op by op.
"""

import math
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _amp, checks, kernels, onnx_native, routes, settings


def _check_layer_arguments(
    input_size: int,
    hidden_size: int,
    num_layers: int,
    bias: bool,
    batch_first: bool,
    dropout: float,
    bidirectional: bool,
    proj_size: int,
) -> None:
    """A layer's constructor arguments, as torch.nn checks them (and its warning for a dropout that
    cannot act)."""
    checks.check_sizes(input_size=input_size, hidden_size=hidden_size, num_layers=num_layers)
    checks.check_proj_size(proj_size, hidden_size)
    for name, flag in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
        checks.check_bool(name, flag)
    checks.check_dropout(dropout)
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout acts between recurrent layers, so non-zero dropout expects num_layers greater "
            f"than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=4,
        )


class LayerCall(NamedTuple):
    """One layer call, read from its arguments and checked: what the stack runs, and the shape of
    the output to assemble."""

    rows: Tensor  # (T, I), time-major rows (see recurrent.kernels.common)
    batch_sizes: List[int]  # rows per step of a PackedSequence; [] for a padded batch: `batch` at every step
    state0: List[Tensor]  # (layers*directions, N, size) each, in the rows' batch order
    weights: List[Tensor]  # in autocast's dtype under autocast
    steps: int
    batch: int
    batched: bool


def _on_stack_ops(route: routes.Route) -> bool:
    """Whether the route runs the whole stack on its kernel's stack ops (``Kernel.stack``, the native ones);
    the other whole stacks are one TorchScript call."""
    return route.stack == "whole" and route.kernel not in ("torchscript", "onednn")


class RNNBase(nn.Module):
    """What RNN, GRU and LSTM share: parameters, checks, stacking, directions, dropout, packing."""

    __constants__ = [
        "mode",
        "input_size",
        "hidden_size",
        "num_layers",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
    ]
    __jit_unused_properties__ = ["all_weights"]
    __jit_ignored_attributes__ = ["_last_route", "_last_stack_layer"]
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
        cell_params: Sequence[Tuple[str, Tuple[int, ...]]] = (),
    ) -> None:
        """``gates`` (default: the registered kind's) and ``cell_params`` ((name, shape) per
        layer-direction, registered after torch.nn's own) are for layers of custom cells
        (:class:`recurrent.CustomRNN`); the registered kinds take them from their registry entry."""
        super().__init__()
        _check_layer_arguments(
            input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size
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
        gate_size = (kernels.KINDS[mode].gates if gates is None else gates) * hidden_size
        self._register_parameters(gate_size, list(cell_params), {"device": device, "dtype": dtype})
        # One layer-direction's parameter names, in order: how the kernels take them.
        self._param_names = kernels.layer_param_kinds(bias, proj_size > 0) + [name for name, _ in cell_params]
        if gates is None:  # what a scripted module's stack runs: the kind's TorchScript kernel (a plain attribute)
            self._sequence = kernels.KINDS[mode].sequence(False)
        self._init_flat_weights()
        self.reset_parameters()

    def _register_parameters(
        self, gate_size: int, cell_params: List[Tuple[str, Tuple[int, ...]]], factory: dict
    ) -> None:
        """torch.nn's parameters, per layer and direction in its order, then ``cell_params``."""
        directions = 2 if self.bidirectional else 1
        output_size = self.proj_size or self.hidden_size
        self._flat_weights_names: List[str] = []
        self._all_weights: List[List[str]] = []
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else output_size * directions
            shapes = (
                kernels.layer_param_shapes(
                    self.bias, gate_size, layer_input, self.hidden_size, output_size, self.proj_size
                )
                + cell_params
            )
            for direction in range(directions):
                suffix = "_reverse" if direction == 1 else ""
                names = [f"{kind}_l{layer}{suffix}" for kind, _ in shapes]
                for name, (_, shape) in zip(names, shapes):
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)

    # -- parameters ---------------------------------------------------------------------------
    def _init_flat_weights(self) -> None:
        # The list a scripted module reads its weights from (TorchScript cannot getattr by name).
        # A deleted weight is None, as in torch.nn, so the module still converts (e.g. .double()).
        self._flat_weights: List[Tensor] = [getattr(self, name, None) for name in self._flat_weights_names]

    def __setattr__(self, name: str, value) -> None:
        if name in self.__dict__.get("_flat_weights_names", ()) and "_flat_weights" in self.__dict__:
            self._flat_weights[self._flat_weights_names.index(name)] = value
        if name == "dropout":  # what a compiled call reads (_op_stack says why), kept in step
            super().__setattr__("_dropout_ratio", float(value).as_integer_ratio())
        super().__setattr__(name, value)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self._init_flat_weights()
        return result

    def __getstate__(self) -> dict:
        # The last route decision (_decide) and its stack's LayerSpec hold the kind's functions, which do not
        # pickle; a copy decides anew.
        state = super().__getstate__()
        return {name: value for name, value in state.items() if name not in ("_last_route", "_last_stack_layer")}

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

    # A call goes one way: read its arguments into a LayerCall (checked, all of it, before anything
    # runs), ask its route (recurrent.routes), run the stack as the route says, assemble the output in
    # the caller's layout. A scripted module runs the TorchScript stack.
    def _run(self, input: Tensor, hx: Optional[List[Tensor]]) -> Tuple[Tensor, List[Tensor]]:
        """A padded (or unbatched) call."""
        if torch.jit.is_scripting():
            call = self._read_padded(input, hx, self._flat_weights)
            rows, finals = self._scripted_stack(call.rows, [call.batch] * call.steps, call.state0, call.weights)
        else:
            call, rows, finals = self._eager_padded(input, hx)
        output = rows.view(call.steps, call.batch, rows.size(-1))
        if not call.batched:
            return output.squeeze(1), [f.squeeze(1) for f in finals]
        return (output.transpose(0, 1) if self.batch_first else output), finals

    def _run_packed(self, input: PackedSequence, hx: Optional[List[Tensor]]) -> Tuple[PackedSequence, List[Tensor]]:
        """A call on a PackedSequence: its data are the rows, its batch_sizes the steps (sorted by length)."""
        if torch.jit.is_scripting():
            call = self._read_packed(input, input.data, hx, self._flat_weights)
            rows, finals = self._scripted_stack(call.rows, call.batch_sizes, call.state0, call.weights)
        else:
            rows, finals = self._eager_packed(input, hx)
        unsorted_indices = input.unsorted_indices  # a local refines Optional
        if unsorted_indices is not None:
            finals = [f.index_select(1, unsorted_indices) for f in finals]
        return PackedSequence(rows, input.batch_sizes, input.sorted_indices, input.unsorted_indices), finals

    def _read_padded(self, input: Tensor, hx: Optional[List[Tensor]], weights: List[Tensor]) -> LayerCall:
        self._check_padded(input, hx, weights)
        return self._padded_call(input, hx, weights)

    def _check_padded(self, input: Tensor, hx: Optional[List[Tensor]], weights: List[Tensor]) -> None:
        checks.check_padded_call(input, hx, self._state_specs(), self.input_size, weights[0], self.batch_first)

    def _padded_call(
        self, input: Tensor, hx: Optional[List[Tensor]], weights: List[Tensor], zeros: bool = True
    ) -> LayerCall:
        """A checked padded call as time-major rows; without ``zeros``, no states where none are given."""
        batched = input.dim() == 3
        x = self._time_major(input)
        steps, batch = x.size(0), x.size(1)
        state0 = self._initial_states(hx, batch, x, batched) if zeros or hx is not None else []
        rows = x.reshape(steps * batch, x.size(2))
        return LayerCall(rows, [], state0, weights, steps, batch, batched)

    def _read_packed(
        self, input: PackedSequence, data: Tensor, hx: Optional[List[Tensor]], weights: List[Tensor]
    ) -> LayerCall:
        """``data``: the input's data, or it cast (autocast)."""
        batch_sizes: List[int] = input.batch_sizes.tolist()
        checks.check_packed_call(data, batch_sizes[0], hx, self._state_specs(), self.input_size, weights[0])
        state0 = self._initial_states(hx, batch_sizes[0], data, True)
        sorted_indices = input.sorted_indices  # a local refines Optional
        if sorted_indices is not None:
            state0 = [s.index_select(1, sorted_indices) for s in state0]
        return LayerCall(data, batch_sizes, state0, weights, len(batch_sizes), batch_sizes[0], True)

    def _time_major(self, input: Tensor) -> Tensor:
        """A padded (or unbatched) input as (L, N, I)."""
        if input.dim() != 3:
            return input.unsqueeze(1)
        return input.transpose(0, 1) if self.batch_first else input

    def _state_specs(self) -> List[checks.StateSpec]:
        """What each initial state must be (name, torch.nn's label, sizes) for the checks."""
        layers = (2 if self.bidirectional else 1) * self.num_layers
        sizes = self._state_sizes()
        if len(sizes) == 1:
            return [checks.StateSpec("hx", "hidden", layers, sizes[0], "hidden_size")]
        first = "proj_size" if self.proj_size > 0 else "hidden_size"
        return [
            checks.StateSpec("h0", "hidden[0]", layers, sizes[0], first),
            checks.StateSpec("c0", "hidden[1]", layers, sizes[1], "hidden_size"),
        ]

    def _initial_states(self, hx: Optional[List[Tensor]], batch: int, like: Tensor, batched: bool) -> List[Tensor]:
        """The given states (checked) with a batch dimension, or zeros: (layers*directions, batch, size)."""
        if hx is None:
            layers = (2 if self.bidirectional else 1) * self.num_layers
            return [
                torch.zeros(layers, batch, size, dtype=like.dtype, device=like.device) for size in self._state_sizes()
            ]
        return [state if batched else state.unsqueeze(1) for state in hx]

    def _stack_spec(self, onednn: bool) -> kernels.StackSpec:
        return kernels.StackSpec(
            num_layers=self.num_layers,
            directions=2 if self.bidirectional else 1,
            param_names=self._param_names,
            fold_bias=self._fold_bias,
            dropout=self.dropout,
            training=self.training,
            onednn=onednn,
        )

    def _scripted_stack(
        self, rows: Tensor, batch_sizes: List[int], state0: List[Tensor], weights: List[Tensor]
    ) -> Tuple[Tensor, List[Tensor]]:
        """The stack in TorchScript on the kind's TorchScript kernel, ATen's ops (a scripted module's)."""
        return kernels.run_stack(self._sequence, self._stack_spec(False), rows, batch_sizes, state0, weights)

    # -- eager: the route ----------------------------------------------------------------------
    @torch.jit.unused
    def kind(self) -> kernels.CellKind:
        """This layer's cell kind (its registry entry)."""
        return kernels.KINDS[self.mode]

    @torch.jit.unused
    def _custom_cell(self) -> Optional[object]:
        """A custom layer's cell (recurrent.CustomRNN); None for a built-in kind."""
        return None

    @torch.jit.unused
    def route(self, input: Union[Tensor, PackedSequence]) -> routes.Route:
        """The route a call on ``input`` (no initial states) takes now: :func:`recurrent.routes.route_for`."""
        packed = isinstance(input, PackedSequence)
        data = input.data if packed else input
        dtype = _amp.autocast_dtype(data.device) or data.dtype
        if packed:
            batch = int(input.batch_sizes[0]) if input.batch_sizes.numel() else 0
        else:
            batch = 1 if data.dim() != 3 else data.size(0 if self.batch_first else 1)
        return self._decide([data, *self._flat_weights], packed, batch == 0, dtype)

    @torch.jit.unused
    def _decide(self, tensors: List[Tensor], packed: bool, empty: bool, dtype: torch.dtype) -> routes.Route:
        call = routes.facts(self, tensors, packed, empty, dtype, bool(kernels.LAYER_OBSERVERS))
        now = settings.current()
        if call.tracer:  # a tracer's facts may hold its symbolic values: decided afresh, not kept
            return routes.decide(call, now)
        # The last eager decision serves the next call with the same facts and settings (a decision depends
        # on nothing else: whether the native library loaded is settled by the first one).
        last = self.__dict__.get("_last_route")
        if last is not None and last[0] == call and last[1] == now:
            return last[2]
        route = routes.decide(call, now)
        self.__dict__["_last_route"] = (call, now, route)
        return route

    @torch.jit.unused
    def _eager_padded(self, input: Tensor, hx: Optional[List[Tensor]]) -> Tuple[LayerCall, Tensor, List[Tensor]]:
        input, hx, weights = self._eager_arguments(input, hx)
        self._check_padded(input, hx, weights)
        batched = input.dim() == 3
        batch = input.size(0 if self.batch_first else 1) if batched else 1
        route = self._decide([input, *(hx or []), *weights], False, batch == 0, input.dtype)
        if route.stack == "ops":
            return self._compiled_padded(route, input, hx, weights, batch)
        # The native stack op makes zero states itself, for less than a one-step call's Python spends on them.
        call = self._padded_call(input, hx, weights, not _on_stack_ops(route))
        if route.stack == "onnx":
            x = call.rows.view(call.steps, call.batch, call.rows.size(-1))
            spec, kind = self._stack_spec(False), self.kind()
            output, finals = onnx_native.run(spec, kind, self.hidden_size, x, call.state0, hx is not None, call.weights)
            return call, output, finals
        return (call, *self._run_route(route, call))

    @torch.jit.unused
    def _eager_packed(self, input: PackedSequence, hx: Optional[List[Tensor]]) -> Tuple[Tensor, List[Tensor]]:
        data, hx, weights = self._eager_arguments(input.data, hx)
        # Asked before the call is read: its batch sizes are data, which an exporter must not read (the
        # route refuses to export a PackedSequence, saying so).
        tensors = [data, *(hx or []), *weights]
        route = self._decide(tensors, True, input.batch_sizes.numel() == 0, data.dtype)
        return self._run_route(route, self._read_packed(input, data, hx, weights))

    @torch.jit.unused
    def _run_route(self, route: routes.Route, call: LayerCall) -> Tuple[Tensor, List[Tensor]]:
        """(output rows (T, D·H_out), final states) of a read call, as its route says."""
        if route.stack == "empty":
            return self._empty_batch(call)
        if route.stack == "ops":  # a packed batch (a padded one goes to the ops as it is: _compiled_padded)
            sizes = torch.tensor(call.batch_sizes)
            return self._op_stack(route, call.rows, sizes, call.state0, call.weights, call.batch, False)
        if route.stack == "scan":  # the length may be symbolic: a list as long would pin it
            (rows, state0, weights), batch_sizes = _scan_inputs(call), [call.batch]
        else:
            rows, state0, weights = call.rows, call.state0, call.weights
            batch_sizes = call.batch_sizes or [call.batch] * call.steps
        spec = self._stack_spec(route.kernel in ("onednn", "native"))
        with _amp.disabled(rows.device):
            if route.stack == "whole":
                return self._whole_stack(route, spec, rows, batch_sizes, state0, weights)
            layer = self._layer_spec(route, spec, batch_sizes)
            return kernels.eager_stack(layer, spec, rows, batch_sizes, state0, weights, route.stack == "scan")

    @torch.jit.unused
    def _compiled_padded(
        self, route: routes.Route, input: Tensor, hx: Optional[List[Tensor]], weights: List[Tensor], batch: int
    ) -> Tuple[LayerCall, Tensor, List[Tensor]]:
        """A checked padded call whose route runs each layer as an op (torch.compile), handed to the ops as
        it is: no reshaped copy of the input, no zero states in the graph (:mod:`recurrent.kernels.ops` says
        why)."""
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        state0 = [] if hx is None else self._initial_states(hx, batch, x, batched)
        batch_first = self.batch_first and batched
        rows, finals = self._op_stack(route, x, None, state0, weights, batch, batch_first)
        return LayerCall(x, [], state0, weights, rows.size(0) // batch, batch, batched), rows, finals

    @torch.jit.unused
    def _op_stack(
        self, route: routes.Route, input: Tensor, batch_sizes: Optional[Tensor], state0: List[Tensor],
        weights: List[Tensor], batch: int, batch_first: bool,
    ) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
        """Each layer as one opaque op (torch.compile: :mod:`recurrent.kernels.ops`)."""
        # The probability from its exact ratio of ints: dynamo makes a float attribute symbolic, then restarts
        # its whole trace to specialize it.
        numerator, denominator = self._dropout_ratio if self.training else (0, 1)
        layer = kernels.ops.OpLayer(
            batch, batch_first, numerator / denominator, self.mode, route.kernel, 2 if self.bidirectional else 1,
            self.bias, route.kernel in ("onednn", "native"), route.backward != "none",
        )  # fmt: skip
        with _amp.disabled(input.device):
            return kernels.ops.op_stack(layer, self.num_layers, input, batch_sizes, state0, weights)

    @torch.jit.unused
    def _layer_spec(self, route: routes.Route, spec: kernels.StackSpec, batch_sizes: List[int]) -> kernels.LayerSpec:
        """What the stack loop needs of each layer: its kind, the route's kernel, how it is differentiated."""
        kind, projected = self.kind(), self.proj_size > 0
        plain = route.kernel in ("plain", "scan")
        kernel = kind.plain_kernel(projected) if plain else kind.kernel(route.kernel, projected)
        return kernels.LayerSpec(
            kind, kernel, route.backward, spec.directions, spec.param_names, spec.fold_bias, spec.onednn,
            batch_sizes, None, False,
        )  # fmt: skip

    @torch.jit.unused
    def _stack_layer(self, route: routes.Route, spec: kernels.StackSpec) -> kernels.LayerSpec:
        """The LayerSpec of a call on the stack ops (which read the call's batch sizes, not its), kept with the
        route and StackSpec it comes from: it depends on nothing else (a one-step call's Python is its cost)."""
        kept = self.__dict__.get("_last_stack_layer")
        if kept is None or kept[0] != route or kept[1] != spec:
            kept = (route, spec, self._layer_spec(route, spec, []))
            self.__dict__["_last_stack_layer"] = kept
        return kept[2]

    @torch.jit.unused
    def _whole_stack(
        self, route: routes.Route, spec: kernels.StackSpec, rows: Tensor, batch_sizes: List[int],
        state0: List[Tensor], weights: List[Tensor],
    ) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
        """The whole stack in one call: on the route's kernel's stack ops (the native ones, differentiated as
        the route says), else TorchScript's loop (no gradients: nothing to save)."""
        if _on_stack_ops(route):
            return kernels.whole_stack(self._stack_layer(route, spec), spec, rows, batch_sizes, state0, weights)
        return kernels.run_stack(self.kind().sequence(spec.onednn), spec, rows, batch_sizes, state0, weights)

    def _empty_batch(self, call: LayerCall) -> Tuple[Tensor, List[Tensor]]:
        """An empty batch: torch.nn returns empty outputs, (L, 0, D*H_out) and states of state0's shapes,
        whose gradients reach the input and states (empty) and the weights (zeros). Nothing to compute:
        the outputs hang from a zero built from every input so that autograd gives those gradients."""
        zero = call.rows.sum() * 0
        for t in call.state0 + call.weights:
            zero = zero + t.sum() * 0
        directions = 2 if self.bidirectional else 1
        size = self.proj_size if self.proj_size > 0 else self.hidden_size
        output = call.rows.new_zeros([0, directions * size]) + zero
        return output, [s.new_zeros(s.size()) + zero for s in call.state0]

    @torch.jit.unused
    def _eager_arguments(
        self, input: Tensor, hx: Optional[List[Tensor]]
    ) -> Tuple[Tensor, Optional[List[Tensor]], List[Tensor]]:
        """(input, hx, weights) for the eager path. The weights are looked up by name on every call,
        so torch.func.functional_call and reassigned weights work; under torch.autocast all three
        come in autocast's dtype."""
        # Straight from the registered parameters where they all are (getattr through nn.Module's __getattr__
        # took 16 µs for 8 weights); a weight deleted or set as a plain tensor is found by name.
        registered = self._parameters
        weights = [registered.get(name) for name in self._flat_weights_names]
        if any(w is None for w in weights):
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
            "LSTM",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            proj_size,
            device,
            dtype,
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
                self._read_padded(*self._eager_arguments(input, [hx[0], hx[1]]))
            raise TypeError(
                f"{type(self).__name__} takes hx as a tuple (h0, c0) of two tensors, "
                f"got a single Tensor of shape {list(hx.size())}"
            )
        if isinstance(hx, (tuple, list)) and len(hx) != 2:
            message = (
                f"{type(self).__name__} expects two hidden states (h0, c0), got a {type(hx).__name__} of {len(hx)}"
            )
            raise RuntimeError(message) if len(hx) > 2 else IndexError(message)
        return [hx[0], hx[1]]

    def _state_sizes(self) -> List[int]:
        return [self.proj_size if self.proj_size > 0 else self.hidden_size, self.hidden_size]


def _scan_inputs(call: LayerCall) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
    """(rows, state0, weights) of a scanned call. Detached while exporting to ONNX, whose model is
    inference only: in grad mode torch 2.14's ONNX exporter fails on the scans of a batch-first layer
    (its type-promotion pass runs scan's autograd: "Expected leaf to be a Tensor, got SymInt")."""
    if not torch.onnx.is_in_onnx_export():
        return call.rows, call.state0, call.weights
    return call.rows.detach(), [s.detach() for s in call.state0], [w.detach() for w in call.weights]


class Backend(str):
    """A backend's name ('triton' or 'torchscript') with ``reason``: why a custom cell's layer runs
    the TorchScript loop ('' otherwise)."""

    reason: str

    def __new__(cls, name: str, reason: str = "") -> "Backend":
        backend = super().__new__(cls, name)
        backend.reason = reason
        return backend


def backend_for(layer: RNNBase, input: Union[Tensor, PackedSequence]) -> Backend:
    """The backend ``layer(input)`` runs its time loops on, in eager mode: ``"triton"`` (its kernel is
    ``triton``, ``resident`` or ``generated``) or ``"torchscript"`` (any other), from
    :func:`recurrent.routes.route_for`, which names the kernel itself. Raises as the call would where
    ``RECURRENT_BACKEND`` cannot be honoured. For a :class:`recurrent.CustomRNN` the answer's ``reason`` says
    why its cell runs the TorchScript loop (say, the op its step uses that kernels cannot be generated for)."""
    route = routes.route_for(layer, input)
    if route.kernel in ("triton", "resident", "generated"):
        return Backend("triton")
    return Backend("torchscript", route.reason if layer.mode not in kernels.KINDS else "")
