"""What a kernel is, for everything above it: the stack loop, the autograd wiring, the routes.

A kernel runs one layer-direction (both directions batched on dim 0) over a whole sequence of rows
(layout: :mod:`.common`). Its pair of Python functions, on any backend:

- ``forward(gi, state0, w_hh_t, b_hh, weights, batch_sizes, save) -> (hs, finals, saved)``, where
  ``state0`` is [h0] or [h0, c0], ``b_hh`` is None when the kind folds it into the input projection,
  ``weights`` holds the kind's weights beyond W_ih, W_hh and the biases (the LSTM's projection W_hr
  (D, P, H); a custom cell's own parameters, each (D, 1, ...)), and ``saved`` is the kind's own list of
  activations (every backend of a kind saves the same list, so any backward can follow any forward);
- ``backward(grad_hs, grad_finals, state0, hs, h_prev, saved, w_hh, weights, batch_sizes)
  -> (dgi, dgh, dstate0, dweights)``, ``h_prev`` being the state before every row as consecutive row
  blocks (:func:`.common.previous_blocks`). dgh may hold only the last columns of the hidden gates'
  gradient where its first ones equal dgi's (the native GRU's: r and z equal, n differs), or be a
  :class:`SummedWeight`.

A kernel may instead make the input projections itself (``rows_forward(x, w_ih, b_ih, state0, w_hh, b_hh,
weights, batch_sizes, save)``, each direction's input rows x (D, T, I): no sequence-sized gi buffer
without gradients). One with ``overwrites_saved`` writes its gradients over its saved activations in its
backward, and with ``overwrites_hs`` over hs too; a second backward then recomputes the layer. One with
``joined_grad`` gets grad_hs as a :class:`JoinedGrad`. One with ``previous_states`` saves the states
before each row itself (a custom cell, whose output need not be its state) and gives them from
``saved``. One with ``weight_grad`` sums gradᵀ x, gradᵀ h and grad over the rows in one pass itself.
``saved_widths`` says what ``saved`` holds (each (D, T, k·H), the k in order), from which torch.compile's
layer op (:mod:`.ops`) makes their shapes. One with ``stack`` runs a whole stack in one call, and with
``stack_backward`` differentiates it in one, where the route asks for it (``"whole"``).

:class:`SequenceKernel` is the forward as a TorchScript class, what the compiled stack loop calls for a
built-in kind (TorchScript has no function values to look up in a table; interfaces it has), and
:class:`SequenceModule` the same for a custom cell's loop, a module.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

from torch import Tensor, nn

from .._jit import interface

Forward = Callable[..., Tuple[Tensor, List[Tensor], List[Tensor]]]
Backward = Callable[..., Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]]


class Kernel(NamedTuple):
    """A layer-direction's sequence forward and its hand-written backward (the module docstring); a
    kernel without ``backward`` is differentiated by autograd through its forward's ops."""

    forward: Optional[Forward]
    backward: Optional[Backward]
    rows_forward: Optional[Forward] = None
    overwrites_saved: bool = False
    overwrites_hs: bool = False
    joined_grad: bool = False
    # (Σ gradᵀ x, Σ gradᵀ h, Σ grad) over rows in one pass (grad (D, R, G), x and h as row blocks, a bias flag)
    weight_grad: Optional[Callable[[Tensor, List[Tensor], List[Tensor], bool], Tuple[Tensor, Tensor, Tensor]]] = None
    previous_states: Optional[Callable[[List[Tensor]], List[Tensor]]] = None  # saved -> h before each row
    # The forward to run where autograd records the ops, if not ``forward`` (a custom cell's loop compiled
    # apart: recurrent.custom._loop_class says why)
    recorded_forward: Optional[Forward] = None
    # What ``saved`` holds: each (D, T, k·H), k listed in order (the layer op's fake shapes: .ops)
    saved_widths: Tuple[int, ...] = ()
    # The whole stack in one call, where the kernel has one (the native kernels': one op for all layers):
    # (StackSpec, rows, batch_sizes, state0 ([] for zeros), weights, save) -> (output rows, final states,
    # saved), and its backward (StackSpec, grad_out, grad_finals, rows, state0, weights, saved, batch_sizes,
    # input_grad) -> (dx or None, dstate0 ([] where state0 was), each weight's gradient); it writes over ``saved``
    stack: Optional[Callable[..., Tuple[Tensor, List[Tensor], List[Tensor]]]] = None
    stack_backward: Optional[Callable[..., Tuple[Optional[Tensor], List[Tensor], List[Tensor]]]] = None
    # Whether ``stack_backward`` takes None for a final state's gradient that never came (no tensor of zeros)
    stack_missing_grads: bool = False
    # A cell's step in one call (RNNCell, GRUCell, LSTMCell on the kernel): (x, h, c, w_ih, w_hh, b_ih, b_hh), the
    # states and biases None where there are none -> [h' (, c'), saved...]; its backward (grad_h, grad_c, the same
    # seven, saved, input_grad, state_grad) -> [dx, dh (, dc), dW_ih, dW_hh (, db_ih, db_hh)] (.cpu.sequences)
    cell: Optional[Callable[..., List[Tensor]]] = None
    cell_backward: Optional[Callable[..., List[Tensor]]] = None


class JoinedGrad(NamedTuple):
    """The incoming gradient as a ``joined_grad`` kernel takes it: the output rows' (T, D·H) and the
    second direction's row order (None for one direction), instead of a per-direction copy."""

    rows: Tensor
    reverse: Optional[Tensor]


class SummedWeight(NamedTuple):
    """A kernel's dgh given as the hidden weight gradient it summed itself (D, G, H), and the gate
    gradient rows (D, R, G) whose sum is the hidden bias gradient."""

    weight: Tensor
    rows: Tensor


@interface
class SequenceKernel:
    """A built-in kind's forward as the compiled stack loop calls it (a TorchScript class: a layer keeps
    one as a plain attribute, which neither its repr nor its state_dict shows): ``forward`` as
    :class:`Kernel`'s (saving nothing when not ``save``), and ``hidden_weight``, W_hh (D, G, H) as the
    loop uses it (as it is, for the built-in kinds)."""

    def forward(
        self, gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
        batch_sizes: List[int], save: bool,
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
        pass

    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        pass


@interface
class SequenceModule(nn.Module):
    """:class:`SequenceKernel` as a module: a custom cell's loop, which holds the cell (its ``step``, its
    settings) and gives ``hidden_weight`` the cell's (weight drop)."""

    def forward(
        self, gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
        batch_sizes: List[int], save: bool,
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
        pass

    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        pass
