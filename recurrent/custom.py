"""Your own cell, the whole layer for free: :class:`CustomCell` and :class:`CustomRNN`.

A cell kind is its step's math. Write it as a :class:`CustomCell` subclass: how many gate blocks the
projections have, its states, any parameters of its own, and one TorchScript-compatible ``step``.
:class:`CustomRNN` then gives it every layer feature the built-in kinds have: ``num_layers``,
``bidirectional``, ``batch_first``, initial states, inter-layer dropout, unbatched input,
PackedSequence, ``torch.jit.script``, ``state_dict``; the input projection of every step and both
directions is one product before the loop, and the loop is compiled by TorchScript.

What ``step`` sees, per time step, for the rows still running (N of them) and both directions at
once (D, the leading dimension of every tensor):

- ``gi`` (D, N, G·H): x W_ihᵀ + b_ih for this step, G = ``gates`` blocks of ``hidden_size`` H;
- ``gh`` (D, N, G·H): h W_hhᵀ + b_hh, with h = ``state[0]``, the state before the step;
- ``state``: the states before the step, each (D, N, H), in the order of ``state_names``;
- ``params``: the cell's own parameters of this layer, in the order of :meth:`CustomCell.parameter_shapes`,
  each (D, 1, \\*shape): a parameter of shape (H,) broadcasts over the rows.

It returns ``(output, new_state)``: the step's output (D, N, H) and the states after the step.
``state[0]`` is what the next step's hidden projection reads. Gradients come from autograd through
the TorchScript loop, or from a hand-written backward when the cell defines ``step_backward``
(see :class:`CustomCell`).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import kernels
from ._jit import JIT_ENABLED, script
from .kernels.autograd import _batched, needs_plain_ops
from .kernels.common import carry_rows, gather_directions, hidden_product, join_directions, per_direction, step_rows
from .kernels.stack import layer_reverse_index
from .layers import LSTM, RNNBase, _scan_inputs

# Called after each layer of an eager custom layer call with (the plain loop, gi, state0, W_hh, b_hh,
# the cell's own parameters, batch sizes, reverse index): gate recording (recurrent.recording) reads them.
CUSTOM_LAYER_OBSERVERS: List[Callable[..., None]] = []


class CustomCell(nn.Module):
    """Base class of a custom cell kind: subclass it, set ``gates`` and ``state_names``, write ``step``.

    - ``gates``: the number of blocks of hidden_size in W_ih, W_hh, b_ih and b_hh.
    - ``state_names``: ``("h",)`` (the layer takes and returns one state tensor, as torch.nn.GRU) or
      ``("h", "c")`` (a pair, as torch.nn.LSTM). ``state[0]`` feeds the hidden projection.
    - :meth:`parameter_shapes` and :meth:`reset_parameter`: the cell's own parameters per layer and
      direction (registered on the layer as ``{name}_l{k}[_reverse]``) and their initialisation.
    - :meth:`step` (required) and, optionally, ``step_backward`` (below).
    - :meth:`hidden_weight`: W_hh as the loop uses it, computed once per forward pass (weight drop).

    Keep hyperparameters as instance attributes set in ``__init__`` (TorchScript reads those), and
    ``self.training`` tells ``step`` whether the layer is training.

    ``step_backward(self, gi, gh, state, params, grad_output, grad_state)`` may be defined (with
    TorchScript type annotations) to replace autograd with a hand-written backward through time. It
    gets the step's inputs again (recompute what the gradients need from them) and the gradients of
    the step's output and new states, and returns ``(dgi, dgh, dstate, dparams)``: the gradients of
    ``gi``, ``gh``, the states before the step (not counting the path through ``gh``, which the layer
    adds) and the parameters, each summed over the rows to the parameter's (D, 1, \\*shape). The step
    must then be deterministic in its inputs (no random draws in ``step``).
    """

    gates: int = 1
    state_names: Tuple[str, ...] = ("h",)

    def parameter_shapes(self, hidden_size: int) -> Dict[str, Tuple[int, ...]]:
        """The cell's own parameters of one layer-direction: name -> shape (default: none)."""
        return {}

    def reset_parameter(self, name: str, parameter: Tensor, hidden_size: int) -> None:
        """Initialises one of the cell's own parameters; default: uniform in ±1/sqrt(hidden_size)."""
        bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
        nn.init.uniform_(parameter, -bound, bound)

    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        """W_hh (D, G·H, H) as the loop uses it, once per forward pass; default: as it is."""
        return w_hh

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} must define step(gi, gh, state, params)")


