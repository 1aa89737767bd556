"""The Triton kernels' whole-stack ops (``Kernel.stack`` and ``stack_backward``): every layer of a call in one
function, and in training one autograd node (:class:`recurrent.kernels.stack.StackFunction`), so that what
runs on the GPU is, per layer, the input product and the recurrent kernel forward, and the recurrent kernel
and the weight (and input) gradient products backward. Nothing else is launched for a unidirectional stack:

- the kernels write h_n (and c_n) and dh0 (and dc0) straight into the stack's (layers·D, N, H) tensors (no
  concatenation);
- where no initial state or no gradient of a final state came, the kernels start from zeros themselves (no
  tensor of zeros);
- the last layer's forward writes the caller's output a second time (what the caller may change in place
  stays apart from what the backward reads);
- the RNN and GRU kernels add b_hh themselves (no sum of the two biases per call; the LSTM's take the sum), and
  the backward kernel sums the bias gradients (:func:`.common.sum_partials`).

Two directions add the reversal of each layer's input and the joining of its outputs, as the layer path does.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..common import blocks_product, join_directions, per_direction, previous_blocks, reverse_index, split_directions, sum_directions
from ..contract import Kernel
from ..products import rows_linear
from ..weights import stack_weights, unstack_grads
from .common import Outputs


def stack_forward(
    kernel: Kernel, spec, rows: Tensor, batch_sizes: List[int], state0: List[Tensor], weights: List[Tensor],
    save: bool = False,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """(output rows (T, D·H), [h_n (layers·D, N, H)], saved): each layer's input rows, hs and the kernel's saved
    activations, then the ticket counters of the backward's bias sums. ``state0`` [] for zeros."""
    layers, directions = spec.num_layers, spec.directions
    reverse = reverse_index(batch_sizes, rows.device) if directions == 2 else None
    hidden = weights[1].size(1)
    states = 2 if weights[1].size(0) == 4 * hidden else 1  # the LSTM's (h, c); the RNN's and GRU's h
    finals = [rows.new_empty(layers * directions, batch_sizes[0], hidden) for _ in range(states)]
    tickets = torch.empty(layers, directions, dtype=torch.int32, device=rows.device) if save else None
    saved: List[Tensor] = []
    for layer in range(layers):
        mine, params = _layer(spec, state0, weights, layer)
        # The RNN and GRU kernels add b_hh themselves (no sum of the biases per call); the LSTM's, whose four
        # bias rows spilled registers, take them folded into gi.
        fold = spec.fold_bias and states == 2
        w_ih, w_hh, b_ih, b_hh, kind_weights = stack_weights(params, directions, spec.param_names, fold)
        gi = rows_linear(per_direction(rows, reverse), w_ih, b_ih, False)
        # The caller's output is hs itself, except where the backward reads hs: then a copy the kernel writes
        # (a tensor of its own: autograd lets a caller modify it in place).
        copy = rows.new_empty(gi.size(1), hidden) if save and layer == layers - 1 and reverse is None else None
        at = slice(layer * directions, (layer + 1) * directions)
        copied = None if copy is None else copy.unsqueeze(0)
        out = Outputs(
            h_n=finals[0][at], c_n=finals[1][at] if states == 2 else None, copy=copied,
            tickets=tickets[layer] if save else None,
        )
        hs, _, activations = kernel.forward(gi, mine, w_hh.transpose(1, 2), b_hh, kind_weights, batch_sizes, save, out=out)
        if save:
            saved += [rows, hs, *activations]
        rows = join_directions(hs, reverse) if copy is None else copy
        if spec.dropout > 0 and spec.training and layer < layers - 1:  # never with save (the route's rule)
            rows = torch.nn.functional.dropout(rows, spec.dropout, True)
    return rows, finals, saved + ([tickets] if save else [])


