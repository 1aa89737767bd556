"""Sequence kernels: per cell kind a forward loop and a hand-written backward, per backend.

The kinds and their kernels are registered in :mod:`.registry` (what to add for a new kind is
said there); :mod:`.dispatch` picks the backend of a layer call; :mod:`.stack` is the one stack
loop; :mod:`.autograd` wires a kernel pair into autograd; :mod:`.weights` owns the parameter order.
"""

from . import products, scan
from .autograd import LayerSpec, gate_inputs, run_layer
from .common import join_directions, per_direction, reverse_index
from .dispatch import generated_loop, select_backend, select_custom_backend
from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .registry import KINDS, CellKind, Kernel
from .rnn import rnn_backward, rnn_forward
from .stack import LAYER_OBSERVERS, StackSpec, run_stack, sequence_forward, stack_layers
from .weights import layer_param_kinds, layer_param_shapes, stack_directions, stack_weights

__all__ = [
    "KINDS",
    "LAYER_OBSERVERS",
    "CellKind",
    "Kernel",
    "LayerSpec",
    "StackSpec",
    "gate_inputs",
    "gru_backward",
    "gru_forward",
    "scan",
    "join_directions",
    "layer_param_kinds",
    "layer_param_shapes",
    "lstm_backward",
    "lstm_forward",
    "per_direction",
    "products",
    "reverse_index",
    "rnn_backward",
    "rnn_forward",
    "run_layer",
    "run_stack",
    "select_backend",
    "select_custom_backend",
    "generated_loop",
    "sequence_forward",
    "stack_directions",
    "stack_layers",
    "stack_weights",
]
