"""Beyond the first-order backward: double backward (create_graph=True), gradients batched by vmap
(gradcheck's check_batched_grad, jacobian(vectorize=True)), torch.func transforms (per-sample
gradients, jacrev, hessian, grad and jvp over packed input, vmap without gradients) and forward-mode
AD (torch.autograd.forward_ad dual tensors), for every layer kind, both directions and packed input.

The eager fast path's backward is written by hand and is neither differentiable nor vmappable; these
run through recurrent.kernels.autograd.differentiable_layer instead. Under the forced Triton backend
the forward runs on Triton and the recompute (or the torch.func path) on the TorchScript kernel, so
the checks here also check that the two agree; that run (Triton's interpreter, slow) covers the
bidirectional packed configuration of each kind with one layer, and skips the element-by-element
gradgradcheck.
"""

import itertools

import pytest
import torch
from helpers import (
    assert_all_close,
    assert_close,
    constructor_extras,
    flat,
    gradient_names,
    grads,
    hidden_arg,
    initial_states,
    pair,
    triton_forced,
)
from torch.autograd import forward_ad
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import recurrent
from recurrent.kernels import autograd as layer_autograd

pytestmark = pytest.mark.triton_suite

KINDS = [("RNN_tanh", 0), ("RNN_relu", 0), ("GRU", 0), ("LSTM", 0), ("LSTM", 2)]  # (kind, proj_size)
# (kind, proj_size, bidirectional, packed); under Triton's interpreter only the bidirectional packed case.
CASES = [
    (*kind, bidirectional, packed)
    for kind, bidirectional, packed in itertools.product(KINDS, [False, True], [False, True])
    if not triton_forced() or (bidirectional and packed)
]
DTYPE = torch.float64
# Two layers: the second layer's backward differentiates through the first's output. One under
# Triton's interpreter, where every forward pass takes a good fraction of a second.
INPUT, HIDDEN, LAYERS, STEPS, BATCH = 2, 3, 1 if triton_forced() else 2, 3, 2
LENGTHS = torch.tensor([2, 3])  # unsorted: packing permutes the batch


def make_layer(
    kind: str, proj_size: int, bidirectional: bool, layers: int = LAYERS, input_size: int = INPUT, hidden: int = HIDDEN
) -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(recurrent, kind.partition("_")[0])(
        input_size, hidden, layers, bidirectional=bidirectional, dtype=DTYPE, **constructor_extras(kind, proj_size)
    )


def layer_function(layer: torch.nn.Module, states: int, packed: bool):
    """(x, *initial states, *parameters) -> (output, *final states), through torch.func.functional_call."""
    names = [n for n, _ in layer.named_parameters()]

    def run(x, *tensors):
        weights = dict(zip(names, tensors[states:]))
        inputs = pack_padded_sequence(x, LENGTHS, enforce_sorted=False) if packed else x
        out, finals = functional_call(layer, weights, (inputs, hidden_arg(tensors[:states])))
        return tuple(flat((out.data if packed else out, finals)))

    return run


def gradcheck_arguments(kind, proj_size, bidirectional, layers=LAYERS, input_size=INPUT, hidden=HIDDEN):
    layer = make_layer(kind, proj_size, bidirectional, layers, input_size, hidden)
    x = torch.randn(STEPS, BATCH, input_size, dtype=DTYPE, requires_grad=True)
    states = initial_states(kind, hidden, proj_size, ((2 if bidirectional else 1) * layers, BATCH), DTYPE)
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    return layer, (x, *states, *params), len(states)


@pytest.mark.parametrize("kind,proj_size,bidirectional,packed", CASES)
def test_gradgradcheck(kind, proj_size, bidirectional, packed):
    """Second derivatives w.r.t. the input, initial states, parameters and incoming gradients, in fast
    mode (along random directions). All layers for the bidirectional packed case, one for the others,
    to keep the suite quick."""
    layers = LAYERS if bidirectional and packed else 1
    layer, args, states = gradcheck_arguments(kind, proj_size, bidirectional, layers=layers)
    run = layer_function(layer, states, packed)
    assert torch.autograd.gradgradcheck(run, args, fast_mode=True)


@pytest.mark.skipif(triton_forced(), reason="element-by-element: too slow under Triton's interpreter")
@pytest.mark.parametrize("kind,proj_size", KINDS)
def test_gradgradcheck_full(kind, proj_size):
    """Element by element, on a small bidirectional packed layer (every second derivative checked)."""
    layer, args, states = gradcheck_arguments(kind, min(proj_size, 1), True, layers=1, input_size=1, hidden=2)
    assert torch.autograd.gradgradcheck(layer_function(layer, states, True), args)


