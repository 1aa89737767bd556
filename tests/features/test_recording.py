"""Gate recording: recurrent.record_gates gives every gate at every step, equal to a plain loop over
the layer's own weights (float64), for padded, batch_first and packed (unsorted) input; a custom
cell's layer gives its step's named intermediates."""

from typing import Dict, List

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

import recurrent
from recurrent.example_cells import MinimalGatedUnit


def step_gates(kind: str, x: Tensor, h: Tensor, c: Tensor, w: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """One step's gates for one sequence, straight from the formulas in torch.nn's documentation."""
    gi = w["weight_ih"] @ x + w["bias_ih"]
    gh = w["weight_hh"] @ h + w["bias_hh"]
    if kind == "GRU":
        i_r, i_z, i_n = gi.chunk(3)
        h_r, h_z, h_n = gh.chunk(3)
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        return {"r": r, "z": z, "n": torch.tanh(i_n + r * h_n)}
    if kind == "MGU":  # recurrent.example_cells.MinimalGatedUnit, recorded by its step's local names
        i_f, i_n = gi.chunk(2)
        h_f, h_n = gh.chunk(2)
        f = torch.sigmoid(i_f + h_f)
        n = torch.tanh(i_n + f * h_n)
        return {"i_f": i_f, "i_n": i_n, "h_f": h_f, "h_n": h_n, "f": f, "n": n, "h": (1 - f) * h + f * n}
    if kind == "LSTM":
        i, f, g, o = (gi + gh).chunk(4)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        return {"i": i, "f": f, "g": g, "o": o, "c": f * c + i * g}
    return {"h": torch.tanh(gi + gh)}


def next_state(kind: str, gates: Dict[str, Tensor], h: Tensor):
    if kind == "GRU":
        return (1 - gates["z"]) * gates["n"] + gates["z"] * h, None
    if kind == "LSTM":
        return gates["o"] * torch.tanh(gates["c"]), gates["c"]
    return gates["h"], None  # RNN and MGU


def plain_gates(layer: nn.Module, kind: str, x: Tensor, lengths: List[int]) -> Dict[str, Tensor]:
    """(layers, D, N, L, H) per gate, by looping over layers, directions, sequences and steps; x is (N, L, I)."""
    directions = 2 if layer.bidirectional else 1
    batch, steps, H = x.size(0), x.size(1), layer.hidden_size
    out: Dict[str, Tensor] = {}
    inputs = x
    for index in range(layer.num_layers):
        outputs = x.new_zeros(batch, steps, directions * H)
        for d in range(directions):
            suffix = f"_l{index}" + ("_reverse" if d else "")
            w = {k: getattr(layer, k + suffix) for k in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]}
            for n in range(batch):
                h, c = x.new_zeros(H), x.new_zeros(H)
                order = range(lengths[n]) if d == 0 else reversed(range(lengths[n]))
                for t in order:
                    gates = step_gates(kind, inputs[n, t], h, c, w)
                    for name, value in gates.items():
                        out.setdefault(name, x.new_zeros(layer.num_layers, directions, batch, steps, H))[
                            index, d, n, t
                        ] = value
                    h, c = next_state(kind, gates, h)
                    outputs[n, t, d * H : (d + 1) * H] = h
        inputs = outputs
    return out


class Model(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        options = dict(batch_first=True, bidirectional=True, dtype=torch.float64)
        if kind == "MGU":
            self.rnn = recurrent.CustomRNN(MinimalGatedUnit(), 3, 4, 2, **options)
        else:
            self.rnn = getattr(recurrent, kind)(3, 4, 2, **options)
        self.head = nn.Linear(8, 2, dtype=torch.float64)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out.data if not isinstance(out, Tensor) else out[:, -1])


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM", "MGU"])
@pytest.mark.parametrize("packed", [False, True])
def test_recorded_gates_equal_a_plain_loop(kind, packed):
    torch.manual_seed(0)
    model = Model(kind).eval()
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    lengths = [2, 5, 3] if packed else [5, 5, 5]
    given = pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False) if packed else x
    with recurrent.record_gates(model) as record:
        model(given)
        model(given)
    assert list(record) == ["rnn"] and len(record["rnn"]) == 2
    expected = plain_gates(model.rnn, kind, x, lengths)
    assert sorted(record["rnn"][0]) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(record["rnn"][0][name], value, msg=lambda m: f"gate {name}: {m}")


def test_recording_with_gradients_and_nothing_after_the_block():
    torch.manual_seed(0)
    model = Model("GRU")
    x = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    with recurrent.record_gates(model) as record:
        model(x).sum().backward()
    assert x.grad is not None and record["rnn"][0]["z"].shape == (2, 2, 3, 5, 4)
    model(x)
    assert len(record["rnn"]) == 1  # closed: later calls are not recorded


def test_a_model_without_our_layers_is_rejected():
    with pytest.raises(ValueError, match="no recurrent RNN, GRU, LSTM or CustomRNN"):
        with recurrent.record_gates(nn.Linear(2, 2)):
            pass


def test_nested_recordings_and_a_failed_call():
    """Each open recording records the calls made inside it; a call that raises records nothing and
    leaves the recording working."""
    torch.manual_seed(0)
    model = Model("LSTM")
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    with recurrent.record_gates(model) as outer:
        model(x)
        with recurrent.record_gates(model.rnn) as inner:
            with pytest.raises(RuntimeError):
                model.rnn(torch.randn(3, 5, 7, dtype=torch.float64))  # wrong input size
            model(x)
    assert len(outer["rnn"]) == 2 and len(inner[""]) == 1
    torch.testing.assert_close(inner[""][0]["c"], outer["rnn"][1]["c"])
    torch.testing.assert_close(outer["rnn"][0]["o"], outer["rnn"][1]["o"])
