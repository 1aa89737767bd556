"""The one ``autograd.Function`` that wires any kernel pair into autograd.

A kernel is a pair of sequence functions (see :mod:`.common` for the shapes):
``forward(gi, h0, w_hh_t, b_hh, save) -> (hs, saved)`` and
``backward(grad_hs, h0, hs, saved, w_hh) -> (dgi, dgh, dh0)``. From dgh this module forms the
hidden weight and bias gradients as single products over all steps.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from .common import hidden_weight_grad


class Kernel(NamedTuple):
    forward: Callable[[Tensor, Tensor, Tensor, Optional[Tensor], bool], Tuple[Tensor, List[Tensor]]]
    backward: Callable[[Tensor, Tensor, Tensor, List[Tensor], Tensor], Tuple[Tensor, Tensor, Tensor]]


class Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernel: Kernel, gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor]) -> Tensor:
        hs, saved = kernel.forward(gi, h0, w_hh.transpose(1, 2), b_hh, True)
        ctx.kernel = kernel
        ctx.has_bias = b_hh is not None
        ctx.save_for_backward(h0, w_hh, hs, *saved)
        return hs

    @staticmethod
    def backward(ctx, grad_hs: Tensor):
        if torch.is_grad_enabled():
            # The hand-written backward is not itself differentiable: say so rather than return a
            # second derivative that silently misses the loop's part.
            raise RuntimeError(
                "recurrent: double backward (create_graph=True) is not supported by the eager fast path. "
                "Script the model with torch.jit.script: its TorchScript path supports higher-order gradients."
            )
        h0, w_hh, hs, *saved = ctx.saved_tensors
        dgi, dgh, dh0 = ctx.kernel.backward(grad_hs.contiguous(), h0, hs, saved, w_hh)
        need = ctx.needs_input_grad
        dw_hh = hidden_weight_grad(dgh, h0, hs) if need[3] else None
        db_hh = dgh.sum((1, 2)).unsqueeze(1) if ctx.has_bias and need[4] else None
        return None, dgi, dh0, dw_hh, db_hh


def run(kernel: Kernel, gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Optional[Tensor]) -> Tensor:
    """hs for gi/h0/w_hh/b_hh shaped as in :mod:`.common`; saves nothing when no gradient is wanted."""
    tensors = (gi, h0, w_hh) if b_hh is None else (gi, h0, w_hh, b_hh)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return Recurrence.apply(kernel, gi, h0, w_hh, b_hh)
    return kernel.forward(gi, h0, w_hh.transpose(1, 2), b_hh, False)[0]
