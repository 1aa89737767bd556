"""recurrent.variants: layer norm, zoneout and weight drop, each against a plain PyTorch loop written here.

The reference runs every sequence on its own, step by step, per layer and per direction, with
torch ops and nn.functional.layer_norm only. Training-mode randomness is reproduced by drawing the
masks the layer draws, in its documented order, from the same seed (:func:`draw_masks`).
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import pytest
import torch
from helpers import scripted
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from recurrent.custom import CustomRNN
from recurrent.variants import GRUVariantCell, LayerNormGRU, LayerNormLSTM, LSTMVariantCell

DTYPE = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
GATES = {"GRU": 3, "LSTM": 4}
STATES = {"GRU": 1, "LSTM": 2}
CELLS = {"GRU": GRUVariantCell, "LSTM": LSTMVariantCell}
LAYERS = {"GRU": LayerNormGRU, "LSTM": LayerNormLSTM}
OPTIONS = {  # each option on its own, and all together
    "layer_norm": dict(layer_norm=True),
    "zoneout": dict(zoneout=0.4),
    "weight_drop": dict(weight_drop=0.5),
    "all": dict(layer_norm=True, zoneout=0.3, weight_drop=0.4),
}
# Each example compiles a fresh layer's loop; a fifth of the profile's examples keeps the file fast.
EXAMPLES = max(4, settings.default.max_examples // 5)


@pytest.fixture(autouse=True)
def isolated():
    """One thread (tiny tensors: more only cost synchronisation, badly so next to another xdist
    worker), and the tests' seeds kept from the rest of the worker's tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)


# -- the reference ------------------------------------------------------------------------------
def reference_step(
    kind: str,
    x: Tensor,
    state: List[Tensor],
    p: Callable[[str], Optional[Tensor]],
    drop: Optional[Tensor],
    layer_norm: bool,
) -> List[Tensor]:
    """One step of one sequence in one direction, before zoneout: x (I,), states (H,), p(name) the
    parameter of this layer-direction (None if absent), drop the weight-drop scale of W_hh or None."""
    h = state[0]
    hidden = h.numel()
    w_hh = p("weight_hh") if drop is None else p("weight_hh") * drop
    gi = F.linear(x, p("weight_ih"), p("bias_ih"))
    gh = F.linear(h, w_hh, p("bias_hh"))
    if layer_norm:
        gi = F.layer_norm(gi, gi.shape, p("ln_weight_ih"), p("ln_bias_ih"), eps=1e-5)
        gh = F.layer_norm(gh, gh.shape, p("ln_weight_hh"), p("ln_bias_hh"), eps=1e-5)
    a = [gi[k * hidden : (k + 1) * hidden] for k in range(GATES[kind])]
    b = [gh[k * hidden : (k + 1) * hidden] for k in range(GATES[kind])]
    if kind == "GRU":
        r = torch.sigmoid(a[0] + b[0])
        z = torch.sigmoid(a[1] + b[1])
        n = torch.tanh(a[2] + r * b[2])
        return [(1 - z) * n + z * h]
    i, f = torch.sigmoid(a[0] + b[0]), torch.sigmoid(a[1] + b[1])
    g, o = torch.tanh(a[2] + b[2]), torch.sigmoid(a[3] + b[3])
    c = f * state[1] + i * g
    shown = F.layer_norm(c, c.shape, p("ln_weight_c"), p("ln_bias_c"), eps=1e-5) if layer_norm else c
    return [o * torch.tanh(shown), c]


def zoned(previous: Tensor, new: Tensor, p: float, training: bool, keep: Optional[Tensor]) -> Tensor:
    if p == 0:
        return new
    if training:
        return torch.where(keep, previous, new)
    return p * previous + (1 - p) * new


@dataclass
class Masks:
    """What a training forward draws: per layer the W_hh scale (D, G·H, H), and per layer, step and
    state the zoneout keep-mask (D, N_t, H) over the rows running at that step."""

    weight: List[Optional[Tensor]]
    zone: List[Optional[List[List[Tensor]]]]


