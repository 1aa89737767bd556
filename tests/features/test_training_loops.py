"""What training loops do with a layer, against torch.nn doing the same: several optimizer steps with
gradient accumulation, clipping, in-place edits of ``.grad``, GradScaler, a graph kept for two
backward calls, in-place ops on the outputs, and the word-language-model loop. Single-backward parity
on a fresh module cannot see a gradient that shares memory with another one; these loops do.
Plus: no two gradients (parameters, input, initial states) share a storage, on every path."""

from __future__ import annotations

import itertools
from typing import Callable, Dict, List

import pytest
import torch
from helpers import flat, hidden_arg, pair, scripted, triton_forced
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import recurrent

pytestmark = pytest.mark.triton_suite

DTYPE = torch.float64
TOL = dict(rtol=1e-9, atol=1e-10)
# (torch.nn class name, constructor extras): every built-in kind, the projected LSTM included.
KINDS = {
    "RNN_tanh": ("RNN", {"nonlinearity": "tanh"}),
    "RNN_relu": ("RNN", {"nonlinearity": "relu"}),
    "GRU": ("GRU", {}),
    "LSTM": ("LSTM", {}),
    "LSTM_proj": ("LSTM", {"proj_size": 3}),
}
# (num_layers, bidirectional, bias)
SHAPES = [(1, False, True), (2, True, True), (2, False, False)]
INPUT, HIDDEN, STEPS, BATCH = 4, 5, 4, 3


def build(kind: str, layers: int = 2, bidirectional: bool = False, bias: bool = True, **kwargs):
    name, extras = KINDS[kind]
    return pair(name, INPUT, HIDDEN, layers, bias=bias, bidirectional=bidirectional, dtype=DTYPE, **extras, **kwargs)


def states_for(module: nn.Module, batch: int = BATCH) -> List[Tensor]:
    """Random initial states of the module's shapes (h0, or h0 and c0), as leaves that need gradients."""
    lead = module.num_layers * (2 if module.bidirectional else 1)
    return [torch.randn(lead, batch, size, dtype=DTYPE, requires_grad=True) for size in module._state_sizes()]


def weighted_loss(outputs: List[Tensor]) -> Tensor:
    """A loss that weighs every element differently (a transposed or shared gradient shows)."""
    return sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outputs)


def shared_storages(named: Dict[str, Tensor]) -> List[tuple]:
    """Pairs of names whose tensors live on one storage."""
    seen: Dict[int, str] = {}
    shared = []
    for name, tensor in named.items():
        if tensor is None:
            continue
        key = tensor.untyped_storage().data_ptr()
        if key in seen:
            shared.append((seen[key], name))
        seen.setdefault(key, name)
    return shared


def assert_same_parameters(reference: nn.Module, ours: nn.Module, what: str, grads: bool = True) -> None:
    for (name, expected), actual in zip(reference.named_parameters(), ours.parameters()):
        torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}, {name}: {m}")
        if grads and expected.grad is not None:
            torch.testing.assert_close(actual.grad, expected.grad, **TOL, msg=lambda m: f"{what}, {name}.grad: {m}")


# -- several optimizer steps ------------------------------------------------------------------
OPTIMIZERS: Dict[str, Callable] = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3),
}
# (clipping, zero_grad's set_to_none)
CLIPPING = [("norm", True), ("value", False)]


def train_steps(module: nn.Module, optimizer, batches, clip: str, set_to_none: bool, check) -> None:
    """Each step: zero_grad, two micro-batches accumulated, an in-place edit of every bias gradient,
    clipping, an optimizer step. ``check(step)`` runs after clipping and after the step."""
    for step, micro_batches in enumerate(batches):
        optimizer.zero_grad(set_to_none=set_to_none)
        for x, states in micro_batches:
            loss = weighted_loss(flat(module(x, hidden_arg(states))))
            (loss / len(micro_batches)).backward()
        for name, p in module.named_parameters():
            if name.startswith("bias"):
                p.grad.mul_(0.5)  # what a hook or a per-group scaling does
        if clip == "norm":
            nn.utils.clip_grad_norm_(module.parameters(), 0.5)
        else:
            nn.utils.clip_grad_value_(module.parameters(), 0.05)
        check(f"step {step}, after clipping")
        optimizer.step()
        check(f"step {step}, after the optimizer")


