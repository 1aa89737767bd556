"""Pieces every sequence kernel shares.

Layout used by all kernels: directions are batched on dim 0, so a bidirectional layer runs both of
its directions in one loop with one batched hidden product per step. The reverse direction's input
arrives already reversed in time. Shapes: gi (D, L, N, G), h0 (D, N, H), w_hh (D, G, H),
b_hh (D, 1, G), hs (D, L, N, H), with G the gate width (H for RNN, 3H for GRU).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._jit import script


@script
def hidden_product(h: Tensor, w_hh_t: Tensor, b_hh: Optional[Tensor]) -> Tensor:
    """gh = h W_hhᵀ + b_hh for every direction at once; ``w_hh_t`` is (D, H, G)."""
    if b_hh is None:
        return torch.bmm(h, w_hh_t)
    return torch.baddbmm(b_hh, h, w_hh_t)


@script
def hidden_weight_grad(dgh: Tensor, h0: Tensor, hs: Tensor) -> Tensor:
    """dW_hh = Σ_t dgh_tᵀ h_{t-1} as two batched products over all steps, without copying h_{t-1}."""
    grad = torch.bmm(dgh[:, 0].transpose(1, 2), h0)
    if hs.size(1) > 1:
        grad = torch.baddbmm(grad, dgh[:, 1:].flatten(1, 2).transpose(1, 2), hs[:, :-1].flatten(1, 2))
    return grad
