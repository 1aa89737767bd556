"""Property tests: RNN, GRU and LSTM equal torch.nn's outputs, final states and every gradient."""

import pytest
import torch
from helpers import (
    OUTPUT_NAMES,
    assert_all_close,
    assert_close,
    constructor_extras,
    flat,
    float64_call,
    float64_inputs,
    float64_twin,
    gradient_names,
    grads,
    hidden_arg,
    initial_states,
    pair,
    scripted,
    triton_forced,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

pytestmark = pytest.mark.triton_suite

layer_options = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["RNN_tanh", "RNN_relu", "GRU", "LSTM"]),
        "proj": st.integers(0, 8),  # LSTM only: proj_size = proj % hidden_size
        "input_size": st.integers(1, 9),
        "hidden_size": st.integers(1, 9),
        "num_layers": st.integers(1, 3),
        "bias": st.booleans(),
        "batch_first": st.booleans(),
        "bidirectional": st.booleans(),
        "steps": st.integers(1, 7),
        "batch": st.integers(1, 4),
        "batched": st.booleans(),
        "with_h0": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def proj_size(o: dict) -> int:
    """LSTM only: the drawn proj in range(hidden_size), 0 meaning no projection."""
    return o["proj"] % o["hidden_size"]


def build(o: dict, dtype: torch.dtype, device: str):
    kind = o["kind"].partition("_")[0]
    extra = constructor_extras(o["kind"], proj_size(o))
    torch.manual_seed(o["seed"])
    reference, ours = pair(
        kind,
        o["input_size"],
        o["hidden_size"],
        o["num_layers"],
        bias=o["bias"],
        batch_first=o["batch_first"],
        bidirectional=o["bidirectional"],
        dtype=dtype,
        device=device,
        **extra,
    )
    directions = 2 if o["bidirectional"] else 1
    if o["batched"]:
        shape = (o["batch"], o["steps"]) if o["batch_first"] else (o["steps"], o["batch"])
        lead = (directions * o["num_layers"], o["batch"])
    else:
        shape, lead = (o["steps"],), (directions * o["num_layers"],)
    x = torch.randn(*shape, o["input_size"], dtype=dtype, device=device, requires_grad=True)
    states = initial_states(kind, o["hidden_size"], proj_size(o), lead, dtype, device) if o["with_h0"] else []
    return reference, ours, x, states


def results(module, x: Tensor, states: list) -> list:
    """[output, *final states, *gradients of x, the states and every parameter]; the gradients' names
    follow the outputs' in :func:`check_against_reference`."""
    outputs = flat(module(x, hidden_arg(states)))
    return outputs + grads(outputs, [x, *states, *module.parameters()])


def check_against_reference(o: dict, dtype: torch.dtype, device: str, script: bool = False) -> None:
    """float64 against torch.nn's float64 to 1e-9; float32 at least as accurate as torch.nn's float32,
    both judged against torch.nn in float64 (helpers.assert_as_accurate)."""
    reference, ours, x, states = build(o, dtype, device)
    expected = results(reference, x, states)
    actual = results(scripted(ours) if script else ours, x, states)
    # The scripted module shares ours' parameters; their gradients are taken in ours' order.
    exact = None if dtype == torch.float64 else results(float64_twin(reference), *float64_inputs(x, states))
    outputs = len(expected) - len(states) - 1 - len(list(reference.parameters()))
    names = list(OUTPUT_NAMES[:outputs]) + gradient_names(reference, len(states))
    assert_all_close(actual, expected, dtype, names, exact)


@given(layer_options)
def test_layers_equal_torch_float64(device, o):
    check_against_reference(o, torch.float64, device)


@given(layer_options)
def test_layers_equal_torch_float32(device, o):
    check_against_reference(o, torch.float32, device)


@pytest.mark.skipif(triton_forced(), reason="a scripted module runs the TorchScript kernels, never Triton's")
@given(layer_options)
def test_scripted_layers_equal_torch(device, o):
    check_against_reference(o, torch.float64, device, script=True)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_inference_path_equals_torch(device, kind):
    """Under no_grad and inference_mode the kernel saves nothing and still returns torch.nn's numbers."""
    torch.manual_seed(0)
    reference, ours = pair(kind, 6, 8, 2, bidirectional=True, dtype=torch.float64, device=device)
    x = torch.randn(5, 3, 6, dtype=torch.float64, device=device)
    with torch.no_grad():
        expected = flat(reference(x))
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            actual = flat(ours(x))
        assert not actual[0].requires_grad
        names = [f"{n} under {context.__name__}" for n in OUTPUT_NAMES[: len(expected)]]
        assert_all_close(actual, expected, torch.float64, names)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_dropout_between_layers_only_in_training(kind):
    torch.manual_seed(0)
    reference, ours = pair(kind, 4, 6, 3, dropout=0.5)
    x = torch.randn(5, 2, 4)
    ours.eval()
    reference.eval()
    exact = float64_call(reference, x)[0]
    assert_close(ours(x)[0], reference(x)[0], torch.float32, "eval mode ignores dropout", exact)
    ours.train()
    a, b = ours(x)[0], ours(x)[0]
    assert not torch.allclose(a, b), "training mode must drop units between layers"
    # The last layer's own output is not dropped: with one layer dropout has no effect at all.
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        single_ref, single = pair(kind, 4, 6, 1, dropout=0.5)
    single.train()
    exact = float64_call(single_ref, x)[0]
    assert_close(single(x)[0], single_ref(x)[0], torch.float32, "dropout after the last layer", exact)


def test_dropout_scales_kept_units():
    """Layer 2 of a 2-layer RNN with identity-like weights sees inputs scaled by 1/(1-p) or zeroed."""
    torch.manual_seed(0)
    _, ours = pair("RNN", 3, 4, 2, dropout=0.25, nonlinearity="relu", bias=False)
    x = torch.rand(1, 2000, 3)
    with torch.no_grad():
        ours.weight_hh_l0.zero_()
        ours.weight_hh_l1.zero_()
        ours.weight_ih_l1.copy_(torch.eye(4))
        out_train = ours.train()(x)[0]
        out_eval = ours.eval()(x)[0]
    dropped = (out_train == 0) & (out_eval != 0)
    assert 0.2 < dropped.sum() / (out_eval != 0).sum() < 0.3
    kept = out_train != 0
    torch.testing.assert_close(out_train[kept], out_eval[kept] / 0.75)
