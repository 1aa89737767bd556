"""torch.export and ONNX at any batch and length: while exporting, every layer's time loop is torch's
scan operator (recurrent.kernels.scan), so one exported program (or ONNX model, in onnxruntime) serves
batches and lengths it never saw, equal to eager, and its graph does not grow with the example's length."""

from typing import List, Tuple

import pytest
import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_sequence

import recurrent
from recurrent import CustomCell, CustomRNN, GRUVariantCell, LayerNormGRU, LayerNormLSTM
from recurrent.kernels.scan import scan

try:
    import onnxruntime
except ImportError:  # the dev extras install it
    onnxruntime = None

pytestmark = pytest.mark.skipif(scan is None, reason="this torch has no scan operator: export is static-shape")

TIME = torch.export.Dim("time", min=1, max=4096)
BATCH = torch.export.Dim("batch", min=1, max=1024)
INPUT, HIDDEN = 4, 6


class SigmoidCell(CustomCell):
    """h' = σ(W_ih x + b_ih + W_hh h + b_hh): one gate block, like RNN's, with other math."""

    gates = 1

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        h = torch.sigmoid(gi + gh)
        return h, [h]


BUILT_IN = {
    "rnn-tanh": lambda: recurrent.RNN(INPUT, HIDDEN),
    "rnn-relu-2-batch-first": lambda: recurrent.RNN(INPUT, HIDDEN, 2, nonlinearity="relu", batch_first=True),
    "gru-2-bi": lambda: recurrent.GRU(INPUT, HIDDEN, 2, bidirectional=True),
    "gru-batch-first-no-bias": lambda: recurrent.GRU(INPUT, HIDDEN, batch_first=True, bias=False),
    "lstm-3": lambda: recurrent.LSTM(INPUT, HIDDEN, 3),
    "lstm-proj-bi-batch-first": lambda: recurrent.LSTM(
        INPUT, HIDDEN, proj_size=3, bidirectional=True, batch_first=True
    ),
}
CUSTOM = {
    "custom-sigmoid-2": lambda: CustomRNN(SigmoidCell(), INPUT, HIDDEN, 2),
    "layernorm-gru-2-bi": lambda: LayerNormGRU(INPUT, HIDDEN, 2, bidirectional=True),
    "layernorm-lstm-zoneout-batch-first": lambda: LayerNormLSTM(INPUT, HIDDEN, batch_first=True, zoneout=0.1),
    "gru-variant-weight-drop-bi": lambda: CustomRNN(
        GRUVariantCell(zoneout=0.2, weight_drop=0.3), INPUT, HIDDEN, bidirectional=True
    ),
}
# (name, initial states given): each model exported once with each exporter
CASES = [
    ("rnn-tanh", False),
    ("rnn-relu-2-batch-first", True),
    ("gru-2-bi", True),
    ("gru-batch-first-no-bias", False),
    ("lstm-3", False),
    ("lstm-proj-bi-batch-first", True),
    ("custom-sigmoid-2", False),
    ("layernorm-gru-2-bi", True),
    ("layernorm-lstm-zoneout-batch-first", True),
    ("gru-variant-weight-drop-bi", False),
]
SHAPES = [(1, 1), (17, 3), (300, 2)]  # (length, batch), none of them the example's (5, 2)
# onnxruntime also at the longest length the exports allow
ONNX_SHAPES = SHAPES + [(4096, 1)]
# An exported program runs its scans step by step: the longest length, at batch 1, keeps CI quick.
PROGRAM_SHAPES = [(1, 1), (17, 3), (120, 2), (4096, 1)]


def model(name: str):
    torch.manual_seed(0)
    return {**BUILT_IN, **CUSTOM}[name]().eval()


def example(layer, steps: int, batch: int):
    x = torch.randn(batch, steps, INPUT) if layer.batch_first else torch.randn(steps, batch, INPUT)
    lead = layer.num_layers * (2 if layer.bidirectional else 1)
    states = [torch.randn(lead, batch, size) for size in layer._state_sizes()]
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


@pytest.mark.parametrize("name,with_states", CASES, ids=[name for name, _ in CASES])
def test_one_program_serves_every_batch_and_length(name, with_states):
    layer = model(name)
    program = exported(layer, with_states).module()
    for steps, batch in PROGRAM_SHAPES:
        x, hx = example(layer, steps, batch)
        args = (x, hx) if with_states else (x,)
        for actual, expected in zip(flat(program(*args)), flat(layer(*args))):
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gru-2-bi", "layernorm-gru-2-bi"])
def test_the_graph_does_not_grow_with_the_example_length(name):
    layer = model(name)
    short, long = (len(exported(layer, False, steps).graph.nodes) for steps in (3, 12))
    assert short == long


def test_packed_input_says_to_export_padded():
    layer = recurrent.LSTM(INPUT, HIDDEN).eval()

    class Packed(torch.nn.Module):
        def forward(self, a, b):
            return layer(pack_sequence([a, b]))[1][0]

    with pytest.raises(Exception, match="export the model on padded input"):
        torch.export.export(Packed(), (torch.randn(4, INPUT), torch.randn(3, INPUT)))


def feeds(session, x, hx, with_states: bool) -> dict:
    tensors = [x] + ([*hx] if isinstance(hx, tuple) else [hx] if with_states else [])
    return {i.name: t.numpy() for i, t in zip(session.get_inputs(), tensors)}


