"""One ``autograd.Function`` per layer that wires any kernel pair (:mod:`.contract`) into autograd.

Around the kernel this module does, for a whole layer and both directions: the input projection of
every row as one product before the loop (unless the kernel makes it itself), and after it the input,
weight and bias gradients as single products and reductions over all rows.

How a layer is differentiated is the route's choice (:mod:`recurrent.routes`), carried in
:attr:`LayerSpec.backward`:

- ``"hand-written"``: :class:`LayerFunction`, the kernel's own backward. Where the backward itself must
  be differentiable or vmappable (the backward with grad mode on: ``create_graph=True``, double
  backward, gradient penalties; or with gradients batched by vmap: ``autograd.grad(is_grads_batched=
  True)``, ``gradcheck``'s ``check_batched_grad``, ``jacobian(vectorize=True)``), it recomputes the
  layer's forward from the saved inputs on the kind's plain kernel and returns ``autograd.grad`` of it;
  likewise for a second backward through a retained graph after a kernel that writes over its saved
  buffers.
- ``"autograd"``: the kernel's forward as plain differentiable ops that autograd records one by one
  (:func:`differentiable_layer`): under a torch.func transform, with forward-mode AD dual tensors, and
  for a custom cell without a hand-written backward. TorchScript's optimisations are off there: its
  executor's autodiff graphs are opaque to torch.func (hessian gave wrong numbers through them).
- ``"none"``: nothing needs a gradient; nothing is saved.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .._jit import JIT_ENABLED, script
from .common import (
    blocks_product,
    gather_directions,
    join_directions,
    per_direction,
    previous_blocks,
    split_directions,
    sum_directions,
)
from .contract import JoinedGrad, Kernel, SummedWeight
from .products import MIN_ROWS, rows_linear, weight_grad
from .weights import is_kind_weight, stack_weights, unstack_grads


class LayerSpec(NamedTuple):
    """One layer of a call, as its route runs it."""

    kind: Any  # its registry.CellKind: its plain kernel (recompute path), scan step, recorded gates
    kernel: Kernel  # the route's kernel
    backward: str  # "hand-written", "autograd" or "none" (the module docstring)
    directions: int
    param_names: List[str]  # one layer-direction's parameters, in order
    fold_bias: bool
    onednn: bool  # the kernel runs on oneDNN's products (.products), and so do the products around it
    batch_sizes: List[int]
    reverse: Optional[Tensor]  # reverse_index(batch_sizes) for two directions
    last: bool  # the stack's last layer, whose output the caller gets (and may modify in place)

    def plain(self) -> LayerSpec:
        """This layer on its kind's plain kernel, differentiated by autograd (the recompute path)."""
        kernel = self.kind.plain_kernel("weight_hr" in self.param_names)
        return self._replace(kernel=kernel, backward="autograd", onednn=False)


@script
def gate_inputs(inputs: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], onednn: bool = False) -> Tensor:
    """gi = W_ih x + b_ih for every row of every direction in one batched product: (D, T, I) → (D, T, G)."""
    return rows_linear(inputs, w_ih, b_ih, onednn)


def kernel_forward(spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor], save: bool):
    """(hs, finals, saved, stacked weights (w_ih, w_hh, kind weights)) of one layer on the spec's kernel."""
    w_ih, w_hh, b_ih, b_hh, weights = stack_weights(params, spec.directions, spec.param_names, spec.fold_bias)
    x = per_direction(rows, spec.reverse)
    if spec.kernel.rows_forward is not None:
        hs, finals, saved = spec.kernel.rows_forward(x, w_ih, b_ih, state0, w_hh, b_hh, weights, spec.batch_sizes, save)
        return hs, finals, saved, (w_ih, w_hh, weights)
    gi = gate_inputs(x, w_ih, b_ih, spec.onednn)
    hs, finals, saved = spec.kernel.forward(gi, state0, w_hh.transpose(1, 2), b_hh, weights, spec.batch_sizes, save)
    return hs, finals, saved, (w_ih, w_hh, weights)


