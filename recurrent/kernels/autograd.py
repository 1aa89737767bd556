"""One ``autograd.Function`` per layer that wires any kernel pair into autograd.

A kernel is a pair of TorchScript sequence functions (shapes in :mod:`.common`):
``forward(gi, state0, w_hh_t, b_hh, extra, batch_sizes, save) -> (hs, finals, saved)`` and
``backward(grad_hs, grad_finals, state0, hs, h_prev, saved, w_hh, extra, batch_sizes)
-> (dgi, dgh, dstate0, dextra)``, where ``state0`` is [h0] or [h0, c0], ``h_prev`` the state before
every row as consecutive row blocks (:func:`.common.previous_blocks`), and ``extra`` holds the
weights only some kinds have (the LSTM's projection w_hr, (D, P, H)).
Around it this module does, for a whole layer and both directions: the input projection of every
row as one product before the loop, and after it the input, weight and bias gradients as single
products and reductions over all rows.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from .common import blocks_product, join_directions, per_direction, previous_blocks, split_directions, sum_directions


class Kernel(NamedTuple):
    forward: Callable[..., Tuple[Tensor, List[Tensor], List[Tensor]]]
    backward: Callable[..., Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]]
    # gi and gh enter the gates only as a sum, so b_hh can join b_ih in the input projection and the
    # loop runs without it (true for RNN and LSTM; the GRU's r multiplies W_hn h + b_hn).
    folds_bias: bool


class LayerSpec(NamedTuple):
    kernel: Kernel
    directions: int
    bias: bool
    proj: bool
    batch_sizes: List[int]
    reverse: Optional[Tensor]  # reverse_index(batch_sizes) for two directions


@script
def stack_weights(
    params: List[Tensor], directions: int, bias: bool, proj: bool, fold_bias: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], List[Tensor]]:
    """A layer's per-direction parameters [w_ih, w_hh(, b_ih, b_hh)(, w_hr)]·D stacked on a new
    dim 0: (w_ih (D, G, I), w_hh (D, G, H), b_ih (D, 1, G), b_hh (D, 1, G), [w_hr (D, P, H)]).
    With ``fold_bias`` the input bias is b_ih + b_hh and the hidden one None."""
    per = 2 + (2 if bias else 0) + (1 if proj else 0)
    stacked: List[Tensor] = []
    for i in range(per):
        if directions == 1:
            stacked.append(params[i].unsqueeze(0))
        else:
            stacked.append(torch.stack([params[i], params[per + i]]))
    extra = stacked[per - 1 :] if proj else stacked[:0]
    if not bias:
        return stacked[0], stacked[1], None, None, extra
    if fold_bias:
        return stacked[0], stacked[1], (stacked[2] + stacked[3]).unsqueeze(1), None, extra
    return stacked[0], stacked[1], stacked[2].unsqueeze(1), stacked[3].unsqueeze(1), extra


@script
def gate_inputs(inputs: Tensor, w_ih: Tensor, b_ih: Optional[Tensor]) -> Tensor:
    """gi = W_ih x + b_ih for every row of every direction in one batched product: (D, T, I) → (D, T, G)."""
    if b_ih is None:
        return torch.bmm(inputs, w_ih.transpose(1, 2))
    return torch.baddbmm(b_ih, inputs, w_ih.transpose(1, 2))


class LayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: LayerSpec, rows: Tensor, states: int, *tensors: Tensor):
        state0, params = list(tensors[:states]), list(tensors[states:])
        w_ih, w_hh, b_ih, b_hh, extra = stack_weights(
            params, spec.directions, spec.bias, spec.proj, spec.kernel.folds_bias
        )
        gi = gate_inputs(per_direction(rows, spec.reverse), w_ih, b_ih)
        hs, finals, saved = spec.kernel.forward(
            gi, state0, w_hh.transpose(1, 2), b_hh, extra, spec.batch_sizes, True
        )
        ctx.spec, ctx.counts = spec, (states, len(extra))
        ctx.save_for_backward(rows, w_ih, w_hh, hs, *state0, *extra, *saved)
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
        states, extras = ctx.counts
        state0, extra, saved = rest[:states], rest[states : states + extras], rest[states + extras :]
        grad_hs = split_directions(grad_out, spec.reverse)
        h_prev = previous_blocks(state0[0], hs, spec.batch_sizes)
        dgi, dgh, dstate0, dextra = spec.kernel.backward(
            grad_hs, list(grad_finals), state0, hs, h_prev, saved, w_hh, extra, spec.batch_sizes
        )
        # Input, weight and bias gradients as single batched products over all rows.
        dx = sum_directions(torch.bmm(dgi, w_ih), spec.reverse) if ctx.needs_input_grad[1] else None
        dw_ih = torch.bmm(dgi.transpose(1, 2), per_direction(rows, spec.reverse)).unbind(0)
        dw_hh = blocks_product(dgh, h_prev).unbind(0)
        db_ih = dgi.sum(1).unbind(0) if spec.bias else ()
        db_hh = (db_ih if dgh is dgi else dgh.sum(1).unbind(0)) if spec.bias else ()
        dw_hr = dextra[0].unbind(0) if spec.proj else ()
        grads: List[Optional[Tensor]] = []
        for d in range(spec.directions):
            grads += [dw_ih[d], dw_hh[d]] + ([db_ih[d], db_hh[d]] if spec.bias else [])
            grads += [dw_hr[d]] if spec.proj else []
        return (None, dx, None, *dstate0, *grads)


def run_layer(spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """One layer, all directions, differentiable by the hand-written backward: (output rows (T, D·H), final states)."""
    out, *finals = LayerFunction.apply(spec, rows, len(state0), *state0, *params)
    return out, finals
