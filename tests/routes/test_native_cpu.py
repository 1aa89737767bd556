"""The native CPU kernels (recurrent/kernels/cpu: each kind's sequence as one op compiled on this
machine) against torch.nn, where they run and where they must not, their gate math at the extremes,
and the fallback when there is no compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from functools import partial

import pytest
import torch
from helpers import assert_like_torch_nn, grads, hidden_arg, initial_states, ops_called, pair, scripted, triton_forced
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import recurrent
from recurrent.kernels import cpu, products
from recurrent.kernels.cpu import build

pytestmark = [
    pytest.mark.native_suite,
    pytest.mark.skipif(not products.ONEDNN, reason="the native kernels run on the fast CPU path (oneDNN's products)"),
    pytest.mark.skipif(triton_forced(), reason="the TorchScript backend's CPU path"),
    pytest.mark.skipif(os.environ.get("RECURRENT_NATIVE_CPU") == "0", reason="native CPU kernels switched off"),
]
HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
KINDS = ["RNN_tanh", "RNN_relu", "GRU", "LSTM"]


def module_pair(kind: str, *args, **kwargs):
    name, _, nonlinearity = kind.partition("_")
    extras = {"nonlinearity": nonlinearity} if nonlinearity else {}
    return pair(name, *args, **kwargs, **extras)


def outputs_and_grads(module, inputs, lengths=None, batch_first=False) -> list:
    """The module's output rows, final states and the gradients of the input, initial states and every
    parameter; the input (inputs[0], then the initial states) packed first where ``lengths`` is given."""
    x, states = inputs[0], inputs[1:]
    data = pack_padded_sequence(x, lengths, batch_first, enforce_sorted=False) if lengths is not None else x
    out, finals = module(data, hidden_arg(states))
    outs = [out.data if lengths is not None else out, *(finals if isinstance(finals, tuple) else (finals,))]
    return outs + grads(outs, [x, *states, *module.parameters()])


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler here")
def test_the_library_builds_and_loads_where_there_is_a_compiler():
    """... for the target asked for (RECURRENT_NATIVE_MARCH, else this CPU): the suite runs on that build."""
    assert cpu.available(), cpu.status()
    assert f"-march={build.target()}" in cpu.status(), cpu.status()


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    hidden=st.integers(1, 40),  # sizes that are not a multiple of the vector width: the loops' tails
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    packed=st.booleans(),
    with_states=st.booleans(),
    batch_first=st.booleans(),
)
def test_native_layers_equal_torch_nn(kind, layers, bidirectional, hidden, lengths, packed, with_states, batch_first):
    """Outputs, final states and the gradients of input, initial states and every parameter."""
    if not cpu.available():
        pytest.skip(cpu.status())
    torch.manual_seed(len(lengths) * 100 + hidden)
    reference, ours = module_pair(kind, 3, hidden, layers, bidirectional=bidirectional, batch_first=batch_first)
    steps, batch = max(lengths), len(lengths)
    x = torch.randn(*((batch, steps) if batch_first else (steps, batch)), 3, requires_grad=True)
    states = initial_states(kind, hidden, 0, (layers * (2 if bidirectional else 1), batch), torch.float32)
    states = states if with_states else []
    lengths = torch.tensor(lengths) if packed else None
    assert_like_torch_nn(
        partial(outputs_and_grads, lengths=lengths, batch_first=batch_first), reference, ours, [x, *states]
    )


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_many_rows_split_between_threads_equal_torch_nn(kind, threads):
    """Batches past one tile of rows (64), cut into one block per thread, with packed sequences of
    different lengths in each block, both directions: outputs, final states, every gradient."""
    if not cpu.available():
        pytest.skip(cpu.status())
    torch.manual_seed(threads)
    reference, ours = module_pair(kind, 3, 10, 2, bidirectional=True)
    lengths = torch.randint(1, 7, (150,))
    x = torch.randn(6, 150, 3, requires_grad=True)
    states = initial_states(kind, 10, 0, (4, 150), torch.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert_like_torch_nn(partial(outputs_and_grads, lengths=lengths), reference, ours, [x, *states])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("batch", [1, 150])
@pytest.mark.parametrize("kind", KINDS)
def test_one_step_calls_equal_torch_nn(kind, batch, threads):
    """A one-step call runs its products on the weights unpacked (ATen's), the LSTM's gate math apart from
    its micro-kernel, and its backward's products below 128 rows through MKL: one row and 150 rows split
    between threads, given states, both directions, padded and packed (one step of every sequence)."""
    if not cpu.available():
        pytest.skip(cpu.status())
    torch.manual_seed(batch)
    reference, ours = module_pair(kind, 3, 10, 2, bidirectional=True)
    x = torch.randn(1, batch, 3, requires_grad=True)
    states = initial_states(kind, 10, 0, (4, batch), torch.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for lengths in (None, torch.ones(batch, dtype=torch.long)):
            run = partial(outputs_and_grads, lengths=lengths)
            assert_like_torch_nn(run, reference, ours, [x, *states])
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one direction", "two directions"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_retained_graph_gives_torch_nns_gradients_twice(kind, bidirectional):
    """Two backwards through one graph (retain_graph=True) accumulate torch.nn's gradients twice. The
    RNN's first backward writes over its saved outputs, the second recomputes the layer; the lower
    layer's outputs, the upper one's input, stay as they were for the upper layer's second backward."""
    if not cpu.available():
        pytest.skip(cpu.status())
    torch.manual_seed(1)
    reference, ours = module_pair(kind, 3, 6, 2, bidirectional=bidirectional)

    def twice(module, inputs):
        x = inputs[0]
        out = module(x)[0]
        loss = (out * torch.linspace(-1, 1, out.size(-1), dtype=out.dtype)).sum()
        loss.backward(retain_graph=True)
        first = [p.grad.clone() for p in module.parameters()]
        loss.backward()
        return [x.grad, *first, *(p.grad for p in module.parameters())]

    x = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(2))
    # each module's own leaf: x.grad accumulates over both backwards
    assert_like_torch_nn(lambda m, inputs: twice(m, [inputs[0].detach().requires_grad_()]), reference, ours, [x])


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    sizes=st.tuples(st.integers(1, 70), st.integers(1, 9), st.integers(1, 9)),
    bias=st.booleans(),
    with_states=st.booleans(),
    threads=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**16),
)
def test_cells_on_the_native_op_equal_torch(kind, sizes, bias, with_states, threads, seed):
    """RNNCell, GRUCell and LSTMCell in float32 (the native cell op and its backward): h' (and c') and every
    gradient as accurate as torch.nn's, judged in float64, with and without states and biases."""
    if not cpu.available():
        pytest.skip(cpu.status())
    name, _, nonlinearity = kind.partition("_")
    extras = {"nonlinearity": nonlinearity} if nonlinearity else {}
    batch, input_size, hidden_size = sizes
    torch.manual_seed(seed)
    reference = getattr(torch.nn, name + "Cell")(input_size, hidden_size, bias, **extras)
    ours = getattr(recurrent, name + "Cell")(input_size, hidden_size, bias, **extras)
    ours.load_state_dict(reference.state_dict())
    count = (2 if name == "LSTM" else 1) if with_states else 0
    inputs = [torch.randn(batch, input_size)] + [torch.randn(batch, hidden_size) for _ in range(count)]

    def run(cell, given: list) -> list:
        given = [t.detach().requires_grad_() for t in given]
        states = None if count == 0 else given[1] if count == 1 else tuple(given[1:])
        outs = list(cell(given[0], states)) if name == "LSTM" else [cell(given[0], states)]
        return outs + grads(outs, [*given, *cell.parameters()])

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert "recurrent_cpu::cell_forward" in ops_called(ours, inputs[0], False)
        assert_like_torch_nn(run, reference, ours, inputs)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("kind", KINDS)
