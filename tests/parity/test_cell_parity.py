"""Property tests: RNNCell, GRUCell and LSTMCell equal torch.nn's cells, values and gradients."""

import pytest
import torch
from helpers import assert_all_close, float64_inputs, float64_twin, gradient_names, grads, scripted
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import recurrent

cell_options = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["RNNCell_tanh", "RNNCell_relu", "GRUCell", "LSTMCell"]),
        "input_size": st.integers(1, 9),
        "hidden_size": st.integers(1, 9),
        "bias": st.booleans(),
        "batch": st.integers(1, 5),
        "batched": st.booleans(),
        "with_h": st.booleans(),
        "script": st.booleans(),
        "dtype": st.sampled_from([torch.float32, torch.float64]),
        "seed": st.integers(0, 2**16),
    }
)


@given(cell_options)
def test_cells_equal_torch(device, o):
    kind, _, nonlinearity = o["kind"].partition("_")
    extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
    dtype = o["dtype"]
    torch.manual_seed(o["seed"])
    args = (o["input_size"], o["hidden_size"], o["bias"])
    reference = getattr(nn, kind)(*args, device=device, dtype=dtype, **extra)
    ours = getattr(recurrent, kind)(*args, device=device, dtype=dtype, **extra)
    ours.load_state_dict(reference.state_dict(), strict=True)
    run = scripted(ours) if o["script"] else ours
    lead = (o["batch"],) if o["batched"] else ()
    x = torch.randn(*lead, o["input_size"], device=device, dtype=dtype, requires_grad=True)
    count = (2 if kind == "LSTMCell" else 1) if o["with_h"] else 0
    states = [
        torch.randn(*lead, o["hidden_size"], device=device, dtype=dtype, requires_grad=True) for _ in range(count)
    ]
    expected = results(reference, x, states)
    actual = results(run, x, states, ours.parameters())
    # float32: judged against torch.nn's cell in float64 (helpers.assert_as_accurate)
    exact = None if dtype == torch.float64 else results(float64_twin(reference), *float64_inputs(x, states))
    outputs = len(expected) - len(states) - 1 - len(list(reference.parameters()))
    names = ["h'", "c'"][:outputs] + gradient_names(reference, len(states))
    assert_all_close(actual, expected, dtype, names, exact)


def results(cell, x, states, parameters=None) -> list:
    """[h' (, c'), *gradients of x, the states and ``parameters`` (default: the cell's)]."""
    outputs = cell(x, None if not states else states[0] if len(states) == 1 else tuple(states))
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    return outputs + grads(outputs, [x, *states, *(cell.parameters() if parameters is None else parameters)])


@pytest.mark.parametrize("bias", ["relu", "", 0, 1, None, 1.0, []])
@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cells_take_any_bias_object_as_torch_nn(kind, bias):
    """torch.nn's cells take any object as ``bias`` and register biases by its truth (PyTorch's own
    module tests pass a string there); ours take the same, with the same parameters, repr and numbers."""
    reference = getattr(nn, kind)(3, 4, bias, dtype=torch.float64)
    ours = getattr(recurrent, kind)(3, 4, bias, dtype=torch.float64)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert repr(ours) == repr(reference)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64)
    expected, actual = reference(x), ours(x)
    for a, e in zip(actual if kind == "LSTMCell" else [actual], expected if kind == "LSTMCell" else [expected]):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cells_higher_order_repeated_and_batched_gradients_equal_torch(kind):
    """float32 on the CPU (the native cell op where the library loaded): gradients of gradients, a second
    backward through a retained graph and vmapped gradients (is_grads_batched), all recomputed on the cell's
    own math where the op's backward cannot serve, equal torch.nn's."""
    torch.manual_seed(0)
    reference, ours = getattr(nn, kind)(3, 5), getattr(recurrent, kind)(3, 5)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, 3, requires_grad=True)
    h = torch.randn(4, 5, requires_grad=True)
    hx = (h, torch.randn(4, 5, requires_grad=True)) if kind == "LSTMCell" else h

    def run(cell) -> list:
        out = cell(x, hx)
        out = out[0] if isinstance(out, tuple) else out
        first = torch.autograd.grad((out * out).sum(), [x, h, *cell.parameters()], create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first), [x, h, *cell.parameters()])
        out = cell(x, hx)
        loss = (out[0] if isinstance(out, tuple) else out).sum()
        again = [torch.autograd.grad(loss, [x, h], retain_graph=True) for _ in range(2)]
        out = cell(x, hx)
        out = out[0] if isinstance(out, tuple) else out
        batched = torch.autograd.grad(out, x, torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(1)),
                                      is_grads_batched=True)  # fmt: skip
        return [*first, *second, *again[0], *again[1], *batched]

    for actual, expected in zip(run(ours), run(reference)):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
