"""Native CPU kernels: the TorchScript loops of :mod:`.loops` around fused step ops that
:mod:`.build` compiles on the user's machine. The eager layers take them for float32 CPU calls on
the fast path (:func:`..products.fast_cpu`) when the library loaded; otherwise, and for a projected
LSTM, the TorchScript kernels' ATen fast path runs.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

from ..registry import Kernel
from . import loops
from .build import available, status

__all__ = ["available", "native_kernel", "status"]

_KERNELS = {
    "LSTM": Kernel(loops.lstm_forward, loops.lstm_backward),
    "GRU": Kernel(loops.gru_forward, loops.gru_backward),
    "RNN_TANH": Kernel(partial(loops.rnn_forward, relu=False), partial(loops.rnn_backward, relu=False)),
    "RNN_RELU": Kernel(partial(loops.rnn_forward, relu=True), partial(loops.rnn_backward, relu=True)),
}


def native_kernel(mode: str, proj: bool) -> Optional[Kernel]:
    """The native kernel pair of ``mode``; None for a projected LSTM or where the library did not load."""
    if proj or mode not in _KERNELS or not available():
        return None
    return _KERNELS[mode]
