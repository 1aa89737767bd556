"""torch.autograd.gradcheck on the hand-written backward, over the layer options."""

import itertools

import pytest
import torch
from helpers import constructor_extras, flat, hidden_arg, initial_states, scripted, triton_forced
from torch.nn.utils.rnn import pack_padded_sequence

import recurrent
from recurrent import _jit

pytestmark = pytest.mark.triton_suite

KINDS = [("RNN_tanh", 0), ("RNN_relu", 0), ("GRU", 0), ("LSTM", 0), ("LSTM", 2)]  # (kind, proj_size)
# Under Triton's interpreter a forward pass takes a good fraction of a second, and gradcheck makes dozens
# (the LSTM's bidirectional cases took 50 to 110 s each): that run checks a covering set, every kind and
# each option at least once, packed where the kernels differ most (tests/routes/test_triton.py compares every
# kernel's backward with the TorchScript one's, and the layer parity suite every gradient with torch.nn's,
# over all the options). Without bias only the GRU's kernel changes (its b_hh acts inside the loop).
INTERPRETED = [
    ("RNN_tanh", 0, True, True, True), ("RNN_relu", 0, False, True, False), ("GRU", 0, True, False, True),
    ("GRU", 0, False, True, False), ("LSTM", 0, True, True, True), ("LSTM", 2, False, True, True),
]  # fmt: skip
OPTIONS = INTERPRETED if triton_forced() else [
    (*kind, bidirectional, bias, packed)
    for kind, bidirectional, bias, packed in itertools.product(KINDS, [False, True], [False, True], [False, True])
]  # fmt: skip


@pytest.mark.parametrize("kind,proj_size,bidirectional,bias,packed", OPTIONS)
def test_gradcheck_layers(kind, proj_size, bidirectional, bias, packed):
    name = kind.partition("_")[0]
    torch.manual_seed(0)
    layer = getattr(recurrent, name)(
        3, 4, 2, bias=bias, bidirectional=bidirectional, dtype=torch.float64, **constructor_extras(kind, proj_size)
    )
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    states = initial_states(kind, 4, proj_size, (4 if bidirectional else 2, 3), torch.float64)
    params = list(layer.parameters())
    names = [n for n, _ in layer.named_parameters()]

    def run(x, *tensors):
        weights = dict(zip(names, tensors[len(states) :]))
        inputs = pack_padded_sequence(x, torch.tensor([2, 4, 1]), enforce_sorted=False) if packed else x
        out, finals = torch.func.functional_call(layer, weights, (inputs, hidden_arg(tensors[: len(states)])))
        return tuple(flat((out.data if packed else out, finals)))

    # Under Triton's interpreter a forward pass is slow: the fast mode checks the Jacobian along random
    # directions (one product per input tensor) instead of element by element.
    assert torch.autograd.gradcheck(run, (x, *states, *params), fast_mode=triton_forced())


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="TorchScript switched off")
@pytest.mark.parametrize("kind,proj_size", KINDS)
def test_double_backward_matches_scripted_module(kind, proj_size):
    """A gradient penalty (create_graph=True) through the eager fast path gives the input and parameter
    gradients that TorchScript's own autograd gives through the scripted module. (tests/parity/test_higher_order.py has
    gradgradcheck over every option.)"""
    torch.manual_seed(0)
    layer = getattr(recurrent, kind.partition("_")[0])(
        3, 4, 2, bidirectional=True, dtype=torch.float64, **constructor_extras(kind, proj_size)
    )
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)

    def penalised(module):
        grad_x, *grad_params = torch.autograd.grad(
            sum(o.pow(2).sum() for o in flat(module(x))), [x, *layer.parameters()], create_graph=True
        )
        penalty = grad_x.pow(2).sum() + sum(g.pow(3).sum() for g in grad_params)
        return torch.autograd.grad(penalty, [x, *layer.parameters()])

    ours, expected = penalised(layer), penalised(scripted(layer))
    names = ["input"] + [n for n, _ in layer.named_parameters()]
    assert len(ours) == len(expected) == len(names)
    for a, e, name in zip(ours, expected, names):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="TorchScript switched off")
def test_double_backward_through_scripted_module():
    """A scripted module is differentiated by TorchScript's autograd, which supports double backward."""
    module = scripted(recurrent.GRU(3, 4, dtype=torch.float64))
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: module(x)[0], (x,))
