"""The one place that knows a layer's parameter order.

torch.nn registers, per layer and direction, ``weight_ih, weight_hh[, bias_ih, bias_hh][, weight_hr]``
(the forward direction's list, then the reverse one's), and a custom cell's own parameters after
them. The layers register their parameters in this order, the kernels stack them in it, and the
hand-written backward returns its gradients in it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .._jit import script

# own_gradients, stack_directions, stack_weights and is_kind_weight are plain functions: the eager layers call
# them once per layer and call, where a TorchScript call of stack_weights cost 75 µs (one direction, H = 200),
# 29 µs as Python (no gradients); the TorchScript stack loops that call them compile them with themselves.


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


def own_gradients(tensors: List[Tensor]) -> List[Tensor]:
    """The tensors, each through a product with a one where autograd will differentiate them.

    The product's backward gives each tensor a gradient buffer of its own. Without it, a stack's
    backward hands every stacked tensor a view of one buffer, and a sum's backward hands both terms
    the same tensor; autograd keeps such views as ``.grad`` (and torch.func returns them), so two
    parameters' gradients would share one storage and an in-place edit of one would change both."""
    if torch.is_grad_enabled() and any([t.requires_grad for t in tensors]):
        one = torch.ones([], dtype=tensors[0].dtype, device=tensors[0].device)
        return [t * one for t in tensors]
    return tensors


def stack_directions(tensors: List[Tensor]) -> Tensor:
    """One tensor per direction, stacked on a new dim 0: (D, ...), each with its own gradient."""
    if len(tensors) == 1:
        return tensors[0].unsqueeze(0)
    return torch.stack(own_gradients(tensors))


def is_kind_weight(name: str) -> bool:
    """Whether a parameter is one of the kind's own, beyond what every kind has (W_ih, W_hh, the biases)."""
    return name != "weight_ih" and name != "weight_hh" and name != "bias_ih" and name != "bias_hh"


def stack_weights(
    params: List[Tensor], directions: int, names: List[str], fold_bias: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor], List[Tensor]]:
    """A layer's per-direction parameters (``names`` per direction, in order) stacked on a new dim 0:
    (w_ih (D, G, I), w_hh (D, G, H), b_ih (D, 1, G), b_hh (D, 1, G), the kind's other weights (D, ...):
    the LSTM's W_hr (D, P, H), a custom cell's own parameters). With ``fold_bias`` the input bias is
    b_ih + b_hh and the hidden one None; b_hh enters the sum through :func:`own_gradients`, so that
    the two do not get one gradient tensor."""
    per = len(names)
    by_name: Dict[str, List[Tensor]] = {}
    for i, name in enumerate(names):
        by_name[name] = [params[d * per + i] for d in range(directions)]
    w_ih, w_hh = stack_directions(by_name["weight_ih"]), stack_directions(by_name["weight_hh"])
    kind_weights: List[Tensor] = []
    for name in names:
        if is_kind_weight(name):
            kind_weights.append(stack_directions(by_name[name]))
    if "bias_ih" not in by_name:
        return w_ih, w_hh, None, None, kind_weights
    if fold_bias:
        folded = [b_ih + own_gradients([b_hh])[0] for b_ih, b_hh in zip(by_name["bias_ih"], by_name["bias_hh"])]
        return w_ih, w_hh, stack_directions(folded).unsqueeze(1), None, kind_weights
    b_ih, b_hh = stack_directions(by_name["bias_ih"]), stack_directions(by_name["bias_hh"])
    return w_ih, w_hh, b_ih.unsqueeze(1), b_hh.unsqueeze(1), kind_weights


def unstack_grads(grads: Dict[str, Tensor], directions: int, names: List[str]) -> List[Tensor]:
    """Gradients stacked by direction ({name: (D, ...)}, one tensor per name) as one flat list in the
    layer's parameter order. Each direction's gradient is copied out of the stacked buffer when there
    are two: autograd would keep the views as ``.grad``, two parameters' gradients on one storage."""
    if directions == 1:
        return [grads[name][0] for name in names]
    return [grads[name][d].clone() for d in range(directions) for name in names]
