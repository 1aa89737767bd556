"""torch.autocast for our layers and cells: under autocast they run wholly in its dtype (input,
states and weights cast once, as torch.nn's cuDNN path does), so every kernel sees one dtype."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import List, Optional

import torch
from torch import Tensor


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype autocast computes in on ``device``, or None where autocast is off."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except (RuntimeError, TypeError):  # a device type autocast does not know (e.g. meta)
        pass
    return None


def cast(tensors: List[Tensor], dtype: torch.dtype) -> List[Tensor]:
    """Floating tensors in ``dtype``; others left as they are, for the checks to reject."""
    return [t.to(dtype) if t.is_floating_point() else t for t in tensors]


def disabled(device: torch.device) -> AbstractContextManager:
    """Autocast off for ``device`` where it is on: inside, our kernels see only the one dtype."""
    return torch.autocast(device.type, enabled=False) if autocast_dtype(device) else nullcontext()
