"""Beyond the first-order backward: double backward (create_graph=True), gradients batched by vmap
(gradcheck's check_batched_grad, jacobian(vectorize=True)) and torch.func transforms (per-sample
gradients, jacrev, hessian), for every layer kind, both directions and packed input.

The eager fast path's backward is written by hand and is neither differentiable nor vmappable; these
run through recurrent.kernels.autograd.differentiable_layer instead. Under the forced Triton backend
the forward runs on Triton and the recompute (or the torch.func path) on the TorchScript kernel, so
the checks here also check that the two agree; that run (Triton's interpreter, slow) covers the
bidirectional packed configuration of each kind with one layer, and skips the element-by-element
gradgradcheck.
"""
import itertools

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import recurrent
from helpers import constructor_extras, flat, hidden_arg, initial_states, triton_forced
from recurrent.kernels import autograd as layer_autograd

KINDS = [("RNN_tanh", 0), ("RNN_relu", 0), ("GRU", 0), ("LSTM", 0), ("LSTM", 2)]  # (kind, proj_size)
# (kind, proj_size, bidirectional, packed); under Triton's interpreter only the bidirectional packed case.
CASES = [
    (*kind, bidirectional, packed)
    for kind, bidirectional, packed in itertools.product(KINDS, [False, True], [False, True])
    if not triton_forced() or (bidirectional and packed)
]
DTYPE = torch.float64
# Two layers: the second layer's backward differentiates through the first's output. One under
# Triton's interpreter, where every forward pass takes a good fraction of a second.
INPUT, HIDDEN, LAYERS, STEPS, BATCH = 2, 3, 1 if triton_forced() else 2, 3, 2
LENGTHS = torch.tensor([2, 3])  # unsorted: packing permutes the batch


def make_layer(kind: str, proj_size: int, bidirectional: bool, layers: int = LAYERS, input_size: int = INPUT,
               hidden: int = HIDDEN) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(recurrent, kind.partition("_")[0])(
        input_size, hidden, layers, bidirectional=bidirectional, dtype=DTYPE, **constructor_extras(kind, proj_size)
    )


def layer_function(layer: torch.nn.Module, states: int, packed: bool):
    """(x, *initial states, *parameters) -> (output, *final states), through torch.func.functional_call."""
    names = [n for n, _ in layer.named_parameters()]

    def run(x, *tensors):
        weights = dict(zip(names, tensors[states:]))
        inputs = pack_padded_sequence(x, LENGTHS, enforce_sorted=False) if packed else x
        out, finals = functional_call(layer, weights, (inputs, hidden_arg(tensors[:states])))
        return tuple(flat((out.data if packed else out, finals)))

    return run


def gradcheck_arguments(kind, proj_size, bidirectional, layers=LAYERS, input_size=INPUT, hidden=HIDDEN):
    layer = make_layer(kind, proj_size, bidirectional, layers, input_size, hidden)
    x = torch.randn(STEPS, BATCH, input_size, dtype=DTYPE, requires_grad=True)
    states = initial_states(kind, hidden, proj_size, ((2 if bidirectional else 1) * layers, BATCH), DTYPE)
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    return layer, (x, *states, *params), len(states)


@pytest.mark.parametrize("kind,proj_size,bidirectional,packed", CASES)
def test_gradgradcheck(kind, proj_size, bidirectional, packed):
    """Second derivatives w.r.t. the input, initial states, parameters and incoming gradients, in fast
    mode (along random directions). All layers for the bidirectional packed case, one for the others,
    to keep the suite quick."""
    layers = LAYERS if bidirectional and packed else 1
    layer, args, states = gradcheck_arguments(kind, proj_size, bidirectional, layers=layers)
    run = layer_function(layer, states, packed)
    assert torch.autograd.gradgradcheck(run, args, fast_mode=True)


@pytest.mark.skipif(triton_forced(), reason="element-by-element: too slow under Triton's interpreter")
@pytest.mark.parametrize("kind,proj_size", KINDS)
def test_gradgradcheck_full(kind, proj_size):
    """Element by element, on a small bidirectional packed layer (every second derivative checked)."""
    layer, args, states = gradcheck_arguments(kind, min(proj_size, 1), True, layers=1, input_size=1, hidden=2)
    assert torch.autograd.gradgradcheck(layer_function(layer, states, True), args)


