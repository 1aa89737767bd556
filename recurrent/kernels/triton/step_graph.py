"""A custom cell's step, and its derivative, as graphs of ATen ops: what the generated kernels are made of.

The step is traced once per cell kind and setting (:func:`trace_step`) with ``make_fx`` over
functionalized ATen ops, on small tensors of sizes no two of which divide each other (2 directions,
5 rows, hidden size 7), so that every dimension of every intermediate says what it is: directions,
rows (or 1: broadcast over rows, as the cell's own parameters are), and a multiple of the hidden size
(that many blocks of state columns). The derivative is traced the same way, as ``torch.func.vjp`` of
the step: autograd writes the backward, the kernels only run it. Hyperparameters (plain
attributes of the cell) and ``self.training`` are read while tracing, so they enter the graphs as
constants; :func:`cell_key` names what a trace depends on.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Tuple

import torch
from torch import Tensor, fx
from torch.fx.experimental.proxy_tensor import make_fx

TRACE_DIRECTIONS, TRACE_ROWS, TRACE_HIDDEN = 2, 5, 7


class Unsupported(Exception):
    """The step cannot become a generated kernel; the message names the op (or shape) that stopped it."""


class StepGraphs(NamedTuple):
    forward: fx.GraphModule  # (gi, gh, *states, *params) -> (output, *new states)
    backward: fx.GraphModule  # (gi, gh, *states, *params, d output, *d new states) -> their gradients
    gates: int
    states: int
    param_blocks: Tuple[int, ...]  # per own parameter: its width in blocks of hidden_size
    output_is_state: bool  # the step's output is its new state[0] (one buffer serves both)


def cell_key(cell) -> Tuple[Any, ...]:
    """What a trace of ``cell.step`` depends on: its class, its mode and its plain settings."""
    settings = tuple((k, v) for k, v in sorted(vars(cell).items()) if isinstance(v, (bool, int, float, str)))
    return type(cell), cell.training, settings


def param_blocks(cell) -> Tuple[int, ...]:
    """The width of each of the cell's own parameters in blocks of hidden_size (shape (k·H,) only)."""
    widths = []
    for name, shape in cell.parameter_shapes(TRACE_HIDDEN).items():
        shape = tuple(shape)
        if len(shape) != 1 or shape[0] % TRACE_HIDDEN or shape[0] == 0:
            raise Unsupported(
                f"parameter {name!r} has shape {shape} at hidden_size {TRACE_HIDDEN}; generated kernels take "
                "parameters of shape (k·hidden_size,)"
            )
        widths.append(shape[0] // TRACE_HIDDEN)
    return tuple(widths)


def trace_step(cell) -> StepGraphs:
    """The forward and backward graphs of ``cell.step`` (raises :class:`Unsupported` when the step
    does not trace into tensors of the shapes above)."""
    gates, states, blocks = cell.gates, len(cell.state_names), param_blocks(cell)
    d, n, h = TRACE_DIRECTIONS, TRACE_ROWS, TRACE_HIDDEN
    inputs = [_draw(d, n, gates * h), _draw(d, n, gates * h)] + [_draw(d, n, h) for _ in range(states)]
    inputs += [_draw(d, 1, k * h) for k in blocks]

    def forward(*flat: Tensor) -> Tuple[Tensor, ...]:
        output, new = cell.step(flat[0], flat[1], list(flat[2 : 2 + states]), list(flat[2 + states :]))
        if len(new) != states:
            raise Unsupported(f"step returned {len(new)} states, the cell declares {states}")
        return (output, *new)

    def backward(*flat: Tensor) -> Tuple[Tensor, ...]:
        _, pullback = torch.func.vjp(forward, *flat[: len(inputs)])
        return pullback(tuple(flat[len(inputs) :]))

    forward_graph = _trace(forward, inputs)
    outputs = _outputs(forward_graph)
    for node in outputs:
        _check_state_shape(node)
    cotangents = [_draw(d, n, h) for _ in range(1 + states)]
    backward_graph = _trace(backward, inputs + cotangents)
    return StepGraphs(forward_graph, backward_graph, gates, states, blocks, outputs[0] is outputs[1])


def _draw(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def _trace(fn, inputs: List[Tensor]) -> fx.GraphModule:
    try:
        with torch.no_grad():
            return make_fx(torch.func.functionalize(fn), tracing_mode="real")(*inputs)
    except Unsupported:
        raise
    except Exception as err:  # the step does not run on these shapes, or does what tracing refuses
        raise Unsupported(f"tracing the step failed: {type(err).__name__}: {err}") from err


def _outputs(graph: fx.GraphModule) -> List[fx.Node]:
    return list(next(n for n in graph.graph.nodes if n.op == "output").args[0])


def _check_state_shape(node: Any) -> None:
    want = (TRACE_DIRECTIONS, TRACE_ROWS, TRACE_HIDDEN)
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    if not isinstance(value, Tensor) or tuple(value.shape) != want:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(node).__name__
        raise Unsupported(f"step's outputs must be (directions, rows, hidden) = {want} when traced, got {shape}")
