"""Persistent Triton kernels: per cell kind one launch per layer and pass (design in :mod:`.common`).

Each kind's pair keeps the contract of :mod:`recurrent.kernels.contract` and saves the same
activations as its TorchScript kernel, so the input projection before the loop and the dx/dW/db
products after it stay single large products, shared with the TorchScript backend.
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import torch

from ..contract import Kernel
from ..gru import GRU_SAVED
from ..lstm import LSTM_SAVED
from ..rnn import RNN_SAVED
from . import common, resident, stack
from .common import DTYPES, MAX_HIDDEN
from .generated import generated_loop
from .generated import refusal as custom_refusal
from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward

__all__ = ["custom_refusal", "generated_loop", "kernel", "refusal", "resident_kernel", "resident_refusal"]



def _stacked(pair: Kernel) -> Kernel:
    """A kind's pair with the whole-stack ops on it (:mod:`.stack`)."""
    return pair._replace(
        stack=partial(stack.stack_forward, pair), stack_backward=partial(stack.stack_backward, pair),
        stack_missing_grads=True,
    )


_KERNELS = {
    "RNN_TANH": _stacked(Kernel(partial(rnn_forward, relu=False), partial(rnn_backward, relu=False), saved_widths=RNN_SAVED)),
    "RNN_RELU": _stacked(Kernel(partial(rnn_forward, relu=True), partial(rnn_backward, relu=True), saved_widths=RNN_SAVED)),
    "GRU": _stacked(Kernel(gru_forward, gru_backward, saved_widths=GRU_SAVED)),
    "LSTM": _stacked(Kernel(lstm_forward, lstm_backward, saved_widths=LSTM_SAVED)),
}
_PROJECTED = Kernel(lstm_forward, lstm_backward, saved_widths=LSTM_SAVED)  # layer by layer

# The same launchers with the resident kernels (their arguments are the persistent ones').
_held = dict(run=resident.launch)
_RESIDENT = {
    "RNN_TANH": _stacked(Kernel(
        partial(rnn_forward, relu=False, kernel=resident.rnn_forward_kernel, **_held),
        partial(rnn_backward, relu=False, kernel=resident.rnn_backward_kernel, **_held), saved_widths=RNN_SAVED,
    )),
    "RNN_RELU": _stacked(Kernel(
        partial(rnn_forward, relu=True, kernel=resident.rnn_forward_kernel, **_held),
        partial(rnn_backward, relu=True, kernel=resident.rnn_backward_kernel, **_held), saved_widths=RNN_SAVED,
    )),
    "GRU": _stacked(Kernel(
        partial(gru_forward, kernel=resident.gru_forward_kernel, **_held),
        partial(gru_backward, kernel=resident.gru_backward_kernel, **_held), saved_widths=GRU_SAVED,
    )),
    "LSTM": _stacked(Kernel(
        partial(lstm_forward, kernel=resident.lstm_forward_kernel, **_held),
        partial(lstm_backward, kernel=resident.lstm_backward_kernel, **_held), saved_widths=LSTM_SAVED,
    )),
}


def refusal(mode: str, dtype: torch.dtype, hidden_size: int) -> Optional[str]:
    """Why these kernels cannot run a layer, or None when they can."""
    if mode not in _KERNELS:
        return f"no Triton kernels for {mode} yet"
    if dtype not in DTYPES:
        return f"dtype {dtype} (supported: {', '.join(str(d) for d in DTYPES)})"
    if hidden_size > MAX_HIDDEN:
        return f"hidden_size {hidden_size} > {MAX_HIDDEN}, the largest the compile check covers"
    return None


def kernel(mode: str, projected: bool = False) -> Kernel:
    return _PROJECTED if projected else _KERNELS[mode]


def resident_refusal(mode: str, projected: bool, dtype: torch.dtype, hidden_size: int, device: torch.device) -> Optional[str]:
    """Why the resident kernels (:mod:`.resident`) cannot run a layer on ``device``, or None when they can."""
    if projected:
        return "no resident kernel for a projected LSTM"
    return resident.fit(mode, dtype, common.dot_precision_for(dtype, device), hidden_size, resident.device_shared_limit(device))


def resident_kernel(mode: str) -> Kernel:
    return _RESIDENT[mode]
