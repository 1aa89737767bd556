"""The route of a layer call, one decision (recurrent.routes.decide) from the call's facts and the settings:
pinned by a table, shown to run the kernel it names, and answered by route_for and backend_for as the call
takes it."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch
from helpers import ops_called, triton_forced
from torch.nn.utils.rnn import pack_padded_sequence

import recurrent
from recurrent import routes, settings
from recurrent.kernels import KINDS, Kernel, autograd, cpu, products

DEFAULT = settings.Settings("default", True, True, True)
BASE = routes.Call(
    kind=KINDS["GRU"], cell=None, device="cpu", dtype=torch.float32, hidden_size=8, projected=False,
    bidirectional=False, needs_grad=True, packed=False, empty=False, tracer="", transform=False,
    observed=False, dropout=False,
)  # fmt: skip


# A kind whose kernel has no hand-written backward (a new kind's need not have one): autograd records its ops.
UNAIDED = dataclasses.replace(
    KINDS["GRU"],
    mode="UNAIDED",
    kernels={"torchscript": lambda projected: Kernel(KINDS["GRU"].kernel("torchscript").forward, None)},
)


def world(monkeypatch, native: bool = True, triton: bool = True) -> None:
    """The machine the decision sees: whether the native library loaded, whether Triton can run here."""
    monkeypatch.setattr(routes, "_native_library", lambda: None if native else "the native library is off")
    monkeypatch.setattr(cpu, "available", lambda: native)  # so the kinds' native kernels are there, or not
    monkeypatch.setattr(routes, "_triton_missing", lambda call: None if triton else "tensors on cpu (no Triton)")
    monkeypatch.setattr(routes, "_triton_kernels", lambda call: None if call.hidden_size <= 512 else "too wide")


# (what differs from BASE, settings, whether the native library loaded, Triton's availability)
# -> (stack, kernel, backward)
TABLE = [
    ({}, DEFAULT, True, False, ("whole", "native", "hand-written")),
    ({"needs_grad": False}, DEFAULT, True, False, ("whole", "native", "none")),
    ({"dropout": True}, DEFAULT, True, False, ("layers", "native", "hand-written")),
    ({"dropout": True, "needs_grad": False}, DEFAULT, True, False, ("whole", "native", "none")),
    ({"observed": True}, DEFAULT, True, False, ("layers", "native", "hand-written")),
    ({"observed": True, "needs_grad": False}, DEFAULT, True, False, ("layers", "native", "none")),
    ({"bidirectional": True, "packed": True}, DEFAULT, True, False, ("whole", "native", "hand-written")),
    ({}, DEFAULT, False, False, ("layers", "onednn", "hand-written")),
    ({"needs_grad": False}, DEFAULT, False, False, ("whole", "onednn", "none")),
    ({"kind": KINDS["LSTM"], "projected": True}, DEFAULT, True, False, ("layers", "onednn", "hand-written")),
    ({"dtype": torch.float64}, DEFAULT, True, False, ("layers", "torchscript", "hand-written")),
    ({"dtype": torch.float64, "needs_grad": False}, DEFAULT, True, False, ("whole", "torchscript", "none")),
    ({"needs_grad": False, "observed": True}, DEFAULT, False, False, ("layers", "onednn", "none")),
    ({}, settings.Settings("default", False, True, True), True, False, ("layers", "onednn", "hand-written")),
    ({}, settings.Settings("default", False, False, True), True, False, ("layers", "torchscript", "hand-written")),
    ({}, settings.Settings("torchscript", True, True, True), True, False, ("layers", "torchscript", "hand-written")),
    ({}, settings.Settings("onednn", True, True, True), True, False, ("layers", "onednn", "hand-written")),
    ({"device": "cuda"}, DEFAULT, True, True, ("whole", "triton", "hand-written")),
    ({"device": "cuda", "needs_grad": False}, DEFAULT, True, True, ("whole", "triton", "none")),
    ({"device": "cuda", "dropout": True}, DEFAULT, True, True, ("layers", "triton", "hand-written")),
    ({"device": "cuda", "observed": True}, DEFAULT, True, True, ("layers", "triton", "hand-written")),
    ({"device": "cuda", "kind": KINDS["LSTM"]}, DEFAULT, True, True, ("whole", "triton", "hand-written")),
    ({"device": "cuda", "kind": KINDS["LSTM"], "projected": True}, DEFAULT, True, True,
     ("layers", "triton", "hand-written")),
    ({"device": "cuda", "dtype": torch.bfloat16}, DEFAULT, True, True, ("whole", "triton", "hand-written")),
    ({"device": "cuda", "hidden_size": 300}, DEFAULT, True, True, ("layers", "torchscript", "hand-written")),
    ({"device": "cuda", "dtype": torch.float64}, DEFAULT, True, True, ("layers", "torchscript", "hand-written")),
    ({"device": "cuda", "tracer": "compile"}, DEFAULT, True, True, ("ops", "triton", "hand-written")),
    ({"device": "cuda", "hidden_size": 300}, settings.Settings("triton", True, True, True), True, True,
     ("whole", "triton", "hand-written")),
    ({"tracer": "export"}, DEFAULT, True, False, ("scan", "scan", "autograd")),
    ({"tracer": "export"}, settings.Settings("default", True, True, False), True, False,
     ("layers", "torchscript", "hand-written")),
    ({"tracer": "compile"}, DEFAULT, True, False, ("ops", "native", "hand-written")),
    ({"tracer": "compile", "needs_grad": False, "packed": True}, DEFAULT, True, False, ("ops", "native", "none")),
    ({"tracer": "compile", "dtype": torch.float64}, DEFAULT, True, False, ("ops", "torchscript", "hand-written")),
    ({"tracer": "compile", "kind": UNAIDED}, DEFAULT, True, False, ("layers", "torchscript", "autograd")),
    ({"tracer": "compile", "kind": UNAIDED, "needs_grad": False}, DEFAULT, True, False, ("ops", "torchscript", "none")),
    ({"tracer": "compile"}, DEFAULT, False, False, ("ops", "onednn", "hand-written")),
    ({"tracer": "compile", "empty": True}, DEFAULT, True, False, ("empty", "none", "autograd")),
    ({"tracer": "compile", "transform": True}, DEFAULT, True, False, ("layers", "plain", "autograd")),
    ({"tracer": "jit", "needs_grad": False}, DEFAULT, True, False, ("whole", "torchscript", "none")),
    ({"tracer": "onnx", "needs_grad": False}, DEFAULT, True, False, ("onnx", "onnx", "none")),
    ({"transform": True}, DEFAULT, True, False, ("layers", "plain", "autograd")),
    ({"transform": True, "needs_grad": False}, DEFAULT, True, False, ("layers", "plain", "autograd")),
    ({"empty": True}, DEFAULT, True, False, ("empty", "none", "autograd")),
    ({"empty": True, "needs_grad": False}, DEFAULT, True, False, ("empty", "none", "none")),
]  # fmt: skip


@pytest.mark.parametrize("changes,chosen,native,triton,expected", TABLE)
def test_the_decision_table(changes, chosen, native, triton, expected, monkeypatch):
    world(monkeypatch, native, triton)
    route = routes.decide(BASE._replace(**changes), chosen)
    assert (route.stack, route.kernel, route.backward) == expected, route
    assert route.reason and str(route).startswith(f"{route.kernel} kernels, "), str(route)


# (what differs from BASE, settings, native, Triton) -> what the error says
REFUSED = [
    ({}, settings.Settings("triton", True, True, True), True, False, "RECURRENT_BACKEND=triton.*no Triton"),
    ({"dtype": torch.float64}, settings.Settings("native", True, True, True), True, False, "float64 tensors"),
    ({}, settings.Settings("native", True, True, True), False, False, "native library is off"),
    ({"kind": KINDS["LSTM"], "projected": True}, settings.Settings("native", True, True, True), True, False,
     "projected LSTM"),
    ({"device": "cuda"}, settings.Settings("onednn", True, True, True), True, True, "float32 CPU ones"),
    ({"tracer": "export", "packed": True}, DEFAULT, True, False, "PackedSequence cannot be exported"),
    ({"tracer": "onnx", "kind": KINDS["LSTM"], "projected": True}, DEFAULT, True, False, "no projection"),
]  # fmt: skip


@pytest.mark.parametrize("changes,chosen,native,triton,message", REFUSED)
def test_what_cannot_run_raises_saying_why(changes, chosen, native, triton, message, monkeypatch):
    world(monkeypatch, native, triton)
    with pytest.raises(RuntimeError, match=message):
        routes.decide(BASE._replace(**changes), chosen)


def test_an_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("RECURRENT_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="RECURRENT_BACKEND must be one of .*got 'cudnn'"):
        recurrent.GRU(3, 4)(torch.randn(2, 1, 3))


def test_custom_cells_run_their_loop_unless_asked_for_triton(monkeypatch):
    """Generated kernels are opt-in; a cell with a hand-written backward runs it, one without is recorded."""
    from recurrent.example_cells import MinimalGatedUnit

    world(monkeypatch, triton=False)
    layer = recurrent.CustomRNN(MinimalGatedUnit(), 3, 8)
    call = routes.facts(layer, [torch.randn(2, 1, 3), *layer.parameters()], False, False, torch.float32, False)
    route = routes.decide(call, DEFAULT)
    assert (route.stack, route.kernel, route.backward) == ("layers", "torchscript", "autograd")
    assert "RECURRENT_BACKEND=triton" in route.reason and "opt-in" in route.reason
    assert routes.decide(call._replace(needs_grad=False), DEFAULT).stack == "whole"
    with pytest.raises(RuntimeError, match="RECURRENT_BACKEND=triton.*MinimalGatedUnit"):
        routes.decide(call, settings.Settings("triton", True, True, True))
    assert "no native kernels" in routes.decide(call, settings.Settings("native", True, True, True)).reason


# -- route_for answers as the call goes, and each kernel it names runs ------------------------------------

needs_cpu_route = pytest.mark.skipif(triton_forced(), reason="the CPU routes (the Triton run forces its kernels)")


@needs_cpu_route
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_route_for_names_the_cpu_kernel_that_runs(grad, monkeypatch):
    """float32: native (the whole stack's op runs, and in training its backward, BLAS's products inside) where
    the library loaded, else oneDNN's products; RECURRENT_BACKEND=torchscript and float64: neither."""
    layer = recurrent.GRU(4, 8, 2, bidirectional=True)
    x = torch.randn(products.MIN_ROWS // 4, 4, 4, requires_grad=grad)
    cases = [("native" if cpu.available() else "onednn", layer, x)]
    cases.append(("torchscript", copy.deepcopy(layer).double(), x.detach().double().requires_grad_(grad)))
    for kernel, module, data in cases:
        assert recurrent.route_for(module, data).kernel == kernel
        called = ops_called(module, data, grad)
        assert ("recurrent_cpu::stack_forward" in called) == (kernel == "native"), sorted(called)
        assert ("mkldnn::_linear_pointwise" in called) == (kernel == "onednn")
    for forced in ("torchscript", "onednn") if products.ONEDNN else ("torchscript",):
        monkeypatch.setenv("RECURRENT_BACKEND", forced)
        assert recurrent.route_for(layer, x).kernel == forced
        called = ops_called(layer, x, grad)
        assert not any(name.startswith("recurrent_cpu::") for name in called)
        assert ("mkldnn::_linear_pointwise" in called) == (forced == "onednn"), sorted(called)


# A cell call as the facts of a one-layer, one-step layer's -> (stack, kernel, backward)
CELL = BASE._replace(kind=KINDS["RNN_TANH"])
CELL_TABLE = [
    ({}, DEFAULT, True, ("cell", "native", "hand-written")),
    ({"needs_grad": False, "kind": KINDS["LSTM"]}, DEFAULT, True, ("cell", "native", "none")),
    ({"kind": KINDS["GRU"]}, settings.Settings("native", True, True, True), True, ("cell", "native", "hand-written")),
    ({}, DEFAULT, False, ("cell", "torchscript", "autograd")),
    ({"dtype": torch.float64}, DEFAULT, True, ("cell", "torchscript", "autograd")),
    ({"dtype": torch.float64}, settings.Settings("native", True, True, True), True,
     ("cell", "torchscript", "autograd")),
    ({}, settings.Settings("torchscript", True, True, True), True, ("cell", "torchscript", "autograd")),
    ({}, settings.Settings("triton", True, True, True), True, ("cell", "torchscript", "autograd")),
    ({}, settings.Settings("default", False, True, True), True, ("cell", "torchscript", "autograd")),
    ({"tracer": "compile", "needs_grad": False}, DEFAULT, True, ("cell", "torchscript", "none")),
    ({"transform": True}, DEFAULT, True, ("cell", "torchscript", "autograd")),
]  # fmt: skip


@pytest.mark.parametrize("changes,chosen,native,expected", CELL_TABLE)
def test_the_cells_decision_table(changes, chosen, native, expected, monkeypatch):
    """A cell runs the native cell op where the native kernels can run it; else its own step, whatever is
    asked (never raising: a backend asked for is the layers')."""
    world(monkeypatch, native, triton=False)
    route = routes.decide_cell(CELL._replace(**changes), chosen)
    assert (route.stack, route.kernel, route.backward) == expected, route


@needs_cpu_route
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cells_run_the_native_cell_op_where_their_route_says(kind, grad, monkeypatch):
    """A batched float32 call runs the cell op (its backward op in training); float64, unbatched input,
    autocast and RECURRENT_BACKEND=torchscript run the cell's own step, and each gives torch.nn's numbers."""
    torch.manual_seed(0)
    reference = getattr(torch.nn, kind)(3, 5)
    cell = getattr(recurrent, kind)(3, 5)
    cell.load_state_dict(reference.state_dict())
    x = torch.randn(4, 3, requires_grad=grad)
    native = cpu.available()
    called = ops_called(cell, x, grad)
    assert ("recurrent_cpu::cell_forward" in called) == native, sorted(called)
    assert ("recurrent_cpu::cell_backward" in called) == (native and grad), sorted(called)
    wide = (copy.deepcopy(cell).double(), x.detach().double().requires_grad_(grad))
    for module, data in [wide, (cell, x[0].detach().requires_grad_(grad))]:
        assert not any(name.startswith("recurrent_cpu::") for name in ops_called(module, data, grad))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not any(name.startswith("recurrent_cpu::") for name in ops_called(cell, x, grad))
    monkeypatch.setenv("RECURRENT_BACKEND", "torchscript")
    assert not any(name.startswith("recurrent_cpu::") for name in ops_called(cell, x, grad))
    monkeypatch.delenv("RECURRENT_BACKEND")
    h = torch.randn(4, 5)
    state = (h, torch.randn(4, 5)) if kind == "LSTMCell" else h
    expected, actual = reference(x, state), cell(x, state)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@needs_cpu_route
def test_the_plain_route_runs_plain_ops_under_torch_func(monkeypatch):
    layer = recurrent.LSTM(3, 4, bidirectional=True)
    x = torch.randn(5, 2, 3)
    ran = []
    plain = autograd.differentiable_layer
    monkeypatch.setattr(autograd, "differentiable_layer", lambda *a: ran.append(a[0].kernel) or plain(*a))
    grad = torch.func.grad(lambda data: layer(data)[0].square().sum())(x)
    assert grad.shape == x.shape and len(ran) == 1 and ran[0] == KINDS["LSTM"].plain_kernel()
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
        assert recurrent.route_for(layer, dual).kernel == "plain"


def test_an_empty_batch_runs_no_kernel(monkeypatch):
    layer = recurrent.GRU(3, 4)
    x = torch.randn(5, 0, 3, requires_grad=True)
    ran = []
    monkeypatch.setattr(autograd, "kernel_forward", lambda *a, **k: ran.append(1))
    assert recurrent.route_for(layer, x).kernel == "none"
    output, h_n = layer(x)
    assert output.shape == (5, 0, 4) and ran == []


@pytest.mark.skipif(os.environ.get("RECURRENT_SCAN") == "0", reason="scans switched off")
def test_the_scan_route_exports_scans_and_the_onnx_route_onnx_operators(tmp_path):
    pytest.importorskip("onnx")
    import warnings

    import onnx

    layer = recurrent.GRU(3, 4, 2).eval()
    program = torch.export.export(layer, (torch.randn(5, 2, 3),))
    assert any("scan" in str(node.target) for node in program.graph.nodes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(layer, (torch.randn(5, 2, 3),), str(tmp_path / "gru.onnx"), dynamo=False)
    assert [n.op_type for n in onnx.load(str(tmp_path / "gru.onnx")).graph.node if n.op_type == "GRU"] == ["GRU"] * 2


@needs_cpu_route
def test_route_for_a_packed_call_and_backend_for_agree():
    layer = recurrent.LSTM(3, 4)
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 2]))
    route = recurrent.route_for(layer, packed)
    assert (route.stack, route.kernel) in (("whole", "native"), ("layers", "onednn"), ("layers", "torchscript"))
    assert recurrent.backend_for(layer, packed) == "torchscript" and recurrent.backend_for(layer, packed).reason == ""


def test_forcing_triton_where_it_cannot_run_says_why(monkeypatch):
    monkeypatch.setenv("RECURRENT_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer, x = recurrent.GRU(3, 4), torch.randn(2, 1, 3)
    with pytest.raises(RuntimeError, match="RECURRENT_BACKEND=triton.*need CUDA"):
        recurrent.route_for(layer, x)
    with pytest.raises(RuntimeError, match="RECURRENT_BACKEND=triton"):
        layer(x)