def draw_masks(
    kind: str, layers: int, directions: int, hidden: int, batch_sizes: List[int], zoneout: float, weight_drop: float
) -> Masks:
    """The layer's draws in its documented order (per layer: weight drop, then per step h's and c's mask)."""
    masks = Masks([], [])
    for _ in range(layers):
        ones = torch.ones(directions, GATES[kind] * hidden, hidden, dtype=DTYPE)
        masks.weight.append(F.dropout(ones, weight_drop, True) if weight_drop > 0 else None)
        per_step = (
            [
                [torch.rand(directions, n, hidden, dtype=DTYPE) < zoneout for _ in range(STATES[kind])]
                for n in batch_sizes
            ]
            if zoneout > 0
            else None
        )
        masks.zone.append(per_step)
    return masks


def reference(
    kind: str,
    params: dict,
    sequences: List[Tensor],
    states0: List[Tensor],
    *,
    layers: int,
    directions: int,
    layer_norm: bool,
    zoneout: float,
    training: bool,
    masks: Optional[Masks],
    rows: List[int],
) -> tuple[List[Tensor], List[Tensor]]:
    """The stack over each sequence (T_b, I) alone, from states0 [(layers·D, B, H)]; ``rows[b]`` is
    sequence b's row among those running at a step (its rank in a PackedSequence). Returns the
    outputs (T_b, D·H) and the final states (layers·D, B, H)."""
    count = STATES[kind]
    finals: List[List[List[Tensor]]] = [[[] for _ in range(layers * directions)] for _ in range(count)]
    inputs = sequences
    for layer in range(layers):
        outputs = []
        for b, x in enumerate(inputs):
            halves = []
            for d in range(directions):
                suffix = "_reverse" if d else ""

                def p(name: str) -> Optional[Tensor]:
                    return params.get(f"{name}_l{layer}{suffix}")

                drop = masks.weight[layer][d] if masks is not None and masks.weight[layer] is not None else None
                state = [s[layer * directions + d, b] for s in states0]
                out: List[Optional[Tensor]] = [None] * x.size(0)
                for step in range(x.size(0)):
                    t = step if d == 0 else x.size(0) - 1 - step
                    new = reference_step(kind, x[t], state, p, drop, layer_norm)
                    keeps = [None] * count
                    if training and zoneout > 0:
                        keeps = [masks.zone[layer][step][k][d, rows[b]] for k in range(count)]
                    state = [zoned(state[k], new[k], zoneout, training, keeps[k]) for k in range(count)]
                    out[t] = state[0]
                halves.append(torch.stack(out))
                for k in range(count):
                    finals[k][layer * directions + d].append(state[k])
            outputs.append(torch.cat(halves, -1))
        inputs = outputs
    return inputs, [torch.stack([torch.stack(per_row) for per_row in f]) for f in finals]


