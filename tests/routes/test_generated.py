"""Kernels generated from a custom cell's step (recurrent.kernels.triton.generated), against the
TorchScript loop of the same cell: outputs, final states and every gradient, packed and padded, both
directions, more rows than one block; torch.nn's GRU and LSTM written as custom cells against the
built-in Triton kernels; training steps; and which steps are refused, with the op named.

The kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, the second pytest run of
``.ci/run``) or on a GPU; tracing, refusals and dispatch are checked in every run.
"""

import os
import tempfile
from typing import List, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import recurrent
from recurrent.example_cells import IndRNNCell, MinimalGatedUnit, PeepholeLSTMCell

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
runs_kernels = pytest.mark.skipif(
    DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1", reason="needs a GPU or TRITON_INTERPRET=1"
)

pytestmark = pytest.mark.triton_suite


class KitchenSinkCell(recurrent.CustomCell):
    """Most of the ops a generated kernel maps, in one step (its gradient takes the rest)."""

    gates = 3

    def __init__(self, slope: float = 0.1) -> None:
        super().__init__()
        self.slope = slope

    def parameter_shapes(self, hidden_size: int):
        return {"scale": (hidden_size,), "shift": (2 * hidden_size,)}

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        parts = (gi - gh * 0.5).split(gi.size(-1) // 3, -1)
        a, b, c = parts[0], parts[1], parts[2]
        shift_a, shift_b = params[1].chunk(2, -1)
        leaky = torch.where(a > 0, a, self.slope * a) + shift_a
        soft = torch.log(1.0 + torch.exp(-torch.abs(b))) + torch.relu(b)  # softplus, overflow-safe
        gate = torch.sigmoid(c / (1.0 + params[0] ** 2))
        h = state[0]
        new = torch.clamp(gate * torch.tanh(leaky) + (1 - gate) * h - 0.1 * soft + shift_b, -3.0, 3.0)
        return new * 0.9 + (-(h**2)) * 0.01, [new]


class FiveGateCell(recurrent.CustomCell):
    """Five gate blocks (two K loops of the hidden product) and an output that is not its new state."""

    gates = 5
    state_names = ("h", "c")

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        i, f, g, o, u = (gi + gh).chunk(5, -1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h + 0.5 * torch.tanh(u), [h, c]


CELLS = {  # name -> (a fresh cell, whether the layer trains with it: weight drop draws its mask in training)
    "minimal gated unit": (MinimalGatedUnit, False),
    "peephole LSTM": (PeepholeLSTMCell, False),
    "IndRNN-like": (lambda: IndRNNCell(cap=2.0), False),
    "GRU as custom cell": (recurrent.GRUVariantCell, False),
    "LSTM as custom cell": (recurrent.LSTMVariantCell, False),
    "GRU, zoneout in eval": (lambda: recurrent.GRUVariantCell(zoneout=0.25), False),
    "LSTM, weight drop": (lambda: recurrent.LSTMVariantCell(weight_drop=0.3), True),
    "kitchen sink": (KitchenSinkCell, False),
    "five gates, output apart": (FiveGateCell, False),
}
# (bidirectional, hidden, lengths, layers): padded one direction; packed, both directions, 18 rows
# (two blocks of 16), two column blocks with a ragged last one.
LAYOUTS = [(False, 5, [4, 4, 4], 1), (True, 20, [5, 5, 4, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1], 2)]


def run_layer(layer, x, lengths, states, backend, monkeypatch, seed=0):
    """(output, final states, gradients of input, initial states and every parameter) on ``backend``."""
    monkeypatch.setenv("RECURRENT_BACKEND", backend)
    x = x.detach().requires_grad_()
    states = [s.detach().requires_grad_() for s in states]
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False) if len(set(lengths)) > 1 else x
    assert recurrent.backend_for(layer, packed) == backend
    torch.manual_seed(seed)  # the same weight-drop mask on both backends
    out, finals = layer(packed, states[0] if len(states) == 1 else tuple(states))
    out = pad_packed_sequence(out)[0] if len(set(lengths)) > 1 else out
    finals = [finals] if len(states) == 1 else list(finals)
    torch.manual_seed(1)  # drawn in float64 whatever the dtype, so that every run gets the same weights
    weights = [torch.randn(t.shape, dtype=torch.float64).to(t) for t in [out, *finals]]
    loss = sum((t * w).sum() for t, w in zip([out, *finals], weights))
    grads = torch.autograd.grad(loss, [x, *states, *layer.parameters()])
    return [out, *finals], list(grads)


def assert_close(actual, expected, dtype, what):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"{what}[{i}]: shape {tuple(a.shape)} against {tuple(e.shape)}"
        if dtype == torch.float64:
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9, msg=lambda m: f"{what}[{i}]: {m}")
        else:  # the whole tensor within a few fp16 roundings of the float64 loop
            error = (a.double() - e).norm() / e.norm().clamp_min(1e-6)
            assert error < 4e-3, f"{what}[{i}]: relative error {error:.2e} against the float64 TorchScript loop"


