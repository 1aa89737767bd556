"""torch.compile: the layers compile, with torch.nn's numbers and gradients, and with
``dynamic=True`` and ``torch._dynamo.config.capture_scalar_outputs`` a new sequence length does not
recompile (the loops are scans, recurrent.kernels.scan), in inference and in training."""

import pytest
import torch
from helpers import assert_as_accurate, float64_twin
from torch._dynamo.testing import CompileCounterWithBackend

import recurrent
from recurrent import LayerNormGRU
from recurrent.kernels.scan import scan

INPUT, HIDDEN = 3, 5


def torch_twin(layer):
    twin = getattr(torch.nn, type(layer).__name__)(
        INPUT, HIDDEN, layer.num_layers, bidirectional=layer.bidirectional, batch_first=layer.batch_first
    )
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


def check_lengths(layer, reference, compiled, train: bool, lengths, counter=None):
    """The compiled model as accurate as the reference at each length (both judged by the reference in
    float64); with a counter, that lengths after the first compile nothing."""
    compiled_after_first = None
    exact = float64_twin(reference)
    for steps in lengths:
        x = torch.randn(2, steps, INPUT) if layer.batch_first else torch.randn(steps, 2, INPUT)
        results = zip(run(compiled, x, train), run(reference, x, train), run(exact, x.double(), train))
        for i, (actual, expected, x64) in enumerate(results):
            assert_as_accurate(actual, expected, x64, f"tensor {i}, length {steps}")
        if counter is not None:
            compiled_after_first = compiled_after_first or counter.frame_count
            assert counter.frame_count == compiled_after_first, f"recompiled for length {steps}"


# (kind, constructor arguments, train): training through a bidirectional layer stays unrolled
# (recurrent.kernels.scan.scanning says why), so it is not among them.
NO_RECOMPILE = [
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True), False),
    ("GRU", dict(num_layers=2), True),
    ("LSTM", dict(batch_first=True), True),
]
BACKENDS = ["inductor", "inductor", "aot_eager"]  # Inductor, what users get, where CI's time allows


@pytest.mark.skipif(scan is None, reason="this torch has no scan operator")
@pytest.mark.parametrize(
    "kind,kwargs,train,backend",
    [case + (backend,) for case, backend in zip(NO_RECOMPILE, BACKENDS)],
    ids=["gru-bi-inference", "gru-training", "lstm-training"],
)
def test_a_new_length_does_not_recompile(kind, kwargs, train, backend):
    torch.manual_seed(0)
    layer = getattr(recurrent, kind)(INPUT, HIDDEN, **kwargs)
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(layer, backend=counter, dynamic=True)
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        check_lengths(layer, torch_twin(layer), compiled, train, [4, 9, 31], counter)


def test_a_custom_cell_compiles_unrolled():
    """A custom cell's loop compiles unrolled (recurrent.CustomRNN._scanned says why), with its
    eager numbers and gradients."""
    torch.manual_seed(0)
    layer = LayerNormGRU(INPUT, HIDDEN, bidirectional=True)
    compiled = torch.compile(layer, dynamic=True)
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        check_lengths(layer, layer, compiled, True, [4])


def test_compiles_unrolled_with_the_default_settings():
    """Without capture_scalar_outputs, and in training through both directions, the loops are
    unrolled: still torch.nn's numbers and gradients (one compilation per length)."""
    torch.manual_seed(0)
    layer = recurrent.LSTM(INPUT, HIDDEN, bidirectional=True)
    compiled = torch.compile(layer, dynamic=True)
    check_lengths(layer, torch_twin(layer), compiled, True, [4])
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        check_lengths(layer, torch_twin(layer), compiled, True, [5])