class SequenceLoop(nn.Module):
    """The time loop of a custom cell over rows (layout: :mod:`recurrent.kernels.common`)."""

    def __init__(self, cell: CustomCell) -> None:
        super().__init__()
        self.cell = cell

    def forward(
        self,
        gi: Tensor,
        state0: List[Tensor],
        w_hh_t: Tensor,
        b_hh: Optional[Tensor],
        params: List[Tensor],
        batch_sizes: List[int],
        save: bool,
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
        """(outputs (D, T, H), final states, saved); with ``save``, saved = [gh, *states before each row]."""
        state = state0
        outputs: List[Tensor] = []
        ghs: List[Tensor] = []
        before: List[List[Tensor]] = [[] for _ in state0]
        # gi split once (not sliced per step): a slice's backward would write a zero-filled gi per step.
        for gi_t in gi.split(batch_sizes, 1):
            size = gi_t.size(1)
            now = [step_rows(s, size) for s in state]
            gh = hidden_product(now[0], w_hh_t, b_hh)
            output, new = self.cell.step(gi_t, gh, now, params)
            outputs.append(output)
            if save:
                ghs.append(gh)
                for i in range(len(now)):
                    before[i].append(now[i])
            state = [carry_rows(new[i], state[i]) for i in range(len(state))]
        saved: List[Tensor] = []
        if save:
            saved = [torch.cat(ghs, 1)] + [torch.cat(b, 1) for b in before]
        return torch.cat(outputs, 1), state, saved


class SequenceLoopWithBackward(SequenceLoop):
    """:class:`SequenceLoop` plus the reverse loop over the cell's ``step_backward``."""

    @torch.jit.export
    def backward(
        self,
        grad_outputs: Tensor,
        grad_finals: List[Tensor],
        gi: Tensor,
        saved: List[Tensor],
        params: List[Tensor],
        w_hh: Tensor,
        batch_sizes: List[int],
    ) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
        """(dgi, dgh, dstate0, dparams); the weight gradients are products of these over all rows."""
        gh, before = saved[0], saved[1:]
        dgi = torch.empty_like(gi)
        dgh = torch.empty_like(gh)
        dstate = grad_finals
        dparams = [torch.zeros_like(p) for p in params]
        end = gi.size(1)
        for t in range(len(batch_sizes) - 1, -1, -1):
            size = batch_sizes[t]
            start = end - size
            now = [b[:, start:end] for b in before]
            d_now = [step_rows(d, size) for d in dstate]
            dgi_t, dgh_t, dprev, dp = self.cell.step_backward(
                gi[:, start:end], gh[:, start:end], now, params, grad_outputs[:, start:end], d_now
            )
            dgi[:, start:end] = dgi_t
            dgh[:, start:end] = dgh_t
            dprev[0] = torch.baddbmm(dprev[0], dgh_t, w_hh)  # the path through gh = h W_hhᵀ + b_hh
            dstate = [carry_rows(dprev[i], dstate[i]) for i in range(len(dstate))]
            dparams = [dparams[i] + dp[i] for i in range(len(dparams))]
            end = start
        return dgi, dgh, dstate, dparams


class HandWrittenBackward(torch.autograd.Function):
    """A layer's custom loop, differentiated by the cell's ``step_backward`` (gi and W_hh in, hs out)."""

    @staticmethod
    def forward(
        ctx, loop, autograd_loop, batch_sizes: List[int], gi: Tensor, w_hh: Tensor, b_hh, states: int, *tensors
    ):
        state0, params = list(tensors[:states]), list(tensors[states:])
        hs, finals, saved = loop(gi, state0, w_hh.transpose(1, 2), b_hh, params, batch_sizes, True)
        ctx.loops, ctx.batch_sizes, ctx.counts = (loop, autograd_loop), batch_sizes, (states, len(params))
        ctx.has_bias = b_hh is not None
        ctx.save_for_backward(gi, w_hh, *([b_hh] if b_hh is not None else []), *state0, *params, *saved)
        return (hs, *finals)

    @staticmethod
    def backward(ctx, grad_hs: Tensor, *grad_finals: Tensor):
        states, count = ctx.counts
        gi, w_hh, *rest = ctx.saved_tensors
        b_hh = rest.pop(0) if ctx.has_bias else None
        state0, params, saved = rest[:states], rest[states : states + count], rest[states + count :]
        if torch.is_grad_enabled() or _batched(grad_hs) or any(_batched(g) for g in grad_finals):
            return _recomputed_grads(ctx, [gi, w_hh, b_hh, *state0, *params], grad_hs, grad_finals)
        dgi, dgh, dstate0, dparams = ctx.loops[0].backward(
            grad_hs, list(grad_finals), gi, saved, params, w_hh, ctx.batch_sizes
        )
        dw_hh = torch.bmm(dgh.transpose(1, 2), saved[1])  # Σ over rows of dghᵀ h (saved[1]: h before each row)
        db_hh = dgh.sum(1, keepdim=True) if ctx.has_bias else None
        return (None, None, None, dgi, dw_hh, db_hh, None, *dstate0, *dparams)


def _recomputed_grads(ctx, inputs: List[Optional[Tensor]], grad_hs: Tensor, grad_finals) -> tuple:
    """Double backward and batched gradients: autograd through the plain loop, recomputed from the
    saved inputs (with a graph when grad mode is on), as :mod:`recurrent.kernels.autograd` does."""
    states, count = ctx.counts
    needs = [need and t is not None for t, need in zip(inputs, ctx.needs_input_grad[3:6] + ctx.needs_input_grad[7:])]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        # A fresh view per input: its gradient is its own, and the graph reaches the input's history.
        args = [t.view_as(t) if need else (None if t is None else t.detach()) for t, need in zip(inputs, needs)]
        gi, w_hh, b_hh = args[0], args[1], args[2]
        state0, params = args[3 : 3 + states], args[3 + states :]
        hs, finals, _ = ctx.loops[1](gi, state0, w_hh.transpose(1, 2), b_hh, params, ctx.batch_sizes, False)
        wanted = [a for a, need in zip(args, needs) if need]
        found = iter(
            torch.autograd.grad(
                [hs, *finals], wanted, [grad_hs, *grad_finals], create_graph=create_graph, allow_unused=True
            )
        )
    grads = [next(found) if need else None for need in needs]
    return (None, None, None, *grads[:3], None, *grads[3:])


class CustomRNN(RNNBase):
    """A stacked, optionally bidirectional layer of any :class:`CustomCell`, with torch.nn's layer API.

    ``CustomRNN(cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None)``. Parameters per layer and direction,
    as torch.nn names them: ``weight_ih_l{k}`` (G·H, I), ``weight_hh_l{k}`` (G·H, H), ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` (G·H,), then the cell's own ``{name}_l{k}``; ``_reverse`` for the second
    direction. A cell with one state takes ``hx`` and returns ``(output, h_n)`` as torch.nn.GRU does;
    one with two takes ``(h0, c0)`` and returns ``(output, (h_n, c_n))`` as torch.nn.LSTM does.
    """

    def __new__(cls, cell: Optional[CustomCell] = None, *args, **kwargs):
        # (copy and pickle call __new__ with no arguments, on the class they saved)
        if cls is CustomRNN and isinstance(cell, CustomCell) and len(cell.state_names) == 2:
            cls = _CustomRNNPair  # the (h0, c0) forward; Python then runs its __init__ with these arguments
        return super().__new__(cls)

    def __init__(
        self,
        cell: CustomCell,
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
        if not isinstance(cell, CustomCell):
            raise TypeError(f"CustomRNN expects a CustomCell instance as its cell, got {type(cell).__name__}")
        if len(cell.state_names) not in (1, 2):
            raise ValueError(
                f"a custom cell has one state (h) or two (h, c); {type(cell).__name__} has {len(cell.state_names)}"
            )
        if not isinstance(cell.gates, int) or cell.gates < 1:
            raise ValueError(f"{type(cell).__name__}.gates must be a positive int, got {cell.gates!r}")
        own = list(cell.parameter_shapes(hidden_size).items())
        super().__init__(
            "CUSTOM",
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            0,
            device,
            dtype,
            gates=cell.gates,
            extra_params=own,
        )
        self._own_names = [name for name, _ in own]
        self._num_states = len(cell.state_names)
        # The cell lives inside the loop module (TorchScript compiles the loop with it); ``cell`` reads it there.
        self.loop = SequenceLoopWithBackward(cell) if hasattr(cell, "step_backward") else SequenceLoop(cell)
        self.reset_parameters()  # again, now that the cell is here to initialise its own parameters

    __jit_unused_properties__ = RNNBase.__jit_unused_properties__ + ["cell"]

    @property
    def cell(self) -> CustomCell:
        return self.loop.cell

    def _get_name(self) -> str:
        return "CustomRNN"  # also for the (h0, c0) subclass, in repr

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "loop" not in self._modules:  # called by RNNBase.__init__ before the cell is attached
            return
        suffixes = ["_reverse"] if self.bidirectional else []
        for layer in range(self.num_layers):
            for suffix in [""] + suffixes:
                for name in self._own_names:
                    self.cell.reset_parameter(name, getattr(self, f"{name}_l{layer}{suffix}"), self.hidden_size)

    def _state_sizes(self) -> List[int]:
        return [self.hidden_size] * self._num_states

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_compiled", None)  # a TorchScript module does not pickle; it is rebuilt on use
        return state

    # -- the stack ----------------------------------------------------------------------------
    def _stack(
        self,
        rows: Tensor,
        batch_sizes: List[int],
        state0: List[Tensor],
        weights: List[Tensor],
        scanned: bool = False,
    ) -> Tuple[Tensor, List[Tensor]]:
        """Every layer over rows (T, I) from state0 [(layers·D, N, H)]; returns (rows, finals).
        ``scanned``: padded rows of batch_sizes[0] sequences, each layer as scans (see
        :meth:`_scanned_stack`)."""
        directions = 2 if self.bidirectional else 1
        per_layer = len(weights) // self.num_layers
        needs_reverse = directions == 2 and not scanned  # scan flips its padded batch in time by itself
        reverse: Optional[Tensor] = layer_reverse_index(batch_sizes, rows.device) if needs_reverse else None
        finals: List[List[Tensor]] = [[] for _ in state0]
        for layer in range(self.num_layers):
            mine = [s[layer * directions : (layer + 1) * directions] for s in state0]
            w_ih, w_hh, b_ih, b_hh, params = self._stacked(weights[layer * per_layer : (layer + 1) * per_layer])
            w_hh = self.loop.cell.hidden_weight(w_hh)
            if scanned and not torch.jit.is_scripting():
                rows, last = self._scan_layer(rows, batch_sizes[0], mine, (w_ih, w_hh, b_ih, b_hh, params))
            elif torch.jit.is_scripting():
                gi = kernels.gate_inputs(per_direction(rows, reverse), w_ih, b_ih)
                hs, last, _ = self.loop(gi, mine, w_hh.transpose(1, 2), b_hh, params, batch_sizes, False)
                rows = join_directions(hs, reverse)
            else:
                gi = kernels.gate_inputs(per_direction(rows, reverse), w_ih, b_ih)
                hs, last = self._eager_loop(gi, mine, w_hh, b_hh, params, batch_sizes)
                rows = self._eager_join(hs, reverse)
                self._observe(gi, mine, w_hh, b_hh, params, batch_sizes, reverse)
            for i, state in enumerate(last):
                finals[i].append(state)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                rows = nn.functional.dropout(rows, self.dropout, True)
        return rows, [torch.cat(f, 0) for f in finals]

    @torch.jit.unused
    def _scanned(self, input: Tensor, state0: List[Tensor], weights: List[Tensor]) -> bool:
        """Scans while exporting only: under torch.compile (torch 2.14.1) a scan over a custom cell's
        step fails in training (dynamo runs it eagerly on real and fake tensors mixed), so there the
        loop compiles unrolled."""
        return kernels.scan.exporting()

    @torch.jit.unused
    def _scanned_stack(self, call) -> Tuple[Tensor, List[Tensor]]:
        """The stack with each layer's loops as scans over the cell's own step, for torch.export and
        torch.compile at any length (see recurrent.kernels.scan)."""
        rows, batch, state0, weights = _scan_inputs(call)
        return self._stack(rows, [batch], state0, weights, True)

    @torch.jit.unused
    def _scan_layer(
        self, rows: Tensor, batch: int, state0: List[Tensor], weights: Tuple
    ) -> Tuple[Tensor, List[Tensor]]:
        """One layer as scans: the cell's step, fed the scanned directions' own parameters."""
        w_ih, w_hh, b_ih, b_hh, params = weights
        step = self.loop.cell.step

        def cell_step(gi: Tensor, gh: Tensor, state: List[Tensor], own: slice) -> Tuple[Tensor, List[Tensor]]:
            return step(gi, gh, state, [p[own] for p in params])

        return kernels.scan.scan_layer(rows, batch, state0, w_ih, w_hh, b_ih, b_hh, cell_step)

    def _stacked(self, params: List[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], List[Tensor]]:
        """One layer's parameters stacked by direction: w_ih (D, G, I), w_hh (D, G, H), b_ih and
        b_hh (D, 1, G) or None, and the cell's own, each (D, 1, *shape)."""
        directions = 2 if self.bidirectional else 1
        per = len(params) // directions
        # stack_directions: each direction's gradient in a buffer of its own, not views of one.
        stacked = [kernels.stack_directions([params[d * per + i] for d in range(directions)]) for i in range(per)]
        w_ih, w_hh = stacked[0], stacked[1]
        first_own = 4 if self.bias else 2
        own = [p.unsqueeze(1) for p in stacked[first_own:]]
        if self.bias:
            return w_ih, w_hh, stacked[2].unsqueeze(1), stacked[3].unsqueeze(1), own
        return w_ih, w_hh, None, None, own

    @torch.jit.unused
    def _eager_loop(
        self,
        gi: Tensor,
        state0: List[Tensor],
        w_hh: Tensor,
        b_hh: Optional[Tensor],
        params: List[Tensor],
        batch_sizes: List[int],
    ) -> Tuple[Tensor, List[Tensor]]:
        """The loop from Python: compiled by TorchScript, differentiated by autograd through it or by
        the cell's step_backward; or the kernels generated from the step (RECURRENT_BACKEND=triton,
        recurrent.kernels.triton.generated) with their own backward; plain Python under torch.func and
        forward-mode AD (TorchScript's executor hides its ops from the one and can drop the other's
        tangents)."""
        tensors = [gi, w_hh, *state0, *params] + ([] if b_hh is None else [b_hh])
        if needs_plain_ops(tensors):
            hs, finals, _ = self.loop(gi, state0, w_hh.transpose(1, 2), b_hh, params, batch_sizes, False)
            return hs, finals
        generated = kernels.select_custom_backend(self.cell, gi.device, gi.dtype, self.hidden_size) == "triton"
        loop = kernels.generated_loop(self.cell) if generated else self._compiled_loop()
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        if needs_grad and (generated or isinstance(self.loop, SequenceLoopWithBackward)):
            hs, *finals = HandWrittenBackward.apply(
                loop, self.loop, batch_sizes, gi, w_hh, b_hh, len(state0), *state0, *params
            )
            return hs, finals
        # With gradients, autograd records the compiled loop op by op: TorchScript's own autodiff graphs
        # gave wrong gradient shapes for chunked gates (a DifferentiableGraphBackward error).
        with torch.jit.optimized_execution(False) if needs_grad else nullcontext():
            hs, finals, _ = loop(gi, state0, w_hh.transpose(1, 2), b_hh, params, batch_sizes, False)
        return hs, finals

    @torch.jit.unused
    def _observe(
        self,
        gi: Tensor,
        state0: List[Tensor],
        w_hh: Tensor,
        b_hh: Optional[Tensor],
        params: List[Tensor],
        batch_sizes: List[int],
        reverse: Optional[Tensor],
    ) -> None:
        """Shows one layer's loop inputs to the observers (gate recording), if any."""
        for observe in CUSTOM_LAYER_OBSERVERS:
            observe(self.loop, gi, state0, w_hh, b_hh, params, batch_sizes, reverse)

    @torch.jit.unused
    def _eager_join(self, hs: Tensor, reverse: Optional[Tensor]) -> Tensor:
        return gather_directions(hs, reverse) if needs_plain_ops([hs]) else join_directions(hs, reverse)

    @torch.jit.unused
    def _compiled_loop(self) -> nn.Module:
        """The loop compiled by TorchScript, rebuilt when the cell's mode or settings change (a compiled
        module holds copies of the cell's attributes, ``training`` included)."""
        if not JIT_ENABLED:
            return self.loop
        settings = tuple((k, v) for k, v in sorted(vars(self.cell).items()) if isinstance(v, (bool, int, float, str)))
        key = (self.cell.training, settings)
        cached = self.__dict__.get("_compiled")
        if cached is None or cached[0] != key:
            cached = (key, script(type(self.loop)(self.cell)))
            self.__dict__["_compiled"] = cached
        return cached[1]


class _CustomRNNPair(CustomRNN):
    """A :class:`CustomRNN` whose cell has two states: LSTM's forward, ``(h0, c0)`` in, ``(h_n, c_n)`` out."""

    forward = LSTM.forward
    forward_packed = LSTM.forward_packed
    _state_list = LSTM._state_list
    _eager_states = LSTM._eager_states
