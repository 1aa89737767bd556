"""Property tests: RNN, GRU and LSTM equal torch.nn's outputs, final states and every gradient."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_close, grads, pair, scripted

layer_options = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["RNN_tanh", "RNN_relu", "GRU", "LSTM"]),
        "proj": st.integers(0, 8),  # LSTM only: proj_size = proj % hidden_size
        "input_size": st.integers(1, 9),
        "hidden_size": st.integers(1, 9),
        "num_layers": st.integers(1, 3),
        "bias": st.booleans(),
        "batch_first": st.booleans(),
        "bidirectional": st.booleans(),
        "steps": st.integers(1, 7),
        "batch": st.integers(1, 4),
        "batched": st.booleans(),
        "with_h0": st.booleans(),
        "seed": st.integers(0, 2**16),
    }
)


def constructor_extras(o: dict) -> dict:
    kind, _, nonlinearity = o["kind"].partition("_")
    if nonlinearity:
        return {"nonlinearity": nonlinearity}
    if kind == "LSTM":
        return {"proj_size": o["proj"] % o["hidden_size"]}
    return {}


def initial_states(o: dict, kind: str, lead: tuple, dtype, device) -> list:
    """[h0] or [h0, c0] with torch.nn's shapes (h0 of size proj_size for a projected LSTM)."""
    sizes = [o["hidden_size"]]
    if kind == "LSTM":
        sizes = [(o["proj"] % o["hidden_size"]) or o["hidden_size"], o["hidden_size"]]
    return [torch.randn(*lead, size, dtype=dtype, device=device, requires_grad=True) for size in sizes]


def build(o: dict, dtype: torch.dtype, device: str):
    kind = o["kind"].partition("_")[0]
    extra = constructor_extras(o)
    torch.manual_seed(o["seed"])
    reference, ours = pair(
        kind, o["input_size"], o["hidden_size"], o["num_layers"], bias=o["bias"], batch_first=o["batch_first"],
        bidirectional=o["bidirectional"], dtype=dtype, device=device, **extra,
    )
    directions = 2 if o["bidirectional"] else 1
    if o["batched"]:
        shape = (o["batch"], o["steps"]) if o["batch_first"] else (o["steps"], o["batch"])
        lead = (directions * o["num_layers"], o["batch"])
    else:
        shape, lead = (o["steps"],), (directions * o["num_layers"],)
    x = torch.randn(*shape, o["input_size"], dtype=dtype, device=device, requires_grad=True)
    states = initial_states(o, kind, lead, dtype, device) if o["with_h0"] else []
    return reference, ours, x, states


def flat(result) -> list:
    """(output, h_n) or (output, (h_n, c_n)) as a flat list of tensors."""
    output, finals = result
    return [output, *(finals if isinstance(finals, tuple) else (finals,))]


def hidden_arg(states: list):
    if not states:
        return None
    return states[0] if len(states) == 1 else tuple(states)


def check_against_reference(o: dict, dtype: torch.dtype, device: str, script: bool = False) -> None:
    reference, ours, x, states = build(o, dtype, device)
    ours_run = scripted(ours) if script else ours
    expected = flat(reference(x, hidden_arg(states)))
    actual = flat(ours_run(x, hidden_arg(states)))
    for a, e, what in zip(actual, expected, ("output", "h_n", "c_n")):
        assert a.shape == e.shape, f"{what} shape {a.shape} != torch.nn's {e.shape}"
        assert_close(a, e, dtype, what)
    inputs = [x] + states
    names = ["input", "h0", "c0"][: len(inputs)]
    g_expected = grads(expected, inputs + list(reference.parameters()))
    g_actual = grads(actual, inputs + list(ours.parameters()))
    names += [n for n, _ in ours.named_parameters()]
    for a, e, name in zip(g_actual, g_expected, names):
        assert_close(a, e, dtype, f"grad of {name}")


@given(layer_options)
def test_layers_equal_torch_float64(device, o):
    check_against_reference(o, torch.float64, device)


@given(layer_options)
def test_layers_equal_torch_float32(device, o):
    check_against_reference(o, torch.float32, device)


@given(layer_options)
def test_scripted_layers_equal_torch(device, o):
    check_against_reference(o, torch.float64, device, script=True)


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_inference_path_equals_torch(device, kind):
    """Under no_grad and inference_mode the kernel saves nothing and still returns torch.nn's numbers."""
    torch.manual_seed(0)
    reference, ours = pair(kind, 6, 8, 2, bidirectional=True, dtype=torch.float64, device=device)
    x = torch.randn(5, 3, 6, dtype=torch.float64, device=device)
    expected = reference(x)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            actual = ours(x)
        assert not actual[0].requires_grad
        for a, e in zip(flat(actual), flat(expected)):
            assert_close(a, e.detach(), torch.float64, f"{kind} under {context.__name__}")


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_dropout_between_layers_only_in_training(kind):
    torch.manual_seed(0)
    reference, ours = pair(kind, 4, 6, 3, dropout=0.5)
    x = torch.randn(5, 2, 4)
    ours.eval()
    assert_close(ours(x)[0], reference.eval()(x)[0], torch.float32, "eval mode ignores dropout")
    ours.train()
    a, b = ours(x)[0], ours(x)[0]
    assert not torch.allclose(a, b), "training mode must drop units between layers"
    # The last layer's own output is not dropped: with one layer dropout has no effect at all.
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        single_ref, single = pair(kind, 4, 6, 1, dropout=0.5)
    single.train()
    assert_close(single(x)[0], single_ref(x)[0], torch.float32, "dropout after the last layer")


def test_dropout_scales_kept_units():
    """Layer 2 of a 2-layer RNN with identity-like weights sees inputs scaled by 1/(1-p) or zeroed."""
    torch.manual_seed(0)
    _, ours = pair("RNN", 3, 4, 2, dropout=0.25, nonlinearity="relu", bias=False)
    x = torch.rand(1, 2000, 3)
    with torch.no_grad():
        ours.weight_hh_l0.zero_()
        ours.weight_hh_l1.zero_()
        ours.weight_ih_l1.copy_(torch.eye(4))
        out_train = ours.train()(x)[0]
        out_eval = ours.eval()(x)[0]
    dropped = (out_train == 0) & (out_eval != 0)
    assert 0.2 < dropped.sum() / (out_eval != 0).sum() < 0.3
    kept = (out_train != 0)
    torch.testing.assert_close(out_train[kept], out_eval[kept] / 0.75)
