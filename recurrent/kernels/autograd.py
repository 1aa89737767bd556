"""One ``autograd.Function`` per layer that wires any kernel pair into autograd.

A kernel is a pair of sequence functions (shapes in :mod:`.common`), on any backend:
``forward(gi, state0, w_hh_t, b_hh, extra, batch_sizes, save) -> (hs, finals, saved)`` and
``backward(grad_hs, grad_finals, state0, hs, h_prev, saved, w_hh, extra, batch_sizes)
-> (dgi, dgh, dstate0, dextra)``, where ``state0`` is [h0] or [h0, c0], ``h_prev`` the state before
every row as consecutive row blocks (:func:`.common.previous_blocks`), ``extra`` holds the
weights only some kinds have (the LSTM's projection w_hr, (D, P, H)), and ``b_hh`` is None when
the kind folds it into the input projection. ``saved`` is the kind's own list of activations; a
kind's kernels on every backend save the same list, so any backend's backward can follow any
backend's forward.
Around it this module does, for a whole layer and both directions: the input projection of every
row as one product before the loop, and after it the input, weight and bias gradients as single
products and reductions over all rows.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script
from .common import blocks_product, join_directions, per_direction, previous_blocks, split_directions, sum_directions
from .registry import Kernel
from .weights import stack_weights, unstack_grads


class LayerSpec(NamedTuple):
    kernel: Kernel
    directions: int
    bias: bool
    proj: bool
    fold_bias: bool
    batch_sizes: List[int]
    reverse: Optional[Tensor]  # reverse_index(batch_sizes) for two directions


@script
def gate_inputs(inputs: Tensor, w_ih: Tensor, b_ih: Optional[Tensor]) -> Tensor:
    """gi = W_ih x + b_ih for every row of every direction in one batched product: (D, T, I) → (D, T, G)."""
    if b_ih is None:
        return torch.bmm(inputs, w_ih.transpose(1, 2))
    return torch.baddbmm(b_ih, inputs, w_ih.transpose(1, 2))


def _layer_forward(spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor], save: bool):
    """(hs, finals, saved, stacked weights) of one layer on the spec's kernel."""
    w_ih, w_hh, b_ih, b_hh, extra = stack_weights(params, spec.directions, spec.bias, spec.proj, spec.fold_bias)
    gi = gate_inputs(per_direction(rows, spec.reverse), w_ih, b_ih)
    hs, finals, saved = spec.kernel.forward(gi, state0, w_hh.transpose(1, 2), b_hh, extra, spec.batch_sizes, save)
    return hs, finals, saved, (w_ih, w_hh, extra)


class LayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: LayerSpec, rows: Tensor, states: int, *tensors: Tensor):
        state0, params = list(tensors[:states]), list(tensors[states:])
        hs, finals, saved, (w_ih, w_hh, extra) = _layer_forward(spec, rows, state0, params, save=True)
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
        stacked: Dict[str, Tensor] = {
            "weight_ih": torch.bmm(dgi.transpose(1, 2), per_direction(rows, spec.reverse)),
            "weight_hh": blocks_product(dgh, h_prev),
        }
        if spec.bias:
            stacked["bias_ih"] = dgi.sum(1)
            stacked["bias_hh"] = stacked["bias_ih"] if dgh is dgi else dgh.sum(1)
        if spec.proj:
            stacked["weight_hr"] = dextra[0]
        return (None, dx, None, *dstate0, *unstack_grads(stacked, spec.directions, spec.bias, spec.proj))


def run_layer(spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """One layer, all directions: (output rows (T, D·H), final states). Differentiable by the
    kernel's hand-written backward when anything needs a gradient; otherwise nothing is saved."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in [rows, *state0, *params]):
        out, *finals = LayerFunction.apply(spec, rows, len(state0), *state0, *params)
        return out, finals
    hs, finals, _, _ = _layer_forward(spec, rows, state0, params, save=False)
    return join_directions(hs, spec.reverse), finals
