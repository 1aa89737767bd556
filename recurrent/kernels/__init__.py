"""Sequence kernels: per cell kind a forward loop and a hand-written backward, per route.

:mod:`.contract` says what a kernel is; :mod:`.registry` holds each kind's entry (its kernels per
route, its scan step, its ONNX operator, its recorded gates); :mod:`.stack` is the stack loop;
:mod:`.autograd` wires a kernel pair into autograd; :mod:`.weights` owns the parameter order. Which
kernel runs a call is :mod:`recurrent.routes`'s decision, not theirs.
"""

from . import ops, products, scan
from .autograd import LayerSpec, gate_inputs, kernel_forward, run_layer
from .cell import run_cell
from .common import join_directions, per_direction, reverse_index
from .contract import Kernel, SequenceKernel, SequenceModule
from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .registry import KINDS, CellKind, register
from .rnn import rnn_backward, rnn_forward
from .stack import LAYER_OBSERVERS, StackSpec, eager_stack, run_module_stack, run_stack, whole_stack
from .weights import layer_param_kinds, layer_param_shapes, stack_directions, stack_weights

__all__ = [
    "KINDS",
    "LAYER_OBSERVERS",
    "CellKind",
    "Kernel",
    "LayerSpec",
    "SequenceKernel",
    "SequenceModule",
    "StackSpec",
    "eager_stack",
    "gate_inputs",
    "gru_backward",
    "gru_forward",
    "join_directions",
    "kernel_forward",
    "layer_param_kinds",
    "layer_param_shapes",
    "lstm_backward",
    "lstm_forward",
    "ops",
    "per_direction",
    "products",
    "register",
    "reverse_index",
    "rnn_backward",
    "rnn_forward",
    "run_cell",
    "run_layer",
    "run_module_stack",
    "run_stack",
    "scan",
    "stack_directions",
    "stack_weights",
    "whole_stack",
]
