"""The stack loop: every layer over the rows, directions batched, dropout between layers.

Two forms of the one loop, which share how a layer's states and weights are cut out and what happens
between layers (plain functions, which TorchScript compiles into the first form and the second calls as
they are: autograd must record them op by op, TorchScript's autodiff gave wrong gradient shapes for their
slices): :data:`run_stack`, compiled by TorchScript, runs each layer's forward kernel (a
:class:`.contract.SequenceKernel`) in TorchScript: what a scripted module runs (TorchScript's autograd then
differentiates every op of the loops) and what a call without gradients on a TorchScript kernel runs
(one call for the whole stack, no Python between layers). :func:`eager_stack` runs each layer from
Python, through :func:`.autograd.run_layer` (the kernel's hand-written backward when gradients are
needed), or as scans (:mod:`.scan`). Which one runs is the route's choice (:mod:`recurrent.routes`).
"""

from typing import Callable, List, NamedTuple, Optional, Tuple  # no postponed annotations: TorchScript reads them

import torch
from torch import Tensor
from torch.nn import functional as F

from .._jit import script
from .autograd import LayerSpec, batched, gate_inputs, run_layer
from .common import join_directions, per_direction, reverse_index
from .contract import SequenceKernel, SequenceModule
from .scan import scan_layer
from .weights import stack_directions, stack_weights

# Called after each layer of a stack run from Python, with the layer's spec and inputs (rows after
# inter-layer dropout, initial states, parameters). What observes layers from above (gate recording)
# registers here; while the list is not empty, the route runs layer calls from Python.
LAYER_OBSERVERS: List[Callable[[LayerSpec, Tensor, List[Tensor], List[Tensor]], None]] = []


class StackSpec(NamedTuple):
    """What a layer module is, as the stack loop needs it (TorchScript-compatible)."""

    num_layers: int
    directions: int
    param_names: List[str]  # one layer-direction's parameters, in order (recurrent.kernels.weights)
    fold_bias: bool
    dropout: float
    training: bool
    onednn: bool  # the TorchScript kernels on oneDNN's products (.products)


def layer_inputs(
    spec: StackSpec, state0: List[Tensor], weights: List[Tensor], layer: int
) -> Tuple[List[Tensor], List[Tensor]]:
    """Layer ``layer``'s initial states (each (D, N, ·)) and parameters, cut out of the stack's."""
    per_layer = len(weights) // spec.num_layers
    mine = [s[layer * spec.directions : (layer + 1) * spec.directions] for s in state0]
    return mine, weights[layer * per_layer : (layer + 1) * per_layer]


def between_layers(spec: StackSpec, rows: Tensor, layer: int) -> Tensor:
    """The rows the next layer reads: dropped out in training, except after the last layer."""
    if spec.dropout > 0 and spec.training and layer < spec.num_layers - 1:
        return F.dropout(rows, spec.dropout, True)
    return rows


def layer_weights(
    spec: StackSpec, params: List[Tensor]
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], List[Tensor]]:
    """A layer's parameters stacked by direction (:func:`.weights.stack_weights`)."""
    return stack_weights(params, spec.directions, spec.param_names, spec.fold_bias)


@script
def scripted_layer(
    kernel: SequenceKernel, spec: StackSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor],
    batch_sizes: List[int], reverse: Optional[Tensor],
) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
    """One layer, all directions, in TorchScript: (output rows (T, D·H), final states)."""
    w_ih, w_hh, b_ih, b_hh, kind_weights = layer_weights(spec, params)
    gi = gate_inputs(per_direction(rows, reverse), w_ih, b_ih, spec.onednn)
    w_hh_t = kernel.hidden_weight(w_hh).transpose(1, 2)
    hs, finals, _ = kernel.forward(gi, state0, w_hh_t, b_hh, kind_weights, batch_sizes, False)
    return join_directions(hs, reverse), finals


@script
def run_stack(
    kernel: SequenceKernel, spec: StackSpec, rows: Tensor, batch_sizes: List[int], state0: List[Tensor],
    weights: List[Tensor],
) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
    """Every layer over rows (T, I) from state0 [(layers·D, N, ·)] in TorchScript, with dropout between
    layers; returns (output rows (T, D·H), final states [(layers·D, N, ·)])."""
    reverse: Optional[Tensor] = reverse_index(batch_sizes, rows.device) if spec.directions == 2 else None
    finals: List[List[Tensor]] = [[] for _ in state0]
    for layer in range(spec.num_layers):
        mine, params = layer_inputs(spec, state0, weights, layer)
        rows, last = scripted_layer(kernel, spec, rows, mine, params, batch_sizes, reverse)
        for i, state in enumerate(last):
            finals[i].append(state)
        rows = between_layers(spec, rows, layer)
    return rows, [torch.cat(f, 0) for f in finals]


