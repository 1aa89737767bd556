"""torch.export and ONNX at any batch and length: while exporting, every layer's time loop is torch's
scan operator (recurrent.kernels.scan), so one exported program (or ONNX model, in onnxruntime) serves
batches and lengths it never saw, equal to eager, and its graph does not grow with the example's length."""

from typing import List, Tuple

import pytest
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_sequence

import recurrent
from recurrent import CustomCell, CustomRNN
from recurrent.kernels.scan import scan

try:
    import onnxruntime
except ImportError:  # the dev extras install it
    onnxruntime = None

pytestmark = pytest.mark.skipif(scan is None, reason="this torch has no scan operator: export is static-shape")

TIME = torch.export.Dim("time", min=1, max=4096)
BATCH = torch.export.Dim("batch", min=1, max=1024)
INPUT, HIDDEN = 4, 6
# (kind, constructor arguments, initial states given)
CASES = [
    ("RNN", dict(nonlinearity="tanh"), False),
    ("RNN", dict(nonlinearity="relu", num_layers=2, batch_first=True), True),
    ("GRU", dict(num_layers=2, bidirectional=True), True),
    ("GRU", dict(batch_first=True, bias=False), False),
    ("LSTM", dict(num_layers=3), False),
    ("LSTM", dict(proj_size=3, bidirectional=True, batch_first=True), True),
]


def example(layer, steps: int, batch: int):
    x = torch.randn(batch, steps, INPUT) if layer.batch_first else torch.randn(steps, batch, INPUT)
    lead = layer.num_layers * (2 if layer.bidirectional else 1)
    sizes = [layer.proj_size or HIDDEN, HIDDEN] if layer.mode == "LSTM" else [HIDDEN]
    states = [torch.randn(lead, batch, size) for size in sizes]
    return x, (tuple(states) if len(states) == 2 else states[0])


def exported(layer, with_states: bool, steps: int = 5):
    x, hx = example(layer, steps, 2)
    dims = {0: BATCH, 1: TIME} if layer.batch_first else {0: TIME, 1: BATCH}
    if not with_states:
        return torch.export.export(layer, (x,), dynamic_shapes={"input": dims})
    state_dims = ({1: BATCH}, {1: BATCH}) if isinstance(hx, tuple) else {1: BATCH}
    return torch.export.export(layer, (x, hx), dynamic_shapes={"input": dims, "hx": state_dims})


def flat(result):
    output, finals = result
    return [output, *(finals if isinstance(finals, tuple) else (finals,))]


@pytest.mark.parametrize("kind,kwargs,with_states", CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_one_program_serves_every_batch_and_length(kind, kwargs, with_states):
    torch.manual_seed(0)
    layer = getattr(recurrent, kind)(INPUT, HIDDEN, **kwargs).eval()
    program = exported(layer, with_states).module()
    for steps, batch in [(1, 1), (17, 3), (300, 2)]:  # none of them the example's (5, 2)
        x, hx = example(layer, steps, batch)
        args = (x, hx) if with_states else (x,)
        for actual, expected in zip(flat(program(*args)), flat(layer(*args))):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_the_graph_does_not_grow_with_the_example_length():
    layer = recurrent.GRU(INPUT, HIDDEN, 2).eval()
    short, long = (len(exported(layer, False, steps).graph.nodes) for steps in (3, 40))
    assert short == long


def test_packed_input_says_to_export_padded():
    layer = recurrent.LSTM(INPUT, HIDDEN).eval()

    class Packed(torch.nn.Module):
        def forward(self, a, b):
            return layer(pack_sequence([a, b]))[1][0]

    with pytest.raises(Exception, match="export the model on padded input"):
        torch.export.export(Packed(), (torch.randn(4, INPUT), torch.randn(3, INPUT)))


@pytest.mark.skipif(onnxruntime is None, reason="onnx, onnxscript and onnxruntime are in the dev extras")
@pytest.mark.parametrize("kind,kwargs,with_states", CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_onnx_runs_at_every_batch_and_length(kind, kwargs, with_states, tmp_path):
    """The dynamo ONNX exporter writes the scans as ONNX Scan loops: onnxruntime runs the model at
    lengths and batches never seen at export, with the eager numbers. Exported under no_grad: in
    grad mode torch 2.14's exporter fails on the scans of a bidirectional GRU or LSTM of two or
    more layers (an AssertionError in its type-promotion pass, "Expected leaf to be a Tensor")."""
    torch.manual_seed(0)
    layer = getattr(recurrent, kind)(INPUT, HIDDEN, **kwargs).eval()
    x, hx = example(layer, 5, 2)
    dims = {0: BATCH, 1: TIME} if layer.batch_first else {0: TIME, 1: BATCH}
    args, shapes = (x,), {"input": dims}
    if with_states:
        args, shapes["hx"] = (x, hx), (({1: BATCH}, {1: BATCH}) if isinstance(hx, tuple) else {1: BATCH})
    with torch.no_grad():
        program = torch.onnx.export(layer, args, dynamo=True, dynamic_shapes=shapes, verbose=False)
    program.save(str(tmp_path / "layer.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "layer.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for steps, batch in [(1, 1), (17, 3), (300, 2)]:
        x, hx = example(layer, steps, batch)
        feeds = [x] + ([*hx] if isinstance(hx, tuple) else [hx] if with_states else [])
        actual = session.run(None, {name: t.numpy() for name, t in zip(names, feeds)})
        with torch.no_grad():
            expected = flat(layer(x, hx) if with_states else layer(x))
        for a, e in zip(actual, expected):
            torch.testing.assert_close(torch.from_numpy(a), e, rtol=1e-5, atol=1e-5)


class SigmoidCell(CustomCell):
    """h' = σ(W_ih x + b_ih + W_hh h + b_hh): one gate block, like RNN's, with other math."""

    gates = 1

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        h = torch.sigmoid(gi + gh)
        return h, [h]


def test_custom_cells_keep_their_own_loop_while_exporting(monkeypatch):
    """The scan backend knows the built-in kinds only: a custom cell's layer, called while exporting,
    runs its own step (it once ran the built-in RNN's tanh step there, silently)."""
    layer = CustomRNN(SigmoidCell(), INPUT, HIDDEN, 2).eval()
    x = torch.randn(5, 2, INPUT)
    expected = layer(x)[0]
    monkeypatch.setattr(recurrent.kernels.scan, "exporting", lambda: True)
    torch.testing.assert_close(layer(x)[0], expected)
