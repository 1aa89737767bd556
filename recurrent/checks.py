"""Argument and input validation: clear errors naming what was expected and what was given.

Constructor checks run in Python at construction. The forward checks are plain functions that
TorchScript compiles too, so a scripted model rejects bad input with the same messages.

Each check raises the exception type torch.nn raises for the same mistake, in torch.nn's order
(so that an input with two mistakes fails as torch.nn's does), and its message keeps torch.nn's
words ("Expected hidden size", "input.size(-1) must be equal to input_size", ...) so that a search
for torch.nn's message finds ours. Deliberate exceptions, where torch.nn has no check of its own and
fails deeper down (tests/parity/test_conformance_inputs.py lists each):
- a state whose dtype is not the parameters', and a cell input whose dtype is not: torch.nn fails
  inside a matrix product with a RuntimeError; ours raise the ValueError of torch.nn's own layer input
  dtype check, with a message saying what to convert;
- torch.nn's LSTM skips its checks for a PackedSequence (a 2-D state fails with an IndexError inside
  its kernel); ours checks as torch.nn's RNN and GRU do;
- torch.nn's unbatched LSTMCell reads any indexable hx as (hx[0], hx[1]); ours rejects a single tensor
  or a 3-tuple there as its batched path does.
"""
# No postponed annotations: TorchScript reads StateSpec's.

import numbers
import warnings
from typing import List, NamedTuple, Optional

import torch
from torch import Tensor

# The TorchScript-based ONNX exporter traces the layers: these checks read the example's sizes, which the
# tracer warns it takes as constants. They are. (A filter set once: dynamo cannot trace one set per call.)
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=__name__)


def check_sizes(**sizes: int) -> None:
    """Layer sizes: ints greater than zero (torch.nn's layers: TypeError, ValueError)."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be greater than zero, got {value}")


def check_cell_sizes(**sizes: int) -> None:
    """Cell sizes: ints, zero allowed. torch.nn's cells check nothing themselves: a size of 0 makes
    empty parameters (a cell of hidden_size 0 returns (N, 0)), a negative one fails in torch.empty
    with a RuntimeError, a float with a TypeError; ours raise those types, saying which argument."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} should be of type int, got: {type(value).__name__}")
        if value < 0:
            raise RuntimeError(f"{name} must be zero or greater, got {value}")


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


def check_dtype(name: str, tensor: Tensor, weight: Tensor) -> None:
    """Same dtype as the parameters: mixing them must fail loudly, not convert silently."""
    if tensor.dtype != weight.dtype:
        raise ValueError(
            f"{name} dtype ({tensor.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert {name}: {name}.to({weight.dtype}), or convert model: model.to({tensor.dtype})"
        )


def check_device(name: str, tensor: Tensor, weight: Tensor) -> None:
    if tensor.device != weight.device:
        raise RuntimeError(
            f"{name} is on {tensor.device} but the parameters are on {weight.device}. "
            f"Move one of them: .to({weight.device}) or model.to({tensor.device})"
        )


def check_like_weight(name: str, tensor: Tensor, weight: Tensor) -> None:
    """Same dtype and device as the parameters."""
    check_dtype(name, tensor, weight)
    check_device(name, tensor, weight)


# -- layers ---------------------------------------------------------------------------------------
# torch.nn's order: the input's dimensions (ValueError), the states' dimensions (RuntimeError), the
# input's dtype (ValueError) and feature size (RuntimeError), the states' sizes (RuntimeError), and
# last, in its C++ kernel, the sequence length (RuntimeError).


def check_layer_dim(input: Tensor) -> None:
    if input.dim() not in (2, 3):
        raise ValueError(f"Expected input to be 2D (unbatched) or 3D (batched), got {input.dim()}D tensor instead")


def check_hidden_dim(name: str, hx: Tensor, batched: bool, packed: bool = False) -> None:
    if packed and hx.dim() != 3:
        raise RuntimeError(
            f"For PackedSequence input, {name} should be 3-D (num_layers * num_directions, batch, size) "
            f"but got {hx.dim()}-D tensor"
        )
    if batched and hx.dim() != 3:
        raise RuntimeError(f"For batched 3-D input, {name} should also be 3-D but got {hx.dim()}-D tensor")
    if not batched and hx.dim() != 2:
        raise RuntimeError(f"For unbatched 2-D input, {name} should also be 2-D but got {hx.dim()}-D tensor")


def check_layer_features(input: Tensor, input_size: int, weight: Tensor) -> None:
    """A layer's input (padded, unbatched or a PackedSequence's data): dtype, then size, then device."""
    if input.dtype != weight.dtype:  # torch.nn's words, which users search for
        raise ValueError(
            f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})"
        )
    if input.size(-1) != input_size:
        raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {input_size}, got {input.size(-1)}")
    check_device("input", input, weight)


def check_packed_input(data: Tensor, input_size: int, weight: Tensor) -> None:
    if data.dim() != 2:
        raise RuntimeError(f"Expected PackedSequence data to be 2D (rows, features), got {data.dim()}D")
    check_layer_features(data, input_size, weight)


