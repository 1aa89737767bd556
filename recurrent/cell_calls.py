"""A cell call on the native kernels: one layer of one step on the stack ops, where the route says so.

A cell's own step (:mod:`recurrent.cells`: two products through ``F.linear`` and the kind's step function)
is the reference, and what every call the native kernels cannot run takes. On the CPU in float32 a cell
call costs torch.nn's cell mostly in its Python: the argument checks and one op per product and gate
(RNNCell at batch 32: 25 µs of checks, the step function's call and ops, against torch.nn's one C++
call). Here a call whose arguments are already what the native ops take (batched, float32 CPU tensors
of the right sizes, no autocast) is checked in a few attribute reads and runs as the stack op of a
one-layer, one-step stack (:func:`recurrent.kernels.whole_stack`), differentiated by its backward op;
anything else goes to the cell's own path, whose checks raise torch.nn's errors. The route is
:func:`recurrent.routes.decide_cell`'s.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Parameter

from . import cells, kernels, routes, settings


def run(cell: cells.RNNCellBase, input: Tensor, given: List[Optional[Tensor]]) -> Optional[List[Tensor]]:
    """The new states of ``cell`` from ``input`` and the ``given`` states on the native stack ops, or None
    where the call is not theirs (the cell's own step then runs it)."""
    tensors = _plain_call(cell, input, given)
    if tensors is None:
        return None
    call, now = routes.cell_facts(cell, tensors), settings.current()
    last = cell.__dict__.get("_last_route")
    if last is not None and last[0] == call and last[1] == now:
        route = last[2]
    else:
        route = routes.decide_cell(call, now)
        if not call.tracer:  # a tracer's facts are decided afresh, as a layer's are
            cell.__dict__["_last_route"] = (call, now, route)
    if route.stack != "whole":
        return None
    batch, states = input.size(0), 0 if given[0] is None else len(given)
    weights = tensors[1 + states :]
    layer, spec = _specs(call.kind, len(weights) == 4, route)
    state0 = [s.unsqueeze(0) for s in tensors[1 : 1 + states]]
    out, finals = kernels.whole_stack(layer, spec, input, [batch], state0, weights)  # (no layer.batch_sizes read)
    return [out] if len(finals) == 1 else [f.squeeze(0) for f in finals]


_UNSET = object()


def _parameter(cell: cells.RNNCellBase, name: str) -> Any:
    """cell.<name> without nn.Module's attribute lookup (a fifth of a cell call's Python) where it is a
    registered parameter (or None); else as the attribute reads (a parametrization's property)."""
    found = cell._parameters.get(name, _UNSET)
    return getattr(cell, name) if found is _UNSET else found


def _plain_call(cell: cells.RNNCellBase, input: Tensor, given: List[Optional[Tensor]]) -> Optional[List[Tensor]]:
    """[input, given states..., weights...] of a call the native ops take as it is: a batch of rows (N > 0) of
    input_size float32 CPU features, every state given (or none) as (N, hidden_size) alike, no autocast,
    sizes above zero; else None. Anything else is the cell's own checks' to accept or reject."""
    if type(input) is not Tensor or input.dim() != 2 or input.dtype != torch.float32 or not input.is_cpu:
        return None
    if input.size(1) != cell.input_size or input.size(0) == 0 or cell.hidden_size == 0 or cell.input_size == 0:
        return None
    tensors = [input]
    if given[0] is not None:
        shape = (input.size(0), cell.hidden_size)
        for state in given:
            if type(state) is not Tensor or state.shape != shape or state.dtype != torch.float32 or not state.is_cpu:
                return None
            tensors.append(state)
    elif any(state is not None for state in given):
        return None
    weights = [_parameter(cell, name) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if weights[2] is None and weights[3] is None:  # no biases
        weights = weights[:2]
    for weight in weights:
        if type(weight) not in (Tensor, Parameter) or weight.dtype != torch.float32 or not weight.is_cpu:
            return None
    return None if torch.is_autocast_enabled("cpu") else tensors + weights


# (kind, bias, route) -> (LayerSpec, StackSpec) of a cell as a one-layer, one-direction stack on the route's
# kernel: they depend on nothing else.
_SPECS: Dict[tuple, Tuple[kernels.LayerSpec, kernels.StackSpec]] = {}


def _specs(kind: kernels.CellKind, bias: bool, route: routes.Route) -> Tuple[kernels.LayerSpec, kernels.StackSpec]:
    key = (kind.mode, bias, route.kernel, route.backward)
    if key not in _SPECS:
        names = kernels.layer_param_kinds(bias, False)
        spec = kernels.StackSpec(1, 1, names, kind.folds_bias, 0.0, False, True)
        kernel = kind.kernel(route.kernel, False)
        layer = kernels.LayerSpec(kind, kernel, route.backward, 1, names, kind.folds_bias, True, [], None, True)
        _SPECS[key] = (layer, spec)
    return _SPECS[key]


cells.ROUTED[:] = [run]  # the cells ask here from now on (once, however often this module is reloaded)
