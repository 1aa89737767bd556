"""Bad input: a clear exception naming what was expected and what was given, never a silent broadcast."""

import re
from typing import Callable, Optional

import pytest
import torch
from helpers import scripted
from torch import nn

import recurrent


def assert_rejects_like_torch(
    ours: Callable[[], object],
    theirs: Optional[Callable[[], object]],
    error: type[Exception],
    pattern: str,
    theirs_error: Optional[type[Exception]] = None,
) -> None:
    """Ours raises exactly `error`, with a message matching `pattern`; torch.nn's call `theirs` (if given) raises
    too, and the same type unless `theirs_error` names the type torch.nn raises instead."""
    with pytest.raises(error, match=pattern) as raised:
        ours()
    assert raised.type is error, f"recurrent raises {raised.typename}, expected {error.__name__}"
    if theirs is None:
        return
    with pytest.raises(Exception) as reference:
        theirs()
    expected = theirs_error or error
    assert reference.type is expected, f"torch.nn raises {reference.typename}, expected {expected.__name__}"


@pytest.mark.parametrize(
    "kind,kwargs,error,pattern",
    [
        ("GRU", dict(hidden_size=0), ValueError, "hidden_size must be greater than zero, got 0"),
        ("GRU", dict(hidden_size=-3), ValueError, "hidden_size must be greater than zero, got -3"),
        ("RNN", dict(num_layers=0), ValueError, "num_layers must be greater than zero, got 0"),
        ("RNN", dict(input_size=0), ValueError, "input_size must be greater than zero"),
        ("GRU", dict(hidden_size=2.5), TypeError, "hidden_size should be of type int, got: float"),
        ("GRU", dict(dropout=1.5), ValueError, r"dropout should be a number in range \[0, 1\].*got 1.5"),
        ("GRU", dict(dropout=-0.1), ValueError, r"range \[0, 1\]"),
        ("GRU", dict(dropout=True), ValueError, r"range \[0, 1\]"),
        (
            "RNN",
            dict(nonlinearity="sigmoid"),
            ValueError,
            "Unknown nonlinearity 'sigmoid'. Select from 'tanh' or 'relu'",
        ),
        ("RNN", dict(bias=1), TypeError, "bias should be of type bool, got: int"),
        ("GRU", dict(batch_first="yes"), TypeError, "batch_first should be of type bool, got: str"),
        ("RNN", dict(proj_size=2), ValueError, "proj_size argument is only supported for LSTM, not RNN or GRU"),
        ("GRU", dict(proj_size=0), ValueError, "proj_size argument is only supported for LSTM, not RNN or GRU"),
        ("RNNCell", dict(nonlinearity="gelu"), ValueError, "Unknown nonlinearity 'gelu'"),
        ("GRUCell", dict(hidden_size=-2), RuntimeError, "hidden_size must be zero or greater, got -2"),
        ("RNNCell", dict(input_size=-1), RuntimeError, "input_size must be zero or greater, got -1"),
        ("GRUCell", dict(hidden_size=2.5), TypeError, "hidden_size should be of type int, got: float"),
        ("LSTM", dict(proj_size=4), ValueError, "proj_size has to be smaller than hidden_size, got proj_size=4 >= 4"),
        ("LSTM", dict(proj_size=9), ValueError, "proj_size has to be smaller than hidden_size"),
        ("LSTM", dict(proj_size=-1), ValueError, "proj_size should be a positive integer or zero"),
        ("LSTMCell", dict(hidden_size=-1), RuntimeError, "hidden_size must be zero or greater, got -1"),
    ],
)
def test_constructor_rejects(kind, kwargs, error, pattern):
    args = {"input_size": 3, "hidden_size": 4, **kwargs}
    # torch.nn's cells check nothing at construction: a negative size fails in torch.empty (RuntimeError), a float
    # one too (TypeError), but RNNCell takes nonlinearity="gelu" (its forward raises); ours rejects it at
    # construction, as torch.nn's layers do.
    torch_nn_accepts = kind.endswith("Cell") and "nonlinearity" in kwargs
    theirs = None if torch_nn_accepts else lambda: getattr(nn, kind)(**args)
    assert_rejects_like_torch(lambda: getattr(recurrent, kind)(**args), theirs, error, pattern)


LAYER = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)  # h0 is (4, N, 4)