def stack_backward(
    kernel: Kernel, spec, grad_out: Tensor, grad_finals: List[Optional[Tensor]], rows: Tensor, state0: List[Tensor],
    weights: List[Tensor], saved: List[Tensor], batch_sizes: List[int], input_grad: bool,
) -> Tuple[Optional[Tensor], List[Tensor], List[Tensor]]:  # fmt: skip
    """(dx where ``input_grad``, [dh0] where ``state0`` was given, each weight's gradient) of a saving
    :func:`stack_forward`; ``grad_finals`` [None] where h_n had no gradient."""
    layers, directions = spec.num_layers, spec.directions
    reverse = reverse_index(batch_sizes, rows.device) if directions == 2 else None
    tickets, per = saved[-1], (len(saved) - 1) // layers
    dstate0 = [torch.empty_like(s) for s in state0]
    bias = "bias_ih" in spec.param_names
    dweights: List[Tensor] = []
    grad, dx = grad_out, None
    for layer in reversed(range(layers)):
        mine, params = _layer(spec, state0, weights, layer)
        w_ih, w_hh, _, _, kind_weights = stack_weights(params, directions, spec.param_names, False)
        x, hs, *activations = saved[layer * per : (layer + 1) * per]
        at = slice(layer * directions, (layer + 1) * directions)
        # Two tensors, as each parameter's gradient must own its storage.
        db = (hs.new_empty(directions, w_hh.size(1)), hs.new_empty(directions, w_hh.size(1))) if bias else None
        starts = [d[at] for d in dstate0]
        out = Outputs(
            dh=starts[0] if starts else None, dc=starts[1] if len(starts) == 2 else None, bias=db,
            tickets=tickets[layer] if bias else None,
        )
        finals = [g[at] if g is not None else None for g in grad_finals]
        dgi, dgh, dstate, _ = kernel.backward(
            split_directions(grad, reverse), finals, mine, hs, [], activations, w_hh, kind_weights, batch_sizes, out=out,
        )  # fmt: skip
        for start, got in zip(starts, dstate):
            if got is not start:  # 16-bit layers: the running gradient was float32
                start.copy_(got)
        inputs = per_direction(x, reverse)
        grads = {"weight_ih": torch.bmm(dgi.transpose(1, 2), inputs), "weight_hh": _hidden_weight_grad(dgh, mine, hs, batch_sizes)}
        if bias:
            grads["bias_ih"], grads["bias_hh"] = db
        dweights = unstack_grads(grads, directions, spec.param_names) + dweights
        if layer > 0 or input_grad:
            dx = sum_directions(torch.bmm(dgi, w_ih), reverse)
            grad = dx
    return (dx if input_grad else None), dstate0, dweights


def _layer(spec, state0: List[Tensor], weights: List[Tensor], layer: int) -> Tuple[List[Tensor], List[Tensor]]:
    """Layer ``layer``'s initial states ([] for zeros) and parameters, cut out of the stack's: the twin of
    :func:`recurrent.kernels.stack.layer_inputs`, which a backend may not import (tests/project/test_imports.py)."""
    per_layer = len(weights) // spec.num_layers
    mine = [s[layer * spec.directions : (layer + 1) * spec.directions] for s in state0]
    return mine, weights[layer * per_layer : (layer + 1) * per_layer]


def _hidden_weight_grad(dgh: Tensor, state0: List[Tensor], hs: Tensor, batch_sizes: List[int]) -> Tensor:
    """Σ over rows of dghᵀ · (the state before the row): where h0 was zeros its rows add nothing, so a padded
    batch's product skips them; a packed batch's states before each row are gathered as the layer path does."""
    batch = batch_sizes[0]
    if state0:
        return blocks_product(dgh, previous_blocks(state0[0], hs, batch_sizes))
    if batch_sizes[-1] != batch:
        return blocks_product(dgh, previous_blocks(hs.new_zeros(hs.size(0), batch, hs.size(2)), hs, batch_sizes))
    if hs.size(1) == batch:  # one step: every state before it was zero
        return dgh.new_zeros(dgh.size(0), dgh.size(2), hs.size(2))
    return torch.bmm(dgh[:, batch:].transpose(1, 2), hs[:, : hs.size(1) - batch])
