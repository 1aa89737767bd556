"""Drop-in conformance at the edges of the input space, torch.nn being the reference for every case:
empty batches, zero-length sequences, constructor arguments torch.nn accepts (cells of size 0, an int
bias) or rejects (proj_size for RNN and GRU), and for a broad set of bad inputs the exception type
torch.nn raises. Each test runs torch.nn's module on the same input and compares."""

from __future__ import annotations

from typing import Callable, Optional

import pytest
import torch
from helpers import (
    OUTPUT_NAMES,
    assert_all_close,
    flat,
    float64_call,
    gradient_names,
    grads,
    hidden_arg,
    initial_states,
    pair,
    scripted,
)
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_sequence

import recurrent

LAYER_KINDS = ["RNN", "RNN_relu", "GRU", "LSTM", "LSTM_proj"]
CELL_KINDS = ["RNNCell", "RNNCell_relu", "GRUCell", "LSTMCell"]


def layer_pair(kind: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    """(torch.nn layer, ours) of input_size 3, hidden_size 4 ("LSTM_proj": proj_size 2), same weights."""
    name, _, variant = kind.partition("_")
    extra = {"nonlinearity": "relu"} if variant == "relu" else {"proj_size": 2} if variant == "proj" else {}
    torch.manual_seed(0)
    return pair(name, 3, 4, **extra, **kwargs)


def cell_pair(kind: str, *args, **kwargs) -> tuple[nn.Module, nn.Module]:
    name, _, nonlinearity = kind.partition("_")
    extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
    torch.manual_seed(0)
    return pair(name, *args, **extra, **kwargs)


def as_list(result) -> list[Tensor]:
    return list(result) if isinstance(result, tuple) else [result]


# -- empty batch --------------------------------------------------------------------------------


@pytest.mark.parametrize("with_states", [False, True], ids=["no h0", "h0"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch_first"])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_layer_empty_batch_like_torch(kind, batch_first, with_states, device):
    """(L, 0, I) in: outputs (L, 0, D*H_out) and states (layers*D, 0, H), as torch.nn's, eager and scripted;
    the backward runs, with empty gradients for input and states and zero ones (not None) for the weights."""
    dtype = torch.float64
    reference, ours = layer_pair(
        kind, num_layers=2, bidirectional=True, batch_first=batch_first, device=device, dtype=dtype
    )
    shape = (0, 5, 3) if batch_first else (5, 0, 3)
    x = torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)
    states = initial_states(kind, 4, 2 if kind == "LSTM_proj" else 0, (4, 0), dtype, device) if with_states else []
    expected = flat(reference(x, hidden_arg(states)))
    g_expected = grads(expected, [x, *states, *reference.parameters()])
    names = gradient_names(reference, len(states))
    compiled = scripted(ours)
    for run in (ours, compiled, compiled):  # twice: TorchScript differentiates its graph from the second call on
        actual = flat(run(x, hidden_arg(states)))
        assert [tuple(a.shape) for a in actual] == [tuple(e.shape) for e in expected]
        assert_all_close(actual, expected, dtype, OUTPUT_NAMES[: len(expected)])
        assert all(a.requires_grad for a in actual)
        g_actual = grads(actual, [x, *states, *ours.parameters()])
        assert_all_close(g_actual, g_expected, dtype, names)
        weight_grads = g_actual[1 + len(states) :]
        assert all(
            g is not None and g.shape == p.shape and not g.any() for g, p in zip(weight_grads, ours.parameters())
        )


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_layer_empty_batch_backward_fills_grad(kind):
    """.backward() on an empty batch's outputs, as a training loop calls it: .grad set as torch.nn's are."""
    reference, ours = layer_pair(kind, batch_first=True)
    for module in (reference, ours):
        x = torch.randn(0, 4, 3, requires_grad=True)
        output, finals = module(x)
        (output.sum() + sum(f.sum() for f in (finals if isinstance(finals, tuple) else (finals,)))).backward()
        assert x.grad is not None and x.grad.shape == x.shape
    for (name, p), (_, q) in zip(ours.named_parameters(), reference.named_parameters()):
        assert p.grad is not None and torch.equal(p.grad, q.grad), name


# -- zero-length sequence -----------------------------------------------------------------------

ZERO_LENGTH = {"batched": (0, 2, 3), "empty batch": (0, 0, 3), "unbatched": (0, 3)}


@pytest.mark.parametrize("what", list(ZERO_LENGTH))
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch_first"])
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_zero_length_sequence_raises_like_torch(kind, batch_first, what):
    reference, ours = layer_pair(kind, batch_first=batch_first)
    shape = ZERO_LENGTH[what]
    x = torch.randn(*((shape[1], shape[0], shape[2]) if batch_first and len(shape) == 3 else shape))
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0") as theirs:
        reference(x)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0") as raised:
        ours(x)
    assert raised.type is theirs.type is RuntimeError
    assert str(list(x.shape)) in str(raised.value)  # and ours says what it was given
    with pytest.raises(Exception, match="Expected sequence length to be larger than 0"):  # TorchScript's own type
        scripted(ours)(x)


# -- cells: empty batch, hidden_size 0, input_size 0 ---------------------------------------------


@pytest.mark.parametrize("with_states", [False, True], ids=["no h", "h"])
@pytest.mark.parametrize(
    "sizes,lead",
    [((3, 4), (0,)), ((3, 0), (2,)), ((3, 0), ()), ((3, 0), (0,)), ((0, 4), (2,)), ((0, 4), ())],
    ids=[
        "batch 0",
        "hidden_size 0",
        "hidden_size 0 unbatched",
        "hidden_size 0 batch 0",
        "input_size 0",
        "input_size 0 unbatched",
    ],
)
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_cell_empty_sizes_like_torch(kind, sizes, lead, with_states, device):
    """torch.nn's cells take a batch of 0 and construct and run with hidden_size 0 (output (N, 0)) or
    input_size 0: ours the same, values and gradients, eager and scripted."""
    dtype = torch.float64
    input_size, hidden_size = sizes
    reference, ours = cell_pair(kind, input_size, hidden_size, device=device, dtype=dtype)
    x = torch.randn(*lead, input_size, dtype=dtype, device=device, requires_grad=True)
    count = (2 if kind == "LSTMCell" else 1) if with_states else 0
    states = [torch.randn(*lead, hidden_size, dtype=dtype, device=device, requires_grad=True) for _ in range(count)]
    expected = as_list(reference(x, hidden_arg(states)))
    g_expected = grads(expected, [x, *states, *reference.parameters()])
    compiled = scripted(ours)
    for run in (ours, compiled, compiled):  # twice: TorchScript differentiates its graph from the second call on
        actual = as_list(run(x, hidden_arg(states)))
        assert [tuple(a.shape) for a in actual] == [tuple(e.shape) for e in expected]
        assert_all_close(actual, expected, dtype, ["h'", "c'"][: len(expected)])
        g_actual = grads(actual, [x, *states, *ours.parameters()])
        assert_all_close(g_actual, g_expected, dtype, gradient_names(reference, count))


@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cell_hidden_size_zero_parameters_like_torch(kind):
    torch.manual_seed(0)
    reference = getattr(nn, kind)(3, 0)
    ours = getattr(recurrent, kind)(3, 0)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in reference.named_parameters()]
    assert repr(ours) == repr(reference)
    ours.reset_parameters()  # bound 1/sqrt(0): torch.nn uses 0


# -- constructor arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("bias", [1, 0, 2, True, False])
@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cell_int_bias_like_torch(kind, bias):
    """torch.nn's cells take an int bias and register biases when it is true: the same attribute, parameters,
    initial values, repr and outputs."""
    torch.manual_seed(0)
    reference = getattr(nn, kind)(3, 4, bias=bias)
    torch.manual_seed(0)
    ours = getattr(recurrent, kind)(3, 4, bias=bias)
    assert ours.bias == reference.bias and type(ours.bias) is type(reference.bias)
    theirs = dict(reference.named_parameters())
    assert list(dict(ours.named_parameters())) == list(theirs)
    assert all(torch.equal(p, theirs[n]) for n, p in ours.named_parameters())
    assert repr(ours) == repr(reference)
    x = torch.randn(2, 3)
    expected, exact = as_list(reference(x)), as_list(float64_call(reference, x))
    for run in (ours, scripted(ours)):
        assert_all_close(as_list(run(x)), expected, torch.float32, ["h'", "c'"][: len(expected)], exact)


@pytest.mark.parametrize("bias", [1, 0])
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_layer_int_bias_rejected_like_torch(kind, bias):
    """torch.nn's layers, unlike its cells, take only a bool."""
    for module in (nn, recurrent):
        with pytest.raises(TypeError, match="bias should be of type bool, got: int") as raised:
            getattr(module, kind)(3, 4, bias=bias)
        assert raised.type is TypeError


@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("kind", ["RNN", "GRU"])
def test_proj_size_rejected_by_rnn_and_gru_like_torch(kind, proj_size):
    for module in (nn, recurrent):
        with pytest.raises(
            ValueError, match="^proj_size argument is only supported for LSTM, not RNN or GRU$"
        ) as raised:
            getattr(module, kind)(3, 4, proj_size=proj_size)
        assert raised.type is ValueError
    # Other keywords and positional arguments are untouched, and LSTM takes proj_size.
    assert getattr(recurrent, kind)(3, 4, 2, bias=False).num_layers == 2
    assert recurrent.LSTM(3, 4, proj_size=proj_size).proj_size == proj_size
    with pytest.raises(TypeError, match="unexpected keyword argument 'projection'"):
        getattr(recurrent, kind)(3, 4, projection=2)


# -- exception types for bad input --------------------------------------------------------------


def outcome(call: Callable[[], object]) -> tuple[str, object]:
    """("ok", result) or (exception type name, message)."""
    try:
        return "ok", call()
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return type(error).__name__, str(error)


def result_tensors(result) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    if hasattr(result, "batch_sizes"):
        return [result.data]
    return [t for item in result for t in result_tensors(item)]


def assert_same_outcome(
    ours: Callable[[], object],
    theirs: Callable[[], object],
    divergence: Optional[tuple[str, str]],
    exact: Callable[[], object],
):
    """Both raise the same exception type, or both return the same tensors (as accurate as torch.nn's,
    judged against ``exact``'s float64 result). Where ``divergence`` is (ours, torch.nn's), a documented
    deliberate difference, each raises (or returns: "ok") that instead."""
    (ours_kind, ours_value), (their_kind, their_value) = outcome(ours), outcome(theirs)
    if divergence is not None:
        assert (ours_kind, their_kind) == divergence, (
            f"ours: {ours_kind}: {ours_value}; torch.nn: {their_kind}: {their_value}"
        )
        return
    assert ours_kind == their_kind, f"ours: {ours_kind}: {ours_value}; torch.nn: {their_kind}: {their_value}"
    if ours_kind == "ok":
        actual, expected = result_tensors(ours_value), result_tensors(their_value)
        names = [f"result {i}" for i in range(len(expected))]
        assert_all_close(actual, expected, torch.float32, names, result_tensors(exact()))


class LayerInputs:
    """What layer_bad_inputs' cases are made of, for a layer of input_size 3, hidden_size 4, 2 layers,
    bidirectional (h0: (4, N, 4), (4, N, 2) for LSTM_proj; c0: (4, N, 4))."""

    def __init__(self, kind: str, batch_first: bool) -> None:
        self.lstm, self.hs, self.batch_first = kind.startswith("LSTM"), 2 if kind == "LSTM_proj" else 4, batch_first

    def x(self, steps: int, batch: int, features: int = 3, **kwargs) -> Tensor:
        r = torch.randn
        return r(batch, steps, features, **kwargs) if self.batch_first else r(steps, batch, features, **kwargs)

    def hidden(self, lead: tuple, h_size: Optional[int] = None, c_size: int = 4, **kwargs):
        h = torch.randn(*lead, h_size or self.hs, **kwargs)
        return (h, torch.randn(*lead, c_size, **kwargs)) if self.lstm else h

    def packed(self, features: int, dtype: torch.dtype = torch.float32, sorted: bool = True):
        sequences = [torch.randn(4, features, dtype=dtype), torch.randn(2, features, dtype=dtype)]
        return pack_sequence(sequences if sorted else sequences[::-1], enforce_sorted=sorted)


def layer_bad_inputs(kind: str, batch_first: bool) -> dict[str, tuple[object, object]]:
    """name -> (input, hx) for a layer (:class:`LayerInputs`)."""
    torch.manual_seed(1)
    d = LayerInputs(kind, batch_first)
    cases = {**padded_cases(d), **packed_cases(d)}
    cases.update(lstm_cases(d) if d.lstm else {"hx a tuple": (d.x(5, 2), (torch.randn(4, 2, d.hs),))})
    return cases


def padded_cases(d: LayerInputs) -> dict[str, tuple[object, object]]:
    r, x, hidden, hs = torch.randn, d.x, d.hidden, d.hs
    integer = torch.ones(4, 2, hs, dtype=torch.long)
    return {
        "valid": (x(5, 2), None),
        "valid with states": (x(5, 2), hidden((4, 2))),
        "valid unbatched": (r(5, 3), hidden((4,))),
        "empty batch": (x(5, 0), None),
        "empty batch with states": (x(5, 0), hidden((4, 0))),
        "empty batch, states of batch 1": (x(5, 0), hidden((4, 1))),
        "zero length": (x(0, 2), None),
        "zero length, wrong features": (x(0, 2, 5), None),
        "zero length, wrong states": (x(0, 2), hidden((4, 3))),
        "wrong features": (x(5, 2, 7), None),
        "zero features": (x(5, 2, 0), None),
        "0-d input": (torch.tensor(1.0), None),
        "1-d input": (r(5), None),
        "4-d input": (r(5, 2, 3, 1), None),
        "input dtype": (x(5, 2, dtype=torch.float64), None),
        "input dtype and features": (x(5, 2, 7, dtype=torch.float64), None),
        "input integer": (torch.ones(5, 2, 3, dtype=torch.long), None),
        "input dtype, states 2-D": (x(5, 2, dtype=torch.float64), hidden((4,))),
        "wrong features, states 2-D": (x(5, 2, 7), hidden((4,))),
        "h0 wrong batch": (x(5, 2), hidden((4, 3))),
        "h0 wrong layers": (x(5, 2), hidden((2, 2))),
        "h0 wrong size": (x(5, 2), hidden((4, 2), h_size=5)),
        "h0 broadcastable": (x(5, 2), hidden((4, 1))),
        "h0 dtype": (x(5, 2), hidden((4, 2), dtype=torch.float64)),
        "h0 integer": (x(5, 2), (integer, torch.ones(4, 2, 4, dtype=torch.long)) if d.lstm else integer),
        "states 2-D, input batched": (x(5, 2), hidden((4,))),
        "states 4-D": (x(5, 2), hidden((4, 2, 1))),
        "states 3-D, input unbatched": (r(5, 3), hidden((4, 1))),
        "states 1-D, input unbatched": (r(5, 3), hidden(())),
        "unbatched, h0 wrong size": (r(5, 3), hidden((4,), h_size=5)),
        "unbatched, h0 wrong layers": (r(5, 3), hidden((3,))),
        "input not a tensor": ([[1.0]], None),
        "hx not a tensor": (x(5, 2), 3.0),
        "hx a list": (x(5, 2), list(hidden((4, 2))) if d.lstm else [r(4, 2, hs)]),
    }


def packed_cases(d: LayerInputs) -> dict[str, tuple[object, object]]:
    packed, hidden = d.packed, d.hidden
    return {
        "packed": (packed(3), None),
        "packed, wrong features": (packed(5), None),
        "packed, input dtype": (packed(3, torch.float64), None),
        "packed, h0 wrong batch": (packed(3), hidden((4, 3))),
        "packed, states 2-D": (packed(3), hidden((4,))),
        "packed, input dtype, states 2-D": (packed(3, torch.float64), hidden((4,))),
        "packed unsorted, h0 wrong batch": (packed(3, sorted=False), hidden((4, 1))),
    }


def lstm_cases(d: LayerInputs) -> dict[str, tuple[object, object]]:
    r, x, hs = torch.randn, d.x, d.hs
    return {
        "c0 wrong size": (x(5, 2), d.hidden((4, 2), c_size=5)),
        "c0 2-D": (x(5, 2), (r(4, 2, hs), r(4, 4))),
        "hx a single tensor": (x(5, 2), r(4, 2, hs)),
        "hx a stacked tensor": (x(5, 2), r(2, 4, 2, 4)),
        "hx a 1-tuple": (x(5, 2), (r(4, 2, hs),)),
        "hx an empty tuple": (x(5, 2), ()),
        "hx a 3-tuple": (x(5, 2), (r(4, 2, hs), r(4, 2, 4), r(4, 2, 4))),
        "hx a 3-tuple, empty batch": (x(5, 0), (r(4, 0, hs), r(4, 0, 4), r(4, 0, 4))),
        "hx (h0, None)": (x(5, 2), (r(4, 2, hs), None)),
        "packed, hx a single tensor": (d.packed(3), r(4, 2, hs)),
        "packed, hx a 3-tuple": (d.packed(3), (r(4, 2, hs), r(4, 2, 4), r(4, 2, 4))),
    }


_DTYPE = ("ValueError", "RuntimeError")
# Deliberate divergences, (ours, torch.nn's). torch.nn does not check a state's dtype and fails inside a matmul
# with a RuntimeError; ours raises the ValueError of torch.nn's own input dtype check, saying what to convert.
# torch.nn's LSTM skips its checks for a PackedSequence and fails inside its kernel (a 2-D state: an IndexError
# "Dimension out of range"); ours raises what torch.nn's RNN and GRU raise for the same packed input.
LAYER_DIVERGENCES = {
    "h0 dtype": _DTYPE,
    "h0 integer": _DTYPE,
    ("LSTM", "packed, input dtype"): _DTYPE,
    ("LSTM", "packed, states 2-D"): ("RuntimeError", "IndexError"),
    ("LSTM", "packed, input dtype, states 2-D"): ("ValueError", "IndexError"),
}


def layer_case_ids() -> list[tuple[str, bool, str]]:
    return [(kind, bf, name) for kind in LAYER_KINDS for bf in (False, True) for name in layer_bad_inputs(kind, bf)]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "kind,batch_first,what", layer_case_ids(), ids=[f"{k}-{'bf' if b else 'tm'}-{n}" for k, b, n in layer_case_ids()]
)
def test_layer_input_like_torch(kind, batch_first, what):
    reference, ours = layer_pair(kind, num_layers=2, bidirectional=True, batch_first=batch_first)
    x, hx = layer_bad_inputs(kind, batch_first)[what]
    divergence = LAYER_DIVERGENCES.get(what) or LAYER_DIVERGENCES.get((kind.partition("_")[0], what))
    assert_same_outcome(
        lambda: ours(x, hx), lambda: reference(x, hx), divergence, lambda: float64_call(reference, x, hx)
    )


