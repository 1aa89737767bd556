"""A cell's step (RNNCell, GRUCell, LSTMCell) on a kernel's cell ops (``Kernel.cell``: the native ones), as one
autograd node; its reference, which the backward recomputes where it must be differentiable, vmappable or run
twice, is the cell's own math (:mod:`recurrent.cells`: two products and the kind's step function)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import List, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from .._jit import JIT_ENABLED
from ..cells import gru_step, lstm_step, rnn_relu_step, rnn_tanh_step
from .autograd import batched
from .contract import Kernel


def run_cell(
    kernel: Kernel, mode: str, backward: str, x: Tensor, h: Optional[Tensor], c: Optional[Tensor], w_ih: Tensor,
    w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
) -> List[Tensor]:  # fmt: skip
    """[h'] or, for the LSTM, [h', c'] from x (N, I) and the states (N, H) (None: zeros) on ``kernel``'s cell ops,
    differentiated by their backward op unless ``backward`` is "none"."""
    states = 2 if mode == "LSTM" else 1
    if backward == "none":
        return kernel.cell(x, h, c, w_ih, w_hh, b_ih, b_hh)[:states]
    return list(CellFunction.apply(kernel, mode, x, h, c, w_ih, w_hh, b_ih, b_hh))


class CellFunction(torch.autograd.Function):
    """A cell's step as one node: the cell op forward, its backward op backward (which writes over what the
    forward saved: a second backward, like a differentiable or batched one, recomputes on :func:`reference`)."""

    @staticmethod
    def forward(ctx, kernel: Kernel, mode: str, *tensors: Optional[Tensor]):
        outs = kernel.cell(*tensors)
        states = 2 if mode == "LSTM" else 1
        saved = outs[states:] or outs[:1]  # the RNN's backward reads its output h'
        ctx.kernel, ctx.mode = kernel, mode
        ctx.save_for_backward(*tensors, *saved)
        return tuple(outs[:states])

    @staticmethod
    def backward(ctx, grad_h: Tensor, grad_c: Optional[Tensor] = None):
        inputs = ctx.saved_tensors
        tensors, saved = inputs[:7], list(inputs[7:])
        needs = ctx.needs_input_grad[2:]
        incoming = [grad_h] if grad_c is None else [grad_h, grad_c]
        if torch.is_grad_enabled() or getattr(ctx, "spent", False) or any(map(batched, incoming)):
            return (None, None, *_recomputed_grads(ctx.mode, tensors, needs, grad_h, grad_c))
        ctx.spent = ctx.mode in ("GRU", "LSTM")  # their op writes over the saved gates
        grads = ctx.kernel.cell_backward(grad_h, grad_c, *tensors, saved, needs[0], needs[1] or needs[2])
        dx, dh, *rest = grads
        dc = rest.pop(0) if ctx.mode == "LSTM" else None
        found = [dx, dh, dc, *rest] + [None] * (7 - 3 - len(rest))
        return (None, None, *[g if need else None for g, need in zip(found, needs)])


def reference(
    mode: str, x: Tensor, h: Optional[Tensor], c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
    b_ih: Optional[Tensor], b_hh: Optional[Tensor],
) -> List[Tensor]:  # fmt: skip
    """The cell's step as :mod:`recurrent.cells` writes it, on autograd's ops: [h'] or [h', c']."""
    h = torch.zeros(x.size(0), w_hh.size(1), dtype=x.dtype, device=x.device) if h is None else h
    gi, gh = F.linear(x, w_ih, b_ih), F.linear(h, w_hh, b_hh)
    if mode == "GRU":
        return [gru_step(gi, gh, h)[0]]
    if mode == "LSTM":
        c = torch.zeros_like(h) if c is None else c
        new_h, new_c, _, _, _ = lstm_step(gi, gh, c)
        return [new_h, new_c]
    return [rnn_relu_step(gi + gh) if mode == "RNN_RELU" else rnn_tanh_step(gi + gh)]


def _recomputed_grads(mode: str, tensors, needs, grad_h: Tensor, grad_c: Optional[Tensor]) -> list:
    """The gradients of :func:`reference` at the saved inputs by autograd: with a graph where grad mode is on,
    batched where the incoming gradients are."""
    # TorchScript's optimisations off: its autodiff graphs are opaque to vmap (as autograd.differentiable_layer).
    unoptimized = torch.jit.optimized_execution(False) if JIT_ENABLED else nullcontext()
    with torch.enable_grad(), torch.autocast(tensors[0].device.type, enabled=False), unoptimized:
        # One fresh view per input: its gradient is its own, and through it the graph reaches its history.
        args = [t if t is None else t.view_as(t) if need else t.detach() for t, need in zip(tensors, needs)]
        outs = reference(mode, *args)
        wanted = [a for a, need in zip(args, needs) if need and a is not None]
        found = iter(
            torch.autograd.grad(
                outs, wanted, [grad_h, grad_c][: len(outs)], create_graph=torch.is_grad_enabled(), allow_unused=True
            )
        )
    return [next(found) if need and a is not None else None for a, need in zip(args, needs)]