BAD_LAYER_CALLS = [
    ("wrong feature size", lambda: (torch.randn(5, 2, 7), None), RuntimeError, "input_size. Expected 3, got 7"),
    ("1-d input", lambda: (torch.randn(5), None), ValueError, "2D .*or 3D.*got 1D"),
    ("4-d input", lambda: (torch.randn(5, 2, 3, 1), None), ValueError, "got 4D"),
    (
        "zero-length sequence",
        lambda: (torch.randn(0, 2, 3), None),
        RuntimeError,
        re.escape("Expected sequence length to be larger than 0 in RNN, got input of shape [0, 2, 3]"),
    ),
    (
        "h0 wrong batch",
        lambda: (torch.randn(5, 2, 3), torch.randn(4, 3, 4)),
        RuntimeError,
        re.escape(
            "Expected hidden size (4, 2, 4), got [4, 3, 4]: "
            "hx must be (num_layers * num_directions, batch, hidden_size)"
        ),
    ),
    (
        "h0 wrong layer count",
        lambda: (torch.randn(5, 2, 3), torch.randn(2, 2, 4)),
        RuntimeError,
        re.escape("Expected hidden size (4, 2, 4), got [2, 2, 4]"),
    ),
    (
        "h0 wrong hidden size",
        lambda: (torch.randn(5, 2, 3), torch.randn(4, 2, 5)),
        RuntimeError,
        re.escape("got [4, 2, 5]"),
    ),
    (
        "h0 broadcastable",
        lambda: (torch.randn(5, 2, 3), torch.randn(4, 1, 4)),
        RuntimeError,
        re.escape("Expected hidden size (4, 2, 4), got [4, 1, 4]"),
    ),
    (
        "batched h0, unbatched input",
        lambda: (torch.randn(5, 3), torch.randn(4, 1, 4)),
        RuntimeError,
        "unbatched 2-D input, hx should also be 2-D but got 3-D",
    ),
    (
        "unbatched h0, batched input",
        lambda: (torch.randn(5, 2, 3), torch.randn(4, 4)),
        RuntimeError,
        "batched 3-D input, hx should also be 3-D but got 2-D",
    ),
    (
        "input dtype",
        lambda: (torch.randn(5, 2, 3, dtype=torch.float64), None),
        ValueError,
        r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)",
    ),
    (
        "h0 dtype",
        lambda: (torch.randn(5, 2, 3), torch.randn(4, 2, 4, dtype=torch.float64)),
        ValueError,
        r"hx dtype \(torch.float64\)",
    ),
    ("input integer", lambda: (torch.ones(5, 2, 3, dtype=torch.long), None), ValueError, "torch.int64"),
]
# The one deliberate divergence: torch.nn does not check h0's dtype, and fails inside a matmul with a RuntimeError;
# ours raises the ValueError of torch.nn's own input dtype check, saying what to convert.
LAYER_TORCH_NN_RAISES = {"h0 dtype": RuntimeError}


@pytest.mark.parametrize("what,make,error,pattern", BAD_LAYER_CALLS, ids=[c[0] for c in BAD_LAYER_CALLS])
@pytest.mark.parametrize("kind", ["RNN", "GRU"])
def test_layer_rejects(kind, what, make, error, pattern):
    ours, theirs = getattr(recurrent, kind)(**LAYER), getattr(nn, kind)(**LAYER)
    x, h0 = make()
    theirs_error = LAYER_TORCH_NN_RAISES.get(what)
    assert_rejects_like_torch(lambda: ours(x, h0), lambda: theirs(x, h0), error, pattern, theirs_error)