def check_session(session, layer, with_states: bool):
    """The ONNX model in onnxruntime against the eager layer at every (length, batch) of ONNX_SHAPES."""
    for steps, batch in ONNX_SHAPES:
        x, hx = example(layer, steps, batch)
        actual = session.run(None, feeds(session, x, hx, with_states))
        with torch.no_grad():
            expected = flat(layer(x, hx) if with_states else layer(x))
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(torch.from_numpy(a), e, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(onnxruntime is None, reason="onnx, onnxscript and onnxruntime are in the dev extras")
@pytest.mark.parametrize("name,with_states", CASES, ids=[name for name, _ in CASES])
def test_onnx_runs_at_every_batch_and_length(name, with_states, tmp_path):
    """The dynamo ONNX exporter writes the scans as ONNX Scan loops: onnxruntime runs the model at
    lengths and batches never seen at export, with the eager numbers. Exported in grad mode, as
    users call it (torch 2.14.1's exporter once failed there on batch-first layers)."""
    layer = model(name)
    x, hx = example(layer, 5, 2)
    dims = {0: BATCH, 1: TIME} if layer.batch_first else {0: TIME, 1: BATCH}
    args, shapes = (x,), {"input": dims}
    if with_states:
        args, shapes["hx"] = (x, hx), (({1: BATCH}, {1: BATCH}) if isinstance(hx, tuple) else {1: BATCH})
    program = torch.onnx.export(layer, args, dynamo=True, dynamic_shapes=shapes, verbose=False)
    program.save(str(tmp_path / "layer.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "layer.onnx"), providers=["CPUExecutionProvider"])
    check_session(session, layer, with_states)


LEGACY = [(name, with_states) for name, with_states in CASES if name in BUILT_IN and "proj" not in name]
OPERATORS = {"RNN": "RNN", "GRU": "GRU", "LSTM": "LSTM"}


def legacy_export(layer, with_states: bool, path):
    """torch.onnx.export(..., dynamo=False) with dynamic_axes on batch and time."""
    x, hx = example(layer, 5, 2)
    names = ["input"] + ([f"state{i}" for i in range(len(hx) if isinstance(hx, tuple) else 1)] if with_states else [])
    axes = {"input": {0: "batch", 1: "time"} if layer.batch_first else {0: "time", 1: "batch"}}
    axes.update({name: {1: "batch"} for name in names[1:]})
    args = (x, hx) if with_states else (x,)
    torch.onnx.export(layer, args, str(path), dynamo=False, input_names=names, dynamic_axes=axes)


@pytest.mark.skipif(onnxruntime is None, reason="onnx, onnxscript and onnxruntime are in the dev extras")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's, on the legacy exporter itself
@pytest.mark.parametrize("name,with_states", LEGACY, ids=[name for name, _ in LEGACY])
def test_the_legacy_exporter_writes_onnx_native_operators(name, with_states, tmp_path):
    """dynamo=False with dynamic_axes: one ONNX RNN, GRU or LSTM operator per layer, as torch.nn's
    layers export, no unrolled loop, and onnxruntime's numbers are the eager ones at every length
    (which checks GRU's linear_before_reset and the gate orders)."""
    import onnx

    layer = model(name)
    legacy_export(layer, with_states, tmp_path / "layer.onnx")
    operators = [node.op_type for node in onnx.load(str(tmp_path / "layer.onnx")).graph.node]
    kind = type(layer).__name__
    assert operators.count(OPERATORS[kind]) == layer.num_layers
    assert "Tanh" not in operators and "Sigmoid" not in operators  # no step of the loop unrolled
    session = onnxruntime.InferenceSession(str(tmp_path / "layer.onnx"), providers=["CPUExecutionProvider"])
    check_session(session, layer, with_states)


@pytest.mark.skipif(onnxruntime is None, reason="onnx, onnxscript and onnxruntime are in the dev extras")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_legacy_exporter_takes_unbatched_input(tmp_path):
    layer = model("gru-2-bi")
    torch.onnx.export(
        layer, (torch.randn(5, INPUT),), str(tmp_path / "layer.onnx"), dynamo=False,
        input_names=["input"], dynamic_axes={"input": {0: "time"}},
    )  # fmt: skip
    session = onnxruntime.InferenceSession(str(tmp_path / "layer.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(40, INPUT)
    output, h_n = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected, expected_h = layer(x)
    torch.testing.assert_close(torch.from_numpy(output), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(h_n), expected_h, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["lstm-proj-bi-batch-first", "custom-sigmoid-2"])
def test_the_legacy_exporter_names_dynamo_where_onnx_has_no_operator(name, tmp_path):
    with pytest.raises(RuntimeError, match=r"dynamo=True"):
        legacy_export(model(name), False, tmp_path / "layer.onnx")


def test_recurrent_scan_0_exports_the_unrolled_loop(monkeypatch):
    """RECURRENT_SCAN=0 (for a torch whose scan does not export): the loop unrolled, a program at
    the example's shape, with the eager numbers."""
    monkeypatch.setenv("RECURRENT_SCAN", "0")
    layer = model("gru-2-bi")
    sizes = []
    for steps in (3, 6):
        x, _ = example(layer, steps, 2)
        program = torch.export.export(layer, (x,))
        torch.testing.assert_close(program.module()(x)[0], layer(x)[0], rtol=1e-5, atol=1e-5)
        sizes.append(len(program.graph.nodes))
    assert sizes[1] > sizes[0]