def layer_and_inputs(cell, layout, dtype, training):
    bidirectional, hidden, lengths, layers = layout
    torch.manual_seed(0)
    layer = recurrent.CustomRNN(cell, 3, hidden, num_layers=layers, bidirectional=bidirectional).double()
    layer.train(training)
    directions = 2 if bidirectional else 1
    x = torch.randn(max(lengths), len(lengths), 3, dtype=torch.float64)
    states = [torch.randn(layers * directions, len(lengths), hidden, dtype=torch.float64) for _ in cell.state_names]
    return layer, x, states


@runs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["padded", "packed-bidirectional"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_generated_kernels_equal_the_torchscript_loop(name, layout, dtype, monkeypatch):
    make, training = CELLS[name]
    layer, x, states = layer_and_inputs(make(), layout, dtype, training)
    expected = run_layer(layer, x, layout[2], states, "torchscript", monkeypatch)
    layer = layer.to(DEVICE, dtype)
    actual = run_layer(
        layer, x.to(DEVICE, dtype), layout[2], [s.to(DEVICE, dtype) for s in states], "triton", monkeypatch
    )
    assert_close([t.cpu() for t in actual[0]], expected[0], dtype, f"{name} forward")
    assert_close([t.cpu() for t in actual[1]], expected[1], dtype, f"{name} gradients")


@runs_kernels
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_torch_nn_cells_as_custom_cells_equal_the_builtin_triton_kernels(kind, monkeypatch):
    """torch.nn's GRU and LSTM step, written as custom cells, on generated kernels: the numbers of the
    hand-written Triton kernels of the built-in layers, every gradient included."""
    layout = LAYOUTS[1]
    cell = recurrent.GRUVariantCell() if kind == "GRU" else recurrent.LSTMVariantCell()
    custom, x, states = layer_and_inputs(cell, layout, torch.float64, False)
    builtin = getattr(recurrent, kind)(3, layout[1], num_layers=layout[3], bidirectional=True).double()
    builtin.load_state_dict(custom.state_dict())
    actual = run_layer(
        custom.to(DEVICE), x.to(DEVICE), layout[2], [s.to(DEVICE) for s in states], "triton", monkeypatch
    )
    expected = run_layer(
        builtin.to(DEVICE), x.to(DEVICE), layout[2], [s.to(DEVICE) for s in states], "triton", monkeypatch
    )
    assert_close(actual[0], expected[0], torch.float64, f"{kind} forward")
    assert_close(actual[1], expected[1], torch.float64, f"{kind} gradients")


@runs_kernels
def test_training_steps_on_generated_kernels_equal_the_torchscript_loop(monkeypatch):
    """Adam steps as a training loop takes them: two accumulated micro-batches, the output changed in
    place, the gradient norm clipped; the weights after each step against the TorchScript loop's."""
    models = {}
    for backend in ("torchscript", "triton"):
        monkeypatch.setenv("RECURRENT_BACKEND", backend)
        torch.manual_seed(0)
        layer = recurrent.CustomRNN(PeepholeLSTMCell(), 4, 20, num_layers=2, bidirectional=True).double().to(DEVICE)
        optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
        for step in range(3):
            optimizer.zero_grad()
            for micro in range(2):
                x = torch.randn(
                    6, 17, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(10 * step + micro)
                )
                out, _ = layer(x.to(DEVICE))
                out.relu_().pow(2).mean().backward()
            nn.utils.clip_grad_norm_(layer.parameters(), 0.1)
            optimizer.step()
        models[backend] = layer
    for (name, a), b in zip(models["triton"].named_parameters(), models["torchscript"].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name} after 3 steps: {m}")


@runs_kernels
def test_parameter_gradients_are_deterministic_and_double_backward_works(monkeypatch):
    """The per-program sums of the cell's own parameter gradients give the same bits every run (three
    programs of rows here); a gradient penalty (create_graph) differentiates the same numbers."""
    monkeypatch.setenv("RECURRENT_BACKEND", "triton")
    torch.manual_seed(0)
    layer = recurrent.CustomRNN(IndRNNCell(), 3, 8, bidirectional=True).double().to(DEVICE)
    x = torch.randn(5, 40, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    first = torch.autograd.grad(layer(x)[0].sum(), layer.recurrent_l0)[0]
    assert torch.equal(first, torch.autograd.grad(layer(x)[0].sum(), layer.recurrent_l0)[0])
    (dx,) = torch.autograd.grad(layer(x)[0].pow(2).sum(), x, create_graph=True)
    penalty = torch.autograd.grad(dx.pow(2).sum(), layer.recurrent_l0)[0]
    monkeypatch.setenv("RECURRENT_BACKEND", "torchscript")
    (dx_ref,) = torch.autograd.grad(layer(x)[0].pow(2).sum(), x, create_graph=True)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(penalty, torch.autograd.grad(dx_ref.pow(2).sum(), layer.recurrent_l0)[0])


@pytest.mark.parametrize(
    "cell,op,why",
    [
        (recurrent.GRUVariantCell(layer_norm=True), "aten.native_layer_norm", "reduction across hidden units"),
        (recurrent.LSTMVariantCell(zoneout=0.1).train(), "aten.rand_like", "random draw"),
    ],
    ids=["layer norm", "zoneout in training"],
)
def test_steps_that_cannot_be_generated_run_the_torchscript_loop_and_say_why(cell, op, why, monkeypatch):
    monkeypatch.setenv("RECURRENT_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # a device the kernels could run on: the step is what refuses
    layer = recurrent.CustomRNN(cell, 3, 8)
    backend = recurrent.backend_for(layer, torch.randn(2, 1, 3))
    assert backend == "torchscript" and op in backend.reason and why in backend.reason, backend.reason
    out, _ = layer(torch.randn(2, 1, 3))  # and the layer runs, on that loop
    assert out.shape == (2, 1, 8)


def test_custom_cells_stay_on_the_torchscript_loop_unless_forced(monkeypatch):
    """Until a GPU run has timed and verified the generated kernels, only RECURRENT_BACKEND=triton chooses them."""
    layer = recurrent.CustomRNN(MinimalGatedUnit(), 3, 8)
    for choice in ("", "auto", "default", "torchscript"):
        monkeypatch.setenv("RECURRENT_BACKEND", choice)
        backend = recurrent.backend_for(layer, torch.randn(2, 1, 3))
        assert backend == "torchscript" and "RECURRENT_BACKEND=triton" in backend.reason


def test_generated_source_is_written_to_the_cache_and_read_from_it(tmp_path, monkeypatch):
    from recurrent.kernels.triton.generated import generated_loop

    monkeypatch.setenv("RECURRENT_CACHE_DIR", str(tmp_path))
    loop = generated_loop(IndRNNCell(cap=3.125))  # a setting no other test uses: traced and written now
    files = list((tmp_path / "triton-cells").glob("recurrent_cell_*.py"))
    assert len(files) == 1 and files[0].read_text() == loop.source
    assert loop.forward_kernel.fn.__code__.co_filename == str(files[0])
    assert "3.125" in loop.source, "the cell's hyperparameter is a constant of the kernel"


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compile targets need Triton's JIT functions")
@pytest.mark.parametrize("hidden", [100, 128])
def test_the_compile_check_covers_every_configuration_generated_kernels_launch(hidden):
    """tools/triton_check.py compiles generated kernels as their launcher runs them: for each dtype
    and dot, the configuration the launcher picks at this hidden size, aligned where the size is."""
    from recurrent.kernels.triton import common, generated
    from recurrent.kernels.triton.targets import PRECISIONS, compile_targets, generated_kernels

    labels = {t.name for t in compile_targets(generated_kernels({"mgu": MinimalGatedUnit()}), aligned_above=32)}
    for dtype, precision in PRECISIONS:
        cols = common.blocks(hidden, dtype, precision, generated.widest(hidden)).cols
        alignment = "aligned" if hidden % 16 == 0 else "unaligned"
        for kernel in ("forward", "backward"):
            label = f"mgu_{kernel} {str(dtype).replace('torch.', '')} {precision} width={cols} {alignment}"
            assert label in labels, f"the compile check misses {label}"


def test_custom_cells_keep_the_torchscript_loop_while_a_compiler_traces(monkeypatch):
    """Under torch.compile a custom cell asked for Triton keeps its TorchScript loop (make_fx inside dynamo's
    trace would fail); torch.export gets its scans."""
    from recurrent import routes, settings

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    layer = recurrent.CustomRNN(MinimalGatedUnit(), 3, 8)
    call = routes.facts(layer, [torch.randn(2, 1, 3), *layer.parameters()], False, False, torch.float32, False)
    forced = settings.Settings("triton", True, True, True)
    route = routes.decide(call._replace(tracer="compile"), forced)
    assert route.kernel == "torchscript" and "tracing" in route.reason
    assert routes.decide(call._replace(tracer="export"), forced).kernel == "scan"


def test_an_unwritable_cache_directory_falls_back_to_the_temp_directory(tmp_path, monkeypatch):
    from recurrent.kernels.triton.generated import generated_loop

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("RECURRENT_CACHE_DIR", str(blocked))
    loop = generated_loop(IndRNNCell(cap=2.875))  # a setting no other test uses
    written = loop.forward_kernel.fn.__code__.co_filename
    assert written.startswith(tempfile.gettempdir()) and open(written).read() == loop.source
