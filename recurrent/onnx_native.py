"""The built-in layers as ONNX's own RNN, GRU and LSTM operators, for torch's TorchScript-based ONNX
exporter (``torch.onnx.export(..., dynamo=False)``, what torch < 2.5 uses by default).

That exporter traces the model with ``torch.jit.trace``: a Python time loop would be recorded at
the example's length, and a model exported with ``dynamic_axes`` would then be wrong at any other.
So while it traces, a layer call is one opaque node, the custom operator ``recurrent::native_stack``
(the TorchScript stack), which :func:`_symbolic` writes as one ONNX operator per layer (both
directions in one, ``direction="bidirectional"``), as torch.nn's layers export: onnxruntime then
runs any batch and length.

ONNX orders the gates otherwise (GRU z, r, h against torch's r, z, n; LSTM i, o, f, c against i, f,
g, o: each kind's registry entry says how) and adds b_ih and b_hh as one B; GRU's
``linear_before_reset=1`` is torch's n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)). ONNX's LSTM has
no projection (``proj_size``) and no operator takes a custom cell: those raise, naming the dynamo
exporter, which exports them (as scans).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.onnx.symbolic_helper import parse_args

from .kernels import KINDS, CellKind, StackSpec, layer_param_kinds, run_stack

MIN_OPSET = 13  # the opsets _symbolic writes for: Slice's and Unsqueeze's operands as inputs
_registered: List[bool] = []  # whether _symbolic is registered with the exporter (once, on first use)


def refusal(kind: CellKind, projected: bool) -> Optional[str]:
    """Why a layer cannot be one ONNX operator (None when it can): its kind's registry entry names the
    operator (a custom cell's has none)."""
    if kind.onnx is None:
        what = "a custom cell has no ONNX operator"
    elif projected:
        what = "ONNX's LSTM operator has no projection (proj_size)"
    else:
        return None
    return (
        f"recurrent: {what}, so torch.onnx.export(..., dynamo=False) cannot export this layer at any "
        "length; export it with torch.onnx.export(..., dynamo=True), which writes its loops as ONNX Scan"
    )


def run(
    spec: StackSpec, kind: CellKind, hidden_size: int, x: Tensor, state0: List[Tensor], given: bool,
    weights: List[Tensor],
) -> Tuple[Tensor, List[Tensor]]:  # fmt: skip
    """The stack over x (L, N, I): (output (L, N, D·H), final states), traced as one
    ``recurrent::native_stack`` node. ``given``: whether state0 came from the caller (otherwise
    ONNX's zero initial state serves)."""
    if spec.training and spec.dropout > 0:
        raise RuntimeError("recurrent: export a layer with dropout in eval mode (ONNX's operators have no dropout)")
    if not _registered:
        torch.onnx.register_custom_op_symbolic("recurrent::native_stack", _symbolic, MIN_OPSET)
        _registered.append(True)
    bias = "bias_ih" in spec.param_names
    output, h_n, c_n = native_stack(
        x, state0, weights, kind.mode, spec.num_layers, spec.directions, bias, hidden_size, given
    )
    return output, [h_n, c_n] if kind.states == 2 else [h_n]


@torch.library.custom_op("recurrent::native_stack", mutates_args=())
def native_stack(
    x: Tensor,
    states: List[Tensor],
    weights: List[Tensor],
    mode: str,
    num_layers: int,
    directions: int,
    bias: bool,
    hidden_size: int,
    given: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The stack over x (L, N, I): (output (L, N, D·H), h_n, c_n (empty unless LSTM)). ``hidden_size``
    and ``given`` are for :func:`_symbolic`."""
    kind = KINDS[mode]
    names = layer_param_kinds(bias, False)
    spec = StackSpec(num_layers, directions, names, kind.folds_bias, 0.0, False, False)
    steps, batch = x.size(0), x.size(1)
    with torch.no_grad():
        rows, finals = run_stack(
            kind.sequence(False), spec, x.reshape(steps * batch, x.size(2)), [batch] * steps, states, weights
        )
    return rows.view(steps, batch, rows.size(-1)), finals[0], finals[1] if len(finals) == 2 else x.new_empty(0)


@parse_args("v", "v", "v", "s", "i", "i", "b", "i", "b")
def _symbolic(
    g, x, states, weights, mode: str, num_layers: int, directions: int, bias: bool, hidden_size: int, given: bool
):
    """native_stack as ONNX: one RNN, GRU or LSTM operator per layer."""
    state0, params = _elements(states), _elements(weights)
    per_layer = len(params) // num_layers
    d = directions
    finals: List[list] = [[] for _ in state0]
    for layer in range(num_layers):
        mine = [_rows(g, s, layer * d, (layer + 1) * d) for s in state0] if given else []
        y, last = _layer(g, mode, d, bias, hidden_size, x, mine, params[layer * per_layer : (layer + 1) * per_layer])
        for i, state in enumerate(last):
            finals[i].append(state)
        # Y (L, D, N, H) -> (L, N, D·H), the next layer's input
        x = g.op("Reshape", g.op("Transpose", y, perm_i=[0, 2, 1, 3]), _const(g, [0, 0, -1]))
    joined = [f[0] if len(f) == 1 else g.op("Concat", *f, axis_i=0) for f in finals]
    return x, joined[0], joined[1] if len(joined) == 2 else g.op("Constant", value_t=torch.zeros(0))


def _layer(g, mode: str, d: int, bias: bool, hidden_size: int, x, state0: list, params: list) -> Tuple[object, list]:
    """One layer, both directions, as one ONNX operator: (Y, [Y_h] or [Y_h, Y_c])."""
    operator, order, activation = KINDS[mode].onnx
    per = len(params) // d  # w_ih, w_hh[, b_ih, b_hh] per direction
    rows = _gate_rows(order, hidden_size)
    w = _directions(g, [_gather(g, params[k * per], rows) for k in range(d)])
    r = _directions(g, [_gather(g, params[k * per + 1], rows) for k in range(d)])
    inputs = [x, w, r]
    if bias:
        biases = [(_gather(g, params[k * per + 2], rows), _gather(g, params[k * per + 3], rows)) for k in range(d)]
        inputs.append(_directions(g, [g.op("Concat", b_ih, b_hh, axis_i=0) for b_ih, b_hh in biases]))
    if state0:
        if not bias:
            inputs.append(_none(g))
        inputs += [_none(g), *state0]  # sequence_lens omitted: every sequence runs the whole length
    attributes = {"hidden_size_i": hidden_size, "direction_s": "bidirectional" if d == 2 else "forward"}
    if activation:
        attributes["activations_s"] = [activation] * d
    if operator == "GRU":
        attributes["linear_before_reset_i"] = 1
    outputs = g.op(operator, *inputs, outputs=3 if operator == "LSTM" else 2, **attributes)
    return outputs[0], list(outputs[1:])


def _elements(value) -> list:
    """The tensors of a list operand (a prim::ListConstruct) of the traced node."""
    return list(value.node().inputs())


def _gate_rows(order: List[int], hidden_size: int) -> Tensor:
    """The rows of a torch gate-stacked weight in ONNX's gate order."""
    return torch.cat([torch.arange(k * hidden_size, (k + 1) * hidden_size) for k in order])


def _gather(g, value, rows: Tensor):
    return g.op("Gather", value, g.op("Constant", value_t=rows), axis_i=0)


def _directions(g, values: list):
    """Per-direction tensors stacked on a new leading axis (ONNX's num_directions)."""
    lifted = [g.op("Unsqueeze", v, _const(g, [0])) for v in values]
    return lifted[0] if len(lifted) == 1 else g.op("Concat", *lifted, axis_i=0)


def _rows(g, value, start: int, end: int):
    """value[start:end] along axis 0."""
    return g.op("Slice", value, _const(g, [start]), _const(g, [end]), _const(g, [0]))


def _const(g, values: List[int]):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _none(g):
    """An omitted optional input of an ONNX operator."""
    absent = g.op("prim::Constant")
    absent.setType(torch._C.OptionalType.ofTensor())
    return absent