def flat_case(parts: tuple) -> tuple:
    """A case's parts with the tuples among them spread out: (("GRU", (1, True)), "sgd") -> ("GRU", 1, True, "sgd")."""
    return tuple(value for part in parts for value in (flat_case(part) if isinstance(part, tuple) else (part,)))


def cases(heads: list, options: List[list]) -> List[tuple]:
    """Every head (what the kernels see: a kind, a shape) with every combination of ``options`` (what acts
    outside them: an optimizer, an in-place op). Under Triton's interpreter, which runs the kernels 10-100x
    slower, each head once, with the combinations taken in turn: every head still runs, and every
    combination (as long as there are as many heads)."""
    if not triton_forced():
        return [flat_case(combo) for combo in itertools.product(heads, *options)]
    chosen = []
    for i, head in enumerate(heads):
        combo, rest = [head], i
        for values in options:
            combo.append(values[rest % len(values)])
            rest //= len(values)
        chosen.append(flat_case(tuple(combo)))
    return chosen


# The kind varies fastest among the heads, and there are five kinds: each shape meets every combination.
OPTIMIZER_CASES = cases(list(itertools.product(SHAPES, sorted(KINDS))), [CLIPPING, sorted(OPTIMIZERS)])


@pytest.mark.parametrize("layers,bidirectional,bias,kind,clip,set_to_none,optimizer", OPTIMIZER_CASES)
def test_optimizer_steps_equal_torch(layers, bidirectional, bias, kind, clip, set_to_none, optimizer):
    reference, ours = build(kind, layers, bidirectional, bias)
    torch.manual_seed(1)
    batches = [
        [(torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE), [s.detach() for s in states_for(ours)]) for _ in range(2)]
        for _ in range(3)
    ]
    optimizers = [OPTIMIZERS[optimizer](m.parameters()) for m in (reference, ours)]
    # Lockstep: torch.nn's loop runs first and records its parameters at each check.
    recorded: List[List[Tensor]] = []

    def record(_: str) -> None:
        recorded.append(
            [p.detach().clone() for p in reference.parameters()] + [p.grad.clone() for p in reference.parameters()]
        )

    train_steps(reference, optimizers[0], batches, clip, set_to_none, record)
    checks = iter(recorded)

    def compare(what: str) -> None:
        expected = next(checks)
        params = list(ours.parameters())
        for actual, wanted, name in zip(
            [p.detach() for p in params] + [p.grad for p in params],
            expected,
            [n for n, _ in ours.named_parameters()] * 2,
        ):
            torch.testing.assert_close(actual, wanted, **TOL, msg=lambda m: f"{what}, {name}: {m}")

    train_steps(ours, optimizers[1], batches, clip, set_to_none, compare)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_grad_scaler_equals_torch(kind):
    """GradScaler on CPU: scaled backward, unscale_ (in place on every .grad), clipping, step, update."""
    reference, ours = build(kind, 2, True)
    torch.manual_seed(2)
    data = [torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE) for _ in range(3)]
    for module in (reference, ours):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
        for x in data:
            optimizer.zero_grad()
            scaler.scale(weighted_loss(flat(module(x)))).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()
    assert_same_parameters(reference, ours, "after three GradScaler steps")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_retain_graph_twice_accumulates(kind):
    reference, ours = build(kind, 2, True)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE)
    states = states_for(ours)
    grads = []
    for module in (reference, ours):
        inputs = [x.clone().requires_grad_(), *(s.detach().clone().requires_grad_() for s in states)]
        loss = weighted_loss(flat(module(inputs[0], hidden_arg(inputs[1:]))))
        loss.backward(retain_graph=True)
        loss.backward()
        grads.append([t.grad for t in inputs])
    assert_same_parameters(reference, ours, "two backward calls through one graph")
    for actual, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(actual, expected, **TOL)