@pytest.mark.parametrize("kind,proj_size,bidirectional,packed", CASES)
def test_batched_gradients(kind, proj_size, bidirectional, packed):
    """check_batched_grad: vmap over autograd.grad (is_grads_batched) equals one grad per vector."""
    layer, args, states = gradcheck_arguments(kind, proj_size, bidirectional)
    run = layer_function(layer, states, packed)
    assert torch.autograd.gradcheck(run, args, check_batched_grad=True, fast_mode=True)


@pytest.mark.parametrize("kind,proj_size", KINDS)
@pytest.mark.parametrize("bidirectional", [True] if triton_forced() else [False, True])
def test_per_sample_gradients_with_vmap(kind, proj_size, bidirectional):
    """torch.func.vmap of torch.func.grad over the batch (unbatched samples, each with its own initial
    states) equals a loop of single-sample gradients by the hand-written backward."""
    layer = make_layer(kind, proj_size, bidirectional)
    x = torch.randn(BATCH + 1, STEPS, INPUT, dtype=DTYPE)
    lead = (LAYERS * (2 if bidirectional else 1), BATCH + 1)
    states = [s.detach() for s in initial_states(kind, HIDDEN, proj_size, lead, DTYPE)]
    params = {n: p.detach() for n, p in layer.named_parameters()}

    def loss(params, x, *states):
        out = flat(functional_call(layer, params, (x, hidden_arg(states))))
        return sum((o * torch.linspace(-1, 1, o.numel(), dtype=DTYPE).view_as(o)).sum() for o in out)

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, *[1] * len(states)))(params, x, *states)
    for i in range(len(x)):
        expected = torch.autograd.grad(
            loss(dict(layer.named_parameters()), x[i], *[s[:, i] for s in states]), list(layer.parameters())
        )
        for (name, got), want in zip(per_sample.items(), expected):
            torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-10, msg=lambda m: f"sample {i}, {name}: {m}")


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # pack's backward under vmap
@pytest.mark.parametrize("kind,proj_size", KINDS)
@pytest.mark.parametrize("bidirectional,packed", [(True, True)] if triton_forced() else [(False, False), (True, True)])
def test_vectorized_jacobian(kind, proj_size, bidirectional, packed):
    """autograd.functional.jacobian(vectorize=True) (legacy vmap over the backward) and torch.func.jacrev
    equal the row-by-row Jacobian."""
    layer, args, states = gradcheck_arguments(kind, proj_size, bidirectional)
    run = layer_function(layer, states, packed)
    x, rest = args[0], args[1:]

    def outputs(x):
        return run(x, *rest)

    expected = torch.autograd.functional.jacobian(outputs, x)
    jacobians = [torch.autograd.functional.jacobian(outputs, x, vectorize=True), torch.func.jacrev(outputs)(x)]
    for got in jacobians:
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's own jvp decompositions
@pytest.mark.parametrize("kind,proj_size", KINDS)
def test_hessian(kind, proj_size):
    """torch.func.hessian (forward over reverse, through plain ops) equals the Hessian by double backward
    through the layer's autograd.Function (autograd.functional.hessian, create_graph=True)."""
    layer = make_layer(kind, proj_size, True)
    x = torch.randn(STEPS, 1, INPUT, dtype=DTYPE)

    def energy(x):
        return sum(o.pow(2).sum() for o in flat(layer(x)))

    expected = torch.autograd.functional.hessian(energy, x)
    torch.testing.assert_close(torch.func.hessian(energy)(x), expected, rtol=1e-9, atol=1e-10)


def test_first_order_backward_stays_hand_written(monkeypatch):
    """Only create_graph=True (or batched gradients) takes the differentiable recompute; a plain backward
    runs the hand-written kernels alone."""
    calls = []
    differentiable_layer = layer_autograd.differentiable_layer
    monkeypatch.setattr(layer_autograd, "differentiable_layer", lambda *a: calls.append(1) or differentiable_layer(*a))
    layer = make_layer("GRU", 0, True)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE, requires_grad=True)
    first = torch.autograd.grad(layer(x)[0].sum(), [x, *layer.parameters()])
    assert calls == []
    second = torch.autograd.grad(layer(x)[0].sum(), [x, *layer.parameters()], create_graph=True)
    assert len(calls) == LAYERS
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# torch.func over packed bidirectional input, vmap without gradients and forward-mode AD, each against
# torch.nn (bidirectional, float64). torch.nn itself cannot run torch.func over packed input nor vmap
# its layers (no batching rule for aten::gru etc.); there its numbers come from plain autograd or a loop.
AD_KINDS = [("RNN_tanh", 0), ("GRU", 0), ("LSTM", 0), ("LSTM", 2)]
# torch scripts its jvp decompositions on the first forward-mode call of a process.
QUIET_JVP = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def reference_pair(kind: str, proj_size: int) -> tuple:
    """(torch.nn's bidirectional layer, ours) with the same weights."""
    torch.manual_seed(0)
    return pair(
        kind.partition("_")[0],
        INPUT,
        HIDDEN,
        LAYERS,
        bidirectional=True,
        dtype=DTYPE,
        **constructor_extras(kind, proj_size),
    )


