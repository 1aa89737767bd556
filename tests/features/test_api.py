"""torch.nn's API: constructors, attributes, parameters, initialisation, state_dict, repr."""

import inspect

import pytest
import torch
from helpers import OUTPUT_NAMES, assert_all_close, flat, gradient_names, grads, pair, scripted
from torch import nn

import recurrent

KINDS = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"]


@pytest.mark.parametrize("kind", KINDS)
def test_constructor_signature_matches_torch(kind):
    ours = inspect.signature(getattr(recurrent, kind))
    theirs_cls = getattr(nn, kind)
    if kind in ("RNN", "GRU", "LSTM"):
        # torch.nn declares these through @overload; read the documented typed overload.
        expected = (
            ["input_size", "hidden_size", "num_layers"]
            + (["nonlinearity"] if kind == "RNN" else [])
            + ["bias", "batch_first", "dropout", "bidirectional"]
            + (["proj_size"] if kind == "LSTM" else [])
            + ["device", "dtype"]
        )
        defaults = {
            "num_layers": 1,
            "nonlinearity": "tanh",
            "bias": True,
            "batch_first": False,
            "dropout": 0.0,
            "bidirectional": False,
            "proj_size": 0,
            "device": None,
            "dtype": None,
        }
    else:
        theirs = inspect.signature(theirs_cls)
        expected = list(theirs.parameters)
        defaults = {n: p.default for n, p in theirs.parameters.items() if p.default is not inspect.Parameter.empty}
    assert list(ours.parameters) == expected
    for name, default in defaults.items():
        if name in ours.parameters:
            assert ours.parameters[name].default == default, name


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM", "LSTM_proj"])
def test_same_parameters_init_and_state_dict(kind, bias, bidirectional):
    kind, _, proj = kind.partition("_")
    args = (5, 7, 3)
    kwargs = dict(bias=bias, bidirectional=bidirectional, batch_first=True, dropout=0.1)
    if proj:
        kwargs["proj_size"] = 4
    torch.manual_seed(123)
    reference = getattr(nn, kind)(*args, **kwargs)
    torch.manual_seed(123)
    ours = getattr(recurrent, kind)(*args, **kwargs)
    theirs_sd, ours_sd = reference.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    for key in theirs_sd:
        assert ours_sd[key].shape == theirs_sd[key].shape, key
        # Same seed, same registration order, same uniform(±1/sqrt(H)): the very same numbers.
        assert torch.equal(ours_sd[key], theirs_sd[key]), key
    for attr in (
        "input_size",
        "hidden_size",
        "num_layers",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
        "mode",
    ):
        assert getattr(ours, attr) == getattr(reference, attr), attr
    assert [[p.shape for p in ws] for ws in ours.all_weights] == [[p.shape for p in ws] for ws in reference.all_weights]
    assert repr(ours) == repr(reference)
    # And the reverse direction of the swap: ours into torch.nn, strictly.
    reference.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cell_parameters_and_init(kind):
    torch.manual_seed(7)
    reference = getattr(nn, kind)(4, 6)
    torch.manual_seed(7)
    ours = getattr(recurrent, kind)(4, 6)
    expected = dict(reference.named_parameters())
    assert list(dict(ours.named_parameters())) == list(expected)
    assert all(torch.equal(p, expected[n]) for n, p in ours.named_parameters())
    assert repr(ours) == repr(reference)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.load_state_dict(ours.state_dict(), strict=True)


def test_functional_call_uses_given_weights():
    torch.manual_seed(0)
    reference, ours = pair("GRU", 3, 4)
    x = torch.randn(2, 1, 3)
    zeros = {name: torch.zeros_like(p) for name, p in ours.named_parameters()}
    out, _ = torch.func.functional_call(ours, zeros, (x,))
    assert torch.equal(out, torch.zeros_like(out))  # h stays 0 when every weight and bias is 0


@pytest.mark.parametrize("overwrite", [False, True], ids=["in place", "new parameters"])
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_module_moves_with_to(kind, overwrite):
    """After .to(float64), also where .to() makes new Parameters, the eager and the scripted forward read the
    moved parameters: torch.nn's numbers, and gradients that reach the module's parameters."""
    torch.manual_seed(0)
    reference, ours = pair(kind, 3, 4, 2, bidirectional=True)
    previous = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(overwrite)
    try:
        ours.to(torch.float64)
        reference.to(torch.float64)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(previous)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    expected = flat(reference(x))
    g_expected = grads(expected, [x, *reference.parameters()])
    for run in (ours, scripted(ours)):
        actual = flat(run(x))
        assert_all_close(actual, expected, torch.float64, OUTPUT_NAMES[: len(expected)])
        g_actual = grads(actual, [x, *ours.parameters()])
        assert_all_close(g_actual, g_expected, torch.float64, gradient_names(reference, 0))


def test_flatten_parameters_changes_nothing():
    """torch.nn's cuDNN hook: ours keeps the very same parameters and returns the same numbers after it."""
    torch.manual_seed(0)
    _, ours = pair("LSTM", 3, 4, 2, proj_size=2)
    x = torch.randn(5, 2, 3)
    before, parameters = flat(ours(x)), [id(p) for p in ours.parameters()]
    ours.flatten_parameters()
    assert [id(p) for p in ours.parameters()] == parameters
    after = flat(ours(x))
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(after, before))