def _weight_grad(spec: LayerSpec, grad: Tensor, blocks: List[Tensor]) -> Tensor:
    """Σ over rows of gradᵀ · x (x as row blocks), where the kernel has no product of its own: on the
    fast path through oneDNN from 192 gate columns and MIN_ROWS rows on, where it beat MKL's transposed
    product despite its transposed copy of x; at 128 columns they tied, and MKL's needs no copy
    (benchmarks/cpu_ops.py); below MIN_ROWS rows (a one-step call) the copies cost more than the products."""
    if spec.onednn and grad.size(2) > 128 and grad.size(1) >= MIN_ROWS:
        return weight_grad(grad, blocks)
    return blocks_product(grad, blocks)


def _sums(spec: LayerSpec, grad: Tensor, x: List[Tensor], h: List[Tensor], bias: bool) -> Tuple[Tensor, Any, Any]:
    """(Σ gradᵀ x, Σ gradᵀ h where h has blocks, Σ grad where ``bias``; else None) over rows, x and h as
    row blocks. From 192 gate columns and MIN_ROWS rows on, the kernel's own products where it has them:
    one pass over grad for all three, no transposed copies. Up to 128 columns the layer's: the kernel's is
    faster there too (3584 rows, 128 x 128: 0.33-0.41 against 0.56-0.62 ms, benchmarks/cpu_ops.py), but on
    narrow layers its sums, no further from float64's, drifted past the parity tests' 1e-5 from torch.nn's
    (RNN, H = 10, 500 rows: 1.1e-5) where MKL's stayed within. Below MIN_ROWS rows (a one-step call) MKL's:
    the kernel's per-thread sums of the whole gradient cost more than the few rows' products (G = 600,
    K = 200, 1 thread: 347 against 117 µs at 1 row, 616 against 437 at 20; a tie from 700 rows)."""
    if spec.kernel.weight_grad is not None and grad.size(2) > 128 and grad.size(1) >= MIN_ROWS:
        dw_x, dw_h, db = spec.kernel.weight_grad(grad, x, h, bias)
        return dw_x, dw_h if h else None, db if bias else None
    dw_h = _weight_grad(spec, grad, h) if h else None
    return _weight_grad(spec, grad, x), dw_h, grad.sum(1) if bias else None


def _weight_and_bias_grads(spec: LayerSpec, dgi: Tensor, dgh, x: Tensor, h_prev: List[Tensor]) -> Dict[str, Tensor]:
    """The stacked weight and bias gradients from the kernel's gate gradients. Where dgh is dgi (the
    LSTM's: b_hh folded, W_hh's gradient rows are the gates'), one pass over them makes all of them."""
    joint, bias = dgh is dgi, "bias_ih" in spec.param_names
    sums = _sums(spec, dgi, [x], h_prev if joint else [], bias)
    stacked = {"weight_ih": sums[0]}
    if joint:
        stacked["weight_hh"], hidden = sums[1], [dgi]
    else:
        stacked["weight_hh"], hidden = _hidden_grads(spec, dgi, dgh, h_prev)
    if bias:
        stacked["bias_ih"] = sums[2]
        # Where the kind folds b_hh into gi both gradients are that one sum: a copy, not the same tensor.
        folded = hidden[0] is dgi
        stacked["bias_hh"] = stacked["bias_ih"].clone() if folded else torch.cat([p.sum(1) for p in hidden], 1)
    return stacked