def check_hidden(
    name: str, label: str, hx: Tensor, expected: List[int], weight: Tensor, batched: bool, last: str
) -> None:
    """A layer's initial state ``name`` (torch.nn's ``label``: hidden, hidden[0] or hidden[1]) of the
    batched shape ``expected`` = (layers*directions, batch, size); ``last`` names the size. Its
    dimensions are checked before (check_hidden_dim)."""
    shown = expected if batched else [expected[0], expected[2]]
    if list(hx.size()) != shown:
        layout = "num_layers * num_directions, batch, " if batched else "num_layers * num_directions, "
        raise RuntimeError(
            f"Expected {label} size ({', '.join([str(s) for s in shown])}), got {list(hx.size())}: "
            f"{name} must be ({layout}{last})"
        )
    check_like_weight(name, hx, weight)


class StateSpec(NamedTuple):
    """What a layer's initial state must be: its argument name (hx, h0, c0), torch.nn's label for it
    in messages (hidden, hidden[0], hidden[1]), its leading size (layers*directions), its last size and
    that size's name."""

    name: str
    label: str
    layers: int
    size: int
    size_name: str


def check_padded_call(
    input: Tensor,
    hx: Optional[List[Tensor]],
    states: List[StateSpec],
    input_size: int,
    weight: Tensor,
    batch_first: bool,
) -> None:
    """Every check of a padded (or unbatched) layer call, in torch.nn's order (above)."""
    check_layer_dim(input)
    batched = input.dim() == 3
    if hx is not None:
        for state, spec in zip(hx, states):
            check_hidden_dim(spec.name, state, batched)
    check_layer_features(input, input_size, weight)
    batch = (input.size(0) if batch_first else input.size(1)) if batched else 1
    if hx is not None:
        for state, spec in zip(hx, states):
            check_hidden(spec.name, spec.label, state, [spec.layers, batch, spec.size], weight, batched, spec.size_name)
    check_sequence_length(input.size(1) if batched and batch_first else input.size(0), input)


def check_packed_call(
    data: Tensor, batch: int, hx: Optional[List[Tensor]], states: List[StateSpec], input_size: int, weight: Tensor
) -> None:
    """Every check of a layer call on a PackedSequence (its data and batch size), in torch.nn's order."""
    check_packed_input(data, input_size, weight)
    if hx is not None:
        for state, spec in zip(hx, states):
            check_hidden_dim(spec.name, state, True, True)
        for state, spec in zip(hx, states):
            check_hidden(spec.name, spec.label, state, [spec.layers, batch, spec.size], weight, True, spec.size_name)


def check_sequence_length(steps: int, input: Tensor) -> None:
    if steps == 0:
        raise RuntimeError(
            f"Expected sequence length to be larger than 0 in RNN, got input of shape {list(input.size())}"
        )


# -- cells ----------------------------------------------------------------------------------------
# torch.nn's order: the input's dimensions, the states' dimensions (ValueError), then in its C++
# kernel the input's feature size and the states' batch and hidden sizes (RuntimeError).


def check_cell_dims(input: Tensor, states: List[Optional[Tensor]], names: List[str]) -> None:
    if input.dim() not in (1, 2):
        raise ValueError(f"Expected input to be 1D or 2D, got {input.dim()}D instead")
    for hx, name in zip(states, names):
        if hx is not None and hx.dim() not in (1, 2):
            # torch.nn's words: a one-state cell's hx is "hidden" here
            raise ValueError(f"Expected {'hidden' if name == 'hx' else name} to be 1D or 2D, got {hx.dim()}D instead")


def check_cell_features(input: Tensor, input_size: int) -> None:
    if input.size(-1) != input_size:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {input_size}, got {input.size(-1)} "
            f"(input has inconsistent input_size: got {input.size(-1)} expected {input_size})"
        )


def check_cell_state(input: Tensor, hx: Tensor, hidden_size: int, name: str, index: int) -> None:
    """State ``name`` (torch.nn's ``hidden{index}``) against the input, its dimensions checked before
    (check_cell_dims). Dtypes and devices are checked after every size (check_like_weight), as
    torch.nn's kernel fails in its products only after its size checks."""
    if hx.dim() != input.dim():
        raise RuntimeError(f"Expected {name} to be {input.dim()}D like the input, got {hx.dim()}D instead")
    expected = [hidden_size] if input.dim() == 1 else [input.size(0), hidden_size]
    if list(hx.size()) != expected:
        if input.dim() == 2 and hx.size(0) != input.size(0):
            detail = f"Input batch size {input.size(0)} doesn't match hidden{index} batch size {hx.size(0)}"
        else:
            detail = f"hidden{index} has inconsistent hidden_size: got {hx.size(-1)}, expected {hidden_size}"
        raise RuntimeError(f"Expected {name} of size {expected}, got {list(hx.size())}: {detail}")