@pytest.mark.parametrize("what,make,error,pattern", BAD_LAYER_CALLS[:10], ids=[c[0] for c in BAD_LAYER_CALLS[:10]])
def test_scripted_layer_rejects(what, make, error, pattern):
    """A scripted module raises too, with the same message (TorchScript wraps it in a RuntimeError)."""
    layer = scripted(recurrent.GRU(**LAYER))
    x, h0 = make()
    with pytest.raises(Exception, match=pattern):
        layer(x, h0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_layer_rejects_input_on_other_device():
    layer = recurrent.GRU(**LAYER)
    with pytest.raises(RuntimeError, match="is on cuda.*parameters are on cpu"):
        layer(torch.randn(5, 2, 3, device="cuda"))


def test_layer_rejects_input_on_other_device_meta():
    """The device check, exercised without a GPU: parameters on 'meta', input on the CPU."""
    layer = recurrent.GRU(**LAYER, device="meta")
    with pytest.raises(RuntimeError, match="input is on cpu but the parameters are on meta"):
        layer(torch.randn(5, 2, 3))


BAD_CELL_CALLS = [
    (
        "wrong feature size",
        lambda: (torch.randn(2, 5), None),
        RuntimeError,
        "Expected 3, got 5 .input has inconsistent input_size",
    ),
    ("3-d input", lambda: (torch.randn(2, 2, 3), None), ValueError, "1D or 2D, got 3D"),
    ("3-d h", lambda: (torch.randn(2, 3), torch.randn(1, 2, 4)), ValueError, "Expected hidden to be 1D or 2D, got 3D"),
    (
        "h wrong batch",
        lambda: (torch.randn(2, 3), torch.randn(3, 4)),
        RuntimeError,
        re.escape("Expected hx of size [2, 4], got [3, 4]: Input batch size 2 doesn't match hidden0 batch size 3"),
    ),
    ("h broadcastable", lambda: (torch.randn(2, 3), torch.randn(1, 4)), RuntimeError, re.escape("got [1, 4]")),
    (
        "h wrong size",
        lambda: (torch.randn(3), torch.randn(5)),
        RuntimeError,
        re.escape("Expected hx of size [4], got [5]: hidden0 has inconsistent hidden_size"),
    ),
    (
        "batched h, unbatched input",
        lambda: (torch.randn(3), torch.randn(1, 4)),
        RuntimeError,
        "hx to be 1D like the input, got 2D",
    ),
    ("input dtype", lambda: (torch.randn(2, 3, dtype=torch.float64), None), ValueError, "input dtype"),
]
# The deliberate divergence of the cells: torch.nn's cells do not check the input's (or a state's) dtype, and a
# matmul fails with a RuntimeError; ours raises the ValueError of torch.nn's layer input dtype check.
CELL_TORCH_NN_RAISES = {"input dtype": RuntimeError}


@pytest.mark.parametrize("what,make,error,pattern", BAD_CELL_CALLS, ids=[c[0] for c in BAD_CELL_CALLS])
@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell"])
def test_cell_rejects(kind, what, make, error, pattern):
    ours, theirs = getattr(recurrent, kind)(3, 4), getattr(nn, kind)(3, 4)
    x, h = make()
    theirs_error = CELL_TORCH_NN_RAISES.get(what)
    assert_rejects_like_torch(lambda: ours(x, h), lambda: theirs(x, h), error, pattern, theirs_error)


LSTM_ARGS = dict(input_size=3, hidden_size=4, num_layers=2, proj_size=2)  # h0 (2, N, 2), c0 (2, N, 4)

BAD_LSTM_STATES = [
    (
        "h0 of hidden_size, not proj_size",
        (torch.randn(2, 5, 4), torch.randn(2, 5, 4)),
        re.escape(
            "Expected hidden[0] size (2, 5, 2), got [2, 5, 4]: "
            "h0 must be (num_layers * num_directions, batch, proj_size)"
        ),
    ),
    (
        "c0 of proj_size",
        (torch.randn(2, 5, 2), torch.randn(2, 5, 2)),
        re.escape(
            "Expected hidden[1] size (2, 5, 4), got [2, 5, 2]: "
            "c0 must be (num_layers * num_directions, batch, hidden_size)"
        ),
    ),
    (
        "c0 wrong batch",
        (torch.randn(2, 5, 2), torch.randn(2, 1, 4)),
        re.escape("Expected hidden[1] size (2, 5, 4), got [2, 1, 4]"),
    ),
    (
        "h0 wrong layers",
        (torch.randn(1, 5, 2), torch.randn(2, 5, 4)),
        re.escape("Expected hidden[0] size (2, 5, 2), got [1, 5, 2]"),
    ),
    ("c0 2-D", (torch.randn(2, 5, 2), torch.randn(2, 4)), "c0 should also be 3-D but got 2-D"),
]


@pytest.mark.parametrize("what,states,pattern", BAD_LSTM_STATES, ids=[c[0] for c in BAD_LSTM_STATES])
def test_lstm_rejects_states(what, states, pattern):
    ours, theirs = recurrent.LSTM(**LSTM_ARGS), nn.LSTM(**LSTM_ARGS)
    x = torch.randn(6, 5, 3)
    assert_rejects_like_torch(lambda: ours(x, states), lambda: theirs(x, states), RuntimeError, pattern)


def test_lstm_cell_rejects_states():
    ours, theirs = recurrent.LSTMCell(3, 4), nn.LSTMCell(3, 4)
    x, states = torch.randn(2, 3), (torch.randn(2, 4), torch.randn(3, 4))
    pattern = re.escape("Expected c0 of size [2, 4], got [3, 4]: Input batch size 2 doesn't match hidden1 batch size 3")
    assert_rejects_like_torch(lambda: ours(x, states), lambda: theirs(x, states), RuntimeError, pattern)


def test_packed_input_rejects_wrong_features_and_state():
    from torch.nn.utils.rnn import pack_sequence

    layer = recurrent.GRU(3, 4)
    with pytest.raises(RuntimeError, match="Expected 3, got 5"):
        layer(pack_sequence([torch.randn(4, 5), torch.randn(2, 5)]))
    with pytest.raises(RuntimeError, match=re.escape("Expected hidden size (1, 2, 4), got [1, 3, 4]")):
        layer(pack_sequence([torch.randn(4, 3), torch.randn(2, 3)]), torch.randn(1, 3, 4))