def test_native_ops_run_on_the_fast_path_only(kind, grad):
    """float32 eager CPU calls run the whole stack's op (and its backward); with dropout between layers in
    training, the kind's sequence op layer by layer; float64, a scripted module and a projected LSTM run
    neither, and a scripted model's code never refers to the library's ops."""
    if not cpu.available():
        pytest.skip(cpu.status())
    _, layer = module_pair(kind, 4, 8, 2, bidirectional=True)
    op = "recurrent_cpu::" + {"GRU": "gru_sequence", "LSTM": "lstm_sequence"}.get(kind, "rnn_sequence")
    stack = "recurrent_cpu::stack_forward"
    x = torch.randn(5, 3, 4, requires_grad=grad)

    called = ops_called(layer, x, grad)
    assert stack in called and (not grad or "recurrent_cpu::stack_backward" in called), sorted(called)
    assert op not in called  # the stack op runs it in C++, not through the dispatcher
    layer.dropout = 0.5
    called = ops_called(layer, x, grad)
    assert (op in called and stack not in called) if grad else stack in called, sorted(called)
    layer.dropout = 0.0

    def native(module, data) -> bool:
        return any(name.startswith("recurrent_cpu::") for name in ops_called(module, data, grad))

    assert not native(layer.double(), x.detach().double().requires_grad_(grad))
    compiled = scripted(layer.float())
    assert not native(compiled, x)
    assert "recurrent_cpu" not in str(compiled.inlined_graph)
    if kind == "LSTM":
        assert not native(recurrent.LSTM(4, 8, proj_size=3), x)


