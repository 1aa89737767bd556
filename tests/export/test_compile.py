"""torch.compile: each built-in layer is one opaque op per layer in dynamo's graph (recurrent.kernels.ops),
never its time loop; so a new batch size or sequence length needs no new graph, the kernels eager runs
run compiled too, and the numbers and gradients are torch.nn's. A custom cell's loop compiles unrolled."""

import pytest
import torch
from helpers import assert_as_accurate, float64_twin
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.utils.rnn import pack_padded_sequence

import recurrent
from recurrent import LayerNormGRU
from recurrent.kernels import ops

INPUT, HIDDEN = 3, 5
LAYER_OP = torch.ops.recurrent.layer.default


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from nothing: dynamo keeps at most 8 graphs per function (the layers' forward), and
    a count of compiles must not see another test's."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def torch_twin(layer):
    kwargs = dict(num_layers=layer.num_layers, bidirectional=layer.bidirectional, batch_first=layer.batch_first)
    if getattr(layer, "proj_size", 0):
        kwargs["proj_size"] = layer.proj_size
    if getattr(layer, "nonlinearity", "tanh") != "tanh":
        kwargs["nonlinearity"] = layer.nonlinearity
    twin = getattr(torch.nn, type(layer).__name__)(INPUT, HIDDEN, **kwargs)
    twin.load_state_dict(layer.state_dict())
    return twin


def run(model, x, train: bool):
    """(output, final state, the input's gradient, every weight's gradient) of one call."""
    x = x.clone().requires_grad_(train)
    with torch.set_grad_enabled(train):
        output, finals = model(x)
        h_n = finals[0] if isinstance(finals, tuple) else finals
        if not train:
            return [output, h_n]
        model.zero_grad()
        (output.square().sum() + h_n.sum()).backward()
    return [output, h_n, x.grad] + [p.grad for p in model.parameters()]


def check_shapes(layer, reference, compiled, train: bool, shapes, counter=None):
    """The compiled model as accurate as the reference at each (batch, length), both judged by the
    reference in float64; with a counter, that no shape after the first compiles anything."""
    exact = float64_twin(reference)
    first = None
    for batch, steps in shapes:
        x = torch.randn(batch, steps, INPUT) if layer.batch_first else torch.randn(steps, batch, INPUT)
        results = zip(run(compiled, x, train), run(reference, x, train), run(exact, x.double(), train))
        for i, (actual, expected, x64) in enumerate(results):
            assert_as_accurate(actual, expected, x64, f"tensor {i}, batch {batch}, length {steps}")
        if counter is not None:
            first = first or counter.frame_count
            assert counter.frame_count == first, f"compiled again for batch {batch}, length {steps}"


CASES = {
    "gru-2-bi-batch-first": ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    "lstm-2": ("LSTM", dict(num_layers=2)),
    "lstm-proj-bi": ("LSTM", dict(proj_size=3, bidirectional=True)),
    "rnn-relu-2-bi": ("RNN", dict(nonlinearity="relu", num_layers=2, bidirectional=True)),
    "rnn-tanh": ("RNN", dict()),
}
SHAPES = [(2, 4), (2, 9), (3, 31), (5, 6)]  # not a batch or length of 1: dynamo specializes on 0 and 1


@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_layers_equal_torch_nn_and_never_recompile(case, train):
    """fullgraph=True, dynamic=True: one graph serves every batch and length, with torch.nn's numbers."""
    torch.manual_seed(0)
    kind, kwargs = CASES[case]
    layer = getattr(recurrent, kind)(INPUT, HIDDEN, **kwargs)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, dynamic=True, fullgraph=True)
    check_shapes(layer, torch_twin(layer), compiled, train, SHAPES, counter)


