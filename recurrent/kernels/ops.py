"""Each built-in layer as one opaque torch op, forward and hand-written backward, for torch.compile.

Under torch.compile a layer that runs its Python would send dynamo into the time loop, where it traces
every step's ATen ops and specializes on the length. Instead the route (:mod:`recurrent.routes`) runs
each layer there as ``torch.ops.recurrent.layer``: dynamo puts one node per layer in its graph, whose
fake implementation gives every output's shape from the inputs' (symbolic) shapes, so a new batch size
or length needs no new graph; the node runs the route's kernel (native, oneDNN, TorchScript, Triton) as
eager does. Its backward is ``torch.ops.recurrent.layer_backward``, the kernel's hand-written backward
(:func:`.autograd.kernel_backward`), registered as the op's autograd formula.

What would otherwise be pointwise work in the graph around the ops, which Inductor would generate and
compile code for on every new graph, happens inside them: the first layer takes the padded input as it
is (batch first or not), a layer without initial states starts from zeros it makes itself, and each
layer after the first drops its input out itself (training), saving the mask for its backward.

A padded batch passes no batch sizes (its steps are ``rows / batch``, which stays symbolic); a packed
one its ``batch_sizes`` tensor, read inside the op. The forward returns what the backward needs beyond
its inputs: hs (for one direction an empty stand-in: hs is the output rows then, which it saves),
the kernel's saved activations, each (D, T, k·H) with k from the kernel's
``saved_widths`` (the shapes the fake implementation needs), and the dropout mask.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .autograd import LayerSpec, kernel_backward, kernel_forward
from .common import join_directions, reverse_index
from .registry import KINDS
from .weights import layer_param_kinds, stack_weights


def _code_version() -> str:
    """A hash of the kernels' Python source (this module, the kinds' saved layouts, the kernels), which every
    op call carries as an argument: Inductor keys its on-disk cache of compiled graphs by the graph, so a
    graph compiled against other fake shapes (another version of this library) is never loaded."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


CODE = _code_version()


class OpLayer(NamedTuple):
    """What a layer op is told besides its tensors (an op takes no Python objects)."""

    batch: int  # sequences (for a packed batch: its first step's)
    batch_first: bool  # a padded (N, L, I) input rather than (L, N, I) (the first layer's)
    dropout: float  # the probability with which the op drops its input out (0: none)
    mode: str  # the kind (recurrent.kernels.KINDS)
    kernel: str  # the route's kernel
    directions: int
    bias: bool
    onednn: bool  # the products around the kernel are oneDNN's
    save: bool  # keep what the backward needs (a gradient is wanted)
    code: str = CODE  # the kernels' source version (_code_version)