@pytest.mark.parametrize("scale", [1.0, 30.0, 200.0])
def test_the_gate_math_holds_at_the_extremes(scale):
    """One step of each kind's sequence op against the formulas in ATen ops, pre-activations up to
    ±600 (sigmoid and tanh saturate; the exponential is clamped there), infinities and NaN kept. The
    pre-activations come in through the biases (x and the weights zero: 0·inf would be NaN in a
    product), so each of the 6 rows gets the same ones; c0 differs per row."""
    if not cpu.available():
        pytest.skip(cpu.status())
    torch.manual_seed(0)
    hidden, ops = 37, torch.ops.recurrent_cpu
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 88.5, -88.5, 1e-30])

    def values(*shape):
        t = torch.randn(*shape) * scale
        t.view(-1, shape[-1])[0, : special.numel()] = special
        return t

    def zeros(gates):  # x, W_ih, h0 and W_hh
        return (
            torch.zeros(1, 6, 1),
            torch.zeros(1, gates * hidden, 1),
            torch.zeros(1, 6, hidden),
            torch.zeros(1, gates * hidden, hidden),
        )

    x, w_ih, h0, w_hh = zeros(4)
    a, c = values(1, 4 * hidden), values(1, 6, hidden)
    h, _, c_new, gates, _ = ops.lstm_sequence(x, w_ih, a, h0, c, w_hh, [6], True)
    i, f, g, o = a[:, None].chunk(4, -1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    expected_c = f * c + i * g
    expected = [(gates, torch.cat([i, f, g, o], -1).expand(1, 6, -1)), (c_new, expected_c), (h, o * expected_c.tanh())]
    for actual, wanted in expected:
        torch.testing.assert_close(actual, wanted, rtol=1e-6, atol=1e-6, equal_nan=True)
    x, w_ih, h0, w_hh = zeros(3)
    gi, gh, h0 = values(1, 3 * hidden), values(1, 3 * hidden), torch.randn(1, 6, hidden) * scale
    h_new, _, gates, ghn = ops.gru_sequence(x, w_ih, gi, h0, w_hh, gh, [6], True)
    r, z = (gh[:, None, : 2 * hidden] + gi[:, None, : 2 * hidden]).sigmoid().chunk(2, -1)
    n = (gi[:, None, 2 * hidden :] + r * gh[:, None, 2 * hidden :]).tanh()
    torch.testing.assert_close(h_new, (1 - z) * n + z * h0, rtol=1e-6, atol=2e-6, equal_nan=True)
    torch.testing.assert_close(gates, torch.cat([r, z, n], -1).expand(1, 6, -1), rtol=1e-6, atol=1e-6, equal_nan=True)
    assert torch.equal(ghn.nan_to_num(), gh[:, None, 2 * hidden :].expand(1, 6, hidden).nan_to_num())
    for relu in (False, True):
        x, w_ih, h0, w_hh = zeros(1)
        a = values(1, hidden)
        h, _ = ops.rnn_sequence(x, w_ih, a, h0, w_hh, [6], relu)
        wanted = (a.relu() if relu else a.tanh())[:, None].expand(1, 6, -1)
        torch.testing.assert_close(h, wanted, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_tanh_is_accurate_relative_to_its_value():
    """The native tanh (the RNN's activation, the GRU's n, the LSTM's g and tanh(c')) within a few
    float32 roundings of its own value, from 1e-30 to saturation, as torch's tanh is: a sum such as
    2σ(2a) − 1 would be off by 1e-7 absolute, all of a tanh of 1e-7's value."""
    if not cpu.available():
        pytest.skip(cpu.status())
    magnitudes = torch.logspace(-30, 1.3, 1000, dtype=torch.float64)
    a = torch.cat([magnitudes, -magnitudes, torch.linspace(-1, 1, 1001, dtype=torch.float64)]).float()
    rows = torch.zeros(1, 1, 1)
    h, _ = torch.ops.recurrent_cpu.rnn_sequence(
        rows, torch.zeros(1, a.numel(), 1), a[None], torch.zeros(1, 1, a.numel()), torch.zeros(1, a.numel(), a.numel()),
        [1], False,
    )  # fmt: skip
    exact = torch.tanh(a.double())
    relative = ((h[0, 0].double() - exact).abs() / exact.abs().clamp_min(1e-300)).max().item()
    assert relative < 4 * torch.finfo(torch.float32).eps, relative


@pytest.mark.parametrize("sizes", [[5, 260, 3], [0, 128], [1]], ids=["uneven", "empty block", "one row"])
@pytest.mark.parametrize("hidden,bias", [(13, True), (0, False)], ids=["x, h and bias", "x alone"])
def test_weight_grad_equals_the_plain_sums(sizes, hidden, bias):
    """recurrent_cpu.weight_grad against Σ gradᵀ [x, h, 1] written out in float64: two directions,
    row blocks that straddle its 128-row blocks (x's and h's cut differently), a gradient read as a
    column slice of wider rows (the GRU's hidden part) and 150 columns (a part panel)."""
    if not cpu.available():
        pytest.skip(cpu.status())
    torch.manual_seed(0)
    rows = sum(sizes)
    grad = torch.randn(2, rows, 200)[:, :, :150]
    x_blocks = [torch.randn(2, n, 7) for n in sizes]
    h = torch.randn(2, rows, hidden)
    h_blocks = list(h.split([min(2, rows), rows - min(2, rows)], 1)) if hidden else []
    dw_x, dw_h, db = torch.ops.recurrent_cpu.weight_grad(grad, x_blocks, h_blocks, bias)
    g = grad.double().transpose(1, 2)
    torch.testing.assert_close(dw_x.double(), g @ torch.cat(x_blocks, 1).double(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(dw_h.double(), g @ h.double(), rtol=1e-5, atol=1e-4)
    wanted = g.sum(2) if bias else torch.zeros(2, 0, dtype=torch.float64)
    torch.testing.assert_close(db.double(), wanted, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind,hidden", [("LSTM", 48), ("GRU", 48), ("RNN_tanh", 130)])
def test_one_pass_weight_gradients_own_their_storage(kind, hidden):
    """One direction, more than 128 gate columns (the native one-pass weight gradients): every
    parameter's gradient, the LSTM's and RNN's two bias gradients (one sum) included, is its own
    storage, so that clipping or accumulating one does not change another."""
    if not cpu.available():
        pytest.skip(cpu.status())
    _, ours = module_pair(kind, 6, hidden, 1)
    out = ours(torch.randn(5, 3, 6))[0]
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    storages = [p.grad.untyped_storage().data_ptr() for p in ours.parameters()]
    assert len(set(storages)) == len(storages), [n for n, _ in ours.named_parameters()]


def test_bad_operands_raise_naming_what_was_expected():
    if not cpu.available():
        pytest.skip(cpu.status())
    x, w_ih, h0, w_hh = torch.zeros(1, 6, 3), torch.zeros(1, 8, 3), torch.zeros(1, 2, 8), torch.zeros(1, 8, 8)
    with pytest.raises(RuntimeError, match=r"x must be a contiguous float32 CPU tensor of shape \[1, 6, 3\]"):
        torch.ops.recurrent_cpu.rnn_sequence(x.double(), w_ih, None, h0, w_hh, [2, 2, 2], False)
    with pytest.raises(RuntimeError, match=r"w_hh must be .* of shape \[1, 8, 8\], got \[1, 8, 7\]"):
        torch.ops.recurrent_cpu.rnn_sequence(x, w_ih, None, h0, w_hh[..., :7], [2, 2, 2], False)
    with pytest.raises(RuntimeError, match="batch_sizes must not increase"):
        torch.ops.recurrent_cpu.rnn_sequence(x, w_ih, None, h0, w_hh, [1, 2, 3], False)
    grad, hs, h0 = torch.zeros(6, 16), torch.zeros(2, 6, 8), torch.zeros(2, 2, 8)
    w_hh = torch.zeros(2, 8, 8)
    with pytest.raises(RuntimeError, match="two directions need the reverse index"):
        torch.ops.recurrent_cpu.rnn_sequence_backward(grad, None, h0, hs, h0, w_hh, [2, 2, 2], False)
    with pytest.raises(RuntimeError, match="reverse must hold row numbers below 6"):
        reverse = torch.tensor([5, 4, 3, 2, 1, 6])
        torch.ops.recurrent_cpu.rnn_sequence_backward(grad, reverse, h0, hs, h0, w_hh, [2, 2, 2], False)
    grad = torch.zeros(2, 6, 16)
    with pytest.raises(RuntimeError, match="h_blocks must hold 6 rows"):  # would read past the last block
        torch.ops.recurrent_cpu.weight_grad(grad, [hs], [hs[:, :5]], True)
    with pytest.raises(RuntimeError, match=r"x_blocks must be float32 CPU tensors \(2, ·, 8\)"):
        torch.ops.recurrent_cpu.weight_grad(grad, [hs, hs[:1, :0]], [], False)


FALLBACK = textwrap.dedent(
    """
    import torch, recurrent
    from recurrent.kernels import cpu
    torch.manual_seed(0)
    reference = torch.nn.LSTM(4, 8, 2, bidirectional=True)
    ours = recurrent.LSTM(4, 8, 2, bidirectional=True)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3, 4)
    torch.testing.assert_close(ours(x)[0], reference(x)[0], rtol=1e-5, atol=1e-5)
    print(cpu.available(), cpu.status())
    """
)


@pytest.mark.parametrize(
    "cxx,reason",
    [("no-such-compiler-here", "no C++ compiler"), ("false", "false failed")],
    ids=["no compiler", "compile fails"],
)
def test_without_a_working_compiler_the_aten_fast_path_runs(cxx, reason, tmp_path):
    if cxx == "false" and shutil.which("false") is None:
        pytest.skip("no `false` program here")
    env = {**os.environ, "CXX": cxx, "RECURRENT_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("False") and reason in done.stdout, done.stdout
    assert not list(tmp_path.rglob("*.so"))
