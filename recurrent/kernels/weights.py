"""The one place that knows a layer's parameter order.

torch.nn registers, per layer and direction, ``weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]``
(the forward direction's list, then the reverse one's). The layers register their parameters in
this order, the kernels stack them in it, and the hand-written backward returns its gradients in it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script


@script
def layer_param_kinds(bias: bool, proj: bool) -> List[str]:
    """The parameter names (without the ``_l{k}[_reverse]`` suffix) of one layer-direction, in order."""
    kinds = ["weight_ih", "weight_hh"]
    if bias:
        kinds += ["bias_ih", "bias_hh"]
    if proj:
        kinds.append("weight_hr")
    return kinds


def layer_param_shapes(
    bias: bool, gate_size: int, input_size: int, hidden_size: int, output_size: int, proj_size: int
) -> List[Tuple[str, Tuple[int, ...]]]:
    """(kind, shape) of each parameter of one layer-direction, in registration order."""
    shapes = {
        "weight_ih": (gate_size, input_size),
        "weight_hh": (gate_size, output_size),
        "bias_ih": (gate_size,),
        "bias_hh": (gate_size,),
        "weight_hr": (proj_size, hidden_size),
    }
    return [(kind, shapes[kind]) for kind in layer_param_kinds(bias, proj_size > 0)]


@script
def stack_weights(
    params: List[Tensor], directions: int, bias: bool, proj: bool, fold_bias: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], List[Tensor]]:
    """A layer's per-direction parameters stacked on a new dim 0: (w_ih (D, G, I), w_hh (D, G, H),
    b_ih (D, 1, G), b_hh (D, 1, G), [w_hr (D, P, H)] or []). With ``fold_bias`` the input bias is
    b_ih + b_hh and the hidden one None."""
    kinds = layer_param_kinds(bias, proj)
    per = len(kinds)
    stacked: Dict[str, Tensor] = {}
    for i, kind in enumerate(kinds):
        if directions == 1:
            stacked[kind] = params[i].unsqueeze(0)
        else:
            stacked[kind] = torch.stack([params[i], params[per + i]])
    extra = [stacked["weight_hr"]] if proj else []
    if not bias:
        return stacked["weight_ih"], stacked["weight_hh"], None, None, extra
    b_ih, b_hh = stacked["bias_ih"].unsqueeze(1), stacked["bias_hh"].unsqueeze(1)
    if fold_bias:
        return stacked["weight_ih"], stacked["weight_hh"], b_ih + b_hh, None, extra
    return stacked["weight_ih"], stacked["weight_hh"], b_ih, b_hh, extra


def unstack_grads(grads: Dict[str, Tensor], directions: int, bias: bool, proj: bool) -> List[Tensor]:
    """Gradients stacked by direction ({kind: (D, ...)}) as one flat list in the layer's parameter order."""
    per_kind = {kind: grads[kind].unbind(0) for kind in layer_param_kinds(bias, proj)}
    return [per_kind[kind][d] for d in range(directions) for kind in layer_param_kinds(bias, proj)]
