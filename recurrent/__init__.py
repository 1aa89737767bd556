"""recurrent: recurrent layers with explicit gate math, torch.nn's API and numbers, and a fast path."""
from .cells import GRUCell, RNNCell
from .layers import GRU, RNN

__all__ = ["GRU", "GRUCell", "RNN", "RNNCell"]
__version__ = "0.1.0"
