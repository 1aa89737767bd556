"""torch.autograd.gradcheck on the hand-written backward, over the layer options."""
import itertools

import pytest
import torch

import recurrent

OPTIONS = list(itertools.product(["RNN_tanh", "RNN_relu", "GRU"], [False, True], [False, True]))


@pytest.mark.parametrize("kind,bidirectional,bias", OPTIONS)
def test_gradcheck_layers(kind, bidirectional, bias):
    name, _, nonlinearity = kind.partition("_")
    extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
    torch.manual_seed(0)
    layer = getattr(recurrent, name)(3, 4, 2, bias=bias, bidirectional=bidirectional, dtype=torch.float64, **extra)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4 if bidirectional else 2, 2, 4, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())
    names = [n for n, _ in layer.named_parameters()]

    def run(x, h0, *weights):
        out, h_n = torch.func.functional_call(layer, dict(zip(names, weights)), (x, h0))
        return out, h_n

    assert torch.autograd.gradcheck(run, (x, h0, *params))


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
