"""torch.autograd.gradcheck on the hand-written backward, over the layer options."""
import itertools

import pytest
import torch

import recurrent
from torch.nn.utils.rnn import pack_padded_sequence

KINDS = ["RNN_tanh", "RNN_relu", "GRU", "LSTM", "LSTM_proj"]
OPTIONS = list(itertools.product(KINDS, [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("kind,bidirectional,bias,packed", OPTIONS)
def test_gradcheck_layers(kind, bidirectional, bias, packed):
    name, _, variant = kind.partition("_")
    extra = {"nonlinearity": variant} if name == "RNN" else {"proj_size": 2} if variant == "proj" else {}
    torch.manual_seed(0)
    layer = getattr(recurrent, name)(3, 4, 2, bias=bias, bidirectional=bidirectional, dtype=torch.float64, **extra)
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    layers = 4 if bidirectional else 2
    states = [torch.randn(layers, 3, 2 if variant == "proj" else 4, dtype=torch.float64, requires_grad=True)]
    if name == "LSTM":
        states.append(torch.randn(layers, 3, 4, dtype=torch.float64, requires_grad=True))
    params = list(layer.parameters())
    names = [n for n, _ in layer.named_parameters()]

    def run(x, *tensors):
        hx = tensors[0] if name != "LSTM" else (tensors[0], tensors[1])
        weights = dict(zip(names, tensors[len(states) :]))
        inputs = pack_padded_sequence(x, torch.tensor([2, 4, 1]), enforce_sorted=False) if packed else x
        out, finals = torch.func.functional_call(layer, weights, (inputs, hx))
        return (out.data if packed else out, *(finals if name == "LSTM" else (finals,)))

    assert torch.autograd.gradcheck(run, (x, *states, *params))


def test_double_backward_is_a_clear_error():
    layer = recurrent.GRU(3, 4, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward .*torch.jit.script"):
        torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)


def test_double_backward_through_scripted_module():
    """A scripted module is differentiated by TorchScript's autograd, which supports double backward."""
    import warnings

    layer = recurrent.GRU(3, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(layer)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: scripted(x)[0], (x,))