# -- running ours and the reference on the same input ---------------------------------------------
def loss(tensors: List[Tensor]) -> Tensor:
    """A loss weighing every element differently, so that misplaced gradients show."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    return (flat * torch.linspace(-1, 1, flat.numel(), dtype=DTYPE)).sum()


def tensors_of(result: tuple) -> List[Tensor]:
    """(output, h_n) or (output, (h_n, c_n)), a PackedSequence output as its data: a flat list."""
    output, finals = result
    output = output.data if isinstance(output, PackedSequence) else output
    return [output, *(finals if isinstance(finals, tuple) else (finals,))]


def build(kind: str, options: dict, sizes: dict) -> nn.Module:
    """The layer class for layer_norm, else CustomRNN of the cell; every parameter random (so that a
    gain mistaken for a shift, or an unused one, shows)."""
    args = (sizes["input_size"], sizes["hidden_size"], sizes["num_layers"], sizes["bias"], sizes["batch_first"])
    kwargs = dict(bidirectional=sizes["bidirectional"], dtype=DTYPE)
    extra = {k: v for k, v in options.items() if k != "layer_norm"}
    if options.get("layer_norm"):
        layer = LAYERS[kind](*args, **kwargs, **extra)
    else:
        layer = CustomRNN(CELLS[kind](**extra), *args, **kwargs)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.7)
    return layer


def compare(kind: str, options: dict, sizes: dict, form: str, with_h0: bool, training: bool, seed: int) -> None:
    """Ours against the reference: outputs, final states, and the gradients of input, initial states and
    every parameter, for one input form: "padded", "packed" (unsorted lengths) or "unbatched"."""
    torch.manual_seed(seed)
    layer = build(kind, options, sizes)
    layer.train(training)
    x, leaves, states_used, hx = inputs_of(kind, sizes, form, with_h0)
    packed, sequences, batch_sizes, rows = layout_of(x, sizes, form)
    torch.manual_seed(seed + 1)
    masks = None
    if training:
        directions, hidden = 2 if sizes["bidirectional"] else 1, sizes["hidden_size"]
        zoneout, weight_drop = options.get("zoneout", 0.0), options.get("weight_drop", 0.0)
        masks = draw_masks(kind, sizes["num_layers"], directions, hidden, batch_sizes, zoneout, weight_drop)
    torch.manual_seed(seed + 1)  # ours draws the same masks
    ours, finals = run_ours(layer, x, packed if form == "packed" else None, hx, sizes, form)
    params = dict(layer.named_parameters())
    expected, expected_finals = reference(
        kind, params, sequences, states_used, layers=sizes["num_layers"],
        directions=2 if sizes["bidirectional"] else 1, layer_norm=bool(options.get("layer_norm")),
        zoneout=options.get("zoneout", 0.0), training=training, masks=masks, rows=rows,
    )  # fmt: skip
    names = [f"output of sequence {b}" for b in range(len(ours))] + ["h_n", "c_n"][: len(finals)]
    for a, e, name in zip(ours + finals, expected + expected_finals, names):
        torch.testing.assert_close(a, e, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    inputs = [x, *leaves, *params.values()]
    grad_names = ["input"] + ["h0", "c0"][: len(leaves)] + list(params)
    ours_grads = torch.autograd.grad(loss(ours + finals), inputs, retain_graph=True)
    expected_grads = torch.autograd.grad(loss(expected + expected_finals), inputs)
    for a, e, name in zip(ours_grads, expected_grads, grad_names):
        torch.testing.assert_close(a, e, **TOL, msg=lambda m, name=name: f"grad of {name}: {m}")


def inputs_of(kind: str, sizes: dict, form: str, with_h0: bool) -> tuple:
    """(x (L, N, I), the initial states as leaves (none without h0), the states the reference starts from,
    the hx argument)."""
    steps, batch, hidden = sizes["steps"], len(sizes["lengths"]), sizes["hidden_size"]
    batch = 1 if form == "unbatched" else batch
    directions = 2 if sizes["bidirectional"] else 1
    x = torch.randn(steps, batch, sizes["input_size"], dtype=DTYPE, requires_grad=True)
    states0 = [torch.randn(sizes["num_layers"] * directions, batch, hidden, dtype=DTYPE) for _ in range(STATES[kind])]
    leaves = [s.squeeze(1) if form == "unbatched" else s for s in states0]
    leaves = [s.requires_grad_() for s in leaves] if with_h0 else []
    if not with_h0:
        states_used = [torch.zeros_like(s) for s in states0]
    else:
        states_used = [s.unsqueeze(1) for s in leaves] if form == "unbatched" else leaves
    hx = None if not with_h0 else (leaves[0] if kind == "GRU" else tuple(leaves))
    return x, leaves, states_used, hx


def layout_of(x: Tensor, sizes: dict, form: str) -> tuple:
    """(the PackedSequence or None, each sequence's rows, the per-step batch sizes, which row each is)."""
    if form == "packed":
        lengths = sizes["lengths"]
        packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
        sequences = [x[:n, b] for b, n in enumerate(lengths)]
        return packed, sequences, packed.batch_sizes.tolist(), packed.unsorted_indices.tolist()
    steps, batch = x.size(0), x.size(1)
    return None, [x[:, b] for b in range(batch)], [batch] * steps, list(range(batch))


def run_ours(layer, x: Tensor, packed, hx, sizes: dict, form: str) -> tuple:
    """(each sequence's outputs, the final states with a batch dimension) of our layer."""
    if form == "packed":
        output, finals = layer(packed, hx)
        padded, _ = pad_packed_sequence(output)
        ours = [padded[:n, b] for b, n in enumerate(sizes["lengths"])]
    elif form == "unbatched":
        output, finals = layer(x[:, 0], hx)
        ours = [output]
    else:
        output, finals = layer(x.transpose(0, 1) if sizes["batch_first"] else x, hx)
        ours = [output[b] if sizes["batch_first"] else output[:, b] for b in range(x.size(1))]
    finals = tensors_of((output, finals))[1:]
    return ours, [f.unsqueeze(1) for f in finals] if form == "unbatched" else finals


def layer_sizes() -> st.SearchStrategy:
    """Small layers and batches: a batch of len(lengths) sequences (their lengths when packed)."""
    return st.integers(1, 4).flatmap(
        lambda steps: st.fixed_dictionaries(
            {
                "steps": st.just(steps),
                "lengths": st.lists(st.integers(1, steps), min_size=1, max_size=3),
                "input_size": st.integers(1, 3),
                "hidden_size": st.integers(2, 3),
                "num_layers": st.integers(1, 2),
                "bias": st.booleans(),
                "batch_first": st.booleans(),
                "bidirectional": st.booleans(),
            }
        )
    )


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@settings(max_examples=EXAMPLES)
@given(
    sizes=layer_sizes(),
    form=st.sampled_from(["padded", "packed", "unbatched"]),
    with_h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_reference(kind, option, training, sizes, form, with_h0, seed):
    compare(kind, OPTIONS[option], sizes, form, with_h0, training, seed)


@pytest.mark.parametrize("form", ["padded", "packed", "unbatched"])
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_matches_reference_every_feature_at_once(kind, form):
    """Two layers, both directions, h0 given, batch_first: every option, in training (fixed example)."""
    sizes = dict(
        steps=4,
        lengths=[2, 4, 1],
        input_size=3,
        hidden_size=3,
        num_layers=2,
        bias=True,
        batch_first=True,
        bidirectional=True,
    )
    compare(kind, OPTIONS["all"], sizes, form, with_h0=True, training=True, seed=7)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_options_off_is_torch_nn(kind):
    """With every option off the cells compute torch.nn.GRU's and torch.nn.LSTM's numbers."""
    torch.manual_seed(0)
    reference_layer = getattr(nn, kind)(3, 4, 2, bidirectional=True, dtype=DTYPE)
    ours = CustomRNN(CELLS[kind](), 3, 4, 2, bidirectional=True, dtype=DTYPE)
    ours.load_state_dict(reference_layer.state_dict(), strict=True)
    x = torch.randn(5, 2, 3, dtype=DTYPE, requires_grad=True)
    packed = pack_padded_sequence(x, torch.tensor([3, 5]), enforce_sorted=False)
    for module in (reference_layer, ours):
        module.train()
    expected, result = tensors_of(reference_layer(packed)), tensors_of(ours(packed))
    for a, e in zip(result, expected):
        torch.testing.assert_close(a, e, **TOL)
    # retain_graph: both graphs share the packing of x
    ours_grads = torch.autograd.grad(loss(result), [x, *ours.parameters()], retain_graph=True)
    expected_grads = torch.autograd.grad(loss(expected), [x, *reference_layer.parameters()])
    for a, e in zip(ours_grads, expected_grads):
        torch.testing.assert_close(a, e, **TOL)


# -- gradcheck --------------------------------------------------------------------------------
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(kind, option, training):
    """Numerical against analytical gradients of input, initial states and every parameter (training:
    the draws reseeded on every evaluation, so that each sees the same masks). Fast mode (random
    projections of the Jacobian): the full check of every gradient is test_matches_reference's."""
    torch.manual_seed(0)
    sizes = dict(input_size=2, hidden_size=2, num_layers=2, bias=True, batch_first=False, bidirectional=True)
    layer = build(kind, OPTIONS[option], sizes).train(training)
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=DTYPE, requires_grad=True)
    states = [torch.randn(4, 2, 2, dtype=DTYPE, requires_grad=True) for _ in range(STATES[kind])]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x: Tensor, *tensors: Tensor) -> tuple:
        hx = tensors[0] if kind == "GRU" else (tensors[0], tensors[1])
        with torch.random.fork_rng():  # the same masks every evaluation; gradcheck's own draws untouched
            torch.manual_seed(3)
            return tuple(
                tensors_of(torch.func.functional_call(layer, dict(zip(names, tensors[len(states) :])), (x, hx)))
            )

    assert torch.autograd.gradcheck(run, (x, *states, *params), fast_mode=True)


