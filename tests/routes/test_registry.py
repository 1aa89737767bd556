"""The cell-kind registry: its entries against torch.nn's layers, the parameter order, each kind's TorchScript
kernel in a scripted module, and a new kind added by its registry entry and its kernels alone (a throwaway
minimal gated unit, defined here as a user's kernel module would define it)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pytest
import torch
from helpers import scripted, triton_forced
from torch import Tensor, nn

import recurrent
from recurrent import _jit, kernels
from recurrent.kernels import KINDS, CellKind, Kernel
from recurrent.kernels.autograd import layer_forward_saving
from recurrent.kernels.common import carry_rows, hidden_product, step_rows
from recurrent.layers import RNNBase

TORCH_LAYERS = {
    "RNN_TANH": (nn.RNN, {}),
    "RNN_RELU": (nn.RNN, {"nonlinearity": "relu"}),
    "GRU": (nn.GRU, {}),
    "LSTM": (nn.LSTM, {}),
}


def test_registry_covers_exactly_the_layer_modes():
    assert set(KINDS) == set(TORCH_LAYERS)


@pytest.mark.parametrize("mode", sorted(TORCH_LAYERS))
def test_gate_count_matches_torch_weight_shapes(mode):
    cls, extra = TORCH_LAYERS[mode]
    assert cls(3, 5, **extra).weight_ih_l0.shape[0] == KINDS[mode].gates * 5


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("proj", [0, 2])
def test_parameter_order_is_torch_nn_registration_order(bias, proj):
    reference = nn.LSTM(3, 4, 2, bias=bias, bidirectional=True, proj_size=proj)
    ours = recurrent.LSTM(3, 4, 2, bias=bias, bidirectional=True, proj_size=proj)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    kinds = kernels.layer_param_kinds(bias, proj > 0)
    assert [n for n, _ in reference.named_parameters()][: len(kinds)] == [k + "_l0" for k in kinds]


@pytest.mark.parametrize("mode", sorted(TORCH_LAYERS))
def test_a_scripted_module_runs_each_kinds_torchscript_kernel(mode):
    """The kind's SequenceKernel, a plain attribute of the layer (not in its repr, children or state_dict),
    is what the scripted stack runs."""
    cls, extra = TORCH_LAYERS[mode]
    torch.manual_seed(0)
    reference = cls(3, 4, 2, bidirectional=True, dtype=torch.float64, **extra)
    ours = getattr(recurrent, cls.__name__)(3, 4, 2, bidirectional=True, dtype=torch.float64, **extra)
    ours.load_state_dict(reference.state_dict())
    assert repr(ours) == repr(reference) and list(ours.children()) == []
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(scripted(ours)(x)[0], reference(x)[0], rtol=1e-9, atol=1e-9)


# -- a throwaway kind: its kernel module (what a file in recurrent/kernels/ would hold) ---------------------


@_jit.script
def mgu_step(gi: Tensor, gh: Tensor, h: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Minimal gated unit (Zhou et al. 2016), gates (f, n):

    f  = σ(W_if x + b_if + W_hf h + b_hf)
    n  = tanh(W_in x + b_in + f ⊙ (W_hn h + b_hn))
    h' = (1 − f) ⊙ n + f ⊙ h
    """
    hidden = h.size(-1)
    f = torch.sigmoid(gi[..., :hidden] + gh[..., :hidden])
    n = torch.tanh(gi[..., hidden:] + f * gh[..., hidden:])
    return torch.lerp(n, h, f), f, n


@_jit.script
def mgu_forward(
    gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
    batch_sizes: List[int], save: bool,
) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
    """The TorchScript forward (no hand-written backward: autograd records its ops); saves [f, n]."""
    h = state0[0]
    hs: List[Tensor] = []
    fs: List[Tensor] = []
    ns: List[Tensor] = []
    start = 0
    for size in batch_sizes:
        h_t = step_rows(h, size)
        new, f, n = mgu_step(gi[:, start : start + size], hidden_product(h_t, w_hh_t, b_hh), h_t)
        hs.append(new)
        fs.append(f)
        ns.append(n)
        h = carry_rows(new, h)
        start += size
    saved: List[Tensor] = [torch.cat(fs, 1), torch.cat(ns, 1)] if save else []
    return torch.cat(hs, 1), [h], saved