def cell_bad_inputs(kind: str) -> dict[str, tuple[object, object]]:
    """name -> (input, hx) for a cell of input_size 3, hidden_size 4."""
    torch.manual_seed(2)
    r = torch.randn
    lstm = kind == "LSTMCell"

    def hidden(*shape, **kwargs):
        return (r(*shape, **kwargs), r(*shape, **kwargs)) if lstm else r(*shape, **kwargs)

    cases = {
        "valid": (r(2, 3), hidden(2, 4)),
        "valid unbatched": (r(3), hidden(4)),
        "batch 0": (r(0, 3), None),
        "batch 0, h of batch 1": (r(0, 3), hidden(1, 4)),
        "wrong features": (r(2, 5), None),
        "wrong features, unbatched": (r(5), None),
        "0-d input": (torch.tensor(1.0), None),
        "3-d input": (r(2, 2, 3), None),
        "h 3-D": (r(2, 3), hidden(1, 2, 4)),
        "h 0-D": (r(2, 3), (torch.tensor(1.0), torch.tensor(1.0)) if lstm else torch.tensor(1.0)),
        "h wrong batch": (r(2, 3), hidden(3, 4)),
        "h broadcastable": (r(2, 3), hidden(1, 4)),
        "h wrong size": (r(2, 3), hidden(2, 5)),
        "h wrong size, unbatched": (r(3), hidden(5)),
        "h 2-D, input unbatched": (r(3), hidden(1, 4)),
        "h 1-D, input batched": (r(2, 3), hidden(4)),
        "h 1-D, input a batch of 1": (r(1, 3), hidden(4)),
        "wrong features, h 3-D": (r(2, 5), hidden(1, 2, 4)),
        "wrong features, h wrong batch": (r(2, 5), hidden(3, 4)),
        "h wrong batch and size": (r(2, 3), hidden(3, 5)),
        "input dtype": (r(2, 3, dtype=torch.float64), None),
        "input dtype and features": (r(2, 5, dtype=torch.float64), None),
        "input integer": (torch.ones(2, 3, dtype=torch.long), None),
        "h dtype": (r(2, 3), hidden(2, 4, dtype=torch.float64)),
        "h a tuple" if not lstm else "hx a 1-tuple": (r(2, 3), (r(2, 4),)),
    }
    return {**cases, **lstm_cell_cases()} if lstm else cases


