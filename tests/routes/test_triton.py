"""The Triton kernels against the TorchScript kernels, pair by pair, and their dispatch.

Runs where the kernels can: under Triton's interpreter (``TRITON_INTERPRET=1``, the second pytest
run of ``.ci/run``) or on a GPU; the layer-level parity against torch.nn is the whole parity suite
run again with ``RECURRENT_BACKEND=triton``.
"""

import copy
import os
from functools import partial

import pytest
import torch
from helpers import ROOT, assert_as_accurate, triton_forced
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import recurrent
from recurrent.kernels import KINDS
from recurrent.kernels.common import previous_blocks

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [
    pytest.mark.triton_suite,
    pytest.mark.skipif(
        DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1", reason="needs a GPU or TRITON_INTERPRET=1"
    ),
]
# (directions, hidden size, per-step batch sizes): padded, several column blocks with a ragged
# last one, packed with sequences ending at different steps, a single step.
LAYOUTS = [(1, 5, [3, 3, 3, 3]), (2, 20, [4, 4, 4]), (2, 37, [18, 17, 9, 2, 1]), (1, 3, [1])]


MODES = [(mode, False) for mode in sorted(KINDS)] + [("LSTM", True)]  # (mode, projected)


def kernel_inputs(mode: str, projected: bool, directions: int, hidden: int, batch_sizes: list, dtype: torch.dtype):
    """(gi, state0, W_hh, b_hh, extra) of a layer; a projected LSTM's state h has about hidden/2 columns."""
    kind = KINDS[mode]
    rows, batch, gates = sum(batch_sizes), batch_sizes[0], kind.gates * hidden
    width = max(1, hidden // 2) if projected else hidden
    make = lambda *shape, scale=1.0: (torch.randn(*shape, dtype=torch.float64) * scale).to(DEVICE, dtype)  # noqa: E731
    states = [make(directions, batch, width)] + ([make(directions, batch, hidden)] if mode == "LSTM" else [])
    b_hh = None if kind.folds_bias else make(directions, 1, gates)
    extra = [make(directions, width, hidden, scale=0.3)] if projected else []
    return make(directions, rows, gates), states, make(directions, gates, width, scale=0.3), b_hh, extra


def assert_same(actual: list, expected: list, dtype: torch.dtype, what: str) -> None:
    """float64: element by element to 1e-9. float32 and float16: the whole tensor within a few roundings
    (relative error of its norm), since single elements near zero carry the rounding of their sums."""
    assert len(actual) == len(expected), f"{what}: {len(actual)} tensors, TorchScript gives {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"{what}[{i}]: shape {tuple(a.shape)}, TorchScript gives {tuple(e.shape)}"
        if dtype == torch.float64:
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9, msg=lambda m: f"{what}[{i}]: {m}")
        else:  # float32 with IEEE products (the interpreter's): a few roundings of a short sequence; TF32's as fp16's
            error = (a.double() - e).norm() / e.norm().clamp_min(1e-6)
            tf32 = DEVICE == "cuda" and torch.backends.cudnn.allow_tf32
            bound = 1e-5 if dtype == torch.float32 and not tf32 else 4e-3
            assert error < bound, f"{what}[{i}]: relative error {error:.2e} against the float64 TorchScript kernel"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("mode,projected", MODES, ids=lambda m: str(m))