# -- zoneout and weight drop: properties the reference does not spell out ----------------------
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_zoneout_keeps_a_fraction_p(kind):
    """In training about p of the units keep their previous value exactly (a fresh draw every step):
    the output at t equals the output at t−1 (h0 at t = 0) in a fraction p of its entries, and c_n
    equals c0 in a fraction p after one step. In evaluation, no unit is kept exactly."""
    p = 0.3
    torch.manual_seed(0)
    layer = CustomRNN(CELLS[kind](zoneout=p), 4, 100, dtype=DTYPE)
    x = torch.randn(6, 40, 4, dtype=DTYPE)
    states = [torch.randn(1, 40, 100, dtype=DTYPE) for _ in range(STATES[kind])]
    hx = states[0] if kind == "GRU" else tuple(states)
    output, _ = layer(x, hx)
    previous = torch.cat([states[0], output[:-1]])
    kept = (output == previous).double().mean(dim=(1, 2))
    assert torch.all((kept - p).abs() < 0.03), kept  # 4000 units a step: 4.5 standard deviations
    if kind == "LSTM":
        _, (_, c_n) = layer(x[:1], hx)
        assert abs((c_n == states[1]).double().mean().item() - p) < 0.03
    layer.eval()
    output, _ = layer(x, hx)
    assert not (output == torch.cat([states[0], output[:-1]])).any()


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_weight_drop_one_mask_per_forward_pass(kind):
    """Training: two passes differ (a new mask each), the parameter itself is untouched, and the mask
    drops about p of W_hh's entries; evaluation: exactly the layer without weight drop. (That one
    mask serves every step of a pass is what test_matches_reference checks.)"""
    torch.manual_seed(0)
    layer = CustomRNN(CELLS[kind](weight_drop=0.5), 3, 20, 2, bidirectional=True, dtype=DTYPE)
    plain = CustomRNN(CELLS[kind](), 3, 20, 2, bidirectional=True, dtype=DTYPE)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3, dtype=DTYPE)
    before = layer.weight_hh_l0.detach().clone()
    first, second = layer(x)[0], layer(x)[0]
    assert not torch.allclose(first, second)
    assert torch.equal(layer.weight_hh_l0, before)
    assert not torch.allclose(first, plain(x)[0])
    layer.weight_hh_l0.grad = None
    first.sum().backward()
    dropped = (layer.weight_hh_l0.grad == 0).double().mean().item()
    assert abs(dropped - 0.5) < 0.06, dropped  # 1600 entries; a kept entry's gradient is never exactly 0
    layer.eval()
    torch.testing.assert_close(layer(x)[0], plain(x)[0], rtol=0, atol=0)