def test_the_graph_holds_one_op_per_layer_and_no_loop():
    """What dynamo records of a 3-layer bidirectional GRU: three layer ops and the glue around them, at
    any length (the time loop would be hundreds of nodes, growing with the length)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    layer = recurrent.GRU(INPUT, HIDDEN, num_layers=3, bidirectional=True)
    compiled = torch.compile(layer, backend=backend, dynamic=True, fullgraph=True)
    compiled(torch.randn(40, 2, INPUT))
    (graph,) = graphs
    targets = [node.target for node in graph.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.recurrent.layer) + targets.count(LAYER_OP) == 3, targets
    assert len(targets) < 40, f"{len(targets)} calls: the loop was traced"


def test_default_compile_with_inductor_trains_like_eager():
    """What users write: torch.compile(model) with its defaults (Inductor, automatic dynamic shapes) on a
    model holding our GRU, trained: the losses and gradients of eager, and after the one recompile that
    makes a changed size symbolic (as for any model), no new size compiles again."""
    torch.manual_seed(0)
    eager = Head(recurrent.GRU(INPUT, HIDDEN, num_layers=2, batch_first=True))
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(eager, backend=counter)
    frames = []
    for batch, steps in [(4, 7), (4, 11), (6, 5), (3, 13), (5, 9)]:
        x = torch.randn(batch, steps, INPUT)
        losses = []
        for model_ in (compiled, eager):
            eager.zero_grad()
            loss = model_(x).square().mean()
            loss.backward()
            losses.append((loss.detach(), [p.grad.clone() for p in eager.parameters()]))
        (compiled_loss, compiled_grads), (eager_loss, eager_grads) = losses
        torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=1e-7)
        for got, expected in zip(compiled_grads, eager_grads):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        frames.append(counter.frame_count)
    # A recompile when the length first changes and one when the batch does (each then symbolic); none after.
    assert frames[2:] == [frames[2]] * 3 and frames[2] - frames[0] <= 2, frames


class Head(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.out = torch.nn.Linear(HIDDEN, 2)

    def forward(self, x):
        output, _ = self.rnn(x)
        return self.out(output[:, -1])


def test_packed_input_compiles_with_torch_nn_numbers():
    """A PackedSequence's batch sizes are data: the layer reads them (a graph break), then runs its op."""
    torch.manual_seed(0)
    layer = recurrent.LSTM(INPUT, HIDDEN, bidirectional=True)
    reference = torch_twin(layer)
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True)
    x, lengths = torch.randn(7, 3, INPUT), torch.tensor([7, 4, 2])
    results = []
    for model in (compiled, reference, float64_twin(reference)):
        data = x.double() if model is not compiled and model is not reference else x
        xs = data.clone().requires_grad_()
        output, (h_n, c_n) = model(pack_padded_sequence(xs, lengths))
        (output.data.square().sum() + h_n.sum() + c_n.sum()).backward()
        results.append([output.data, h_n, c_n, xs.grad] + [p.grad for p in model.parameters()])
        model.zero_grad()
    for i, (actual, expected, x64) in enumerate(zip(*results)):
        assert_as_accurate(actual, expected, x64, f"tensor {i}")


def test_a_custom_cell_compiles_unrolled():
    """A custom cell's loop compiles unrolled (one graph per length), with its eager numbers and gradients."""
    torch.manual_seed(0)
    layer = LayerNormGRU(INPUT, HIDDEN, bidirectional=True)
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True)
    check_shapes(layer, layer, compiled, True, [(2, 4)])


OP_CASES = [  # (mode, directions, batch_first, dropout, states given, packed)
    ("GRU", 2, True, 0.0, False, False),
    ("LSTM", 1, False, 0.5, True, False),
    ("RNN_TANH", 2, False, 0.3, False, True),
    ("LSTM", 2, True, 0.0, False, False),
]


@pytest.mark.parametrize("mode,directions,batch_first,dropout,given,packed", OP_CASES)
def test_the_layer_op_gradients_by_finite_differences(mode, directions, batch_first, dropout, given, packed):
    """The op's registered backward against finite differences (float64, the TorchScript kernel), with its
    dropout (one fixed mask: the seed is reset before each call), zero or given states, padded batch-first
    or packed input."""
    torch.manual_seed(0)
    hidden, batch, states = 4, 3, 2 if mode == "LSTM" else 1
    gates = {"GRU": 3, "LSTM": 4}.get(mode, 1)
    shapes = [(gates * hidden, INPUT), (gates * hidden, hidden), (gates * hidden,), (gates * hidden,)]
    params = [torch.randn(s, dtype=torch.float64, requires_grad=True) for _ in range(directions) for s in shapes]
    sizes = torch.tensor([3, 2, 2, 1]) if packed else None
    x = torch.randn((8, INPUT) if packed else (batch, 5, INPUT) if batch_first else (5, batch, INPUT))
    x = x.double().requires_grad_()
    state0 = [torch.randn(directions, batch, hidden, dtype=torch.float64, requires_grad=True) for _ in range(states)]
    state0 = state0 if given else []
    settings = ops.OpLayer(batch, batch_first, dropout, mode, "torchscript", directions, True, False, True)

    def layer(x, *tensors):
        torch.manual_seed(1)
        given_states, weights = list(tensors[: len(state0)]), list(tensors[len(state0) :])
        out, finals, _, _, _ = torch.ops.recurrent.layer(x, given_states, weights, sizes, *settings)
        return out, *finals

    assert torch.autograd.gradcheck(layer, (x, *state0, *params))


def test_a_loss_on_the_final_state_alone():
    """The output gets no gradient at all (None, not zeros): the op's backward makes its zeros."""
    torch.manual_seed(0)
    layer = recurrent.GRU(INPUT, HIDDEN, num_layers=2)
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True, fullgraph=True)
    x = torch.randn(6, 2, INPUT)
    results = []
    for model in (compiled, layer):
        xs = x.clone().requires_grad_()
        model(xs)[1].sum().backward()
        results.append([xs.grad] + [p.grad.clone() for p in layer.parameters()])
        layer.zero_grad()
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected)