def packed_batch() -> PackedSequence:
    return pack_padded_sequence(torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE), LENGTHS, enforce_sorted=False)


def data_function(layer: torch.nn.Module, packed: PackedSequence | None = None):
    """(params, data, *initial states) -> (output, *final states) through functional_call. ``data`` is a
    padded batch, or with ``packed`` that PackedSequence's data, wrapped with its batch sizes and
    permutations inside: torch's own pack_padded_sequence is neither forward-differentiable nor
    differentiable under torch.func.grad, so transforms take the packed data."""

    def run(params, data, *states):
        inputs = (
            data
            if packed is None
            else PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        )
        out, finals = functional_call(layer, params, (inputs, hidden_arg(states)))
        return tuple(flat((out if packed is None else out.data, finals)))

    return run


def weighted(outputs) -> torch.Tensor:
    """The loss of helpers.grads: every output element weighted differently."""
    return sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outputs)


def ad_arguments(kind: str, proj_size: int, packed: bool, lead: tuple = ()):
    """(the PackedSequence or None, input data, initial states), without gradients; ``lead``: vmap's dims."""
    batch = packed_batch() if packed else None
    if packed:
        data = torch.stack([packed_batch().data for _ in range(lead[0])]) if lead else batch.data
    else:
        data = torch.randn(*lead, STEPS, BATCH, INPUT, dtype=DTYPE)
    states = [s.detach() for s in initial_states(kind, HIDDEN, proj_size, (*lead, 2 * LAYERS, BATCH), DTYPE)]
    return batch, data, states


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # pack's backward under vmap
@pytest.mark.parametrize("kind,proj_size", AD_KINDS)
def test_func_over_packed_bidirectional(kind, proj_size):
    """torch.func.grad (input data, initial states, parameters) and torch.func.jacrev (padded input packed
    inside, unsorted lengths) over a packed bidirectional stack equal torch.nn's by plain autograd."""
    reference, ours = reference_pair(kind, proj_size)
    packed, data, states = ad_arguments(kind, proj_size, True)
    params = {n: p.detach() for n, p in ours.named_parameters()}
    argnums = tuple(range(2 + len(states)))
    got_params, *got = torch.func.grad(lambda *a: weighted(data_function(ours, packed)(*a)), argnums)(
        params, data, *states
    )
    inputs = [t.clone().requires_grad_() for t in [data, *states]]
    expected = grads(
        data_function(reference, packed)(dict(reference.named_parameters()), *inputs),
        [*inputs, *reference.parameters()],
    )
    assert_all_close([*got, *got_params.values()], expected, DTYPE, gradient_names(reference, len(states)))

    def outputs(layer):
        return lambda x: tuple(
            t.data if isinstance(t, PackedSequence) else t
            for t in flat(layer(pack_padded_sequence(x, LENGTHS, enforce_sorted=False), hidden_arg(states)))
        )

    x = torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE)
    for got, want, name in zip(
        torch.func.jacrev(outputs(ours))(x),
        torch.autograd.functional.jacobian(outputs(reference), x),
        ["output", "h_n", "c_n"],
    ):
        assert_close(got, want, DTYPE, f"jacrev of {name}")


@pytest.mark.parametrize("kind,proj_size", AD_KINDS)
@pytest.mark.parametrize("packed", [False, True])
def test_vmap_without_grad(kind, proj_size, packed):
    """torch.func.vmap under torch.no_grad (inputs and initial states batched) equals torch.nn sample by sample."""
    reference, ours = reference_pair(kind, proj_size)
    batch, data, states = ad_arguments(kind, proj_size, packed, lead=(3,))
    with torch.no_grad():
        run = data_function(ours, batch)
        got = torch.func.vmap(lambda *a: run(dict(ours.named_parameters()), *a))(data, *states)
        for i in range(len(data)):
            expected = data_function(reference, batch)(
                dict(reference.named_parameters()), data[i], *[s[i] for s in states]
            )
            for g, e, name in zip(got, expected, ["output", "h_n", "c_n"]):
                assert_close(g[i], e, DTYPE, f"sample {i}, {name}")


def forward_ad_jvp(run, primals: list, tangents: list) -> tuple:
    """(outputs, their tangents) of run(params, data, *states) with torch.autograd.forward_ad: ``primals``
    and ``tangents`` are [params dict, data, *states], a tangent None where that input has none."""

    def dual(primal, tangent):
        return primal if tangent is None else forward_ad.make_dual(primal, tangent)

    with forward_ad.dual_level():
        params = {n: dual(p, tangents[0] and tangents[0][n]) for n, p in primals[0].items()}
        outputs = run(params, *[dual(p, t) for p, t in zip(primals[1:], tangents[1:])])
        return tuple(zip(*[forward_ad.unpack_dual(o) for o in outputs]))


