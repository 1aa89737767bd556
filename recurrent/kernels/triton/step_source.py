"""A step graph (:mod:`.step_graph`) as Triton statements over tiles of one column block.

Every tensor of the step is (directions, rows or 1, k·hidden_size): in a kernel it is k blocks, each
the expression of a (BLOCK_B, BLOCK_N) tile of rows × state columns, or of a (1, BLOCK_N) row (the
cell's own parameters; what broadcasts over rows), or a number. Elementwise ops apply block by block;
``split``/``chunk``/``slice`` of the last dimension pick blocks and ``cat`` joins them, which the
hidden size being a multiple of nothing else makes exact; a sum over rows (a parameter's gradient) is
a masked ``tl.sum`` over the tile's rows. Anything else (a reduction across hidden units, a random
draw, an op this table lacks) raises :class:`.step_graph.Unsupported` naming the op.

The statements assume, in the kernel: ``mask`` (the tile's running rows and columns), ``ACC`` (the
dtype of the math) and the helpers ``sigmoid`` and ``tanh``. Constants are ``tl.full`` of ACC, so a
float64 kernel keeps their float64 value (a Python float literal would be float32 in Triton).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Dict, List, Sequence, Tuple

from torch import Tensor, fx

from .step_graph import TRACE_DIRECTIONS, TRACE_HIDDEN, TRACE_ROWS, Unsupported

Blocks = List[str]  # one expression per block of hidden_size columns


class Emitter:
    """Collects the statements of one kernel body, and the constants it defines once, up front."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.lines, self.constants = prefix, [], {}

    def emit(self, expr: str) -> str:
        name = f"{self.prefix}{len(self.lines)}"
        self.lines.append(f"{name} = {expr}")
        return name

    def const(self, value: Any) -> str:
        if isinstance(value, bool):
            return str(value)
        value = float(value)
        if not math.isfinite(value):
            raise Unsupported(f"the constant {value} (generated kernels take finite constants)")
        if value not in self.constants:
            self.constants[value] = f"{self.prefix}c{len(self.constants)}"
        return self.constants[value]

    def constant_lines(self) -> List[str]:
        return [f"{name} = tl.full((1, 1), {value!r}, ACC)" for value, name in self.constants.items()]


def translate(graph: fx.GraphModule, inputs: Sequence[Blocks], emitter: Emitter) -> List[Blocks]:
    """The graph's outputs as blocks, its statements appended to ``emitter``; ``inputs`` are the
    placeholders' blocks, in order."""
    env: Dict[fx.Node, Any] = {}
    placeholders = iter(inputs)
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            env[node] = next(placeholders)
        elif node.op == "call_function":
            env[node] = _call(node, env, emitter)
        elif node.op == "output":
            return [env[n] for n in node.args[0]]
        else:
            raise Unsupported(f"a {node.op} node ({node.target}) in the step's graph")
    raise Unsupported("the step's graph has no output")


def _call(node: fx.Node, env: Dict[fx.Node, Any], emitter: Emitter) -> Any:
    if node.target is operator.getitem:
        return env[node.args[0]][node.args[1]]
    name = _op_name(node.target)
    handler = OPS.get(name)
    if handler is None:
        raise Unsupported(f"{name}{REASONS.get(name, '')}")
    _check_shape(node, name)
    args = fx.node.map_arg(node.args, lambda n: env[n])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
    return handler(emitter, node, *args, **kwargs)


def _op_name(target: Any) -> str:
    """'aten.add' for torch.ops.aten.add.Tensor (the packet: overloads share a handler)."""
    return str(target).rsplit(".", 1)[0] if str(target).startswith("aten.") else str(target)


def _check_shape(node: fx.Node, name: str) -> None:
    for value in node.meta.get("val") if isinstance(node.meta.get("val"), (list, tuple)) else [node.meta.get("val")]:
        if not isinstance(value, Tensor) or value.dim() == 0:
            continue
        shape = tuple(value.shape)
        ok = len(shape) == 3 and shape[0] == TRACE_DIRECTIONS and shape[1] in (1, TRACE_ROWS)
        if not ok or shape[2] % TRACE_HIDDEN:
            raise Unsupported(
                f"{name} gives a tensor of shape {shape}; generated kernels take (directions, rows or 1, "
                f"k·hidden_size) = ({TRACE_DIRECTIONS}, {TRACE_ROWS} or 1, k·{TRACE_HIDDEN}) when traced"
            )


