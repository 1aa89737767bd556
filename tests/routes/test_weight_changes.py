"""Nothing a call derives from the weights is served stale to a later call (what a layer keeps across
calls: its last route decision; the weights themselves are read afresh, and a one-step call's products
use them as they are). Each way a user changes weights between two calls (an optimizer step,
load_state_dict, .to(), an in-place edit, a reassigned .data, a new Parameter, an in-place edit through
.data, as PyTorch's word-language-model example steps its weights) is made to both torch.nn's layer and
ours, and the next call must give torch.nn's outputs and gradients: one step (the native kernels' unpacked
products) and several."""

from __future__ import annotations

import copy
import io
import pickle
from typing import Callable

import pytest
import torch
from helpers import assert_like_torch_nn, flat, grads, pair, triton_forced
from torch import nn

import recurrent

pytestmark = pytest.mark.skipif(triton_forced(), reason="the CPU routes' weights")

KINDS = {"RNN": {"nonlinearity": "tanh"}, "GRU": {}, "LSTM": {}}
INPUT, HIDDEN, STEPS, BATCH = 3, 5, 4, 2
# (dtype, grad): float32 runs the native kernels, forward only and with the backward; float64 with
# gradients the TorchScript kernels layer by layer.
MODES = [(torch.float32, False), (torch.float32, True), (torch.float64, True)]


def build(kind: str, dtype: torch.dtype, bidirectional: bool = True):
    torch.manual_seed(0)
    return pair(kind, INPUT, HIDDEN, 2, bidirectional=bidirectional, dtype=dtype, **KINDS[kind])


def run(grad: bool) -> Callable:
    """What a call gives: outputs and final states, and with ``grad`` every gradient."""

    def call(module: nn.Module, inputs: list) -> list:
        with torch.set_grad_enabled(grad):
            outs = flat(module(inputs[0]))
            return outs + (grads(outs, [inputs[0], *module.parameters()]) if grad else [])

    return call


def check(reference: nn.Module, ours: nn.Module, x: torch.Tensor, grad: bool) -> None:
    assert_like_torch_nn(run(grad), reference, ours, [x.detach().requires_grad_(grad)])


def optimizer_step(module: nn.Module) -> nn.Module:
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    out = flat(module(torch.randn(STEPS, BATCH, INPUT, dtype=next(module.parameters()).dtype)))
    sum(o.sum() for o in out).backward()
    optimizer.step()
    return module


def load_new_weights(module: nn.Module) -> nn.Module:
    torch.manual_seed(7)
    module.load_state_dict({name: torch.randn_like(value) for name, value in module.state_dict().items()})
    return module


def round_trip(module: nn.Module) -> nn.Module:
    dtype = next(module.parameters()).dtype
    return module.to(torch.float64 if dtype == torch.float32 else torch.float32).to(dtype)


def edit_in_place(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        module.weight_hh_l0.mul_(-2.0)
        module.bias_ih_l1_reverse.add_(1.0)
    return module


def reassign_data(module: nn.Module) -> nn.Module:
    module.weight_ih_l1.data = module.weight_ih_l1.data.flip(0).clone()
    return module


def new_parameter(module: nn.Module) -> nn.Module:
    module.weight_hh_l1_reverse = nn.Parameter(module.weight_hh_l1_reverse.detach().flip(1).clone())
    return module


def edit_through_data(module: nn.Module) -> nn.Module:
    # Through .data the version counter does not move (nor does autograd see it)
    for p in module.parameters():
        p.data.add_(p.detach().flip(0), alpha=-0.5)
    return module


CHANGES = [optimizer_step, load_new_weights, round_trip, edit_in_place, reassign_data, new_parameter]
CHANGES += [edit_through_data]


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__ for c in CHANGES])
@pytest.mark.parametrize("steps", [1, STEPS])
@pytest.mark.parametrize("dtype,grad", MODES, ids=[f"{d}-{'grad' if g else 'no_grad'}" for d, g in MODES])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_weight_change_between_calls_is_never_served_stale(kind, dtype, grad, steps, change):
    reference, ours = build(kind, dtype)
    x = torch.randn(steps, BATCH, INPUT, dtype=dtype)
    check(reference, ours, x, grad)
    check(reference, ours, x, grad)
    torch.manual_seed(3)
    change(reference)
    torch.manual_seed(3)
    change(ours)
    check(reference, ours, x, grad)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_copies_keep_nothing_of_the_original(kind):
    """deepcopy and pickling (the last route decision is left behind: it holds functions): a copy whose
    weights then change gives its own numbers, and the original its own."""
    reference, ours = build(kind, torch.float64)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64)
    check(reference, ours, x, grad=True)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(ours), pickle.loads(pickle.dumps(ours)), torch.load(buffer, weights_only=False)]
    for twin in copies:
        changed = edit_in_place(copy.deepcopy(reference))
        check(changed, edit_in_place(twin), x, grad=True)
    check(reference, ours, x, grad=True)


def test_functional_call_gets_the_numbers_of_the_weights_it_passes():
    """torch.func.functional_call puts other tensors in the parameters' places for one call: each call gets
    the numbers of its own, never those of the last call's or of the module's parameters."""
    reference, ours = build("GRU", torch.float64)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64)
    for scale in (0.5, -1.5):
        params = {name: (p.detach() * scale).requires_grad_() for name, p in ours.named_parameters()}
        expected = torch.func.functional_call(reference, params, (x,))[0]
        actual = torch.func.functional_call(ours, params, (x,))[0]
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ours(x)[0], reference(x)[0], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_a_cells_weights_are_read_afresh_every_call(kind, grad):
    """A cell (float32: the native stack op) keeps its route across calls, never its weights: edits through
    .data (which no version counter sees) and an optimizer step show in the next call; its copies (the route
    is left behind: it holds functions) give its numbers."""
    torch.manual_seed(0)
    reference, ours = getattr(nn, kind)(INPUT, HIDDEN), getattr(recurrent, kind)(INPUT, HIDDEN)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(BATCH, INPUT)
    changes = [
        lambda cell: None,
        lambda cell: [p.data.mul_(-1.5) for p in cell.parameters()],
        lambda cell: cell.bias_ih.data.zero_(),
        lambda cell: optimizer_step_cell(cell, x),
    ]
    for change in changes:
        change(reference)
        change(ours)
        assert_like_torch_nn(run(grad), reference, ours, [x.detach().requires_grad_(grad)])
    for twin in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert_like_torch_nn(run(grad), reference, twin, [x.detach().requires_grad_(grad)])


def optimizer_step_cell(cell: nn.Module, x: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(cell.parameters(), lr=0.5)
    sum(o.sum() for o in flat(cell(x))).backward()
    optimizer.step()