# -- construction and module behaviour ----------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda **o: GRUVariantCell(**o),
        lambda **o: LSTMVariantCell(**o),
        lambda **o: LayerNormGRU(2, 3, **o),
        lambda **o: LayerNormLSTM(2, 3, **o),
    ],
)
@pytest.mark.parametrize("option", ["zoneout", "weight_drop"])
@pytest.mark.parametrize("value", [1.0, 1, -0.1, 1.5, math.nan, "0.1", True, None])
def test_probabilities_checked(make, option, value):
    with pytest.raises(ValueError, match=rf"{option} must be a probability in \[0, 1\), got {option}={value!r}"):
        make(**{option: value})


def test_other_options_checked():
    with pytest.raises(TypeError, match="layer_norm must be a bool, got 1"):
        GRUVariantCell(layer_norm=1)
    with pytest.raises(ValueError, match="eps must be a positive number, got eps=0"):
        LSTMVariantCell(eps=0)
    with pytest.raises(TypeError):
        LayerNormGRU(2, 3, 1, True, False, 0.0, False, None, None, 0.1)  # zoneout is keyword-only
    GRUVariantCell(zoneout=0, weight_drop=0.999)  # the ends of the range that are allowed


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_layer_norm_parameters(kind):
    """Names, shapes and initialisation (gains 1, shifts 0; the weights as torch.nn's): also after reset_parameters."""
    layer = LAYERS[kind](2, 3, 2, bidirectional=True)
    gate_width = GATES[kind] * 3
    own = {"ln_weight_ih": gate_width, "ln_bias_ih": gate_width, "ln_weight_hh": gate_width, "ln_bias_hh": gate_width}
    if kind == "LSTM":
        own.update(ln_weight_c=3, ln_bias_c=3)
    expected = []
    for layer_index in range(2):
        for suffix in ("", "_reverse"):
            expected += [f"{n}_l{layer_index}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", *own)]
    assert [n for n, _ in layer.named_parameters()] == expected
    for _ in range(2):
        for name, parameter in layer.named_parameters():
            base = name.split("_l")[0]
            if base in own:
                assert parameter.shape == (own[base],)
                assert torch.equal(parameter, torch.full_like(parameter, 1.0 if "weight" in base else 0.0)), name
            else:
                assert parameter.abs().max() <= 1 / math.sqrt(3)
        with torch.no_grad():
            for parameter in layer.parameters():
                parameter.fill_(5.0)
        layer.reset_parameters()


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_script_state_dict_copy_and_save(kind):
    """torch.jit.script, a state_dict round trip, deepcopy and torch.save/torch.load all give the same
    numbers as the original, in evaluation and (with the same seed) in training."""
    torch.manual_seed(0)
    layer = LAYERS[kind](3, 4, 2, batch_first=True, bidirectional=True, zoneout=0.2, weight_drop=0.3, dtype=DTYPE)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)  # the LN gains and shifts away from 1 and 0
    fresh = LAYERS[kind](3, 4, 2, batch_first=True, bidirectional=True, zoneout=0.2, weight_drop=0.3, dtype=DTYPE)
    fresh.load_state_dict(layer.state_dict(), strict=True)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(layer) and type(copy.deepcopy(layer)) is type(layer)
    copies = {"scripted": scripted(layer), "state_dict": fresh, "deepcopy": copy.deepcopy(layer), "torch.load": loaded}
    x = torch.randn(2, 5, 3, dtype=DTYPE)
    for training in (False, True):
        layer.train(training)
        torch.manual_seed(1)
        expected = layer(x)
        for name, other in copies.items():
            other.train(training)
            torch.manual_seed(1)
            result = other(x)
            assert len(result) == 2 and isinstance(result[1], torch.Tensor if kind == "GRU" else tuple)
            for a, e in zip(torch.utils._pytree.tree_leaves(result), torch.utils._pytree.tree_leaves(expected)):
                torch.testing.assert_close(
                    a, e, rtol=0, atol=0, msg=lambda m, name=name: f"{name}, training={training}: {m}"
                )