def _width(node: fx.Node) -> int:
    return node.meta["val"].shape[-1] // TRACE_HIDDEN


def _spread(x: Any, count: int, e: Emitter) -> Blocks:
    return [e.const(x)] * count if not isinstance(x, list) else x


def _map(fmt: str) -> Callable[..., Blocks]:
    """An elementwise op: ``fmt`` over the blocks of its tensor arguments (numbers as constants)."""

    def handler(e: Emitter, node: fx.Node, *args: Any) -> Blocks:
        if not any(isinstance(a, list) for a in args):
            raise Unsupported(f"{_op_name(node.target)} of numbers alone (a tensor constant in step)")
        count = max(len(a) for a in args if isinstance(a, list))
        spread = [_spread(a, count, e) for a in args]
        return [e.emit(fmt.format(*parts)) for parts in zip(*spread)]

    return handler


def _scaled(fmt: str) -> Callable[..., Blocks]:
    """add/sub/rsub with torch's ``alpha`` (the factor of the second operand)."""

    def handler(e: Emitter, node: fx.Node, a: Any, b: Any, alpha: Any = 1) -> Blocks:
        if alpha != 1:
            b = _map("{} * {}")(e, node, b, alpha) if isinstance(b, list) else b * alpha
        return _map(fmt)(e, node, a, b)

    return handler


def _pow(e: Emitter, node: fx.Node, x: Any, exponent: Any) -> Blocks:
    if isinstance(exponent, list) or not isinstance(x, list):
        raise Unsupported("aten.pow with a tensor exponent (generated kernels take x ** constant)")
    if float(exponent).is_integer() and abs(exponent) <= 4:
        n = int(abs(exponent))
        power = _map(" * ".join(["{0}"] * n) if n else "({0} * 0.0 + 1.0)")(e, node, x)
        return _map("1.0 / {}")(e, node, power) if exponent < 0 else power
    return _map("tl.exp({} * tl.log({}))")(e, node, exponent, x)


def _clamp(e: Emitter, node: fx.Node, x: Blocks, low: Any = None, high: Any = None) -> Blocks:
    if low is not None:
        x = _map("tl.maximum({}, {})")(e, node, x, low)
    if high is not None:
        x = _map("tl.minimum({}, {})")(e, node, x, high)
    return x