@script
def run_module_stack(
    loop: SequenceModule, spec: StackSpec, rows: Tensor, batch_sizes: List[int], state0: List[Tensor],
    weights: List[Tensor],
) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
    """:func:`run_stack` for a custom cell's loop, a module (TorchScript types the two apart)."""
    reverse: Optional[Tensor] = reverse_index(batch_sizes, rows.device) if spec.directions == 2 else None
    finals: List[List[Tensor]] = [[] for _ in state0]
    for layer in range(spec.num_layers):
        mine, params = layer_inputs(spec, state0, weights, layer)
        w_ih, w_hh, b_ih, b_hh, kind_weights = layer_weights(spec, params)
        gi = gate_inputs(per_direction(rows, reverse), w_ih, b_ih, spec.onednn)
        w_hh_t = loop.hidden_weight(w_hh).transpose(1, 2)
        hs, last, _ = loop.forward(gi, mine, w_hh_t, b_hh, kind_weights, batch_sizes, False)
        rows = join_directions(hs, reverse)
        for i, state in enumerate(last):
            finals[i].append(state)
        rows = between_layers(spec, rows, layer)
    return rows, [torch.cat(f, 0) for f in finals]


# torch >= 2.0 has it (torch.func's own code uses it); a stand-in keeps the eager path importable.
_disable_functorch = getattr(torch._C, "_DisableFuncTorch", None)


def eager_reverse_index(batch_sizes: List[int], device: torch.device) -> Tensor:
    """:func:`.common.reverse_index` for the eager path, built with torch.func's transforms switched off.
    It depends on batch_sizes alone, but inside a transform TorchScript's ``torch.tensor`` would make
    a functorch wrapper and fail filling it ("Cannot access data pointer of Tensor that doesn't have
    storage": torch.func over packed bidirectional input). A plain index serves every transform."""
    if _disable_functorch is None or not torch._C._are_functorch_transforms_active():
        return reverse_index(batch_sizes, device)
    with _disable_functorch():
        return reverse_index(batch_sizes, device)


def eager_stack(
    layer: LayerSpec, spec: StackSpec, rows: Tensor, batch_sizes: List[int], state0: List[Tensor],
    weights: List[Tensor], scanned: bool = False, observed: bool = True,
) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
    """:data:`run_stack`'s loop from Python: each layer on ``layer``'s kernel (:func:`.autograd.run_layer`),
    or with ``scanned`` (padded rows of batch_sizes[0] sequences) as scans of the kind's step; the layer
    observers see each layer unless not ``observed`` (a backward's recompute)."""
    reverse = eager_reverse_index(batch_sizes, rows.device) if spec.directions == 2 and not scanned else None
    finals: List[List[Tensor]] = [[] for _ in state0]
    for index in range(spec.num_layers):
        mine, params = layer_inputs(spec, state0, weights, index)
        params = hidden_weights(layer, spec, params)
        this = layer._replace(batch_sizes=batch_sizes, reverse=reverse, last=index == spec.num_layers - 1)
        if scanned:
            rows, last = scanned_layer(this, rows, mine, params)
        else:
            inputs = rows
            rows, last = run_layer(this, inputs, mine, params)
            for observe in LAYER_OBSERVERS if observed else []:
                observe(this, inputs, mine, params)
        for i, state in enumerate(last):
            finals[i].append(state)
        rows = between_layers(spec, rows, index)
    return rows, [torch.cat(f, 0) for f in finals]


