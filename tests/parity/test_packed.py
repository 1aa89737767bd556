"""Property tests: PackedSequence input on RNN, GRU and LSTM equals torch.nn, values and gradients."""

import pytest
import torch
from helpers import (
    OUTPUT_NAMES,
    assert_all_close,
    constructor_extras,
    flat,
    float64_call,
    gradient_names,
    grads,
    hidden_arg,
    initial_states,
    pair,
    scripted,
)
from hypothesis import given
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

packed_options = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["RNN_tanh", "RNN_relu", "GRU", "LSTM"]),
        "proj": st.integers(0, 8),
        "input_size": st.integers(1, 6),
        "hidden_size": st.integers(1, 6),
        "num_layers": st.integers(1, 3),
        "bias": st.booleans(),
        "batch_first": st.booleans(),
        "bidirectional": st.booleans(),
        "lengths": st.lists(st.integers(1, 7), min_size=1, max_size=5),
        "packing": st.sampled_from(["sorted", "unsorted", "pack_sequence"]),
        "with_h0": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)

pytestmark = [pytest.mark.native_suite, pytest.mark.triton_suite]


def pack(o: dict, dtype, device):
    """A PackedSequence the way users make one, with the padded leaf tensor it came from."""
    lengths = sorted(o["lengths"], reverse=True) if o["packing"] == "sorted" else o["lengths"]
    batch, steps = len(lengths), max(lengths)
    shape = (batch, steps) if o["batch_first"] else (steps, batch)
    padded = torch.randn(*shape, o["input_size"], dtype=dtype, device=device, requires_grad=True)
    if o["packing"] == "pack_sequence":
        per_sequence = [(padded[i] if o["batch_first"] else padded[:, i])[:n] for i, n in enumerate(lengths)]
        return pack_sequence(per_sequence, enforce_sorted=False), padded
    packed = pack_padded_sequence(
        padded, torch.tensor(lengths), batch_first=o["batch_first"], enforce_sorted=o["packing"] == "sorted"
    )
    return packed, padded


@given(packed_options)
def test_packed_equals_torch(device, o):
    kind = o["kind"].partition("_")[0]
    proj_size = o["proj"] % o["hidden_size"]
    extras = constructor_extras(o["kind"], proj_size)
    torch.manual_seed(o["seed"])
    reference, ours = pair(
        kind,
        o["input_size"],
        o["hidden_size"],
        o["num_layers"],
        bias=o["bias"],
        batch_first=o["batch_first"],
        bidirectional=o["bidirectional"],
        dtype=torch.float64,
        device=device,
        **extras,
    )
    packed, padded = pack(o, torch.float64, device)
    directions = 2 if o["bidirectional"] else 1
    lead = (directions * o["num_layers"], len(o["lengths"]))
    states = initial_states(kind, o["hidden_size"], proj_size, lead, torch.float64, device) if o["with_h0"] else []
    expected = reference(packed, hidden_arg(states))
    actual = ours(packed, hidden_arg(states))
    assert isinstance(actual[0], PackedSequence)
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        e, a = getattr(expected[0], field), getattr(actual[0], field)
        assert (e is None and a is None) or torch.equal(a, e), field
    expected, actual = flat((expected[0].data, expected[1])), flat((actual[0].data, actual[1]))
    assert_all_close(actual, expected, torch.float64, OUTPUT_NAMES[: len(expected)])
    inputs = [padded] + states
    g_expected = grads(expected, inputs + list(reference.parameters()))
    g_actual = grads(actual, inputs + list(ours.parameters()))
    assert_all_close(g_actual, g_expected, torch.float64, gradient_names(reference, len(states)))


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_packed_final_state_is_each_sequences_last_step(kind):
    """h_n of a sequence equals the output at its own last valid step (forward direction)."""
    torch.manual_seed(0)
    _, ours = pair(kind, 3, 4, dtype=torch.float64)
    lengths = [2, 5, 3]
    padded = torch.randn(5, 3, 3, dtype=torch.float64)
    output, finals = ours(pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=False))
    h_n = finals[0] if kind == "LSTM" else finals
    unpacked, _ = torch.nn.utils.rnn.pad_packed_sequence(output)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(h_n[0, i], unpacked[n - 1, i])


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_scripted_module_takes_packed_input_through_forward_packed(kind):
    torch.manual_seed(0)
    reference, ours = pair(kind, 3, 4, 2, bidirectional=True)
    module = scripted(ours)
    packed = pack_sequence([torch.randn(3, 3), torch.randn(5, 3), torch.randn(1, 3)], enforce_sorted=False)
    expected, actual, exact = reference(packed), module.forward_packed(packed), float64_call(reference, packed)
    assert torch.equal(actual[0].batch_sizes, expected[0].batch_sizes)
    actual, expected, exact = (flat((r[0].data, r[1])) for r in (actual, expected, exact))
    assert_all_close(actual, expected, torch.float32, OUTPUT_NAMES[: len(expected)], exact)
    # The scripted forward itself is typed for tensors: TorchScript refuses a PackedSequence there.
    with pytest.raises(Exception, match="PackedSequence"):
        module(packed)
