"""The fast CPU path (recurrent.kernels.products: oneDNN's products with W_hh packed, tanh through the
logistic) against torch.nn and against the plain path (``RECURRENT_FAST_CPU=0``): float32 layers of
every kind, packed and bidirectional, inference and training, and that the path really runs."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    as_float64,
    assert_as_accurate,
    assert_like_torch_nn,
    flat,
    float64_leaves,
    float64_twin,
    ops_called,
    pair,
    scripted,
    triton_forced,
)
from torch.nn.utils.rnn import pack_padded_sequence

import recurrent
from recurrent.kernels import cpu, products

pytestmark = [
    pytest.mark.native_suite,
    pytest.mark.skipif(not products.ONEDNN, reason="this torch build has no oneDNN linear"),
    pytest.mark.skipif(triton_forced(), reason="the TorchScript backend's CPU path"),
]
# (torch.nn class name, constructor extras, num_layers, bidirectional)
CASES = [
    ("RNN", {"nonlinearity": "tanh"}, 2, True),
    ("RNN", {"nonlinearity": "relu"}, 1, False),
    ("GRU", {}, 2, False),
    ("GRU", {}, 1, True),
    ("LSTM", {}, 2, True),
    ("LSTM", {"proj_size": 5}, 2, False),
]
INPUT, HIDDEN, STEPS, BATCH = 6, 9, 7, 5
LENGTHS = torch.tensor([7, 3, 5, 1, 7])


def run(module, x, packed: bool):
    """(output, *final states, *gradients of input and parameters) under a loss weighing every element."""
    arg = pack_padded_sequence(x, LENGTHS, enforce_sorted=False) if packed else x
    out = flat(module(arg))
    out[0] = out[0].data if packed else out[0]
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in out)
    return out + list(torch.autograd.grad(loss, [x, *module.parameters()]))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{c[1]}-{c[2]}-bi{c[3]}")
def test_fast_path_equals_torch_nn_and_the_plain_path(case, packed, monkeypatch):
    name, extras, layers, bidirectional = case
    torch.manual_seed(0)
    reference, ours = pair(name, INPUT, HIDDEN, layers, bidirectional=bidirectional, **extras)
    x = torch.randn(STEPS, BATCH, INPUT, requires_grad=True)
    expected = run(reference, x, packed)
    exact = run(float64_twin(reference), float64_leaves([x])[0], packed)
    fast = run(ours, x, packed)
    monkeypatch.setenv("RECURRENT_FAST_CPU", "0")
    plain = run(ours, x, packed)
    for i, (f, p, e, x64) in enumerate(zip(fast, plain, expected, exact)):
        assert_as_accurate(f, e, x64, f"tensor {i} against torch.nn")
        assert_as_accurate(f, p, x64, f"tensor {i} against the plain path")


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_the_fast_path_runs_onednn_and_only_where_it_should(grad, monkeypatch):
    """float32 CPU calls run oneDNN's products (the native op's brgemm, where that loaded, makes every
    product of a forward without gradients); float64, RECURRENT_FAST_CPU=0 and scripted modules do not."""
    layer = recurrent.LSTM(INPUT, HIDDEN, 2)
    x = torch.randn(STEPS, BATCH, INPUT, requires_grad=grad)

    onednn = "mkldnn::_linear_pointwise"
    called = ops_called(layer, x, grad)
    assert onednn in called or (cpu.available() and "recurrent_cpu::stack_forward" in called), sorted(called)
    assert onednn not in ops_called(layer.double(), x.detach().double().requires_grad_(grad), grad)
    layer.float()
    assert onednn not in ops_called(scripted(layer), x, grad)
    monkeypatch.setenv("RECURRENT_FAST_CPU", "0")
    assert onednn not in ops_called(layer, x, grad)


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def sgd(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


@pytest.mark.parametrize("hidden,optimizer", [(HIDDEN, adam), (48, sgd)], ids=["narrow-adam", "wide-sgd"])
@pytest.mark.parametrize("name,extras", [("GRU", {}), ("LSTM", {}), ("RNN", {"nonlinearity": "tanh"})])
def test_training_steps_on_the_fast_path_follow_torch_nn(name, extras, hidden, optimizer):
    """Ten optimizer steps on a 2-layer bidirectional layer, each over two accumulated micro-batches, a
    ReLU in place on the output and the gradient norm clipped: the weights stay with torch.nn's.
    Wide: the LSTM's and GRU's weight and bias gradients come from the native one-pass op where the
    library loaded (more than 128 gate columns). It steps with SGD and momentum, linear in the
    gradient: Adam's first steps divide by |g| + 1e-8, and on its near-zero gradients (1e-11 at this
    width) turned differences of 1e-10, which torch.nn's own float32 gradients have from float64's,
    into 1e-4 in the weights, on the ATen path as on the native one."""
    torch.manual_seed(0)
    reference, ours = pair(name, INPUT, hidden, 2, bidirectional=True, **extras)
    exact = float64_twin(reference)  # what the float32 trainings round: the same steps in float64
    modules = (reference, ours, exact)
    optimizers = [optimizer(m.parameters()) for m in modules]
    for step in range(10):
        batches = [(torch.randn(STEPS, BATCH, INPUT), torch.randn(STEPS, BATCH, 2 * hidden)) for _ in range(2)]
        for module, optimizer in zip(modules, optimizers):
            optimizer.zero_grad()
            for x, target in as_float64(batches) if module is exact else batches:
                torch.nn.functional.mse_loss(module(x)[0].relu_(), target).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 0.5)
            optimizer.step()
    for (name, a), b, e in zip(reference.named_parameters(), ours.parameters(), exact.parameters()):
        assert_as_accurate(b, a, e, f"{name} after ten steps")


@pytest.mark.parametrize("sizes", [[5, 1100, 3], [0, 512], [1024]], ids=["uneven", "empty block", "two chunks"])
def test_weight_grads_through_onednn_equal_the_plain_product(sizes):
    """products.weight_grad (oneDNN, the inputs copied transposed 512 rows at a time) against the sum
    of gradᵀ · x written out in float64, over row blocks that straddle the chunks."""
    torch.manual_seed(0)
    blocks = [torch.randn(2, n, 7) for n in sizes]
    grad = torch.randn(2, sum(sizes), 200)
    expected = torch.bmm(grad.double().transpose(1, 2), torch.cat(blocks, 1).double())
    torch.testing.assert_close(products.weight_grad(grad, blocks).double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name,extras", [("GRU", {}), ("LSTM", {}), ("RNN", {"nonlinearity": "tanh"})])
def test_wide_layers_take_onednn_weight_grads_and_equal_torch_nn(name, extras):
    """With more than 128 gate columns the weight gradients go through the native op where the library
    loaded (the GRU's hidden part as a column slice of dgi), else oneDNN: a packed bidirectional layer
    of 200 hidden units (RNN: 200 columns) against torch.nn."""
    torch.manual_seed(0)
    reference, ours = pair(name, INPUT, 200, 1, bidirectional=True, **extras)
    x = torch.randn(STEPS, BATCH, INPUT, requires_grad=True)
    assert_like_torch_nn(lambda module, inputs: run(module, inputs[0], True), reference, ours, [x])