# -- in-place ops on the outputs ---------------------------------------------------------------
IN_PLACE = {
    "relu_": lambda t: t.relu_(),
    "mul_": lambda t: t.mul_(torch.linspace(0.5, 2, t.size(-1), dtype=t.dtype)),
    "dropout_inplace": lambda t: nn.functional.dropout(t, 0.4, True, inplace=True),
}
LAYOUTS = ["time_major", "batch_first", "packed", "unbatched"]


def run_layout(module: nn.Module, layout: str, x: Tensor, states: List[Tensor]):
    """(output tensor, final states) for one input layout; x is (L, N, I) time-major."""
    if layout == "batch_first":
        output, finals = module(x.transpose(0, 1), hidden_arg(states))
    elif layout == "packed":
        packed = pack_padded_sequence(x, [STEPS, STEPS - 1, 2], enforce_sorted=False)
        output, finals = module(packed, hidden_arg(states))
        output = output.data
    elif layout == "unbatched":
        output, finals = module(x[:, 0], hidden_arg([s[:, 0] for s in states]))
    else:
        output, finals = module(x, hidden_arg(states))
    return output, list(finals) if isinstance(finals, tuple) else [finals]


# As OPTIMIZER_CASES: each layout meets both directions and every op.
IN_PLACE_CASES = cases(list(itertools.product(LAYOUTS, sorted(KINDS))), [[False, True], sorted(IN_PLACE)])


@pytest.mark.parametrize("layout,kind,bidirectional,op", IN_PLACE_CASES)
def test_in_place_ops_on_outputs(layout, kind, bidirectional, op):
    """The output modified in place after the layer (torch.nn allows it in float64), then the final
    states too: the final states keep their values, and the gradients equal torch.nn's."""
    batch_first = layout == "batch_first"
    reference, ours = build(kind, 2, bidirectional, batch_first=batch_first)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE)
    states = states_for(ours)
    results = []
    for module in (reference, ours):
        inputs = [x.clone().requires_grad_(), *(s.detach().clone().requires_grad_() for s in states)]
        output, finals = run_layout(module, layout, inputs[0], inputs[1:])
        before = [f.detach().clone() for f in finals]
        torch.manual_seed(4)
        IN_PLACE[op](output)
        kept = all(torch.equal(f, b) for f, b in zip(finals, before))
        weighted_loss([output, *finals]).backward(retain_graph=True)
        for f in finals:
            f.mul_(3.0)  # torch.nn's final states may be modified in place as well
        weighted_loss(finals).backward()
        results.append((output.detach(), kept, [t.grad for t in inputs]))
    (expected_out, _, expected_grads), (actual_out, kept, actual_grads) = results
    assert kept, "the final states changed when the output was modified in place"
    torch.testing.assert_close(actual_out, expected_out, **TOL)
    for actual, expected in zip(actual_grads, expected_grads):
        torch.testing.assert_close(actual, expected, **TOL)
    assert_same_parameters(reference, ours, f"{op} on the {layout} output")


# -- PyTorch's word_language_model example -----------------------------------------------------
class WordModel(nn.Module):
    """Embedding → 2-layer recurrent layer → decoder, dropout between them: the example's RNNModel."""

    def __init__(self, layer: nn.Module, tokens: int) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.encoder = nn.Embedding(tokens, layer.input_size, dtype=DTYPE)
        self.layer = layer
        self.decoder = nn.Linear(layer.hidden_size, tokens, dtype=DTYPE)

    def forward(self, tokens: Tensor, hidden):
        output, hidden = self.layer(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(output)), hidden


def detached(hidden):
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