def _same(e: Emitter, node: fx.Node, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Views, copies and dtype casts: the same blocks (the shape check has kept the last dimension's meaning)."""
    return x


def _constant(index: int = -1) -> Callable[..., Blocks]:
    """zeros/ones/full(_like)/fill: ``index`` is the argument holding the value (-1: it is in the op's name)."""

    def handler(e: Emitter, node: fx.Node, *args: Any, **kwargs: Any) -> Blocks:
        name = _op_name(node.target)
        value = 1.0 if "ones" in name else 0.0 if index < 0 else args[index]
        return [e.const(value)] * _width(node) if node.meta["val"].dim() else float(value)

    return handler


def _split(e: Emitter, node: fx.Node, x: Blocks, sizes: Any, dim: int = 0) -> Tuple[Blocks, ...]:
    _last_dim(node, dim)
    if isinstance(sizes, int):
        sizes = [sizes] * -(-len(x) * TRACE_HIDDEN // sizes)
    pieces, start = [], 0
    for size in sizes:
        pieces.append(x[start : start + size // TRACE_HIDDEN])
        start += size // TRACE_HIDDEN
    return tuple(pieces)


def _slice(e: Emitter, node: fx.Node, x: Blocks, dim: int = 0, start: Any = None, end: Any = None, step: int = 1) -> Blocks:
    size = node.args[0].meta["val"].shape[dim]
    if dim % 3 != 2:
        if (start or 0) == 0 and (end is None or end >= size) and step == 1:
            return x
        raise Unsupported("aten.slice across directions or rows (generated kernels slice the last dimension only)")
    if step != 1:
        raise Unsupported("aten.slice with a step")
    start, end = (start or 0) // TRACE_HIDDEN, min(size if end is None else end, size) // TRACE_HIDDEN
    return x[start:end]


def _cat(e: Emitter, node: fx.Node, parts: List[Any], dim: int = 0) -> Blocks:
    _last_dim(node, dim)
    return [block for part in parts for block in part]


def _sum(e: Emitter, node: fx.Node, x: Any, dims: Any = None, keepdim: bool = False, **kwargs: Any) -> Blocks:
    dims = sorted(d % 3 for d in (dims if dims is not None else [0, 1, 2]))
    if dims != [1] or not keepdim:
        raise Unsupported("aten.sum over directions or hidden units (generated kernels sum over rows only)")
    if node.args[0].meta["val"].shape[1] == 1:
        return x
    return [e.emit(f"tl.sum(tl.where(mask, {b}, 0.0), axis=0)[None, :]") for b in _spread(x, _width(node), e)]


def _last_dim(node: fx.Node, dim: int) -> None:
    if dim % 3 != 2:
        raise Unsupported(f"{_op_name(node.target)} along dimension {dim} (generated kernels join and split the last)")


OPS: Dict[str, Callable[..., Any]] = {
    "aten.add": _scaled("{} + {}"),
    "aten.sub": _scaled("{} - {}"),
    "aten.rsub": _scaled("{1} - {0}"),
    "aten.mul": _map("{} * {}"),
    "aten.div": _map("{} / {}"),
    "aten.neg": _map("-{}"),
    "aten.reciprocal": _map("1.0 / {}"),
    "aten.sigmoid": _map("sigmoid({})"),
    "aten.tanh": _map("tanh({})"),
    "aten.relu": _map("tl.maximum({}, 0.0)"),
    "aten.exp": _map("tl.exp({})"),
    "aten.log": _map("tl.log({})"),
    "aten.sqrt": _map("tl.sqrt({})"),
    "aten.abs": _map("tl.abs({})"),
    "aten.sgn": _map("tl.where({0} > 0, 1.0, tl.where({0} < 0, -1.0, 0.0))"),
    "aten.sign": _map("tl.where({0} > 0, 1.0, tl.where({0} < 0, -1.0, 0.0))"),
    "aten.sigmoid_backward": _map("{0} * (1.0 - {1}) * {1}"),
    "aten.tanh_backward": _map("{0} * (1.0 - {1} * {1})"),
    "aten.threshold_backward": _map("tl.where({1} <= {2}, 0.0, {0})"),
    "aten.pow": _pow,
    # torch's lerp: start + w (end − start) for |w| < 0.5, else end − (end − start)(1 − w)
    "aten.lerp": _map("tl.where(tl.abs({2}) < 0.5, {0} + {2} * ({1} - {0}), {1} - ({1} - {0}) * (1.0 - {2}))"),
    "aten.where": _map("tl.where({}, {}, {})"),
    "aten.clamp": _clamp,
    "aten.clamp_min": _map("tl.maximum({}, {})"),
    "aten.clamp_max": _map("tl.minimum({}, {})"),
    "aten.maximum": _map("tl.maximum({}, {})"),
    "aten.minimum": _map("tl.minimum({}, {})"),
    **{f"aten.{op}": _map(f"{{}} {sign} {{}}") for op, sign in
       [("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">="), ("eq", "=="), ("ne", "!=")]},
    "aten.logical_and": _map("{} & {}"),
    "aten.logical_or": _map("{} | {}"),
    "aten.logical_not": _map("{} == 0"),
    **{f"aten.{op}": _same for op in ["alias", "detach", "clone", "view", "_unsafe_view", "reshape", "expand",
                                      "contiguous", "_to_copy", "lift_fresh_copy"]},
    **{f"aten.{op}": _constant() for op in ["zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones",
                                            "empty_like", "new_empty"]},
    "aten.full": _constant(1),
    "aten.full_like": _constant(1),
    "aten.new_full": _constant(2),
    "aten.fill": _constant(1),
    "aten.scalar_tensor": _constant(0),
    "aten.split": _split,
    "aten.split_with_sizes": _split,
    "aten.slice": _slice,
    "aten.cat": _cat,
    "aten.sum": _sum,
}
REASONS = {  # why the ops a cell is most likely to use cannot be generated
    "aten.native_layer_norm": " (a reduction across hidden units)",
    "aten.mean": " (a reduction across hidden units)",
    "aten.var": " (a reduction across hidden units)",
    "aten.rand_like": " (a random draw in step)",
    "aten.rand": " (a random draw in step)",
    "aten.bernoulli": " (a random draw in step)",
    "aten.native_dropout": " (a random draw in step)",
}
