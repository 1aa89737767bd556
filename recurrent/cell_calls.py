"""A cell call on the native kernels' cell op, where the route says so.

A cell's own step (:mod:`recurrent.cells`: two products through ``F.linear`` and the kind's step function)
is the reference, and what every call the native kernels cannot run takes. On the CPU in float32 a cell
call cost more than torch.nn's, whose cell is one C++ call, in its Python: the argument checks and one op
per product and gate (RNNCell at batch 32: 25 µs of checks alone). Here a call whose arguments are already
what the native op takes (batched, float32 CPU tensors of the right sizes, no autocast) is checked in a few
attribute reads and runs as one op (:func:`recurrent.kernels.run_cell`), differentiated by its backward op;
anything else goes to the cell's own path, whose checks raise torch.nn's errors. The route is
:func:`recurrent.routes.decide_cell`'s.
"""

from __future__ import annotations

from typing import Any, List, Optional

import torch
from torch import Tensor
from torch.nn import Parameter

from . import cells, kernels, routes, settings


def run(cell: cells.RNNCellBase, input: Tensor, given: List[Optional[Tensor]]) -> Optional[List[Tensor]]:
    """The new states of ``cell`` from ``input`` and the ``given`` states on the native cell op, or None where
    the call is not its (the cell's own step then runs it)."""
    found = _plain_call(cell, input, given)
    if found is None:
        return None
    states, weights = found
    call, now = routes.cell_facts(cell, [input, *states, *weights]), settings.current()
    last = cell.__dict__.get("_last_route")
    if last is None or last[0] != call or last[1] != now:
        route = routes.decide_cell(call, now)
        last = (call, now, route, call.kind.kernel(route.kernel, False) if route.kernel == "native" else None)
        if not call.tracer:  # a tracer's facts are decided afresh, as a layer's are
            cell.__dict__["_last_route"] = last
    kernel, backward = last[3], last[2].backward
    if kernel is None:
        return None
    h, c = (states + [None, None])[:2]
    w_ih, w_hh, b_ih, b_hh = (weights + [None, None])[:4]
    return kernels.run_cell(kernel, call.kind.mode, backward, input, h, c, w_ih, w_hh, b_ih, b_hh)


_UNSET = object()
_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_TENSORS = (Tensor, Parameter)


def _parameter(cell: cells.RNNCellBase, name: str) -> Any:
    """cell.<name> without nn.Module's attribute lookup (a fifth of a cell call's Python) where it is a
    registered parameter (or None); else as the attribute reads (a parametrization's property)."""
    found = cell._parameters.get(name, _UNSET)
    return getattr(cell, name) if found is _UNSET else found


def _plain_call(cell: cells.RNNCellBase, input: Tensor, given: List[Optional[Tensor]]) -> Optional[tuple]:
    """(given states, weights) of a call the native op takes as it is: a batch of rows (N > 0) of input_size
    float32 CPU features, every state given (or none) as (N, hidden_size) alike, float32 CPU weights, no
    autocast, sizes above zero; else None. Anything else is the cell's own checks' to accept or reject."""
    if type(input) is not Tensor or input.dim() != 2 or input.dtype != torch.float32 or not input.is_cpu:
        return None
    if input.size(1) != cell.input_size or input.size(0) == 0 or cell.hidden_size == 0 or cell.input_size == 0:
        return None
    states = []
    if given[0] is not None:
        shape = (input.size(0), cell.hidden_size)
        for state in given:
            if type(state) is not Tensor or state.shape != shape or state.dtype != torch.float32 or not state.is_cpu:
                return None
            states.append(state)
    elif any(state is not None for state in given):
        return None
    weights = [_parameter(cell, name) for name in _WEIGHTS]
    if weights[2] is None and weights[3] is None:  # no biases
        del weights[2:]
    for weight in weights:
        if weight.__class__ not in _TENSORS or weight.dtype != torch.float32 or not weight.is_cpu:
            return None
    return None if torch.is_autocast_enabled("cpu") else (states, weights)


cells.ROUTED[:] = [run]  # the cells ask here from now on (once, however often this module is reloaded)