def _hidden_grads(spec: LayerSpec, dgi: Tensor, dgh, h_prev: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """(dW_hh, the rows whose sum is db_hh, as column blocks) from a kernel's dgh: the hidden gates'
    whole gradient, its last columns (the first ones being dgi's), or a :class:`SummedWeight`."""
    if isinstance(dgh, SummedWeight):
        return dgh.weight, [dgh.rows]
    if dgh.size(2) == dgi.size(2):
        return _sums(spec, dgh, h_prev, [], False)[0], [dgh]
    hidden = [dgi[:, :, : dgi.size(2) - dgh.size(2)], dgh]
    if dgi.size(1) < MIN_ROWS:  # few rows: joining them is cheaper than joining the two products
        joined = torch.cat(hidden, 2)
        return _sums(spec, joined, h_prev, [], False)[0], [joined]
    return torch.cat([_sums(spec, part, h_prev, [], False)[0] for part in hidden], 1), hidden


class LayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: LayerSpec, rows: Tensor, states: int, *tensors: Tensor):
        state0, params = list(tensors[:states]), list(tensors[states:])
        hs, finals, saved, (w_ih, w_hh, weights) = kernel_forward(spec, rows, state0, params, save=True)
        ctx.spec, ctx.counts = spec, (states, len(params), len(weights))
        # The inputs themselves (rows, state0, params) are saved for the differentiable backward.
        ctx.save_for_backward(rows, *state0, *params, w_ih, w_hh, hs, *weights, *saved)
        out = join_directions(hs, spec.reverse)
        if spec.last and spec.reverse is None:
            # One direction's output is a view of hs, which the backward reads. The caller may modify
            # the output in place (torch.nn's allow relu_, in-place dropout): it gets a copy. Between
            # layers the view is only read by the next layer, so it is not copied.
            out = out.clone()
        return (out, *finals)

    @staticmethod
    def backward(ctx, grad_out: Tensor, *grad_finals: Tensor):
        if torch.is_grad_enabled() or batched(grad_out) or any(batched(g) for g in grad_finals):
            return _autograd_backward(ctx, grad_out, grad_finals)
        if getattr(ctx, "spent", False):  # a second backward (retain_graph) after the kernel reused its buffers
            return _autograd_backward(ctx, grad_out, grad_finals)
        spec: LayerSpec = ctx.spec
        states, params, count = ctx.counts
        rows, *rest = ctx.saved_tensors
        state0, (w_ih, w_hh, hs, *rest) = rest[:states], rest[states + params :]
        weights, saved = rest[:count], rest[count:]
        ctx.spent = spec.kernel.overwrites_saved
        if spec.kernel.overwrites_hs:
            # hs is the layer's own unless one direction's output went on to the next layer as a view.
            hs = hs if spec.last or spec.reverse is not None else hs.clone()
        stacked = (w_ih, w_hh, weights)
        dx, dstate0, dparams = kernel_backward(
            spec, grad_out, list(grad_finals), rows, state0, stacked, hs, saved, ctx.needs_input_grad[1]
        )
        return (None, dx, None, *dstate0, *dparams)


def kernel_backward(
    spec: LayerSpec, grad_out: Tensor, grad_finals: List[Tensor], rows: Tensor, state0: List[Tensor],
    stacked: Tuple[Tensor, Tensor, List[Tensor]], hs: Tensor, saved: List[Tensor], input_grad: bool,
) -> Tuple[Optional[Tensor], List[Tensor], List[Tensor]]:  # fmt: skip
    """(dx where ``input_grad``, dstate0, every parameter's gradient) of one layer from the kernel's
    backward: the gate gradients per step, then the input, weight and bias gradients as single products
    over all rows. ``stacked`` is (w_ih, w_hh, kind weights) stacked by direction; the kernel may write
    over ``hs`` and ``saved`` as its flags say."""
    w_ih, w_hh, weights = stacked
    if spec.kernel.joined_grad:
        grad_hs = JoinedGrad(grad_out.contiguous(), spec.reverse)
    else:
        grad_hs = split_directions(grad_out, spec.reverse)
    h_prev = _previous_states(spec, state0, hs, saved)
    dgi, dgh, dstate0, dweights = spec.kernel.backward(
        grad_hs, grad_finals, state0, hs, h_prev, saved, w_hh, weights, spec.batch_sizes
    )
    dx = None
    if input_grad:
        if spec.onednn and dgi.size(1) >= MIN_ROWS:  # oneDNN's product takes W_ihᵀ contiguous
            dx = rows_linear(dgi, w_ih.transpose(1, 2).contiguous(), None, True)
        else:
            dx = torch.bmm(dgi, w_ih)
        dx = sum_directions(dx, spec.reverse)
    grads = _weight_and_bias_grads(spec, dgi, dgh, per_direction(rows, spec.reverse), h_prev)
    grads.update(zip([n for n in spec.param_names if is_kind_weight(n)], dweights))
    return dx, dstate0, unstack_grads(grads, spec.directions, spec.param_names)


