"""What each cell kind is, in one entry: its gate count, whether b_hh folds into the input
projection, and its sequence kernels per backend.

Adding a cell kind: a step function in :mod:`recurrent.cells` (the formula in its docstring), a
kernel module with its ``*_forward``/``*_backward`` pair (the contract is in :mod:`.autograd`), an
entry in :data:`KINDS`, and its branch in :func:`.stack.sequence_forward` (TorchScript, which runs
the scripted path, has no function values to look up in a table; a missing branch raises there,
and ``tests/test_registry.py`` runs every kind through it). Adding a backend: one more loader in
each kind's ``backends``, and its rule in :mod:`.dispatch`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache, partial
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from torch import Tensor

from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward


class Kernel(NamedTuple):
    """A layer-direction's sequence forward and its hand-written backward (contract: :mod:`.autograd`);
    a kernel that makes its input projections itself has ``rows_forward`` instead of ``forward``."""

    forward: Optional[Callable[..., Tuple[Tensor, List[Tensor], List[Tensor]]]]
    backward: Callable[..., Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]]
    rows_forward: Optional[Callable[..., Tuple[Tensor, List[Tensor], List[Tensor]]]] = None
    overwrites_saved: bool = False  # its backward writes over its saved activations (contract: .autograd)
    overwrites_hs: bool = False  # ... and over the saved outputs
    joined_grad: bool = False  # its backward reads the output rows' gradient as they are (.autograd.JoinedGrad)
    # (Σ gradᵀ x, Σ gradᵀ h, Σ grad) over rows in one pass (grad (D, R, G), x and h as row blocks, a bias
    # flag: .cpu.sequences.weight_grad) where the kernel has its own; else the layer's products.
    weight_grad: Optional[Callable[[Tensor, List[Tensor], List[Tensor], bool], Tuple[Tensor, Tensor, Tensor]]] = None


@dataclass(frozen=True)
class CellKind:
    mode: str
    gates: int  # blocks of hidden_size in W_ih, W_hh, b_ih and b_hh
    # gi and gh enter the gates only as a sum, so b_hh can join b_ih in the input projection and the
    # loop runs without it (true for RNN and LSTM; the GRU's r multiplies W_hn h + b_hn).
    folds_bias: bool
    backends: Dict[str, Callable[[], Kernel]]  # backend name -> loader (a backend imports only when used)

    def kernel(self, backend: str) -> Kernel:
        return self.backends[backend]()


@cache
def _triton_kernel(mode: str) -> Kernel:
    # Triton is imported on first use only: a CPU user never pays for it (or needs it installed).
    return importlib.import_module(f"{__package__}.triton").kernel(mode)


def _kind(mode: str, gates: int, folds_bias: bool, torchscript: Kernel) -> CellKind:
    return CellKind(
        mode, gates, folds_bias, {"torchscript": lambda: torchscript, "triton": partial(_triton_kernel, mode)}
    )


KINDS: Dict[str, CellKind] = {
    kind.mode: kind
    for kind in [
        _kind("RNN_TANH", 1, True, Kernel(partial(rnn_forward, relu=False), partial(rnn_backward, relu=False))),
        _kind("RNN_RELU", 1, True, Kernel(partial(rnn_forward, relu=True), partial(rnn_backward, relu=True))),
        _kind("GRU", 3, False, Kernel(gru_forward, gru_backward)),
        _kind("LSTM", 4, True, Kernel(lstm_forward, lstm_backward)),
    ]
}
