"""What each cell kind is, in one entry: its gates and states, whether b_hh folds into the input
projection, and the code that runs it on each route (:mod:`recurrent.routes`).

Adding a cell kind: a step function in :mod:`recurrent.cells` (the formula in its docstring), a kernel
module with its TorchScript ``*_forward``/``*_backward`` pair, its :class:`.contract.SequenceKernel`
module, its scan step, the names of its recorded gates and the widths of what its forward saves
(:mod:`.gru` shows all six), and one
:class:`CellKind` given to :func:`register` (here for the built-in kinds). Its layer is then
``RNNBase(mode, ...)`` or a thin subclass naming the mode. The native, Triton and ONNX entries are
optional: a kind without them runs the TorchScript kernels there (``tests/routes/test_registry.py`` adds a
throwaway kind this way).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import Tensor

from .autograd import layer_forward_saving
from .contract import Kernel
from .gru import GRU_SAVED, GRUSequence, gru_backward, gru_forward, gru_gates, gru_scan_step
from .lstm import LSTM_SAVED, LSTMSequence, lstm_backward, lstm_forward, lstm_gates, lstm_scan_step
from .rnn import RNN_SAVED, RNNSequence, rnn_backward, rnn_forward, rnn_gates, rnn_scan_step
from .scan import CellStep

# Route kernel name -> (projected: an LSTM with proj_size) -> the kernel, or None where it has none.
KernelLoader = Callable[[bool], Optional[Kernel]]


@dataclass(frozen=True)
class CellKind:
    mode: str
    gates: int  # blocks of hidden_size in W_ih, W_hh, b_ih and b_hh
    states: int  # 1 (h) or 2 (h, c)
    # gi and gh enter the gates only as a sum, so b_hh can join b_ih in the input projection and the
    # loop runs without it (true for RNN and LSTM; the GRU's r multiplies W_hn h + b_hn).
    folds_bias: bool
    sequence: Callable[[bool], Any]  # onednn -> its SequenceKernel (a TorchScript class instance)
    kernels: Dict[
        str, KernelLoader
    ]  # "torchscript" and "onednn" at least; "native", "triton", "resident" where it has them
    scan_step: Callable[[List[Tensor]], CellStep]  # its step for torch.export's scans, given its kind weights
    # A layer's gates by name, each (D, T, H), from (its LayerSpec, input rows, initial states, parameters):
    # what gate recording (recurrent.recording) shows
    gates_of: Callable[..., Dict[str, Tensor]]
    # ONNX's operator, torch's gate blocks in its order, and its activation attribute ("": the operator's default)
    onnx: Optional[Tuple[str, List[int], str]] = None
    projects: bool = False  # takes proj_size (the LSTM)
    hidden_weight: Optional[Callable[[Tensor], Tensor]] = None  # W_hh (D, G, H) as a pass uses it (weight drop)

    def kernel(self, name: str, projected: bool = False) -> Optional[Kernel]:
        """Its kernel for the route kernel ``name``; None where it has none (for a projected layer)."""
        loader = self.kernels.get(name)
        return None if loader is None else loader(projected)

    def plain_kernel(self, projected: bool = False) -> Kernel:
        """The kernel that autograd differentiates op by op (torch.func, double backward): its "plain"
        one where it has one (a custom cell's loop in Python), else its TorchScript one."""
        return self.kernel("plain", projected) or self.kernel("torchscript", projected)


KINDS: Dict[str, CellKind] = {}


def register(kind: CellKind) -> CellKind:
    """Makes ``kind`` a layer mode: ``RNNBase(kind.mode, ...)`` runs it on every route."""
    KINDS[kind.mode] = kind
    return kind


@cache
def _sequence(make: Callable[[bool], Any], onednn: bool) -> Any:
    return make(onednn)


def _torchscript(forward, backward, saved: Tuple[int, ...], onednn: bool) -> KernelLoader:
    """A TorchScript kernel pair; ``onednn``: on oneDNN's products (:mod:`.products`)."""
    pair = Kernel(partial(forward, onednn=onednn), partial(backward, onednn=onednn), saved_widths=saved)
    return lambda projected: pair


def _saved_gates(names: Callable[[Tensor, List[Tensor]], Dict[str, Tensor]], layer, rows, state0, params):
    """A built-in kind's gates: what its plain kernel saves for the backward, by ``names``."""
    hs, saved = layer_forward_saving(layer, rows, state0, params)
    return names(hs, saved)


def _native(mode: str, projected: bool) -> Optional[Kernel]:
    # The native library is built (or found) on first use only: a user of other routes never waits for it.
    return importlib.import_module(f"{__package__}.cpu").native_kernel(mode, projected)


def _triton(mode: str, projected: bool) -> Optional[Kernel]:
    # Triton is imported on first use only: a CPU user never pays for it (or needs it installed).
    return importlib.import_module(f"{__package__}.triton").kernel(mode, projected)


def _resident(mode: str, projected: bool) -> Optional[Kernel]:
    return None if projected else importlib.import_module(f"{__package__}.triton").resident_kernel(mode)


def _built_in(mode: str, forward: Callable, backward: Callable, saved: Tuple[int, ...], **entry: Any) -> CellKind:
    """A built-in kind: its TorchScript pair with and without oneDNN (``saved``: what its forward saves,
    Kernel.saved_widths), its native and Triton kernels."""
    kernels = {
        "torchscript": _torchscript(forward, backward, saved, False),
        "onednn": _torchscript(forward, backward, saved, True),
        "native": partial(_native, mode),
        "triton": partial(_triton, mode),
        "resident": partial(_resident, mode),
    }
    make = entry.pop("make")
    return register(CellKind(mode, sequence=partial(_sequence, make), kernels=kernels, **entry))


for _relu in (False, True):
    _built_in(
        "RNN_RELU" if _relu else "RNN_TANH", partial(rnn_forward, relu=_relu), partial(rnn_backward, relu=_relu),
        RNN_SAVED,
        gates=1, states=1, folds_bias=True, make=partial(RNNSequence, _relu), scan_step=partial(rnn_scan_step, _relu),
        gates_of=partial(_saved_gates, rnn_gates), onnx=("RNN", [0], "Relu" if _relu else "Tanh"),
    )  # fmt: skip
_built_in(
    "GRU", gru_forward, gru_backward, GRU_SAVED, gates=3, states=1, folds_bias=False, make=GRUSequence,
    scan_step=gru_scan_step, gates_of=partial(_saved_gates, gru_gates), onnx=("GRU", [1, 0, 2], ""),
)  # fmt: skip
_built_in(
    "LSTM", lstm_forward, lstm_backward, LSTM_SAVED, gates=4, states=2, folds_bias=True, make=LSTMSequence,
    scan_step=lstm_scan_step, gates_of=partial(_saved_gates, lstm_gates), onnx=("LSTM", [0, 3, 1, 2], ""),
    projects=True,
)  # fmt: skip
