"""The custom cell API: torch.nn's GRU and LSTM written as CustomCells give torch.nn's numbers through
every layer feature, by autograd and by a hand-written step_backward; the API's hooks do what they say."""

import copy
import io
import warnings
from typing import List, Tuple

import pytest
import torch
from helpers import assert_all_close, flat, grads, hidden_arg, scripted
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from recurrent import CustomCell, CustomRNN


class GRUMath(CustomCell):
    """torch.nn.GRU's step, as a user would write it."""

    gates = 3

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        h = state[0]
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        new = (1 - z) * n + z * h
        return new, [new]


class GRUMathWithBackward(GRUMath):
    """The same step with its hand-written backward."""

    def step_backward(
        self,
        gi: Tensor,
        gh: Tensor,
        state: List[Tensor],
        params: List[Tensor],
        grad_output: Tensor,
        grad_state: List[Tensor],
    ) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
        h = state[0]
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        dh = grad_output + grad_state[0]
        dn = dh * (1 - z) * (1 - n * n)
        dz = dh * (h - n) * z * (1 - z)
        dr = dn * h_n * r * (1 - r)
        return torch.cat([dr, dz, dn], -1), torch.cat([dr, dz, dn * r], -1), [dh * z], []


class LSTMMath(CustomCell):
    """torch.nn.LSTM's step: two states."""

    gates = 4
    state_names = ("h", "c")

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        i, f, g, o = (gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, [h, c]


class LSTMMathWithBackward(LSTMMath):
    def step_backward(
        self,
        gi: Tensor,
        gh: Tensor,
        state: List[Tensor],
        params: List[Tensor],
        grad_output: Tensor,
        grad_state: List[Tensor],
    ) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
        i, f, g, o = (gi + gh).chunk(4, -1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * state[1] + i * g
        tc = torch.tanh(c)
        dh = grad_output + grad_state[0]
        dc = grad_state[1] + dh * o * (1 - tc * tc)
        da = torch.cat(
            [dc * g * i * (1 - i), dc * state[1] * f * (1 - f), dc * i * (1 - g * g), dh * tc * o * (1 - o)], -1
        )
        return da, da, [torch.zeros_like(dh), dc * f], []


CELLS = {"GRU": [GRUMath, GRUMathWithBackward], "LSTM": [LSTMMath, LSTMMathWithBackward]}

options = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["GRU", "LSTM"]),
        "hand_written": st.booleans(),
        "input_size": st.integers(1, 6),
        "hidden_size": st.integers(1, 6),
        "num_layers": st.integers(1, 3),
        "bias": st.booleans(),
        "batch_first": st.booleans(),
        "bidirectional": st.booleans(),
        "layout": st.sampled_from(["padded", "packed", "unbatched"]),
        "with_h0": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def build(o: dict):
    torch.manual_seed(o["seed"])
    args = (o["input_size"], o["hidden_size"], o["num_layers"])
    kwargs = dict(bias=o["bias"], batch_first=o["batch_first"], bidirectional=o["bidirectional"], dtype=torch.float64)
    reference = getattr(nn, o["kind"])(*args, **kwargs)
    ours = CustomRNN(CELLS[o["kind"]][o["hand_written"]](), *args, **kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def inputs(o: dict):
    """(input for both modules, tensors whose gradients are compared, initial states)."""
    steps, batch, layers = 5, 3, o["num_layers"] * (2 if o["bidirectional"] else 1)
    lead = (layers,) if o["layout"] == "unbatched" else (layers, batch)
    states = (
        [
            torch.randn(*lead, o["hidden_size"], dtype=torch.float64, requires_grad=True)
            for _ in range(2 if o["kind"] == "LSTM" else 1)
        ]
        if o["with_h0"]
        else []
    )
    if o["layout"] == "unbatched":
        x = torch.randn(steps, o["input_size"], dtype=torch.float64, requires_grad=True)
        return x, [x, *states], states
    shape = (batch, steps) if o["batch_first"] else (steps, batch)
    x = torch.randn(*shape, o["input_size"], dtype=torch.float64, requires_grad=True)
    if o["layout"] == "packed":
        packed = pack_padded_sequence(x, torch.tensor([2, 5, 3]), batch_first=o["batch_first"], enforce_sorted=False)
        return packed, [x, *states], states
    return x, [x, *states], states


def outputs(result) -> List[Tensor]:
    output, finals = result
    return flat((output if isinstance(output, Tensor) else output.data, finals))


@given(options)
def test_torch_nn_kinds_as_custom_cells_equal_torch_nn(o):
    """Outputs, final states and the gradients of input, states and every parameter, float64."""
    reference, ours = build(o)
    x, leaves, states = inputs(o)
    expected = outputs(reference(x, hidden_arg(states)))
    actual = outputs(ours(x, hidden_arg(states)))
    names = ["output", "h_n", "c_n"][: len(expected)]
    assert_all_close(actual, expected, torch.float64, names)
    wrt_names = ["input", "h0", "c0"][: len(leaves)] + [n for n, _ in reference.named_parameters()]
    assert_all_close(
        grads(actual, [*leaves, *ours.parameters()]),
        grads(expected, [*leaves, *reference.parameters()]),
        torch.float64,
        [f"grad of {n}" for n in wrt_names],
    )


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("hand_written", [False, True])
def test_scripted_custom_layer_equals_eager(kind, hand_written):
    """torch.jit.script over the layer (and over a model holding it), padded and packed input."""
    o = dict(
        kind=kind,
        hand_written=hand_written,
        input_size=3,
        hidden_size=4,
        num_layers=2,
        bias=True,
        batch_first=True,
        bidirectional=True,
        seed=0,
    )
    _, ours = build(o)
    script = scripted(ours)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    assert_all_close(flat(script(x)), flat(ours(x)), torch.float64, ["output", "h_n", "c_n"][: 2 + (kind == "LSTM")])
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 3]), batch_first=True, enforce_sorted=False)
    torch.testing.assert_close(script.forward_packed(packed)[0].data, ours(packed)[0].data, rtol=0, atol=0)


