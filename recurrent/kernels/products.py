"""oneDNN's matrix products for the kernels on the CPU, W_hh packed once.

The products a layer needs are, per direction, ``x wᵀ``: the input projection, the hidden product
of every step, and in the backward ``dgates W_hh`` per step and ``dgi W_ih``. ATen runs them as
MKL's ``bmm``/``baddbmm``. For float32 on the CPU, oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``,
the primitive torch.compile's CPU backend calls) ran them up to 2x faster on an AMD EPYC (2 threads),
where MKL takes its generic code path, and faster again with the weights in oneDNN's blocked layout
(:func:`pack`); torch.nn's own CPU LSTM is oneDNN's. The weight gradients stay MKL's: oneDNN would
first transpose their operands. With the products, those kernels run the gate math in place.

``onednn`` is a flag of the TorchScript kernels; the route (:mod:`recurrent.routes`) sets it for the
"onednn" kernel, float32 CPU calls where this torch build has oneDNN's linear (:data:`ONEDNN`) and the
native kernels do not run. A scripted module, and whatever autograd differentiates (double backward,
torch.func), keep ATen's ops, which every build has and every transform knows.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import Tensor

from .._jit import script


def _has_onednn_linear() -> bool:
    """Whether this torch build has oneDNN's linear op and weight packing, giving ATen's product (checked once)."""
    try:
        x, w = torch.randn(3, 5), torch.randn(4, 5)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 3)
        for weight in (w, packed):
            if not torch.allclose(
                torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], ""), x @ w.t(), atol=1e-5
            ):
                return False
        return True
    except (AttributeError, RuntimeError):
        return False


ONEDNN: bool = _has_onednn_linear()
# Below this many rows (a one-step call's) a backward product through oneDNN, with its transposed copy of the
# weight, or through the native weight sums cost more than MKL's on the rows as they are: dx = dgi W_ih at
# G = 600, I = 200, 1 thread, 250 against 42 µs at 1 row, 452 against 187 at 20 (AMD EPYC).
MIN_ROWS = 128


if ONEDNN:

    @script
    def linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
        """x wᵀ + b for 2-D x (N, K) and w (G, K) or w packed by :func:`pack`, through oneDNN (which
        refuses empty operands: a one-step sequence's previous states, say)."""
        if x.size(0) == 0 or x.size(1) == 0:
            empty = x.new_zeros(x.size(0), w.size(0))
            return empty if b is None else empty + b
        scalars: List[Optional[Union[float, int, complex]]] = []
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", scalars, "")

    @script
    def pack(w: Tensor, rows: int) -> List[Tensor]:
        """Each direction's w (D, G, K) in oneDNN's blocked layout, for products of about ``rows`` rows.
        A time loop multiplies by the same W_hh at every step: packed once per layer call, a
        128x128 times 128x512 step took 46 µs against 54 to 73 µs for the plain layout and 92 µs
        through MKL (new rows each step, as in the loop; AMD EPYC, 2 threads, benchmarks/cpu_ops.py).
        Same numbers as unpacked."""
        return [torch.ops.mkldnn._reorder_linear_weight(w[d].contiguous(), rows) for d in range(w.size(0))]

else:  # the kernels name these whether or not they run them (TorchScript compiles every branch)

    @script
    def linear(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
        """Never reached: the route runs the "onednn" kernel only where this torch has oneDNN's linear."""
        raise RuntimeError("recurrent: this torch build has no oneDNN linear")

    @script
    def pack(w: Tensor, rows: int) -> List[Tensor]:
        """Never reached: as :func:`linear`."""
        raise RuntimeError("recurrent: this torch build has no oneDNN linear")


@script
def packed_linear(x: Tensor, packed: List[Tensor], b: Optional[Tensor]) -> Tensor:
    """x wᵀ + b per direction through oneDNN, one weight a direction (as :func:`pack` gives them, or
    plain): x (D, N, K), b (D, 1, G) → (D, N, G)."""
    outs = [linear(x[d], packed[d], None if b is None else b[d, 0]) for d in range(x.size(0))]
    return outs[0].unsqueeze(0) if len(outs) == 1 else torch.stack(outs)


@script
def rows_linear(x: Tensor, w: Tensor, b: Optional[Tensor], onednn: bool) -> Tensor:
    """x wᵀ + b per direction: x (D, N, K), w (D, G, K), b (D, 1, G) or None → (D, N, G)."""
    if onednn:
        return packed_linear(x, w.unbind(0), b)
    if b is None:
        return torch.bmm(x, w.transpose(1, 2))
    return torch.baddbmm(b, x, w.transpose(1, 2))


@script
def weight_grad(grad: Tensor, blocks: List[Tensor]) -> Tensor:
    """Σ over rows of gradᵀ · x per direction through oneDNN, x given as consecutive row blocks
    (D, ·, K) and grad (D, R, G): (D, G, K). oneDNN reads the transposed grad in place as its
    weight; x is copied transposed 512 rows at a time, so the copy stays small beside the
    layer's buffers. Against MKL's transposed product, 3,584 rows: 1.5 to 1.6 against 2.5 ms for
    G = 512, K = 128; 0.51 to 0.53 against 1.0 ms for K = 28; a tie at G = K = 128 (AMD EPYC,
    2 threads, benchmarks/cpu_ops.py)."""
    directions, chunk = grad.size(0), 512
    total = grad.new_zeros(directions, blocks[0].size(2), grad.size(2))  # (D, K, G): the product's own layout
    start = 0
    for block in blocks:
        for first in range(0, block.size(1), chunk):
            x = block[:, first : first + chunk]
            rows = x.size(1)
            for d in range(directions):
                # A column slice of a wider gradient (a narrower dgh's companion, autograd.py) is copied
                # chunk by chunk: oneDNN's product with such a strided weight took 70 ms, not 0.5.
                g_t = grad[d, start + first : start + first + rows].contiguous().t()
                total[d].add_(linear(x[d].t().contiguous(), g_t, None))
        start += block.size(1)
    return total.transpose(1, 2).contiguous()
