"""Argument and input validation: clear errors naming what was expected and what was given.

Constructor checks run in Python at construction. The forward checks are plain functions that
TorchScript compiles too, so a scripted model rejects bad input with the same messages.
"""
from __future__ import annotations

import numbers
from typing import List, Optional

from torch import Tensor


def check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero, got {value}")


def check_proj_size(proj_size: int, hidden_size: int) -> None:
    if not isinstance(proj_size, int) or isinstance(proj_size, bool) or proj_size < 0:
        raise ValueError(f"proj_size should be a positive integer or zero to disable projections, got {proj_size!r}")
    if proj_size >= hidden_size:
        raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} >= {hidden_size}")


def check_bool(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")


def check_nonlinearity(nonlinearity: str) -> None:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")


def check_dropout(dropout: float) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an "
            f"element being zeroed, got {dropout!r}"
        )


def check_like_weight(name: str, tensor: Tensor, weight: Tensor) -> None:
    """Same dtype and device as the parameters: mixing them must fail loudly, not convert silently."""
    if tensor.dtype != weight.dtype:
        raise ValueError(
            f"{name} dtype ({tensor.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert {name}: .to({weight.dtype}), or convert the model: model.to({tensor.dtype})"
        )
    if tensor.device != weight.device:
        raise RuntimeError(
            f"{name} is on {tensor.device} but the parameters are on {weight.device}. "
            f"Move one of them: .to({weight.device}) or model.to({tensor.device})"
        )


def check_features(input: Tensor, input_size: int, weight: Tensor) -> None:
    """The last dimension is input_size, and dtype and device are the parameters'."""
    if input.size(-1) != input_size:
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {input_size}, got {input.size(-1)}")
    check_like_weight("input", input, weight)


def check_cell_input(
    input: Tensor, hx: Optional[Tensor], input_size: int, hidden_size: int, weight: Tensor, name: str
) -> None:
    if input.dim() not in (1, 2):
        raise ValueError(f"Expected input to be 1D or 2D, got {input.dim()}D instead")
    check_features(input, input_size, weight)
    if hx is not None:
        if hx.dim() != input.dim():
            raise RuntimeError(f"Expected {name} to be {input.dim()}D like the input, got {hx.dim()}D instead")
        expected = [hidden_size] if input.dim() == 1 else [input.size(0), hidden_size]
        if list(hx.size()) != expected:
            raise RuntimeError(f"Expected {name} of size {expected}, got {list(hx.size())}")
        check_like_weight(name, hx, weight)


def check_layer_input(input: Tensor, input_size: int, weight: Tensor) -> None:
    if input.dim() not in (2, 3):
        raise ValueError(f"Expected input to be 2D (unbatched) or 3D (batched), got {input.dim()}D tensor instead")
    check_features(input, input_size, weight)
    if input.numel() == 0:
        raise ValueError(f"Expected a non-empty input, got shape {list(input.size())}")


def check_packed_input(data: Tensor, input_size: int, weight: Tensor) -> None:
    if data.dim() != 2:
        raise ValueError(f"Expected PackedSequence data to be 2D (rows, features), got {data.dim()}D")
    check_features(data, input_size, weight)


def check_hidden(name: str, hx: Tensor, expected: List[int], weight: Tensor, batched: bool) -> None:
    """``expected`` is the batched shape (layers*directions, batch, hidden)."""
    if batched and hx.dim() != 3:
        raise RuntimeError(f"For batched 3-D input, {name} should also be 3-D but got {hx.dim()}-D tensor")
    if not batched and hx.dim() != 2:
        raise RuntimeError(f"For unbatched 2-D input, {name} should also be 2-D but got {hx.dim()}-D tensor")
    given = list(hx.size()) if batched else [hx.size(0), 1, hx.size(-1)]
    if given != expected:
        shown = expected if batched else [expected[0], expected[2]]
        raise RuntimeError(f"Expected {name} of size {shown}, got {list(hx.size())}")
    check_like_weight(name, hx, weight)