def lstm_cell_cases() -> dict[str, tuple[object, object]]:
    r = torch.randn
    return {
        "c wrong batch": (r(2, 3), (r(2, 4), r(3, 4))),
        "c wrong size": (r(2, 3), (r(2, 4), r(2, 5))),
        "c 3-D": (r(2, 3), (r(2, 4), r(1, 2, 4))),
        "c 1-D": (r(2, 3), (r(2, 4), r(4))),
        "hx a single tensor": (r(2, 3), r(2, 4)),
        "hx a stacked tensor": (r(2, 3), r(2, 2, 4)),
        "hx a 1-D tensor": (r(2, 3), r(4)),
        "hx a 3-tuple": (r(2, 3), (r(2, 4), r(2, 4), r(2, 4))),
        "hx a 1-tuple, unbatched": (r(3), (r(4),)),
        "hx (h, None)": (r(2, 3), (r(2, 4), None)),
        "hx a stacked tensor, unbatched": (r(3), r(2, 4)),
        "hx a 3-tuple, unbatched": (r(3), (r(4), r(4), r(4))),
    }


# Deliberate divergences, (ours, torch.nn's): torch.nn's cells do not check dtypes and fail inside a matmul with a
# RuntimeError, ours raise the ValueError of torch.nn's layer input dtype check. torch.nn's unbatched LSTMCell reads
# any indexable hx as (hx[0], hx[1]), so takes a stacked tensor or a 3-tuple its batched path rejects; ours
# rejects them in both (the TypeError and the RuntimeError of the batched path).
CELL_DIVERGENCES = {
    "input dtype": _DTYPE,
    "input integer": _DTYPE,
    "h dtype": _DTYPE,
    "hx a stacked tensor, unbatched": ("TypeError", "ok"),
    "hx a 3-tuple, unbatched": ("RuntimeError", "ok"),
}


