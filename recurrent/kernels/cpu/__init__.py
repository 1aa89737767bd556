"""Native CPU kernels: each kind's whole time loop as one C++ op (:mod:`.sequences`), which
:mod:`.build` compiles on the user's machine. The eager layers take them for float32 CPU calls on
the fast path (:func:`..products.fast_cpu`) when the library loaded; otherwise, and for a projected
LSTM, the TorchScript kernels' ATen fast path runs.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

from ..registry import Kernel
from . import sequences
from .build import available, status

__all__ = ["available", "native_kernel", "status"]

_KERNELS = {
    "LSTM": Kernel(None, sequences.lstm_backward, sequences.lstm_forward),
    "GRU": Kernel(None, sequences.gru_backward, sequences.gru_forward),
    "RNN_TANH": Kernel(None, partial(sequences.rnn_backward, relu=False), partial(sequences.rnn_forward, relu=False)),
    "RNN_RELU": Kernel(None, partial(sequences.rnn_backward, relu=True), partial(sequences.rnn_forward, relu=True)),
}


def native_kernel(mode: str, proj: bool) -> Optional[Kernel]:
    """The native kernel pair of ``mode``; None for a projected LSTM or where the library did not load."""
    if proj or mode not in _KERNELS or not available():
        return None
    return _KERNELS[mode]