@_jit.script
class MGUSequence:
    def __init__(self, onednn: bool = False) -> None:
        self.onednn = onednn

    def forward(
        self, gi: Tensor, state0: List[Tensor], w_hh_t: Tensor, b_hh: Optional[Tensor], kind_weights: List[Tensor],
        batch_sizes: List[int], save: bool,
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:  # fmt: skip
        return mgu_forward(gi, state0, w_hh_t, b_hh, kind_weights, batch_sizes, save)

    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        return w_hh


def mgu_scan_step(kind_weights: List[Tensor]):
    def step(gi: Tensor, gh: Tensor, state: List[Tensor], own: slice) -> Tuple[Tensor, List[Tensor]]:
        h = mgu_step(gi, gh, state[0])[0]
        return h, [h]

    return step


def mgu_gates(layer, rows: Tensor, state0: List[Tensor], params: List[Tensor]) -> Dict[str, Tensor]:
    _, saved = layer_forward_saving(layer, rows, state0, params)
    return {"f": saved[0], "n": saved[1]}


MGU = CellKind(
    "MGU_TEST", gates=2, states=1, folds_bias=False, sequence=MGUSequence,
    kernels={"torchscript": lambda projected: Kernel(mgu_forward, None)},
    scan_step=mgu_scan_step, gates_of=mgu_gates,
)  # fmt: skip


class MGULayer(RNNBase):
    """The thin layer class that names the mode."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **kwargs) -> None:
        super().__init__("MGU_TEST", input_size, hidden_size, num_layers, **kwargs)


def plain_mgu(layer: MGULayer, x: Tensor) -> Tensor:
    """The layer written out as a plain loop over steps and directions (the reference)."""
    for k in range(layer.num_layers):
        outs = []
        for suffix in [""] + (["_reverse"] if layer.bidirectional else []):
            w = {n: getattr(layer, f"{n}_l{k}{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
            h = x.new_zeros(x.size(1), layer.hidden_size)
            steps = []
            for x_t in x.flip(0) if suffix else x:
                gi, gh = x_t @ w["weight_ih"].t() + w["bias_ih"], h @ w["weight_hh"].t() + w["bias_hh"]
                h = mgu_step(gi, gh, h)[0]
                steps.append(h)
            out = torch.stack(steps)
            outs.append(out.flip(0) if suffix else out)
        x = torch.cat(outs, -1)
    return x


@pytest.fixture
def mgu_kind():
    """MGU registered (recurrent.kernels.register) for one test."""
    yield kernels.register(MGU)
    del KINDS[MGU.mode]


@pytest.mark.skipif(triton_forced(), reason="a kind with no Triton kernels (the forced run would refuse it)")
def test_a_new_kind_is_its_registry_entry_and_its_kernels(mgu_kind):
    """Registered, the kind runs on every route it has: eager with autograd through its ops, the whole
    stack, scripted, exported as scans, recorded; the numbers and gradients of a plain loop."""
    torch.manual_seed(0)
    layer = MGULayer(3, 4, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    route = recurrent.route_for(layer, x)
    assert (route.kernel, route.backward) == ("torchscript", "autograd"), route
    expected = plain_mgu(layer, x)
    output = layer(x)[0]
    torch.testing.assert_close(output, expected, rtol=1e-9, atol=1e-9)
    grads = torch.autograd.grad(output.square().sum(), [x, *layer.parameters()])
    wanted = torch.autograd.grad(expected.square().sum(), [x, *layer.parameters()])
    for got, want in zip(grads, wanted):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        assert recurrent.route_for(layer, x).stack == "whole"
        torch.testing.assert_close(layer(x)[0], expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(scripted(layer)(x)[0], expected, rtol=1e-9, atol=1e-9)
    program = torch.export.export(layer.eval(), (x.detach(),))
    torch.testing.assert_close(program.module()(x.detach())[0], expected, rtol=1e-9, atol=1e-9)
    with recurrent.record_gates(layer) as record:
        layer(x)
    assert set(record[""][0]) == {"f", "n"} and record[""][0]["f"].shape == (2, 2, 2, 6, 4)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True)  # its loop traced: no own backward
    output = compiled(x)[0]
    torch.testing.assert_close(output, expected, rtol=1e-9, atol=1e-9)
    grads = torch.autograd.grad(output.square().sum(), [x, *layer.parameters()])
    for got, want in zip(grads, wanted):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # one op per layer, the kind's TorchScript kernel, nothing saved
        torch.testing.assert_close(compiled(x)[0], expected, rtol=1e-9, atol=1e-9)