def test_kernels_equal_torchscript_kernels(mode, projected, layout, dtype):
    """Forward (saving and not), the saved activations and the backward, against the TorchScript pair."""
    assert_pair_equals_torchscript("triton", mode, projected, layout, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", LAYOUTS[1:3], ids=str)
@pytest.mark.parametrize("mode", sorted(KINDS))
def test_resident_kernels_equal_torchscript_kernels(mode, layout, dtype):
    """The kernels holding W_hh on-chip (recurrent.kernels.triton.resident), both directions: padded, and
    packed with sequences ending at different steps; tiles zero-padded (20 and 37 columns in 32 and 64).
    (The single-step and one-direction layouts run in the layer test below and the parity suite.)"""
    assert_pair_equals_torchscript("resident", mode, False, layout, dtype)


def assert_pair_equals_torchscript(name: str, mode: str, projected: bool, layout: tuple, dtype: torch.dtype) -> None:
    directions, hidden, batch_sizes = layout
    torch.manual_seed(0)
    gi, states, w_hh, b_hh, weights = kernel_inputs(mode, projected, directions, hidden, batch_sizes, dtype)
    reference, triton = KINDS[mode].kernel("torchscript"), KINDS[mode].kernel(name, projected)
    # The TorchScript kernels are the reference in float64: 16-bit runs compare with them in float64.
    ref_in = [gi.double(), [s.double() for s in states], w_hh.double(), None if b_hh is None else b_hh.double()]
    ref_weights = [w.double() for w in weights]
    hs, finals, saved = reference.forward(
        ref_in[0], ref_in[1], ref_in[2].transpose(1, 2), ref_in[3], ref_weights, batch_sizes, True
    )
    t_hs, t_finals, t_saved = triton.forward(gi, states, w_hh.transpose(1, 2), b_hh, weights, batch_sizes, True)
    assert_same([t_hs, *t_finals, *t_saved], [hs, *finals, *saved], dtype, f"{mode} forward")
    plain = triton.forward(gi, states, w_hh.transpose(1, 2), b_hh, weights, batch_sizes, False)
    assert plain[2] == [] and torch.equal(plain[0], t_hs), "forward without saving"
    # Drawn on the CPU, so that a GPU run checks the numbers the interpreter checks: on the GPU's own
    # draw one 16-bit case summed to dh0 with 138-fold cancellation, past what fp16 rounding can keep.
    grad_hs = torch.randn(hs.shape, dtype=hs.dtype).to(DEVICE)
    grad_finals = [torch.randn(f.shape, dtype=f.dtype).to(DEVICE) for f in finals]
    expected = reference.backward(
        grad_hs, grad_finals, ref_in[1], hs, previous_blocks(ref_in[1][0], hs, batch_sizes), saved, ref_in[2],
        ref_weights, batch_sizes,
    )  # fmt: skip
    # The backward gets the forward's own activations, so 16-bit rounding of the forward does not count twice.
    grad_hs, hs = grad_hs.to(dtype), hs.to(dtype)
    actual = triton.backward(
        grad_hs, [g.to(dtype) for g in grad_finals], states, hs, previous_blocks(states[0], hs, batch_sizes),
        [s.to(dtype) for s in saved], w_hh, weights, batch_sizes,
    )  # fmt: skip
    flat = lambda result: [result[0], result[1], *result[2], *result[3]]  # noqa: E731
    assert_same(flat(actual), flat(expected), dtype, f"{mode} backward")


@pytest.mark.parametrize("mode,projected", MODES, ids=lambda m: str(m))
def test_kernels_get_weights_with_the_compiled_unit_stride(mode, projected, monkeypatch):
    """Weights laid out the other way round (as a user's non-contiguous parameter may be) reach every
    launch with the unit stride that Triton compiles in and tools/triton_check.py checks (the
    forward's W_hhᵀ and W_hrᵀ along K, the backward's W_hh and W_hr along the columns), and give the
    same results as the usual layout."""
    from recurrent.kernels.triton import common

    torch.manual_seed(0)
    gi, states, w_hh, b_hh, extra = kernel_inputs(mode, projected, 2, 20, [4, 4, 3], torch.float64)
    swapped = lambda w: w.transpose(1, 2).contiguous().transpose(1, 2)  # noqa: E731 - same values, strides swapped
    launches = []  # (forward?, W_hh's strides as passed, W_hr's stride along its unit dimension)
    launch = common.launch

    def spy(kernel, tensors, w, batch_sizes, batch, hidden, own=(), **constants):
        forward = "forward" in kernel.__name__
        launches.append((forward, w.stride(), (own[-2] if forward else own[-1]) if projected else 1))
        return launch(kernel, tensors, w, batch_sizes, batch, hidden, own, **constants)

    monkeypatch.setattr(common, "launch", spy)
    triton = KINDS[mode].kernel("triton")
    runs = []
    for layout in (lambda w: w, swapped):
        w, ex = layout(w_hh), [layout(e) for e in extra]
        hs, finals, saved = triton.forward(gi, states, w.transpose(1, 2), b_hh, ex, [4, 4, 3], True)
        grads = triton.backward(
            torch.ones_like(hs),
            [torch.ones_like(f) for f in finals],
            states,
            hs,
            previous_blocks(states[0], hs, [4, 4, 3]),
            saved,
            w,
            ex,
            [4, 4, 3],
        )
        runs.append([hs, *finals, grads[0], *grads[2], *grads[3]])
    assert [f for f, _, _ in launches] == [True, False, True, False]
    for forward, w_strides, hr_stride in launches:
        assert w_strides[1 if forward else 2] == 1 and hr_stride == 1, (forward, w_strides, hr_stride)
    for a, e in zip(*runs):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


class Launches(TorchDispatchMode):
    """What a call launches on a GPU, in order: every ATen op but views and allocations, and each Triton
    kernel (by name; ops inside a launch, the interpreter's own, are not counted)."""

    QUIET = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided", "lift_fresh", "_unsafe_view"}

    def __init__(self, monkeypatch):
        super().__init__()
        from recurrent.kernels.triton import common

        self.names, run = [], common.run

        def spy(kernel, *args, **kwargs):
            self.names.append(kernel.fn.__name__)
            with _disable_current_modes():
                return run(kernel, *args, **kwargs)

        monkeypatch.setattr(common, "run", spy)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not (func.is_view or func.__name__.split(".")[0] in self.QUIET):
            self.names.append(func.__name__.split(".")[0])
        return out


@pytest.mark.skipif(not triton_forced(), reason="the dispatch of the RECURRENT_BACKEND=triton run")
@pytest.mark.parametrize("kind,options", [("RNN", {}), ("GRU", {}), ("LSTM", {}), ("LSTM", {"proj_size": 2})])
def test_forced_backend_runs_the_triton_kernels(kind, options, monkeypatch):
    """Under RECURRENT_BACKEND=triton the layers really run the Triton kernels (not the TorchScript loop)."""
    layer = getattr(recurrent, kind)(3, 4, 2, bidirectional=True, device=DEVICE, **options)
    x = torch.randn(5, 2, 3, device=DEVICE)
    assert recurrent.backend_for(layer, x) == "triton"
    with Launches(monkeypatch) as launches:
        layer(x)[0].sum().backward()
    kernels = [n for n in launches.names if n.endswith("_kernel")]
    assert [n.rsplit("_", 2)[1] for n in kernels] == ["forward"] * 2 + ["backward"] * 2, kernels


@pytest.mark.parametrize("backend", ["triton", "resident"])
@pytest.mark.parametrize("kind,bias", [("GRU", True), ("RNN", True), ("LSTM", True), ("GRU", False)])
def test_a_training_step_launches_one_recurrent_kernel_and_the_products_per_layer(kind, bias, backend, monkeypatch):
    """The launches of one forward and backward of a 2-layer stack on the CUDA path (issue 35, item 3): per layer
    the input product and the recurrent kernel forward; the recurrent kernel (which sums the bias gradients) and
    the weight-gradient products (and the input gradient's, below the last layer) backward. No concatenation of
    final states, no copies, no zeros, no bias sums. batch_first adds torch.nn's own cost: the input made
    time-major, and its gradient. The LSTM still sums its two biases before the input product (its kernels
    adding b_hh spilled registers)."""
    monkeypatch.setenv("RECURRENT_BACKEND", backend)
    torch.manual_seed(0)
    product = "baddbmm" if bias else "bmm"
    kernel = f"{kind.lower()}_{{}}_kernel"
    for batch_first in (False, True):
        layer = getattr(recurrent, kind)(6, 8, 2, bias=bias, batch_first=batch_first, device=DEVICE)
        x = torch.randn(4, 5, 6, device=DEVICE)
        layer(x)  # compiles
        with Launches(monkeypatch) as launches:
            out, h_n = layer(x)
        forward = (["add"] * (kind == "LSTM" and bias) + [product, kernel.format("forward")]) * 2
        assert launches.names == ["clone"] * batch_first + forward, launches.names
        grad = torch.randn(out.shape, device=DEVICE)  # laid out as the caller sees the output
        with Launches(monkeypatch) as launches:
            torch.autograd.backward(out, grad)
        backward = [kernel.format("backward"), "bmm", "bmm", "bmm", kernel.format("backward"), "bmm", "bmm"]
        assert launches.names == ["clone"] * batch_first + backward, launches.names


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_resident_backend_runs_the_resident_kernels_and_equals_torch_nn(kind, monkeypatch):
    """RECURRENT_BACKEND=resident: a packed, bidirectional 2-layer layer runs one resident launch per layer
    and pass, and gives torch.nn's outputs and gradients (the final states' too: rows that end early carry
    their gradient through the steps after their end)."""
    monkeypatch.setenv("RECURRENT_BACKEND", "resident")
    torch.manual_seed(0)
    ours = getattr(recurrent, kind)(3, 6, 2, bidirectional=True, device=DEVICE, dtype=torch.float64)
    theirs = getattr(torch.nn, kind)(3, 6, 2, bidirectional=True, device=DEVICE, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 3, device=DEVICE, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [4, 3, 1])
    assert recurrent.route_for(ours, packed).kernel == "resident"
    from recurrent.kernels.triton import resident

    def loss(result):
        finals = result[1] if isinstance(result[1], tuple) else (result[1],)
        return result[0].data.sum() + sum((f * f).sum() for f in finals)

    with Launches(monkeypatch) as launches:
        mine = ours(packed)
        mine_grads = torch.autograd.grad(loss(mine), list(ours.parameters()))
    reference = theirs(packed)
    torch.testing.assert_close(mine[0].data, reference[0].data, rtol=1e-9, atol=1e-9)
    for a, b in zip(mine_grads, torch.autograd.grad(loss(reference), list(theirs.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    kernels = [n for n in launches.names if n.endswith("_kernel")]
    mode = {"RNN": "rnn", "GRU": "gru", "LSTM": "lstm"}[kind]
    assert kernels == [f"{mode}_forward_kernel"] * 2 + [f"{mode}_backward_kernel"] * 2, kernels
    assert all(getattr(resident, n).fn.__name__ == n for n in kernels)


def test_resident_backend_refuses_a_layer_whose_weights_do_not_fit(monkeypatch):
    monkeypatch.setenv("RECURRENT_BACKEND", "resident")
    layer = recurrent.GRU(3, 200, device=DEVICE)
    with pytest.raises(RuntimeError, match="RECURRENT_BACKEND=resident.*hidden_size 200"):
        layer(torch.randn(2, 1, 3, device=DEVICE))
    with pytest.raises(RuntimeError, match="no resident kernel for a projected LSTM"):
        recurrent.LSTM(3, 8, proj_size=2, device=DEVICE)(torch.randn(2, 1, 3, device=DEVICE))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_triton_layers_capture_in_cuda_graphs(kind, monkeypatch):
    """No host synchronisation inside a padded call: the layer captures, and replays equal to eager."""
    monkeypatch.setenv("RECURRENT_BACKEND", "triton")
    torch.manual_seed(0)
    layer = getattr(recurrent, kind)(8, 16, 2, bidirectional=True, device="cuda")
    x = torch.randn(6, 4, 8, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(layer, (x,))
    eager_out = layer(x)[0]
    (eager_grad,) = torch.autograd.grad(eager_out.sum(), x)
    graph_out = graphed(x)[0]
    (graph_grad,) = torch.autograd.grad(graph_out.sum(), x)
    torch.testing.assert_close(graph_out, eager_out)
    torch.testing.assert_close(graph_grad, eager_grad)


class _Classifier(torch.nn.Module):
    """The Fashion-MNIST GRU classifier's shape, smaller: a 2-layer GRU read at its last step, a linear head."""

    def __init__(self):
        super().__init__()
        self.rnn = recurrent.GRU(28, 32, 2, batch_first=True)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_compiled_training_step_runs_as_cuda_graphs():
    """torch.compile(mode="reduce-overhead") over a model holding our GRU: inductor captures the whole step,
    forward and backward, in CUDA graphs (it skips none: our layers are opaque ops that launch the Triton
    kernels with no host synchronisation), and the step's loss and gradients equal eager's."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = _Classifier().cuda()
    x, y = torch.randn(32, 28, 28, device="cuda"), torch.randint(0, 10, (32,), device="cuda")
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, mode="reduce-overhead")
    for _ in range(3):  # a warm-up run, the recorded one, then replays
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(compiled(x), y)
        loss.backward()
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    graphed = [loss.detach().clone()] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    eager = torch.nn.functional.cross_entropy(model(x), y)
    eager.backward()
    for a, b in zip(graphed, [eager.detach()] + [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_tuning_script_times_and_compares_every_candidate(tmp_path):
    """benchmarks/triton_tune.py end to end (tiny shapes): a row per case and candidate, with times,
    and outputs that match the pinned configuration's."""
    import importlib.util
    import json

    path = ROOT / "benchmarks" / "triton_tune.py"
    spec = importlib.util.spec_from_file_location("triton_tune", path)
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    assert tune.main(["--smoke", "--json", str(tmp_path / "tune.json")]) == 0
    rows = json.loads((tmp_path / "tune.json").read_text())["rows"]
    expected = {(c.name, k) for c in tune.SMOKE_CASES for k in [tune.PINNED, tune.label(tune.CANDIDATES[0])]}
    assert {(r["case"], r["config"]) for r in rows} == expected
    for r in rows:
        assert r["forward_us_per_step"] > 0 and r["backward_us_per_step"] > 0
        assert r["forward_max_diff"] < 1e-4 and r["backward_max_diff"] < 1e-4, r


# (kind, options, layers, bidirectional, length, per-sequence lengths or None, input size, hidden): the
# speed shapes' sizes, several programs of rows, every column width, a ragged last row block, packing.
REAL_SIZES = [
    ("GRU", {}, 2, False, 28, None, 28, 128),
    ("RNN", {}, 1, True, 28, None, 28, 128),
    ("LSTM", {}, 2, False, 28, None, 28, 128),
    ("GRU", {}, 1, True, 40, "packed", 24, 256),
    ("LSTM", {"proj_size": 96}, 2, True, 30, "packed", 24, 200),
    ("RNN", {"nonlinearity": "relu"}, 1, False, 60, None, 32, 512),
    ("GRU", {}, 1, False, 64, None, 32, 512),
]


# precision -> (the layer's dtype, cuDNN's TF32 switch, which the Triton kernels follow, the largest error
# allowed relative to each tensor's norm with TF32; None: float64 element by element to 1e-9, float32 as
# accurate as cuDNN's float32 (helpers.assert_as_accurate)). With TF32, also up to twice torch.nn's own TF32
# error: a ReLU RNN of H = 512 over 60 steps carries TF32's rounding to 1.5e-2.
PRECISIONS = {
    "float64": (torch.float64, False, None),
    "float32": (torch.float32, False, None),
    "tf32": (torch.float32, True, 1e-3),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="real sizes on the GPU (the interpreter runs small ones)")
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("case", REAL_SIZES, ids=lambda c: f"{c[0]}-H{c[7]}-{c[3]}-{c[5]}")
def test_triton_layers_equal_torch_nn_at_real_sizes_cuda(case, precision, monkeypatch):
    """On a GPU: the Triton layers' outputs, final states and every gradient against torch.nn's in
    float64 (cuDNN runs it too), at sizes where many programs run and barriers matter: float64 to 1e-9,
    float32 with IEEE dots as accurate as cuDNN's float32, with TF32 dots (the default) to 1e-3 of each
    tensor's norm or twice cuDNN's own TF32 error, whichever is larger."""
    kind, options, layers, bidirectional, length, packing, inputs, hidden = case
    dtype, tf32, limit = PRECISIONS[precision]
    monkeypatch.setenv("RECURRENT_BACKEND", "triton")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(inputs, hidden, layers, bidirectional=bidirectional, **options)
    ours = getattr(recurrent, kind)(inputs, hidden, layers, bidirectional=bidirectional, **options)
    ours.load_state_dict(ref.state_dict())
    ref, ours = ref.to("cuda", torch.float64), ours.to("cuda", dtype)
    x = torch.randn(length, 37, inputs, device="cuda", dtype=torch.float64)  # 37: three blocks of 16 rows
    lengths = torch.randint(1, length + 1, (37,)) if packing else None
    expected, actual, cudnn = (
        results_at_real_sizes(layer, ours, x, lengths)
        for layer in (ref, ours, copy.deepcopy(ref).float() if dtype == torch.float32 else ref)
    )
    errors = partial(relative_errors, expected)
    names = ["output"] + ["h_n", "c_n"][: len(expected) - 2 - len(list(ref.parameters()))] + ["input"]
    names += [n for n, _ in ref.named_parameters()]
    for name, a, e, c, error, torch_error in zip(names, actual, expected, cudnn, errors(actual), errors(cudnn)):
        if dtype == torch.float64:
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")
        elif limit is None:
            assert_as_accurate(a, c, e, f"{name} ({precision})")
        else:
            assert error < max(limit, 2 * torch_error), (
                f"{name}: relative error {error:.2e} against torch.nn in float64 ({precision}; "
                f"torch.nn's own: {torch_error:.2e})"
            )


def relative_errors(expected: list, results: list) -> list:
    return [((a.double() - e).norm() / e.norm().clamp_min(1e-12)).item() for a, e in zip(results, expected)]


def results_at_real_sizes(layer, ours, x, lengths) -> list:
    """[output, *final states, *gradients of the input and every parameter] of ``layer`` on x (packed to
    ``lengths`` where given), under a loss drawn with seed 1 (the same for every layer)."""
    torch.manual_seed(1)
    data = x.to(next(layer.parameters()).dtype).requires_grad_()
    arg = torch.nn.utils.rnn.pack_padded_sequence(data, lengths, enforce_sorted=False) if lengths is not None else data
    assert recurrent.backend_for(ours, arg) == "triton"
    out, state = layer(arg)  # the float64 reference is exact whatever the TF32 switch says
    out = out.data if lengths is not None else out
    finals = list(state) if isinstance(state, tuple) else [state]
    weights = torch.randn(out.shape, device="cuda", dtype=torch.float64).to(out.dtype)
    loss = (out * weights).sum() + sum((f * (i + 2)).sum() for i, f in enumerate(finals))
    return [out, *finals, *torch.autograd.grad(loss, [data, *layer.parameters()])]