@pytest.mark.parametrize("kind", ["RNN_tanh", "GRU", "LSTM"])
def test_word_language_model_losses_equal_torch(kind):
    """The example's training loop: SGD at lr 20 by hand, clip_grad_norm_ 0.25, the hidden state
    carried from batch to batch and detached; 20 batches, losses equal torch.nn's."""
    tokens, bptt, batch = 40, 6, 4
    name, extras = KINDS[kind]
    reference_layer, our_layer = pair(name, 8, 10, 2, dropout=0.2, dtype=DTYPE, **extras)
    torch.manual_seed(5)
    reference = WordModel(reference_layer, tokens)
    ours = WordModel(our_layer, tokens)
    ours.load_state_dict(reference.state_dict())
    stream = torch.randint(tokens, (20 * bptt + 1, batch))
    losses = {}
    for label, model in (("torch.nn", reference), ("ours", ours)):
        model.train()
        zeros = torch.zeros(2, batch, 10, dtype=DTYPE)
        hidden = (zeros, zeros.clone()) if name == "LSTM" else zeros
        torch.manual_seed(6)  # the same dropout masks for both
        losses[label] = []
        for i in range(0, 20 * bptt, bptt):
            data, target = stream[i : i + bptt], stream[i + 1 : i + 1 + bptt]
            model.zero_grad()
            hidden = detached(hidden)
            output, hidden = model(data, hidden)
            loss = nn.functional.cross_entropy(output.view(-1, tokens), target.reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-20.0)
            losses[label].append(loss.item())
    # At lr 20 the tanh RNN amplifies float64 rounding about threefold per batch (measured: relative
    # loss differences of 4e-16 at batch 3, 2e-9 at batch 20); a shared bias gradient gave 1e-3 at batch 2.
    torch.testing.assert_close(torch.tensor(losses["ours"]), torch.tensor(losses["torch.nn"]), rtol=1e-7, atol=0)
    for (name, expected), actual in zip(reference.named_parameters(), ours.parameters()):
        torch.testing.assert_close(
            actual, expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"after 20 batches, {name}: {m}"
        )


# -- no two gradients on one storage, on every path ---------------------------------------------
def _layer_backward(module: nn.Module, make_input: Callable, create_graph: bool = False) -> Dict[str, Tensor]:
    """Runs a forward and a backward; returns every gradient by name (parameters, input, states)."""
    x = torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE, requires_grad=True)
    states = states_for(module)
    output, finals = make_input(module, x, states)
    loss = weighted_loss([output, *finals])
    if create_graph:  # a gradient penalty: the double-backward path
        params = list(module.parameters())
        first = torch.autograd.grad(loss, params, create_graph=True)
        loss = loss + sum((g * g).sum() for g in first)
    loss.backward()
    named = {f"{n}.grad": p.grad for n, p in module.named_parameters()}
    named.update({"input.grad": x.grad, **{f"state{i}.grad": s.grad for i, s in enumerate(states)}})
    return named


def _padded(module, x, states):
    return run_layout(module, "time_major", x, states)


def _packed(module, x, states):
    return run_layout(module, "packed", x, states)


def _recorded(module, x, states):
    with recurrent.record_gates(module):
        return run_layout(module, "time_major", x, states)


LAYER_PATHS = {
    "eager": lambda m: _layer_backward(m, _padded),
    "packed": lambda m: _layer_backward(m, _packed),
    "scripted": lambda m: _layer_backward(scripted(m), _padded),
    "double_backward": lambda m: _layer_backward(m, _padded, create_graph=True),
    "recording": lambda m: _layer_backward(m, _recorded),
}


@pytest.mark.parametrize("path", sorted(LAYER_PATHS))
@pytest.mark.parametrize("layers,bidirectional,bias", SHAPES)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gradients_own_their_storage(kind, layers, bidirectional, bias, path):
    if path == "scripted" and triton_forced():
        pytest.skip("a scripted module always runs the TorchScript loop: the main run covers it")
    _, ours = build(kind, layers, bidirectional, bias)
    named = LAYER_PATHS[path](ours)
    assert all(g is not None for g in named.values())
    assert shared_storages(named) == []


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_torch_func_gradients_own_their_storage(kind, bidirectional):
    _, ours = build(kind, 2, bidirectional)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE)
    params = {n: p.detach() for n, p in ours.named_parameters()}

    def loss(params, x):
        return weighted_loss(flat(torch.func.functional_call(ours, params, (x,))))

    grads, dx = torch.func.grad(loss, argnums=(0, 1))(params, x)
    assert shared_storages({**grads, "input": dx}) == []