def cell_case_ids() -> list[tuple[str, str]]:
    return [(kind, name) for kind in CELL_KINDS for name in cell_bad_inputs(kind)]


@pytest.mark.parametrize("kind,what", cell_case_ids(), ids=[f"{k}-{n}" for k, n in cell_case_ids()])
def test_cell_input_like_torch(kind, what):
    reference, ours = cell_pair(kind, 3, 4)
    x, hx = cell_bad_inputs(kind)[what]
    assert_same_outcome(
        lambda: ours(x, hx),
        lambda: reference(x, hx),
        CELL_DIVERGENCES.get(what),
        lambda: float64_call(reference, x, hx),
    )


KEY_WORDS = [
    # (module, input, hx, torch.nn's words that ours keep)
    ("GRU", lambda: (torch.randn(5, 2, 3), torch.randn(4, 3, 4)), "Expected hidden size"),
    (
        "LSTM",
        lambda: (torch.randn(5, 2, 3), (torch.randn(4, 3, 4), torch.randn(4, 2, 4))),
        r"Expected hidden\[0\] size",
    ),
    (
        "LSTM",
        lambda: (torch.randn(5, 2, 3), (torch.randn(4, 2, 4), torch.randn(4, 3, 4))),
        r"Expected hidden\[1\] size",
    ),
    ("RNN", lambda: (torch.randn(5, 2, 7), None), r"input.size\(-1\) must be equal to input_size"),
    ("RNN", lambda: (torch.randn(5, 2, 3), torch.randn(4, 4)), "For batched 3-D input, hx should also be 3-D"),
    ("GRU", lambda: (torch.randn(5, 3), torch.randn(4, 1, 4)), "For unbatched 2-D input, hx should also be 2-D"),
    ("GRU", lambda: (torch.randn(0, 2, 3), None), "Expected sequence length to be larger than 0"),
    ("GRUCell", lambda: (torch.randn(2, 7), None), "input has inconsistent input_size"),
    (
        "RNNCell",
        lambda: (torch.randn(2, 3), torch.randn(3, 4)),
        "Input batch size 2 doesn't match hidden0 batch size 3",
    ),
    (
        "LSTMCell",
        lambda: (torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 5))),
        "hidden1 has inconsistent hidden_size",
    ),
    ("GRUCell", lambda: (torch.randn(2, 3), torch.randn(1, 2, 4)), "to be 1D or 2D, got 3D"),
    (
        "LSTMCell",
        lambda: (torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4))),
        "expects two hidden states",
    ),
]


@pytest.mark.parametrize("kind,make,words", KEY_WORDS, ids=[w for _, _, w in KEY_WORDS])
def test_messages_keep_torch_key_words(kind, make, words):
    """A search for torch.nn's message finds ours: each keeps torch.nn's words (and torch.nn still says them)."""
    args = (3, 4) if kind.endswith("Cell") else (3, 4, 2)
    kwargs = {} if kind.endswith("Cell") else {"bidirectional": True}
    x, hx = make()
    for module in (nn, recurrent):
        with pytest.raises(Exception, match=words):
            getattr(module, kind)(*args, **kwargs)(x, hx)
