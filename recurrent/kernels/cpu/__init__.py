"""Native CPU kernels: each kind's whole time loop as one C++ op (:mod:`.sequences`), which
:mod:`.build` compiles on the user's machine. The route (:mod:`recurrent.routes`) takes them for
float32 CPU calls where the library loaded; elsewhere, and for a projected LSTM, the TorchScript
kernels on oneDNN's products run ("onednn").
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Tuple

from ..contract import Kernel
from . import sequences
from .build import available, status

__all__ = ["available", "native_kernel", "status"]


def _native(mode: str, forward, backward, saved: Tuple[int, ...], overwrites_hs: bool = False) -> Kernel:
    # The backward ops write their gradients over the saved gates (and the RNN's over its outputs).
    return Kernel(
        None, backward, forward, overwrites_saved=True, overwrites_hs=overwrites_hs, joined_grad=True,
        weight_grad=sequences.weight_grad, saved_widths=saved, stack=partial(sequences.stack_forward, mode),
        stack_backward=partial(sequences.stack_backward, mode), cell=partial(sequences.cell_forward, mode),
        cell_backward=partial(sequences.cell_backward, mode),
    )  # fmt: skip


# saved: the LSTM's [gates (i, f, g, o), c], the GRU's [gates (r, z, n), W_hn h + b_hn], the RNN's nothing
_KERNELS = {
    "LSTM": _native("LSTM", sequences.lstm_forward, sequences.lstm_backward, (4, 1)),
    "GRU": _native("GRU", sequences.gru_forward, sequences.gru_backward, (3, 1)),
    "RNN_TANH": _native(
        "RNN_TANH", partial(sequences.rnn_forward, relu=False), partial(sequences.rnn_backward, relu=False), (), True
    ),
    "RNN_RELU": _native(
        "RNN_RELU", partial(sequences.rnn_forward, relu=True), partial(sequences.rnn_backward, relu=True), (), True
    ),
}


def native_kernel(mode: str, projected: bool) -> Optional[Kernel]:
    """The native kernel pair of ``mode``; None for a projected LSTM or where the library did not load."""
    if projected or mode not in _KERNELS or not available():
        return None
    return _KERNELS[mode]