def test_layer_classes_are_custom_layers():
    """LayerNormGRU takes hx and returns h_n; LayerNormLSTM takes and returns (h, c), as torch.nn."""
    gru, lstm = LayerNormGRU(2, 3), LayerNormLSTM(2, 3)
    assert isinstance(gru, CustomRNN) and isinstance(lstm, CustomRNN)
    assert isinstance(gru.cell, GRUVariantCell) and gru.cell.layer_norm
    x = torch.randn(4, 2)
    output, h = gru(x, torch.zeros(1, 3))
    assert output.shape == (4, 3) and h.shape == (1, 3)
    output, (h, c) = lstm(x, (torch.zeros(1, 3), torch.zeros(1, 3)))
    assert output.shape == (4, 3) and h.shape == c.shape == (1, 3)


def test_repr():
    assert repr(LayerNormGRU(28, 128)) == "LayerNormGRU(28, 128)"
    assert (
        repr(LayerNormLSTM(28, 128, 2, batch_first=True, bidirectional=True, zoneout=0.1, weight_drop=0.25))
        == "LayerNormLSTM(28, 128, num_layers=2, batch_first=True, bidirectional=True, zoneout=0.1, weight_drop=0.25)"
    )
    assert repr(GRUVariantCell()) == "GRUVariantCell()"
    assert repr(LSTMVariantCell(layer_norm=True, zoneout=0.1, eps=1e-3)) == (
        "LSTMVariantCell(layer_norm=True, zoneout=0.1, eps=0.001)"
    )
    assert "(cell): GRUVariantCell(weight_drop=0.5)" in repr(CustomRNN(GRUVariantCell(weight_drop=0.5), 2, 3))
    assert repr(nn.Sequential(LayerNormGRU(2, 3))) == "Sequential(\n  (0): LayerNormGRU(2, 3)\n)"
