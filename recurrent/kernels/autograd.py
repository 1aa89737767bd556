"""One ``autograd.Function`` per layer that wires any kernel pair into autograd.

A kernel is a pair of sequence functions (shapes in :mod:`.common`), on any backend:
``forward(gi, state0, w_hh_t, b_hh, extra, batch_sizes, save) -> (hs, finals, saved)`` and
``backward(grad_hs, grad_finals, state0, hs, h_prev, saved, w_hh, extra, batch_sizes)
-> (dgi, dgh, dstate0, dextra)``, where ``state0`` is [h0] or [h0, c0], ``h_prev`` the state before
every row as consecutive row blocks (:func:`.common.previous_blocks`), ``extra`` holds the
weights only some kinds have (the LSTM's projection w_hr, (D, P, H)), and ``b_hh`` is None when
the kind folds it into the input projection. ``saved`` is the kind's own list of activations; a
kind's kernels on every backend save the same list, so any backend's backward can follow any
backend's forward. dgh may hold only the last columns of the hidden gates' gradient where its first
ones equal dgi's (the native GRU's: r and z equal, n differs), or be a :class:`SummedWeight`. A
kernel with ``overwrites_saved`` writes its gradients over its saved activations in its backward,
and with ``overwrites_hs`` over hs too (then the layer's own); a second backward then recomputes
the layer, as with ``create_graph``. One with ``joined_grad`` gets grad_hs as a :class:`JoinedGrad`.
A kernel may make the input projections itself, in its time loop: its ``rows_forward(x, w_ih, b_ih,
state0, w_hh, b_hh, extra, batch_sizes, save)`` takes each direction's input rows x (D, T, I) and
the stacked weights instead of gi (the native CPU kernels: no sequence-sized gi buffer without
gradients).
Around it this module does, for a whole layer and both directions: the input projection of every
row as one product before the loop, and after it the input, weight and bias gradients as single
products and reductions over all rows.

Higher-order and batched gradients. The hand-written backward is neither differentiable nor
vmappable (it writes with ``out=`` and in place). Where one of those is asked for, the layer is
differentiated by autograd instead, as plain ops (:func:`differentiable_layer`: the kind's
TorchScript forward kernel, run unoptimised so that autograd and torch.func see every op):

- the backward with grad mode on (``create_graph=True``: double backward, gradient penalties) or
  with gradients batched by vmap (``autograd.grad(is_grads_batched=True)``, ``gradcheck``'s
  ``check_batched_grad``, ``autograd.functional.jacobian(vectorize=True)``) recomputes the layer's
  forward from the saved inputs and returns ``autograd.grad`` of it;
- under a torch.func transform (``grad``, ``vmap``, ``jacrev``, ``hessian``, ``jvp``, ...) the layer
  runs as those ops from the start: no autograd.Function, so there is nothing for torch.func to
  refuse. Likewise with grad mode off (the no-grad TorchScript stack would run functorch's wrapped
  tensors through TorchScript, whose in-place joins vmap cannot batch);
- with ``torch.autograd.forward_ad`` dual tensors among the layer's inputs (input rows, initial
  states or weights; grad mode on or off), also as those ops from the start: the hand-written
  kernels have no forward derivative, the plain ops each have theirs.

A plain first-order backward runs the hand-written kernels exactly as before; all that path gains
is the layer's inputs among the saved tensors and a few flag checks (grad mode, batched gradients,
an active torch.func transform, an open forward-AD dual level).
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
from .products import rows_linear, weight_grad
from .registry import KINDS, Kernel
from .weights import stack_weights, unstack_grads


class LayerSpec(NamedTuple):
    mode: str  # a key of KINDS: the differentiable path runs that kind's TorchScript kernel
    kernel: Kernel
    directions: int
    bias: bool
    proj: bool
    fold_bias: bool
    batch_sizes: List[int]
    reverse: Optional[Tensor]  # reverse_index(batch_sizes) for two directions
    last: bool  # the stack's last layer, whose output the caller gets (and may modify in place)
    fast: bool  # the fast CPU path (.products); ``kernel`` is then the TorchScript pair called with it


@script
def gate_inputs(inputs: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], fast: bool = False) -> Tensor:
    """gi = W_ih x + b_ih for every row of every direction in one batched product: (D, T, I) → (D, T, G)."""
    return rows_linear(inputs, w_ih, b_ih, fast)


def _layer_forward(spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor], save: bool):
    """(hs, finals, saved, stacked weights) of one layer on the spec's kernel."""
    w_ih, w_hh, b_ih, b_hh, extra = stack_weights(params, spec.directions, spec.bias, spec.proj, spec.fold_bias)
    x = per_direction(rows, spec.reverse)
    if spec.kernel.rows_forward is not None:
        hs, finals, saved = spec.kernel.rows_forward(x, w_ih, b_ih, state0, w_hh, b_hh, extra, spec.batch_sizes, save)
        return hs, finals, saved, (w_ih, w_hh, extra)
    gi = gate_inputs(x, w_ih, b_ih, spec.fast)
    hs, finals, saved = spec.kernel.forward(gi, state0, w_hh.transpose(1, 2), b_hh, extra, spec.batch_sizes, save)
    return hs, finals, saved, (w_ih, w_hh, extra)


