"""The cell-kind registry, the parameter order, backend selection and the TorchScript wrapper."""

import pytest
import torch
from torch import nn

import recurrent
from recurrent import _jit, kernels

TORCH_LAYERS = {
    "RNN_TANH": (nn.RNN, {}),
    "RNN_RELU": (nn.RNN, {"nonlinearity": "relu"}),
    "GRU": (nn.GRU, {}),
    "LSTM": (nn.LSTM, {}),
}


def test_registry_covers_exactly_the_layer_modes():
    assert set(kernels.KINDS) == set(TORCH_LAYERS)


@pytest.mark.parametrize("mode", sorted(TORCH_LAYERS))
def test_gate_count_matches_torch_weight_shapes(mode):
    cls, extra = TORCH_LAYERS[mode]
    assert cls(3, 5, **extra).weight_ih_l0.shape[0] == kernels.KINDS[mode].gates * 5


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("proj", [0, 2])
def test_parameter_order_is_torch_nn_registration_order(bias, proj):
    reference = nn.LSTM(3, 4, 2, bias=bias, bidirectional=True, proj_size=proj)
    ours = recurrent.LSTM(3, 4, 2, bias=bias, bidirectional=True, proj_size=proj)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    kinds = kernels.layer_param_kinds(bias, proj > 0)
    assert [n for n, _ in reference.named_parameters()][: len(kinds)] == [k + "_l0" for k in kinds]


@pytest.mark.parametrize("mode", sorted(TORCH_LAYERS))
def test_every_kind_has_a_scripted_forward_branch(mode):
    """The scripted path reaches each kind through kernels.stack.sequence_forward's branches."""
    cls, extra = TORCH_LAYERS[mode]
    torch.manual_seed(0)
    reference = cls(3, 4, dtype=torch.float64, **extra)
    spec = kernels.StackSpec(mode, 1, 1, True, False, kernels.KINDS[mode].folds_bias, 0.0, False, False)
    x = torch.randn(5 * 2, 3, dtype=torch.float64)
    states = [torch.zeros(1, 2, 4, dtype=torch.float64) for _ in range(2 if mode == "LSTM" else 1)]
    rows, _ = kernels.run_stack(spec, x, [2] * 5, states, list(reference.parameters()), "")
    torch.testing.assert_close(rows.view(5, 2, 4), reference(x.view(5, 2, 3))[0])


def test_an_unknown_mode_names_the_missing_branch():
    with pytest.raises(Exception, match="no branch for mode NEW"):
        kernels.sequence_forward(
            "NEW", torch.zeros(1, 1, 1), [torch.zeros(1, 1, 1)], torch.zeros(1, 1, 1), None, [], [1]
        )


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="TorchScript switched off")
def test_a_compile_error_raises_rather_than_running_eager():
    def not_scriptable(x: torch.Tensor) -> torch.Tensor:
        return x.unknown_method_xyz()

    with pytest.raises(RuntimeError, match="unknown_method_xyz"):
        _jit.script(not_scriptable)


@pytest.mark.parametrize(
    "value,expected",
    [("", "torchscript"), ("default", "torchscript"), ("torchscript", "torchscript"), ("auto", "torchscript")],
)
def test_cpu_layers_run_torchscript(monkeypatch, value, expected):
    monkeypatch.setenv("RECURRENT_BACKEND", value)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert recurrent.backend_for(recurrent.GRU(3, 4), torch.randn(2, 1, 3)) == expected


def test_forcing_triton_where_it_cannot_run_says_why(monkeypatch):
    monkeypatch.setenv("RECURRENT_BACKEND", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer, x = recurrent.GRU(3, 4), torch.randn(2, 1, 3)
    with pytest.raises(RuntimeError, match="RECURRENT_BACKEND=triton.*need CUDA"):
        recurrent.backend_for(layer, x)
    with pytest.raises(RuntimeError, match="RECURRENT_BACKEND=triton"):
        layer(x)


def test_an_unknown_backend_is_rejected(monkeypatch):
    monkeypatch.setenv("RECURRENT_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="RECURRENT_BACKEND must be one of .*got 'cudnn'"):
        recurrent.GRU(3, 4)(torch.randn(2, 1, 3))


@pytest.mark.parametrize(
    "value,dtype,hidden,expected",
    [
        ("", torch.float32, 128, "triton"),
        ("default", torch.bfloat16, 64, "triton"),
        ("auto", torch.float16, 128, "triton"),
        ("", torch.float32, 256, "triton"),
        ("", torch.float32, 257, "torchscript"),  # above AUTO_MAX_HIDDEN the TorchScript loop was faster
        ("", torch.float64, 128, "torchscript"),
        ("torchscript", torch.float32, 128, "torchscript"),
        ("triton", torch.float32, 512, "triton"),
    ],
)
def test_cuda_calls_pick_triton_where_it_was_measured_faster(monkeypatch, value, dtype, hidden, expected):
    """The dispatcher's rule for CUDA tensors (a pure function of the call, so checked without a GPU)."""
    pytest.importorskip("triton")
    from recurrent.kernels import dispatch

    monkeypatch.setenv("RECURRENT_BACKEND", value)
    assert dispatch.AUTO_MAX_HIDDEN == 256
    assert dispatch.select_backend("GRU", torch.device("cuda"), dtype, hidden) == expected


def test_cuda_calls_keep_the_torchscript_loop_while_torch_compile_traces(monkeypatch):
    """torch.compile and torch.export trace the loop the deployment tests cover, not the Triton launches."""
    pytest.importorskip("triton")
    from recurrent.kernels import dispatch

    monkeypatch.delenv("RECURRENT_BACKEND", raising=False)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert dispatch.select_backend("GRU", torch.device("cuda"), torch.float32, 128) == "torchscript"