@pytest.mark.parametrize("cell", [GRUMath, GRUMathWithBackward, LSTMMath, LSTMMathWithBackward])
def test_gradcheck_and_second_order(cell):
    torch.manual_seed(0)
    layer = CustomRNN(cell(), 2, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 2, dtype=torch.float64, requires_grad=True)
    state = h0 if len(cell.state_names) == 1 else (h0, torch.zeros_like(h0))

    def run(x, h0):
        output, finals = layer(x, h0 if len(cell.state_names) == 1 else (h0, state[1]))
        return output, finals if isinstance(finals, Tensor) else finals[1]

    assert torch.autograd.gradcheck(run, (x, h0), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(run, (x, h0))


class ScaledTanh(CustomCell):
    """An Elman cell with a learned per-unit gain g: h' = g ⊙ tanh(gi + gh) (own parameters, the training flag)."""

    def __init__(self, train_scale: float = 1.0) -> None:
        super().__init__()
        self.train_scale = train_scale

    def parameter_shapes(self, hidden_size: int):
        return {"gain": (hidden_size,)}

    def reset_parameter(self, name: str, parameter: Tensor, hidden_size: int) -> None:
        nn.init.ones_(parameter)

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        scale = self.train_scale if self.training else 1.0
        h = params[0] * torch.tanh(gi + gh) * scale
        return h, [h]


def plain_scaled_tanh(layer: CustomRNN, x: Tensor, scale: float) -> Tensor:
    """ScaledTanh over a (L, N, I) batch, one direction, one layer, as an obvious loop."""
    h = x.new_zeros(x.size(1), layer.hidden_size)
    outs = []
    for x_t in x:
        pre = x_t @ layer.weight_ih_l0.T + layer.bias_ih_l0 + h @ layer.weight_hh_l0.T + layer.bias_hh_l0
        h = layer.gain_l0 * torch.tanh(pre) * scale
        outs.append(h)
    return torch.stack(outs)


def test_own_parameters_registered_initialised_and_trained():
    layer = CustomRNN(ScaledTanh(), 3, 4, 2, bidirectional=True, dtype=torch.float64)
    names = [n for n, _ in layer.named_parameters()]
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "gain_l0"]
    assert {"gain_l0_reverse", "gain_l1", "gain_l1_reverse"} <= set(names)
    assert all(
        torch.equal(getattr(layer, n), torch.ones(4, dtype=torch.float64)) for n in names if n.startswith("gain")
    )
    one = CustomRNN(ScaledTanh(), 3, 4, dtype=torch.float64)
    with torch.no_grad():
        one.gain_l0.uniform_(0.5, 1.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(one(x)[0], plain_scaled_tanh(one, x, 1.0))
    (one(x)[0] ** 2).sum().backward()
    expected = torch.autograd.grad((plain_scaled_tanh(one, x, 1.0) ** 2).sum(), one.gain_l0)[0]
    torch.testing.assert_close(one.gain_l0.grad, expected)
    restored = CustomRNN(ScaledTanh(), 3, 4, dtype=torch.float64)
    restored.load_state_dict(one.state_dict(), strict=True)
    torch.testing.assert_close(restored(x)[0], one(x)[0])


def test_training_flag_and_settings_reach_the_compiled_step():
    """The compiled loop holds copies of the cell's attributes: train(), eval() and a changed setting apply."""
    layer = CustomRNN(ScaledTanh(train_scale=2.0), 3, 4, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[0], plain_scaled_tanh(layer, x, 2.0))
    layer.eval()
    torch.testing.assert_close(layer(x)[0], plain_scaled_tanh(layer, x, 1.0))
    layer.train()
    layer.cell.train_scale = 3.0
    torch.testing.assert_close(layer(x)[0], plain_scaled_tanh(layer, x, 3.0))
    torch.testing.assert_close(scripted(layer)(x)[0], plain_scaled_tanh(layer, x, 3.0))


class CountingHiddenWeight(GRUMath):
    """hidden_weight doubles W_hh and counts its calls (eager only: the count is Python state)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        self.calls += 1
        return 2 * w_hh


def test_hidden_weight_is_applied_once_per_layer_and_pass():
    torch.manual_seed(0)
    layer = CustomRNN(CountingHiddenWeight(), 3, 4, 2, bidirectional=True, dtype=torch.float64)
    reference = nn.GRU(3, 4, 2, bidirectional=True, dtype=torch.float64)
    state = {k: (2 * v if k.startswith("weight_hh") else v) for k, v in layer.state_dict().items()}
    reference.load_state_dict(state)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    result = layer(x)
    assert layer.cell.calls == 2  # once per layer (both directions at once), not per step
    torch.testing.assert_close(result[0], reference(x)[0])


def test_inter_layer_dropout_only_in_training():
    torch.manual_seed(0)
    layer = CustomRNN(GRUMath(), 3, 4, 2, dropout=0.5, dtype=torch.float64)
    reference = nn.GRU(3, 4, 2, dropout=0.5, dtype=torch.float64)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(1)
    train_out = layer(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(train_out, reference(x)[0])  # same dropout stream as torch.nn
    layer.eval(), reference.eval()
    torch.testing.assert_close(layer(x)[0], reference(x)[0])
    assert not torch.allclose(train_out, layer(x)[0])


def test_copy_pickle_and_repr():
    layer = CustomRNN(LSTMMath(), 3, 4, 2, batch_first=True)
    x = torch.randn(2, 5, 3)
    layer(x)  # builds the compiled loop, which must not travel with the module
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(layer), torch.load(buffer, weights_only=False)):
        assert type(other) is type(layer)
        torch.testing.assert_close(flat(other(x)), flat(layer(x)))
    text = repr(layer)
    assert text.startswith("CustomRNN(") and "3, 4, num_layers=2, batch_first=True" in text and "LSTMMath" in text


class ThreeStates(GRUMath):
    state_names = ("h", "c", "m")


class NoGates(GRUMath):
    gates = 0


def test_bad_definitions_and_inputs_raise_clearly():
    with pytest.raises(TypeError, match="CustomCell"):
        CustomRNN(nn.GRUCell(3, 4), 3, 4)
    with pytest.raises(ValueError, match="one state .* or two"):
        CustomRNN(ThreeStates(), 3, 4)
    with pytest.raises(ValueError, match="gates"):
        CustomRNN(NoGates(), 3, 4)
    layer = CustomRNN(GRUMath(), 3, 4, 2)
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        layer(torch.randn(5, 2, 3), torch.randn(1, 2, 4))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        layer(torch.randn(5, 2, 7))
    pair = CustomRNN(LSTMMath(), 3, 4)
    with pytest.raises(RuntimeError, match="Expected hidden\\[1\\] size"):
        pair(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 3, 4)))


def test_no_torchscript_warning_reaches_the_user():
    layer = CustomRNN(GRUMath(), 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(5, 2, 3))[0].sum().backward()


@pytest.mark.parametrize("cell", [GRUMath, GRUMathWithBackward])
def test_torch_func_and_forward_ad_through_a_custom_layer(cell):
    """torch.func.grad and vmap over packed bidirectional input, and a forward-AD jvp, equal torch.nn's."""
    torch.manual_seed(0)
    reference = nn.GRU(3, 4, bidirectional=True, dtype=torch.float64)
    ours = CustomRNN(cell(), 3, 4, bidirectional=True, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([2, 5, 3]), enforce_sorted=False)

    def loss(module, data):
        return (module(packed._replace(data=data))[0].data ** 2).sum()

    expected = torch.autograd.grad(loss(reference, packed.data.requires_grad_()), packed.data)[0]
    packed.data.requires_grad_(False)
    torch.testing.assert_close(torch.func.grad(lambda d: loss(ours, d))(packed.data), expected)
    xs = torch.randn(2, 5, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.func.vmap(lambda s: ours(s)[0])(xs), torch.stack([reference(s)[0] for s in xs])
        )
    tangent = torch.randn_like(x)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        expected_t = fwAD.unpack_dual(reference(fwAD.make_dual(x, tangent))[0]).tangent
        actual_t = fwAD.unpack_dual(ours(fwAD.make_dual(x, tangent))[0]).tangent
    torch.testing.assert_close(actual_t, expected_t)