def _weight_grad(spec: LayerSpec, grad: Tensor, blocks: List[Tensor]) -> Tensor:
    """Σ over rows of gradᵀ · x (x as row blocks), where the kernel has no product of its own: on the
    fast path through oneDNN from 192 gate columns on, where it beat MKL's transposed product despite
    its transposed copy of x; at 128 they tied, and MKL's needs no copy (benchmarks/cpu_ops.py)."""
    return weight_grad(grad, blocks) if spec.fast and grad.size(2) > 128 else blocks_product(grad, blocks)


def _sums(spec: LayerSpec, grad: Tensor, x: List[Tensor], h: List[Tensor], bias: bool) -> Tuple[Tensor, Any, Any]:
    """(Σ gradᵀ x, Σ gradᵀ h where h has blocks, Σ grad where ``bias``; else None) over rows, x and h as
    row blocks. From 192 gate columns on, the kernel's own products where it has them: one pass over
    grad for all three, no transposed copies. Up to 128 the layer's: the kernel's is faster there too
    (3584 rows, 128 x 128: 0.33-0.41 against 0.56-0.62 ms, benchmarks/cpu_ops.py), but on narrow
    layers its sums, no further from float64's, drifted past the parity tests' 1e-5 from torch.nn's
    (RNN, H = 10, 500 rows: 1.1e-5) where MKL's stayed within."""
    if spec.kernel.weight_grad is not None and spec.fast and grad.size(2) > 128:
        dw_x, dw_h, db = spec.kernel.weight_grad(grad, x, h, bias)
        return dw_x, dw_h if h else None, db if bias else None
    dw_h = _weight_grad(spec, grad, h) if h else None
    return _weight_grad(spec, grad, x), dw_h, grad.sum(1) if bias else None


def _weight_and_bias_grads(spec: LayerSpec, dgi: Tensor, dgh, x: Tensor, h_prev: List[Tensor]) -> Dict[str, Tensor]:
    """The stacked weight and bias gradients from the kernel's gate gradients. Where dgh is dgi (the
    LSTM's: b_hh folded, W_hh's gradient rows are the gates'), one pass over them makes all of them."""
    joint = dgh is dgi
    sums = _sums(spec, dgi, [x], h_prev if joint else [], spec.bias)
    stacked = {"weight_ih": sums[0]}
    if joint:
        stacked["weight_hh"], hidden = sums[1], [dgi]
    else:
        stacked["weight_hh"], hidden = _hidden_grads(spec, dgi, dgh, h_prev)
    if spec.bias:
        stacked["bias_ih"] = sums[2]
        # Where the kind folds b_hh into gi both gradients are that one sum: a copy, not the same tensor.
        folded = hidden[0] is dgi
        stacked["bias_hh"] = stacked["bias_ih"].clone() if folded else torch.cat([p.sum(1) for p in hidden], 1)
    return stacked


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


def _hidden_grads(spec: LayerSpec, dgi: Tensor, dgh, h_prev: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """(dW_hh, the rows whose sum is db_hh, as column blocks) from a kernel's dgh: the hidden gates'
    whole gradient, its last columns (the first ones being dgi's), or a :class:`SummedWeight`."""
    if isinstance(dgh, SummedWeight):
        return dgh.weight, [dgh.rows]
    hidden = [dgi[:, :, : dgi.size(2) - dgh.size(2)], dgh] if dgh.size(2) < dgi.size(2) else [dgh]
    return torch.cat([_sums(spec, part, h_prev, [], False)[0] for part in hidden], 1), hidden


class LayerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: LayerSpec, rows: Tensor, states: int, *tensors: Tensor):
        state0, params = list(tensors[:states]), list(tensors[states:])
        hs, finals, saved, (w_ih, w_hh, extra) = _layer_forward(spec, rows, state0, params, save=True)
        ctx.spec, ctx.counts = spec, (states, len(params), len(extra))
        # The inputs themselves (rows, state0, params) are saved for the differentiable backward.
        ctx.save_for_backward(rows, *state0, *params, w_ih, w_hh, hs, *extra, *saved)
        out = join_directions(hs, spec.reverse)
        if spec.last and spec.reverse is None:
            # One direction's output is a view of hs, which the backward reads. The caller may modify
            # the output in place (torch.nn's allow relu_, in-place dropout): it gets a copy. Between
            # layers the view is only read by the next layer, so it is not copied.
            out = out.clone()
        return (out, *finals)

    @staticmethod
    def backward(ctx, grad_out: Tensor, *grad_finals: Tensor):
        if torch.is_grad_enabled() or _batched(grad_out) or any(_batched(g) for g in grad_finals):
            return _autograd_backward(ctx, grad_out, grad_finals)
        if getattr(ctx, "spent", False):  # a second backward (retain_graph) after the kernel reused its buffers
            return _autograd_backward(ctx, grad_out, grad_finals)
        spec: LayerSpec = ctx.spec
        states, params, extras = ctx.counts
        rows, *rest = ctx.saved_tensors
        state0, (w_ih, w_hh, hs, *rest) = rest[:states], rest[states + params :]
        extra, saved = rest[:extras], rest[extras:]
        if spec.kernel.joined_grad:
            grad_hs = JoinedGrad(grad_out.contiguous(), spec.reverse)
        else:
            grad_hs = split_directions(grad_out, spec.reverse)
        ctx.spent = spec.kernel.overwrites_saved
        if spec.kernel.overwrites_hs:
            # hs is the layer's own unless one direction's output went on to the next layer as a view.
            hs = hs if spec.last or spec.reverse is not None else hs.clone()
        h_prev = previous_blocks(state0[0], hs, spec.batch_sizes)
        dgi, dgh, dstate0, dextra = spec.kernel.backward(
            grad_hs, list(grad_finals), state0, hs, h_prev, saved, w_hh, extra, spec.batch_sizes
        )
        # Input, weight and bias gradients as single batched products over all rows.
        fast = spec.fast
        dx = None
        if ctx.needs_input_grad[1]:
            w_ih_t = w_ih.transpose(1, 2).contiguous() if fast else w_ih.transpose(1, 2)
            dx = sum_directions(rows_linear(dgi, w_ih_t, None, fast), spec.reverse)
        stacked = _weight_and_bias_grads(spec, dgi, dgh, per_direction(rows, spec.reverse), h_prev)
        if spec.proj:
            stacked["weight_hr"] = dextra[0]
        return (None, dx, None, *dstate0, *unstack_grads(stacked, spec.directions, spec.bias, spec.proj))


