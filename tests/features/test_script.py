"""TorchScript: every module scripts, saves and loads; a user model holding our layers scripts too."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, assert_close, float64_call, scripted
from torch import nn

import recurrent
from recurrent import _jit, kernels


@pytest.mark.skipif(not _jit.JIT_ENABLED, reason="TorchScript switched off")
def test_kernels_are_compiled():
    kernel_functions = (
        kernels.gru_forward,
        kernels.gru_backward,
        kernels.rnn_forward,
        kernels.rnn_backward,
        kernels.lstm_forward,
        kernels.lstm_backward,
    )
    for fn in kernel_functions:
        assert isinstance(fn, torch.jit.ScriptFunction), fn


class Classifier(nn.Module):
    """The kind of model a user writes: a GRU and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = recurrent.GRU(5, 8, 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


MODULES = [
    lambda: recurrent.RNNCell(5, 8),
    lambda: recurrent.RNNCell(5, 8, nonlinearity="relu", bias=False),
    lambda: recurrent.GRUCell(5, 8),
    lambda: recurrent.RNN(5, 8, 2, bidirectional=True),
    lambda: recurrent.RNN(5, 8, nonlinearity="relu", batch_first=True),
    lambda: recurrent.GRU(5, 8, 3, bias=False, dropout=0.1),
    lambda: recurrent.LSTMCell(5, 8),
    lambda: recurrent.LSTM(5, 8, 2, bidirectional=True),
    lambda: recurrent.LSTM(5, 8, proj_size=3, batch_first=True),
    Classifier,
]


@pytest.mark.parametrize("make", MODULES)
def test_script_save_load_equal_eager(make, tmp_path):
    torch.manual_seed(0)
    module = make().eval()
    x = torch.randn(4, 3, 5) if not isinstance(module, recurrent.cells.RNNCellBase) else torch.randn(3, 5)
    expected, exact = leaves(module(x)), leaves(float64_call(module, x))
    compiled = scripted(module)
    path = tmp_path / "module.pt"
    torch.jit.save(compiled, str(path))
    loaded = torch.jit.load(str(path))
    for run in (compiled, loaded):
        for a, e, x64 in zip(leaves(run(x)), expected, exact):
            assert_close(a, e, torch.float32, "scripted vs eager", x64)


def leaves(result) -> list:
    """Every tensor of a nested tuple result, in order."""
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for item in result for t in leaves(item)]


def test_scripted_model_trains():
    torch.manual_seed(0)
    model = scripted(Classifier())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(16, 4, 5), torch.randint(0, 3, (16,))
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_scripted_module_follows_dtype_and_state_dict_changes():
    torch.manual_seed(0)
    reference = nn.GRU(3, 4, 2)
    compiled = scripted(recurrent.GRU(3, 4, 2))
    compiled.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 3)
    exact = float64_call(reference, x)[0]
    assert_close(compiled(x)[0], reference(x)[0], torch.float32, "after load_state_dict", exact)
    compiled.double()
    reference.double()
    assert_close(compiled(x.double())[0], reference(x.double())[0], torch.float64, "after .double()")


def _run_clean(code: str, **env) -> subprocess.CompletedProcess:
    root = str(ROOT)
    return subprocess.run(
        [
            sys.executable,
            "-W",
            "error::FutureWarning",
            "-W",
            "error::DeprecationWarning",
            "-W",
            "error::RuntimeWarning",
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root, **env},
        timeout=300,
    )


def test_plain_use_shows_no_deprecation_warning():
    code = (
        "import torch, recurrent\n"
        "m = recurrent.GRU(3, 4, 2, bidirectional=True)\n"
        "out, h = m(torch.randn(5, 2, 3)); (out.sum() + h.sum()).backward()\n"
        "c = recurrent.RNNCell(3, 4); c(torch.randn(2, 3)).sum().backward()\n"
        "assert isinstance(recurrent.kernels.gru_forward, torch.jit.ScriptFunction)\n"
    )
    result = _run_clean(code)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr


def test_library_works_without_torchscript():
    """With TorchScript off, the kernels are plain Python and still match torch.nn and script-free use."""
    code = (
        "import torch, recurrent\n"
        "assert not isinstance(recurrent.kernels.gru_forward, torch.jit.ScriptFunction)\n"
        "torch.manual_seed(0)\n"
        "ref = torch.nn.GRU(3, 4, 2, bidirectional=True, dtype=torch.float64)\n"
        "m = recurrent.GRU(3, 4, 2, bidirectional=True, dtype=torch.float64); m.load_state_dict(ref.state_dict())\n"
        "x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)\n"
        "a, b = m(x)[0], ref(x)[0]\n"
        "ga, = torch.autograd.grad(a.sum(), x); gb, = torch.autograd.grad(b.sum(), x)\n"
        "torch.testing.assert_close(a, b); torch.testing.assert_close(ga, gb)\n"
    )
    result = _run_clean(code, RECURRENT_DISABLE_JIT="1")
    assert result.returncode == 0, result.stderr