def random_tangents(primals: list, which: str) -> list:
    """Tangents for [params dict, data, *states]: random for ``which`` ("weights", "input", "states",
    "all"), None for the others."""
    params = {n: torch.randn_like(p) for n, p in primals[0].items()} if which in ("weights", "all") else None
    data = torch.randn_like(primals[1]) if which in ("input", "all") else None
    states = [torch.randn_like(s) if which in ("states", "all") else None for s in primals[2:]]
    return [params, data, *states]


@QUIET_JVP
@pytest.mark.parametrize("kind,proj_size", AD_KINDS)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("which", ["input", "states", "weights"])
def test_forward_ad(kind, proj_size, packed, which):
    """Forward-mode AD outside torch.func (dual input, dual initial states or dual weights through
    functional_call), with grad mode on (the parameters require gradients) and off, equals torch.nn's."""
    reference, ours = reference_pair(kind, proj_size)
    batch, data, states = ad_arguments(kind, proj_size, packed)
    tangents = random_tangents([dict(ours.named_parameters()), data, *states], which)
    expected = forward_ad_jvp(
        data_function(reference, batch), [dict(reference.named_parameters()), data, *states], tangents
    )
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            got = forward_ad_jvp(data_function(ours, batch), [dict(ours.named_parameters()), data, *states], tangents)
        for part, outputs in zip(["", "tangent of "], zip(got, expected)):
            for g, e, name in zip(*outputs, ["output", "h_n", "c_n"]):
                assert g is not None, f"grad mode {grad_mode}: no {part}{name}"
                assert_close(g, e, DTYPE, f"grad mode {grad_mode}: {part}{name}")


@QUIET_JVP
@pytest.mark.parametrize("kind,proj_size", AD_KINDS)
@pytest.mark.parametrize("packed", [False, True])
def test_func_jvp(kind, proj_size, packed):
    """torch.func.jvp (tangents on the input, initial states and parameters), with grad mode on and off,
    equals torch.nn's forward-mode AD (torch.func.jvp over torch.nn's packed path fails in torch)."""
    reference, ours = reference_pair(kind, proj_size)
    batch, data, states = ad_arguments(kind, proj_size, packed)
    params = {n: p.detach() for n, p in ours.named_parameters()}
    tangents = random_tangents([params, data, *states], "all")
    expected = forward_ad_jvp(
        data_function(reference, batch), [dict(reference.named_parameters()), data, *states], tangents
    )
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            got = torch.func.jvp(data_function(ours, batch), (params, data, *states), tuple(tangents))
        for part, outputs in zip(["", "tangent of "], zip(got, expected)):
            for g, e, name in zip(*outputs, ["output", "h_n", "c_n"]):
                assert_close(g, e, DTYPE, f"grad mode {grad_mode}: {part}{name}")


@QUIET_JVP
@pytest.mark.parametrize("kind,proj_size", AD_KINDS)
def test_forward_mode_strategies(kind, proj_size):
    """Forward mode inside torch.autograd's own tools: a Hessian-vector product by forward over reverse
    (a dual input through autograd.grad(create_graph=True)) equals torch.nn's; jacobian(strategy=
    "forward-mode", vectorize=True) and hessian(outer_jacobian_strategy="forward-mode") equal torch.nn's
    reverse-mode ones (torch.nn has no batching rule for its forward-mode vectorized Jacobian)."""
    reference, ours = reference_pair(kind, proj_size)
    x, v = torch.randn(2, STEPS, 1, INPUT, dtype=DTYPE)

    def energy(layer):
        return lambda x: sum(o.pow(2).sum() for o in flat(layer(x)))

    def hvp(layer):
        with forward_ad.dual_level():
            dual = forward_ad.make_dual(x.clone().requires_grad_(), v)
            (gradient,) = torch.autograd.grad(energy(layer)(dual), dual, create_graph=True)
            return forward_ad.unpack_dual(gradient).tangent

    assert_close(hvp(ours), hvp(reference), DTYPE, "Hessian-vector product")
    functional = torch.autograd.functional
    got = functional.jacobian(lambda x: tuple(flat(ours(x))), x, vectorize=True, strategy="forward-mode")
    for g, e, name in zip(got, functional.jacobian(lambda x: tuple(flat(reference(x))), x), ["output", "h_n", "c_n"]):
        assert_close(g, e, DTYPE, f"forward-mode Jacobian of {name}")
    got = functional.hessian(energy(ours), x, vectorize=True, outer_jacobian_strategy="forward-mode")
    assert_close(got, functional.hessian(energy(reference), x), DTYPE, "forward-mode Hessian")