@pytest.mark.parametrize("kind,proj_size,bidirectional,packed", CASES)
def test_batched_gradients(kind, proj_size, bidirectional, packed):
    """check_batched_grad: vmap over autograd.grad (is_grads_batched) equals one grad per vector."""
    layer, args, states = gradcheck_arguments(kind, proj_size, bidirectional)
    run = layer_function(layer, states, packed)
    assert torch.autograd.gradcheck(run, args, check_batched_grad=True, fast_mode=True)


@pytest.mark.parametrize("kind,proj_size", KINDS)
@pytest.mark.parametrize("bidirectional", [True] if triton_forced() else [False, True])
def test_per_sample_gradients_with_vmap(kind, proj_size, bidirectional):
    """torch.func.vmap of torch.func.grad over the batch (unbatched samples, each with its own initial
    states) equals a loop of single-sample gradients by the hand-written backward."""
    layer = make_layer(kind, proj_size, bidirectional)
    x = torch.randn(BATCH + 1, STEPS, INPUT, dtype=DTYPE)
    lead = (LAYERS * (2 if bidirectional else 1), BATCH + 1)
    states = [s.detach() for s in initial_states(kind, HIDDEN, proj_size, lead, DTYPE)]
    params = {n: p.detach() for n, p in layer.named_parameters()}

    def loss(params, x, *states):
        out = flat(functional_call(layer, params, (x, hidden_arg(states))))
        return sum((o * torch.linspace(-1, 1, o.numel(), dtype=DTYPE).view_as(o)).sum() for o in out)

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, *[1] * len(states)))(params, x, *states)
    for i in range(len(x)):
        expected = torch.autograd.grad(
            loss(dict(layer.named_parameters()), x[i], *[s[:, i] for s in states]), list(layer.parameters())
        )
        for (name, got), want in zip(per_sample.items(), expected):
            torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-10, msg=lambda m: f"sample {i}, {name}: {m}")


@pytest.mark.parametrize("kind,proj_size", KINDS)
@pytest.mark.parametrize("bidirectional,packed", [(True, True)] if triton_forced() else [(False, False), (True, True)])
def test_vectorized_jacobian(kind, proj_size, bidirectional, packed):
    """autograd.functional.jacobian(vectorize=True) (legacy vmap over the backward) and, for padded input,
    torch.func.jacrev equal the row-by-row Jacobian. (torch.func over packed bidirectional input fails
    before the layer: TorchScript's reverse_index builds a tensor, which functorch refuses there.)"""
    layer, args, states = gradcheck_arguments(kind, proj_size, bidirectional)
    run = layer_function(layer, states, packed)
    x, rest = args[0], args[1:]

    def outputs(x):
        return run(x, *rest)

    expected = torch.autograd.functional.jacobian(outputs, x)
    jacobians = [torch.autograd.functional.jacobian(outputs, x, vectorize=True)]
    if not packed:
        jacobians.append(torch.func.jacrev(outputs)(x))
    for got in jacobians:
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's own jvp decompositions
@pytest.mark.parametrize("kind,proj_size", KINDS)
def test_hessian(kind, proj_size):
    """torch.func.hessian (forward over reverse, through plain ops) equals the Hessian by double backward
    through the layer's autograd.Function (autograd.functional.hessian, create_graph=True)."""
    layer = make_layer(kind, proj_size, True)
    x = torch.randn(STEPS, 1, INPUT, dtype=DTYPE)

    def energy(x):
        return sum(o.pow(2).sum() for o in flat(layer(x)))

    expected = torch.autograd.functional.hessian(energy, x)
    torch.testing.assert_close(torch.func.hessian(energy)(x), expected, rtol=1e-9, atol=1e-10)


def test_first_order_backward_stays_hand_written(monkeypatch):
    """Only create_graph=True (or batched gradients) takes the differentiable recompute; a plain backward
    runs the hand-written kernels alone."""
    calls = []
    differentiable_layer = layer_autograd.differentiable_layer
    monkeypatch.setattr(layer_autograd, "differentiable_layer", lambda *a: calls.append(1) or differentiable_layer(*a))
    layer = make_layer("GRU", 0, True)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE, requires_grad=True)
    first = torch.autograd.grad(layer(x)[0].sum(), [x, *layer.parameters()])
    assert calls == []
    second = torch.autograd.grad(layer(x)[0].sum(), [x, *layer.parameters()], create_graph=True)
    assert len(calls) == LAYERS
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