def _spec(layer: OpLayer, params: List[Tensor], rows: Tensor, batch_sizes: Optional[Tensor]) -> LayerSpec:
    kind = KINDS[layer.mode]
    projected = _projected(layer, params)
    found = kind.kernel(layer.kernel, projected)
    if found is None:
        raise RuntimeError(f"recurrent: no {layer.kernel} kernel for {layer.mode} (projected: {projected})")
    sizes = [layer.batch] * (rows.size(0) // layer.batch) if batch_sizes is None else batch_sizes.tolist()
    reverse = reverse_index(sizes, rows.device) if layer.directions == 2 else None
    names = layer_param_kinds(layer.bias, projected)
    return LayerSpec(
        kind, found, "hand-written", layer.directions, names, kind.folds_bias, layer.onednn, sizes, reverse, True
    )


def _projected(layer: OpLayer, params: List[Tensor]) -> bool:
    return len(params) // layer.directions > 2 + 2 * layer.bias


def _state_shapes(layer: OpLayer, params: List[Tensor]) -> List[Tuple[int, int, int]]:
    """The initial states' shapes (D, N, ·): h's (of the projection's size where there is one), and c's."""
    hidden = params[1].size(0) // KINDS[layer.mode].gates
    output = params[4 if layer.bias else 2].size(0) if _projected(layer, params) else hidden
    sizes = [output, hidden][: KINDS[layer.mode].states]
    return [(layer.directions, layer.batch, size) for size in sizes]


def _rows(layer: OpLayer, input: Tensor) -> Tensor:
    """The time-major rows (T, I) of the op's input: a padded batch's, or the rows as they are."""
    if input.dim() == 3:
        return (input.transpose(0, 1) if layer.batch_first else input).reshape(-1, input.size(2))
    return input


def _initial(layer: OpLayer, state0: List[Tensor], params: List[Tensor], like: Tensor) -> List[Tensor]:
    return state0 or [like.new_zeros(shape) for shape in _state_shapes(layer, params)]


def _owned(outputs: List[Tensor], inputs: List[Tensor]) -> List[Tensor]:
    """``outputs``, each copied where its storage is an input's or an earlier output's: an op's outputs may
    alias neither its inputs nor each other (one direction's output rows are a view of hs, a kernel may hand
    back views of one buffer). Storages, not ``_base``: below autograd a view does not record its base."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t.numel()}
    owned = []
    for t in outputs:
        pointer = t.untyped_storage().data_ptr()
        owned.append(t.clone() if t.numel() and pointer in seen else t)
        seen.add(pointer)
    return owned


@torch.library.custom_op("recurrent::layer", mutates_args=())
def layer(
    input: Tensor, state0: List[Tensor], params: List[Tensor], batch_sizes: Optional[Tensor], batch: int,
    batch_first: bool, dropout: float, mode: str, kernel: str, directions: int, bias: bool, onednn: bool,
    save: bool, code: str,
) -> Tuple[Tensor, List[Tensor], Tensor, List[Tensor], Tensor]:  # fmt: skip
    """One layer, all directions: (output rows (T, D·H_out), final states, hs (D, T, H_out), saved (none
    unless ``save``), the dropout mask (empty without dropout)). ``state0`` empty: zeros."""
    spec_of = OpLayer(batch, batch_first, dropout, mode, kernel, directions, bias, onednn, save, code)
    rows = _rows(spec_of, input)
    mask = rows.new_empty(0, dtype=torch.bool)
    if dropout > 0:
        mask = torch.empty_like(rows, dtype=torch.bool).bernoulli_(1 - dropout)
        rows = rows * mask / (1 - dropout)
    spec = _spec(spec_of, params, rows, batch_sizes)
    hs, finals, saved, _ = kernel_forward(spec, rows, _initial(spec_of, state0, params, rows), params, save)
    # One direction's output rows are hs itself: no copy, and no second output on the same storage.
    hs, out = (rows.new_empty(0), hs[0]) if directions == 1 else (hs, join_directions(hs, spec.reverse))
    out, *rest = _owned([out, *finals, *saved], [input, *state0, *params])
    return out, rest[: len(finals)], hs, rest[len(finals) :], mask


@layer.register_fake
def _layer_fake(input, state0, params, batch_sizes, *settings):
    spec_of = OpLayer(*settings)
    rows = _rows(spec_of, input)
    kernel = KINDS[spec_of.mode].kernel(spec_of.kernel, _projected(spec_of, params))
    widths = kernel.saved_widths if spec_of.save else ()
    shapes = _state_shapes(spec_of, params)
    output, hidden, steps, directions = shapes[0][2], shapes[-1][2], rows.size(0), spec_of.directions
    out = rows.new_empty(steps, directions * output)
    finals = [rows.new_empty(shape) for shape in shapes]
    saved = [rows.new_empty(directions, steps, width * hidden) for width in widths]
    mask = torch.empty_like(rows, dtype=torch.bool) if spec_of.dropout > 0 else rows.new_empty(0, dtype=torch.bool)
    hs = rows.new_empty(0) if directions == 1 else rows.new_empty(directions, steps, output)
    return out, finals, hs, saved, mask


@torch.library.custom_op("recurrent::layer_backward", mutates_args=())
def layer_backward(
    grad_out: Optional[Tensor], grad_finals: List[Optional[Tensor]], input: Tensor, state0: List[Tensor],
    params: List[Tensor], hs: Tensor, saved: List[Tensor], mask: Tensor, batch_sizes: Optional[Tensor],
    input_grad: bool, batch: int, batch_first: bool, dropout: float, mode: str, kernel: str, directions: int,
    bias: bool, onednn: bool, save: bool, code: str,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """(the input's gradient (empty unless ``input_grad``), the given initial states', the parameters') of
    :func:`layer`, ``hs`` as it saved it (one direction's: the output rows (1, T, H)); a final state the
    loss did not use has no gradient (None): zeros, as for the output."""
    spec_of = OpLayer(batch, batch_first, dropout, mode, kernel, directions, bias, onednn, save, code)
    rows = _rows(spec_of, input)
    shapes = [tuple(s.shape) for s in state0] or _state_shapes(spec_of, params)
    grad_finals = [rows.new_zeros(shape) if g is None else g for g, shape in zip(grad_finals, shapes)]
    if grad_out is None:
        grad_out = rows.new_zeros(rows.size(0), directions * shapes[0][2])
    if dropout > 0:
        rows = rows * mask / (1 - dropout)
    spec = _spec(spec_of, params, rows, batch_sizes)
    # The kernel may write its gradients over what it saved; an op must leave its inputs as they are.
    if spec.kernel.overwrites_saved:
        saved = [s.clone() for s in saved]
    if spec.kernel.overwrites_hs:
        hs = hs.clone()
    w_ih, w_hh, _, _, weights = stack_weights(params, directions, spec.param_names, spec.fold_bias)
    initial = _initial(spec_of, state0, params, rows)
    dx, dstate0, dparams = kernel_backward(
        spec, grad_out, grad_finals, rows, initial, (w_ih, w_hh, weights), hs, saved, input_grad
    )
    if dx is None:
        dx = rows.new_empty(0)
    if dropout > 0 and input_grad:
        dx = dx * mask / (1 - dropout)
    if input.dim() == 3 and input_grad:  # back to the input's layout
        steps = dx.size(0) // batch
        dx = dx.view(steps, batch, -1).transpose(0, 1).contiguous() if batch_first else dx.view(input.shape)
    dstate0 = dstate0 if state0 else []  # no gradient for the zeros the op made
    dx, *grads = _owned([dx, *dstate0, *dparams], [grad_out, *grad_finals, input, *state0, *params, hs, *saved, mask])
    return dx, grads[: len(state0)], grads[len(state0) :]


@layer_backward.register_fake
def _layer_backward_fake(grad_out, grad_finals, input, state0, params, hs, saved, mask, batch_sizes, input_grad, *rest):
    return (
        input.new_empty(input.shape if input_grad else (0,)),
        [s.new_empty(s.shape) for s in state0],
        [p.new_empty(p.shape) for p in params],
    )


def _setup_context(ctx, inputs, output) -> None:
    input, state0, params, batch_sizes, *settings = inputs
    out, _, hs, saved, mask = output
    ctx.counts = (len(state0), len(params), len(saved))
    ctx.settings, ctx.packed = settings, batch_sizes is not None
    # What only the backward reads has no gradient, and an unused final state's stays None (the op makes its
    # zeros): no zero tangents for autograd, or Inductor, to fill.
    ctx.mark_non_differentiable(hs, *saved, mask)
    ctx.set_materialize_grads(False)
    hs = out if hs.numel() == 0 else hs  # one direction's: the output rows
    ctx.save_for_backward(input, *state0, *params, hs, *saved, mask, *([] if batch_sizes is None else [batch_sizes]))


def _backward(ctx, grad_out, grad_finals, grad_hs, grad_saved, grad_mask):
    states, count, kept = ctx.counts
    input, *rest = ctx.saved_tensors
    state0, params, rest = rest[:states], rest[states : states + count], rest[states + count :]
    hs, saved, mask = rest[0], rest[1 : 1 + kept], rest[1 + kept]
    hs = hs.unsqueeze(0) if hs.dim() == 2 else hs  # one direction's output rows
    batch_sizes = rest[-1] if ctx.packed else None
    input_grad = ctx.needs_input_grad[0]
    tensors = (list(grad_finals), input, list(state0), list(params), hs, list(saved), mask, batch_sizes, input_grad)
    dx, dstate0, dparams = layer_backward(grad_out, *tensors, *ctx.settings)
    return dx if input_grad else None, dstate0, dparams, None, *([None] * len(ctx.settings))


layer.register_autograd(_backward, setup_context=_setup_context)


def op_stack(
    layer: OpLayer, num_layers: int, input: Tensor, batch_sizes: Optional[Tensor], state0: List[Tensor],
    weights: List[Tensor],
) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
    """Every layer as one :func:`layer` op over ``input`` (a padded batch, or packed rows) from ``state0``
    ([] for zeros): (output rows (T, D·H_out), final states); ``layer.dropout`` between layers."""
    per_layer, d = len(weights) // num_layers, layer.directions
    finals: List[List[Tensor]] = []
    rows = input
    for index in range(num_layers):
        mine = [s[index * d : (index + 1) * d] for s in state0]
        params = weights[index * per_layer : (index + 1) * per_layer]
        this = layer._replace(dropout=layer.dropout if index > 0 else 0.0)
        rows, last, _, _, _ = torch.ops.recurrent.layer(rows, mine, params, batch_sizes, *this)
        finals.append(last)
    return rows, [torch.cat(states, 0) for states in zip(*finals)]
