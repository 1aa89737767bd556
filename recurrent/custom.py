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

A custom layer is a cell kind like the built-in ones (:mod:`recurrent.kernels.registry`), built from
its cell: it runs on the same stack loop, autograd wiring, recompute path and routes
(:mod:`recurrent.routes`), its kernels being the cell's loop in TorchScript, in Python (torch.func) and,
opted in, generated for Triton.
"""

from __future__ import annotations

import math
import sys
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import kernels, routes
from ._jit import JIT_ENABLED, script
from .kernels.common import carry_rows, hidden_product, step_rows
from .kernels.contract import Kernel
from .layers import LSTM, RNNBase


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
        kind_weights: List[Tensor],
        batch_sizes: List[int],
        save: bool,
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
        """(outputs (D, T, H), final states, saved); with ``save``, saved = [gh, *states before each row].
        ``kind_weights``: the cell's own parameters stacked by direction, each (D, *shape)."""
        params = [w.unsqueeze(1) for w in kind_weights]  # (D, 1, *shape): they broadcast over the rows
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

    @torch.jit.export
    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        return self.cell.hidden_weight(w_hh)


class SequenceLoopWithBackward(SequenceLoop):
    """:class:`SequenceLoop` plus the reverse loop over the cell's ``step_backward``."""

    @torch.jit.export
    def backward(
        self,
        grad_outputs: Tensor,
        grad_finals: List[Tensor],
        gi: Tensor,
        saved: List[Tensor],
        kind_weights: List[Tensor],
        w_hh: Tensor,
        batch_sizes: List[int],
    ) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
        """(dgi, dgh, dstate0, dparams), dparams in the kind weights' shapes (D, *shape); the weight
        gradients are products of these over all rows."""
        params = [w.unsqueeze(1) for w in kind_weights]
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
        return dgi, dgh, dstate, [d.squeeze(1) for d in dparams]


