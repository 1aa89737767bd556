"""recurrent: recurrent layers with explicit gate math, torch.nn's API and numbers, and a fast path."""

from . import cell_calls  # noqa: F401  (puts the cells on their route: recurrent.cells.ROUTED)
from .cells import GRUCell, LSTMCell, RNNCell
from .custom import CustomCell, CustomRNN
from .layers import GRU, LSTM, RNN, backend_for
from .recording import record_gates
from .routes import Route, route_for
from .variants import GRUVariantCell, LayerNormGRU, LayerNormLSTM, LSTMVariantCell

__all__ = [
    "CustomCell",
    "CustomRNN",
    "GRU",
    "GRUCell",
    "GRUVariantCell",
    "LSTM",
    "LSTMCell",
    "LSTMVariantCell",
    "LayerNormGRU",
    "LayerNormLSTM",
    "RNN",
    "RNNCell",
    "Route",
    "backend_for",
    "record_gates",
    "route_for",
]
__version__ = "0.1.0"