_functorch = torch._C._functorch
# Legacy vmap (autograd.grad's is_grads_batched, jacobian(vectorize=True)) has its own tensor type.
_is_legacy_batched = getattr(_functorch, "is_legacy_batchedtensor", lambda t: False)


def _batched(grad: Tensor) -> bool:
    """Whether an incoming gradient is batched by vmap (legacy or torch.func) or wrapped by torch.func."""
    return _is_legacy_batched(grad) or _functorch.is_functorch_wrapped_tensor(grad)


def differentiable_layer(
    spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]
) -> Tuple[Tensor, List[Tensor]]:
    """One layer as plain differentiable, vmappable ops: (output rows (T, D·H), final states), the
    numbers of :class:`LayerFunction`. It runs the kind's TorchScript forward kernel whatever backend
    ``spec.kernel`` is, with TorchScript's optimisations off, so that autograd records every op one by
    one: the optimised executor's autodiff graphs are opaque to torch.func (torch.func.hessian gave
    wrong numbers through them, jacrev of jacrev an error)."""
    torchscript = spec._replace(kernel=KINDS[spec.mode].kernel("torchscript"), fast=False)
    with torch.jit.optimized_execution(False) if JIT_ENABLED else nullcontext():
        hs, finals, _, _ = _layer_forward(torchscript, rows, state0, params, save=False)
    return gather_directions(hs, spec.reverse), finals


def layer_forward_saving(
    spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]
) -> Tuple[Tensor, List[Tensor]]:
    """(hs, saved activations) of one layer on the kind's TorchScript kernel, whatever ``spec.kernel``
    is: what an observer of the stack (gate recording) reads the gates from."""
    torchscript = spec._replace(kernel=KINDS[spec.mode].kernel("torchscript"), fast=False)
    hs, _, saved, _ = _layer_forward(torchscript, rows, state0, params, save=True)
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
        out, finals = differentiable_layer(spec, args[0], args[1 : 1 + states], args[1 + states :])
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


# Read on every call: the module rebinds it as dual levels open (-1: none open). Forward AD's only
# Python-side state; a tensor's tangent is only looked for while a level is open.
_forward_ad = torch.autograd.forward_ad


def _has_tangent(tensors: List[Tensor]) -> bool:
    """Whether any of ``tensors`` is a forward-AD dual tensor at the open dual level (None open: False)."""
    return _forward_ad._current_level >= 0 and any(_forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def needs_plain_ops(tensors: List[Tensor]) -> bool:
    """Whether a layer over ``tensors`` must run as plain ops (:func:`differentiable_layer`), neither
    the hand-written kernels nor the no-grad TorchScript stack: under a torch.func transform, or with
    forward-AD dual tensors among them. Two flag checks when neither."""
    return torch._C._are_functorch_transforms_active() or _has_tangent(tensors)


def run_layer(spec: LayerSpec, rows: Tensor, state0: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
    """One layer, all directions: (output rows (T, D·H), final states). Differentiable by the
    kernel's hand-written backward when anything needs a gradient; otherwise nothing is saved.
    Under a torch.func transform or with forward-AD dual inputs, plain differentiable ops
    (:func:`differentiable_layer`)."""
    if needs_plain_ops([rows, *state0, *params]):
        return differentiable_layer(spec, rows, state0, params)
    if torch.is_grad_enabled() and any(t.requires_grad for t in [rows, *state0, *params]):
        out, *finals = LayerFunction.apply(spec, rows, len(state0), *state0, *params)
        return out, finals
    hs, finals, _, _ = _layer_forward(spec, rows, state0, params, save=False)
    return join_directions(hs, spec.reverse), finals