def loop_kernel(loop, backward: bool, recorded=None) -> Kernel:
    """A custom cell's loop (:class:`SequenceLoop`, compiled or not, or the generated kernels' loop) as a
    :class:`recurrent.kernels.contract.Kernel`: its forward saves gi first (its backward reads it), the
    states before each row are what it saved of them, and with ``backward`` its hand-written backward.
    ``recorded``: the loop to run where autograd records the ops (default: ``loop``)."""

    def forward(gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
                batch_sizes: List[int], save: bool) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
        hs, finals, saved = loop(gi, state0, w_hh_t, b_hh, kind_weights, batch_sizes, save)
        return hs, finals, [gi, *saved] if save else []

    def hand_written(grad_hs: Tensor, grad_finals: List[Tensor], state0: List[Tensor], hs: Tensor,
                     h_prev: List[Tensor], saved: List[Tensor], w_hh: Tensor, kind_weights: List[Tensor],
                     batch_sizes: List[int]) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
        return loop.backward(grad_hs, grad_finals, saved[0], saved[1:], kind_weights, w_hh, batch_sizes)

    def recorded_forward(gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor],
                         kind_weights: List[Tensor], batch_sizes: List[int], save: bool):  # fmt: skip
        return recorded(gi, state0, w_hh_t, b_hh, kind_weights, batch_sizes, save)

    return Kernel(
        forward, hand_written if backward else None, previous_states=lambda saved: [saved[2]],
        recorded_forward=None if recorded is None else recorded_forward,
    )  # fmt: skip


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
            cell_params=own,
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
        state = super().__getstate__()
        state.pop("_compiled", None)  # a TorchScript module does not pickle; it is rebuilt on use
        return state

    @torch.jit.unused
    def _custom_cell(self) -> Optional[CustomCell]:
        return self.cell

    # -- the cell as a kind ---------------------------------------------------------------------
    @torch.jit.unused
    def kind(self) -> kernels.CellKind:
        """The cell as a cell kind: its loop compiled by TorchScript ("torchscript"), in Python ("plain"),
        and generated for Triton ("generated"); its step for the scans; no ONNX operator."""
        cell = self.cell
        backward = hasattr(cell, "step_backward")
        transforms = type(cell).hidden_weight is not CustomCell.hidden_weight
        return kernels.CellKind(
            "CUSTOM", cell.gates, self._num_states, folds_bias=False, sequence=None,
            kernels={
                "torchscript": lambda projected: loop_kernel(
                    self._compiled_loop(), backward, self._compiled_loop(recorded=True)
                ),
                "plain": lambda projected: loop_kernel(self.loop, False),
                "generated": lambda projected: loop_kernel(_generated(cell), True),
            },
            scan_step=self._scan_step, gates_of=self._step_locals,
            hidden_weight=cell.hidden_weight if transforms else None,
        )  # fmt: skip

    def _scripted_stack(
        self, rows: Tensor, batch_sizes: List[int], state0: List[Tensor], weights: List[Tensor]
    ) -> Tuple[Tensor, List[Tensor]]:
        """The stack in TorchScript on the cell's loop (a scripted module's)."""
        return kernels.run_module_stack(self.loop, self._stack_spec(False), rows, batch_sizes, state0, weights)

    @torch.jit.unused
    def _whole_stack(
        self, route: routes.Route, spec: kernels.StackSpec, rows: Tensor, batch_sizes: List[int],
        state0: List[Tensor], weights: List[Tensor],
    ) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
        """The whole stack in one TorchScript call on the compiled loop (no gradients)."""
        return kernels.run_module_stack(self._compiled_loop(), spec, rows, batch_sizes, state0, weights)

    @torch.jit.unused
    def _scan_step(self, kind_weights: List[Tensor]):
        """The cell's step for the scans, given its own parameters stacked by direction (D, *shape)."""
        step = self.cell.step

        def cell_step(gi: Tensor, gh: Tensor, state: List[Tensor], own: slice) -> Tuple[Tensor, List[Tensor]]:
            return step(gi, gh, state, [w[own].unsqueeze(1) for w in kind_weights])

        return cell_step

    @torch.jit.unused
    def _step_locals(
        self, layer: kernels.LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]
    ) -> Dict[str, Tensor]:
        """The step's named intermediates over one layer, each (D, T, H): every local variable of the
        cell's ``step`` (its arguments aside) that holds a (directions, rows, hidden_size) tensor when the
        step returns, by its name, read as the loop runs once more in Python (``sys.setprofile``)."""
        code = type(self.cell).step.__code__
        arguments = set(code.co_varnames[: code.co_argcount])
        steps: List[Dict[str, Tensor]] = []

        def profile(frame, event: str, arg) -> None:
            if event == "return" and frame.f_code is code:
                steps.append({k: v for k, v in frame.f_locals.items() if k not in arguments and isinstance(v, Tensor)})

        previous = sys.getprofile()
        sys.setprofile(profile)
        try:
            kernels.kernel_forward(layer.plain(), rows, state0, params, save=False)
        finally:
            sys.setprofile(previous)
        shapes = [(layer.directions, size, self.hidden_size) for size in layer.batch_sizes]  # (D, N_t, H) a step
        names = [k for k in steps[0] if all(k in s and s[k].shape == shape for s, shape in zip(steps, shapes))]
        return {k: torch.cat([s[k] for s in steps], 1) for k in names}

    @torch.jit.unused
    def _compiled_loop(self, recorded: bool = False) -> nn.Module:
        """The loop compiled by TorchScript, rebuilt when the cell's mode or settings change (a compiled
        module holds copies of the cell's attributes, ``training`` included). ``recorded``: the one whose
        ops autograd records (:func:`_loop_class`)."""
        if not JIT_ENABLED:
            return self.loop
        settings = tuple((k, v) for k, v in sorted(vars(self.cell).items()) if isinstance(v, (bool, int, float, str)))
        key = (self.cell.training, settings)
        compiled = self.__dict__.setdefault("_compiled", {})
        if compiled.get(recorded, (None,))[0] != key:
            compiled[recorded] = (key, script(_loop_class(type(self.loop), recorded)(self.cell)))
        return compiled[recorded][1]


class _CustomRNNPair(CustomRNN):
    """A :class:`CustomRNN` whose cell has two states: LSTM's forward, ``(h0, c0)`` in, ``(h_n, c_n)`` out."""

    forward = LSTM.forward
    forward_packed = LSTM.forward_packed
    _state_list = LSTM._state_list
    _eager_states = LSTM._eager_states


def _generated(cell: CustomCell):
    """The cell's loop on Triton kernels generated from its step (imported only when asked for)."""
    from .kernels import triton

    return triton.generated_loop(cell)


_LOOP_CLASSES: Dict[Tuple[type, bool], type] = {}


def _loop_class(loop_class: type, recorded: bool) -> type:
    """``loop_class`` under a name of its own for each use: the loops the eager layers run without autograd
    recording their ops, and those it records (``recorded``). TorchScript keeps one compiled method per
    class and settings, and its executor keeps an optimised plan once it made one, whatever
    ``torch.jit.optimized_execution`` says later: a plan made where its inputs required gradients holds
    TorchScript's autodiff graphs, which gave wrong gradient shapes for a custom cell's chunked gates.
    Apart, the recorded loops never run optimised, and neither shares a scripted model's plans."""
    key = (loop_class, recorded)
    if key not in _LOOP_CLASSES:
        name = f"{'Recorded' if recorded else 'Eager'}{loop_class.__name__}"
        _LOOP_CLASSES[key] = type(name, (loop_class,), {"__module__": __name__})
    return _LOOP_CLASSES[key]
