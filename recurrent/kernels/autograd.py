"""One ``autograd.Function`` per layer that wires any kernel pair into autograd.

A kernel is a pair of TorchScript sequence functions (shapes in :mod:`.common`):
``forward(gi, state0, w_hh_t, b_hh, batch_sizes, save) -> (hs, finals, saved)`` and
``backward(grad_hs, grad_finals, state0, hs, h_prev, saved, w_hh, batch_sizes) -> (dgi, dgh, dstate0)``.
Around it this module does, for a whole layer and both directions: the input projection of every
row as one product before the loop, and after it the input, weight and bias gradients as single
products and reductions over all rows.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from .common import join_directions, previous_states, split_directions


class Kernel(NamedTuple):
    forward: Callable[..., Tuple[Tensor, List[Tensor], List[Tensor]]]
    backward: Callable[..., Tuple[Tensor, Tensor, List[Tensor]]]


class LayerSpec(NamedTuple):
    kernel: Kernel
    directions: int
    bias: bool
    batch_sizes: List[int]
    reverse: Optional[Tensor]  # reverse_index(batch_sizes) for two directions


@script
def stack_weights(
    params: List[Tensor], directions: int, bias: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """A layer's per-direction parameters [w_ih, w_hh(, b_ih, b_hh)]·D as (w_ih, w_hh, b_ih, b_hh):
    w_ih (D·G, I) and b_ih (D·G,) side by side for one input product, w_hh (D, G, H) and b_hh
    (D, 1, G) stacked for the batched hidden product."""
    per = 4 if bias else 2
    if directions == 1:
        w_ih, w_hh = params[0], params[1].unsqueeze(0)
    else:
        w_ih, w_hh = torch.cat([params[0], params[per]]), torch.stack([params[1], params[per + 1]])
    if not bias:
        return w_ih, w_hh, None, None
    if directions == 1:
        return w_ih, w_hh, params[2], params[3].view(1, 1, -1)
    return w_ih, w_hh, torch.cat([params[2], params[per + 2]]), torch.stack([params[3], params[per + 3]]).unsqueeze(1)


@script
def gate_inputs(rows: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], directions: int, reverse: Optional[Tensor]) -> Tensor:
    """gi = W_ih x + b_ih for every row and direction in one product: (T, I) → (D, T, G)."""
    gi = torch.mm(rows, w_ih.t()) if b_ih is None else torch.addmm(b_ih, rows, w_ih.t())
    return split_directions(gi, directions, reverse)


class LayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: LayerSpec, rows: Tensor, states: int, *tensors: Tensor):
        state0, params = list(tensors[:states]), list(tensors[states:])
        w_ih, w_hh, b_ih, b_hh = stack_weights(params, spec.directions, spec.bias)
        gi = gate_inputs(rows, w_ih, b_ih, spec.directions, spec.reverse)
        hs, finals, saved = spec.kernel.forward(gi, state0, w_hh.transpose(1, 2), b_hh, spec.batch_sizes, True)
        ctx.spec, ctx.states = spec, states
        ctx.save_for_backward(rows, w_ih, w_hh, hs, *state0, *saved)
        return (join_directions(hs, spec.reverse), *finals)

    @staticmethod
    def backward(ctx, grad_out: Tensor, *grad_finals: Tensor):
        if torch.is_grad_enabled():
            # The hand-written backward is not itself differentiable: say so rather than return a
            # second derivative that silently misses the loop's part.
            raise RuntimeError(
                "recurrent: double backward (create_graph=True) is not supported by the eager fast path. "
                "Script the model with torch.jit.script: its TorchScript path supports higher-order gradients."
            )
        spec: LayerSpec = ctx.spec
        rows, w_ih, w_hh, hs, *rest = ctx.saved_tensors
        state0, saved = rest[: ctx.states], rest[ctx.states :]
        grad_hs = split_directions(grad_out, spec.directions, spec.reverse)
        h_prev = previous_states(state0[0], hs, spec.batch_sizes)
        dgi, dgh, dstate0 = spec.kernel.backward(
            grad_hs, list(grad_finals), state0, hs, h_prev, saved, w_hh, spec.batch_sizes
        )
        dgi_rows = join_directions(dgi, spec.reverse)  # (T, D·G), natural time
        dx = dgi_rows.mm(w_ih) if ctx.needs_input_grad[1] else None
        # Weight and bias gradients over all rows at once, then handed back per direction.
        dw_ih = dgi_rows.t().mm(rows).chunk(spec.directions)
        dw_hh = torch.bmm(dgh.transpose(1, 2), h_prev).unbind(0)
        db_ih = dgi_rows.sum(0).chunk(spec.directions) if spec.bias else ()
        db_hh = dgh.sum(1).unbind(0) if spec.bias else ()
        grads: List[Optional[Tensor]] = []
        for d in range(spec.directions):
            grads += [dw_ih[d], dw_hh[d]] + ([db_ih[d], db_hh[d]] if spec.bias else [])
        return (None, dx, None, *dstate0, *grads)


def run_layer(spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """One layer, all directions: (output rows (T, D·H), final states). Saves nothing without grad."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in [rows, *state0, *params]):
        out, *finals = LayerFunction.apply(spec, rows, len(state0), *state0, *params)
        return out, finals
    w_ih, w_hh, b_ih, b_hh = stack_weights(params, spec.directions, spec.bias)
    gi = gate_inputs(rows, w_ih, b_ih, spec.directions, spec.reverse)
    hs, finals, _ = spec.kernel.forward(gi, state0, w_hh.transpose(1, 2), b_hh, spec.batch_sizes, False)
    return join_directions(hs, spec.reverse), finals
