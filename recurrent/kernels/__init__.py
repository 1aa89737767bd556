"""Sequence kernels: one TorchScript forward loop and one hand-written backward per cell kind.

Adding a cell kind means a step function in :mod:`recurrent.cells`, a module here with its
``*_forward``/``*_backward`` pair, a :class:`Kernel` entry below (saying whether b_hh may join
the input projection), and its branch in
:func:`.stack.sequence_forward` (TorchScript has no function values to look up in a table).
"""
from functools import partial

from .autograd import Kernel, LayerSpec, gate_inputs, run_layer, stack_weights
from .common import join_directions, per_direction, reverse_index
from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward
from .stack import run_stack, sequence_forward

KERNELS = {
    "RNN_TANH": Kernel(partial(rnn_forward, relu=False), partial(rnn_backward, relu=False), folds_bias=True),
    "RNN_RELU": Kernel(partial(rnn_forward, relu=True), partial(rnn_backward, relu=True), folds_bias=True),
    "GRU": Kernel(gru_forward, gru_backward, folds_bias=False),
    "LSTM": Kernel(lstm_forward, lstm_backward, folds_bias=True),
}

__all__ = [
    "KERNELS", "Kernel", "LayerSpec", "gate_inputs", "gru_backward", "gru_forward", "join_directions",
    "lstm_backward", "lstm_forward", "per_direction",
    "reverse_index", "rnn_backward", "rnn_forward", "run_layer", "run_stack", "sequence_forward", "stack_weights",
]