def _previous_states(spec: LayerSpec, state0: List[Tensor], hs: Tensor, saved: List[Tensor]) -> List[Tensor]:
    """The state before every row as row blocks: the outputs one step behind, or what the kernel saved of
    them (a custom cell's output need not be its state)."""
    if spec.kernel.previous_states is not None:
        return spec.kernel.previous_states(saved)
    return previous_blocks(state0[0], hs, spec.batch_sizes)


_functorch = torch._C._functorch
# Legacy vmap (autograd.grad's is_grads_batched, jacobian(vectorize=True)) has its own tensor type.
_is_legacy_batched = getattr(_functorch, "is_legacy_batchedtensor", lambda t: False)


def batched(grad: Tensor) -> bool:
    """Whether an incoming gradient is batched by vmap (legacy or torch.func) or wrapped by torch.func."""
    return _is_legacy_batched(grad) or _functorch.is_functorch_wrapped_tensor(grad)


def differentiable_layer(
    spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]
) -> Tuple[Tensor, List[Tensor]]:
    """One layer as plain differentiable, vmappable ops on the spec's kernel (the kind's plain one, or a
    custom cell's loop without a hand-written backward): (output rows (T, D·H), final states), the numbers
    of :class:`LayerFunction`. TorchScript's optimisations are off, so that autograd records every op one
    by one: the optimised executor's autodiff graphs are opaque to torch.func (torch.func.hessian gave
    wrong numbers through them, jacrev of jacrev an error)."""
    if spec.kernel.recorded_forward is not None:
        spec = spec._replace(kernel=spec.kernel._replace(forward=spec.kernel.recorded_forward))
    with torch.jit.optimized_execution(False) if JIT_ENABLED else nullcontext():
        hs, finals, _, _ = kernel_forward(spec, rows, state0, params, save=False)
    return gather_directions(hs, spec.reverse), finals


def layer_forward_saving(
    spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]
) -> Tuple[Tensor, List[Tensor]]:
    """(hs, saved activations) of one layer on the kind's plain kernel, whatever ``spec.kernel`` is: what
    an observer of the stack (gate recording) reads the gates from."""
    hs, _, saved, _ = kernel_forward(spec.plain(), rows, state0, params, save=True)
    return hs, saved


def _autograd_backward(ctx, grad_out: Tensor, grad_finals: Tuple[Tensor, ...]) -> tuple:
    """LayerFunction's gradients by autograd through :func:`differentiable_layer`, recomputed from the
    saved inputs: with a graph when grad mode is on (create_graph=True; through the saved inputs it
    reaches their own history), batched when the incoming gradients are."""
    spec: LayerSpec = ctx.spec
    states, params = ctx.counts[0], ctx.counts[1]
    inputs = ctx.saved_tensors[: 1 + states + params]  # rows, *state0, *params
    needs = (ctx.needs_input_grad[1], *ctx.needs_input_grad[3:])
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad(), torch.autocast(inputs[0].device.type, enabled=False):
        # One fresh view per argument: its gradient is that argument's alone (even where one tensor was
        # passed twice), and through it the graph stays connected to the tensor's history.
        args = [t.view_as(t) if need else t.detach() for t, need in zip(inputs, needs)]
        out, finals = differentiable_layer(spec.plain(), args[0], args[1 : 1 + states], args[1 + states :])
        found = iter(
            torch.autograd.grad(
                [out, *finals],
                [a for a, need in zip(args, needs) if need],
                [grad_out, *grad_finals],
                create_graph=create_graph,
                allow_unused=True,
            )
        )
    grads = [next(found) if need else None for need in needs]
    return (None, grads[0], None, *grads[1:])


def run_layer(spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """One layer, all directions: (output rows (T, D·H), final states), differentiated as
    ``spec.backward`` says (the module docstring)."""
    if spec.backward == "hand-written":
        out, *finals = LayerFunction.apply(spec, rows, len(state0), *state0, *params)
        return out, finals
    if spec.backward == "autograd":
        return differentiable_layer(spec, rows, state0, params)
    hs, finals, _, _ = kernel_forward(spec, rows, state0, params, save=False)
    return join_directions(hs, spec.reverse), finals