def _cell_grads(name: str) -> Dict[str, Tensor]:
    cell = getattr(recurrent, name)(INPUT, HIDDEN, dtype=DTYPE)
    x = torch.randn(BATCH, INPUT, dtype=DTYPE, requires_grad=True)
    states = [
        torch.randn(BATCH, HIDDEN, dtype=DTYPE, requires_grad=True) for _ in range(2 if name == "LSTMCell" else 1)
    ]
    out = cell(x, hidden_arg(states))
    weighted_loss(list(out) if isinstance(out, tuple) else [out]).backward()
    return {
        **{n: p.grad for n, p in cell.named_parameters()},
        "input": x.grad,
        **{f"s{i}": s.grad for i, s in enumerate(states)},
    }


@pytest.mark.parametrize("name", ["RNNCell", "GRUCell", "LSTMCell"])
def test_cell_gradients_own_their_storage(name):
    assert shared_storages(_cell_grads(name)) == []


def _custom_layers() -> Dict[str, Callable[[bool], nn.Module]]:
    from test_custom import GRUMath, GRUMathWithBackward

    return {
        "custom_autograd": lambda bi: recurrent.CustomRNN(GRUMath(), INPUT, HIDDEN, 2, bidirectional=bi, dtype=DTYPE),
        "custom_backward": lambda bi: recurrent.CustomRNN(
            GRUMathWithBackward(), INPUT, HIDDEN, 2, bidirectional=bi, dtype=DTYPE
        ),
        "layernorm_lstm": lambda bi: recurrent.LayerNormLSTM(INPUT, HIDDEN, 2, bidirectional=bi, dtype=DTYPE),
        "layernorm_gru": lambda bi: recurrent.LayerNormGRU(INPUT, HIDDEN, 2, bidirectional=bi, dtype=DTYPE),
    }


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layer", sorted(_custom_layers()))
def test_custom_layer_gradients_own_their_storage(layer, bidirectional):
    module = _custom_layers()[layer](bidirectional)
    named = _layer_backward(module, _padded)
    assert all(g is not None for g in named.values())
    assert shared_storages(named) == []


@pytest.mark.parametrize("layer", sorted(_custom_layers()))
def test_custom_layer_output_may_be_modified_in_place(layer):
    """The output of a custom layer modified in place: its gradients are those of the same ops on a
    copy of the output (what an out-of-place relu gives), and the final states keep their values."""
    module = _custom_layers()[layer](False)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE, requires_grad=True)
    results = []
    for in_place in (False, True):
        module.zero_grad()
        output, finals = run_layout(module, "time_major", x, [])
        before = [f.detach().clone() for f in finals]
        output = output.relu_() if in_place else output.relu()
        assert all(torch.equal(f, b) for f, b in zip(finals, before))
        weighted_loss([output, *finals]).backward()
        results.append([p.grad.clone() for p in module.parameters()])
    for actual, expected in zip(results[1], results[0]):
        torch.testing.assert_close(actual, expected, **TOL)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("grad_mode", [False, True])
def test_outputs_do_not_share_storage(kind, grad_mode):
    """The output and the final states are tensors of their own (with and without gradients)."""
    _, ours = build(kind, 1, False)
    with torch.set_grad_enabled(grad_mode):
        output, finals = run_layout(ours, "time_major", torch.randn(STEPS, BATCH, INPUT, dtype=DTYPE), [])
    assert shared_storages({"output": output, **{f"final{i}": f for i, f in enumerate(finals)}}) == []