def hidden_weights(layer: LayerSpec, spec: StackSpec, params: List[Tensor]) -> List[Tensor]:
    """The layer's parameters with each direction's W_hh as the kind uses it in this pass (a custom cell's
    weight drop: one transform of the directions' W_hh stacked, recorded by autograd, each direction's
    gradient in a buffer of its own); else as they are."""
    transform = layer.kind.hidden_weight
    if transform is None:
        return params
    per, at = len(spec.param_names), spec.param_names.index("weight_hh")
    used = transform(stack_directions([params[d * per + at] for d in range(spec.directions)])).unbind(0)
    return [used[i // per] if i % per == at else p for i, p in enumerate(params)]


def scanned_layer(
    layer: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]
) -> Tuple[Tensor, List[Tensor]]:
    """One layer of padded rows as scans of the kind's step (:mod:`.scan`)."""
    w_ih, w_hh, b_ih, b_hh, kind_weights = stack_weights(params, layer.directions, layer.param_names, layer.fold_bias)
    step = layer.kind.scan_step(kind_weights)
    return scan_layer(rows, layer.batch_sizes[0], state0, w_ih, w_hh, b_ih, b_hh, step)


def whole_stack(
    layer: LayerSpec, spec: StackSpec, rows: Tensor, batch_sizes: List[int], state0: List[Tensor],
    weights: List[Tensor],
) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
    """The whole stack on the kernel's stack ops (``Kernel.stack``: one call for all layers, where each
    layer's Python cost more than its op), differentiated as ``layer.backward`` says: by
    :class:`StackFunction` (the kernel's ``stack_backward``), or not at all."""
    if layer.backward == "none":
        out, finals, _ = layer.kernel.stack(spec, rows, batch_sizes, state0, weights)
        return out, finals
    out, *finals = StackFunction.apply(layer, spec, rows, batch_sizes, len(state0), *state0, *weights)
    return out, finals


class StackFunction(torch.autograd.Function):
    """A whole stack as one autograd node: its forward and backward each one call of the kernel's stack ops.
    Where the backward must be differentiable or vmappable, or runs a second time (its op wrote over what it
    saved), it recomputes the stack on the kind's plain kernels and returns autograd's gradients, as
    :class:`.autograd.LayerFunction` does for a layer."""

    @staticmethod
    def forward(ctx, layer: LayerSpec, spec: StackSpec, rows: Tensor, batch_sizes: List[int], states: int, *tensors):
        state0, weights = list(tensors[:states]), list(tensors[states:])
        out, finals, saved = layer.kernel.stack(spec, rows, batch_sizes, state0, weights, True)
        ctx.layer, ctx.spec, ctx.batch_sizes, ctx.counts = layer, spec, batch_sizes, (states, len(weights))
        ctx.save_for_backward(rows, *state0, *weights, *saved)
        # A gradient that never came stays None (no tensor of zeros) for a kernel that takes None.
        ctx.set_materialize_grads(False)
        ctx.outputs = [(t.shape, t.dtype, t.device) for t in (out, *finals)]
        return (out, *finals)

    @staticmethod
    def backward(ctx, grad_out: Optional[Tensor], *grad_finals: Optional[Tensor]):
        states, count = ctx.counts
        inputs = ctx.saved_tensors
        given = [g for g in (grad_out, *grad_finals) if g is not None]
        recompute = torch.is_grad_enabled() or getattr(ctx, "spent", False) or any(map(batched, given))
        keep = 1 if ctx.layer.kernel.stack_missing_grads and not recompute else len(ctx.outputs)
        grads = [
            torch.zeros(shape, dtype=dtype, device=device) if g is None and i < keep else g
            for i, (g, (shape, dtype, device)) in enumerate(zip((grad_out, *grad_finals), ctx.outputs))
        ]
        grad_out, grad_finals = grads[0], tuple(grads[1:])
        if recompute:
            return _recomputed_grads(ctx, inputs[: 1 + states + count], grad_out, grad_finals)
        ctx.spent = ctx.layer.kernel.overwrites_saved  # then a second backward recomputes
        rows, state0, weights = inputs[0], list(inputs[1 : 1 + states]), list(inputs[1 + states : 1 + states + count])
        dx, dstate0, dweights = ctx.layer.kernel.stack_backward(
            ctx.spec, grad_out, list(grad_finals), rows, state0, weights, list(inputs[1 + states + count :]),
            ctx.batch_sizes, ctx.needs_input_grad[2],
        )  # fmt: skip
        return (None, None, dx, None, None, *dstate0, *dweights)


def _recomputed_grads(ctx, inputs: Tuple[Tensor, ...], grad_out: Tensor, grad_finals: Tuple[Tensor, ...]) -> tuple:
    """StackFunction's gradients by autograd through the stack recomputed from its saved inputs (rows,
    states, weights) on the kind's plain kernels: with a graph where grad mode is on, batched where the
    incoming gradients are."""
    states = ctx.counts[0]
    needs = (ctx.needs_input_grad[2], *ctx.needs_input_grad[5:])
    with torch.enable_grad(), torch.autocast(inputs[0].device.type, enabled=False):
        # One fresh view per argument: its gradient is its own, and through it the graph reaches its history.
        args = [t.view_as(t) if need else t.detach() for t, need in zip(inputs, needs)]
        weights = args[1 + states :]
        state0 = args[1 : 1 + states] or _zero_states(ctx.layer, ctx.spec, ctx.batch_sizes, weights)
        out, finals = eager_stack(
            ctx.layer.plain(), ctx.spec, args[0], ctx.batch_sizes, state0, weights, observed=False
        )
        found = iter(
            torch.autograd.grad(
                [out, *finals],
                [a for a, need in zip(args, needs) if need],
                [grad_out, *grad_finals],
                create_graph=torch.is_grad_enabled(),
                allow_unused=True,
            )  # fmt: skip
        )
    grads = [next(found) if need else None for need in needs]
    return (None, None, grads[0], None, None, *grads[1:])


def _zero_states(layer: LayerSpec, spec: StackSpec, batch_sizes: List[int], weights: List[Tensor]) -> List[Tensor]:
    """The zero initial states a stack op makes itself where it was given none: (layers·D, N, H) each."""
    shape = [spec.num_layers * spec.directions, batch_sizes[0], weights[1].size(1)]
    return [weights[1].new_zeros(shape) for _ in range(layer.kind.states)]
