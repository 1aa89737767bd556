"""PyTorch's own tests of its recurrent modules, ported to pytest and run against recurrent.

Two sources (issue 11, "drop-in conformance"):

- the generic module checks of ``test/test_modules.py`` (``TestModule``, ``TestModuleCPUOnly``) over the
  ``module_db`` entries of nn.RNN, nn.GRU, nn.LSTM, nn.RNNCell, nn.GRUCell and nn.LSTMCell, with their sample
  inputs and error inputs from ``torch/testing/_internal/common_modules.py`` (``module_inputs_torch_nn_RNN_GRU_Cell``,
  ``module_inputs_torch_nn_LSTMCell``, ``module_inputs_torch_nn_RNN_GRU``, ``module_inputs_torch_nn_LSTM``,
  ``module_error_inputs_torch_nn_RNN_GRU_Cell``, ``module_error_inputs_torch_nn_LSTMCell``,
  ``module_error_inputs_torch_nn_RNN_GRU``) written out again here: torch's internal testing package changes
  between versions and is not imported;
- the RNN tests of ``test/test_nn.py`` (``TestNN``, ``TestNNDeviceType``) and one of ``test/test_autograd.py``.

Upstream runs them on torch.nn; here they run on recurrent's classes, and where upstream only smoke-tests, the
port also compares with torch.nn given the same weights (float64 to 1e-9, float32 to 1e-5). Each ported test
names its upstream test in the comment above it. Where recurrent deliberately differs from torch.nn, the port
asserts recurrent's documented behaviour and says so; every other case behaves as torch.nn does.

Left out, one line each:
- test_modules.py::TestModule::test_cpu_gpu_parity: needs an accelerator (CPU against GPU results).
- test_modules.py::TestModule::test_check_inplace: only for modules with an ``inplace`` argument; RNNs have none.
- test_modules.py::TestModule::test_multiple_device_transfer: needs an accelerator; ported as CPU dtype
  transfers (and device transfers where CUDA is present).
- test_nn.py::TestNN::test_RNN_cpu_vs_cudnn_no_dropout / _with_dropout: cuDNN against torch's CPU kernels;
  ported as recurrent against torch.nn's CPU kernels over a pairwise subset of its grid
  (test_nn_RNN_cpu_vs_torch_nn).
- test_modules.py::TestModule::test_grad / test_gradgrad: every sample, twice, and once per parameter would take
  minutes here; ported over a covering subset of the samples (see gradient_cases).
- test_nn.py::TestNN::test_cudnn_weight_format: cuDNN's flat weight buffer; recurrent has none
  (flatten_parameters() is a documented no-op).
- test_nn.py::TestNN::test_cudnn_weight_tying: cuDNN against CPU; its weight tying is ported on the CPU
  against torch.nn (test_nn_weight_tying_like_torch).
- test_nn.py::TestNN::test_cudnn_rnn_dropout_states_device: needs two GPUs.
- test_nn.py::TestNN::test_RNN_cudnn_weight_norm: cuDNN; weight norm on the CPU is test_nn_rnn_weight_norm.
- test_nn.py::TestNN::test_partial_flat_weights: CUDA (.cuda() with a deleted weight); ported with .double()
  in the place of .cuda() (test_nn_partial_flat_weights).
- test_nn.py::TestNN::test_rnn_check_device, test_projections_lstm_check_device: need two GPUs (recurrent's
  device check is tested on 'meta' in tests/parity/test_errors.py::test_layer_rejects_input_on_other_device_meta).
- test_nn.py::TestNN::test_pack_sequence_batch_sizes_throw: CUDA, and a check of the PackedSequence class, not
  of the modules.
- test_nn.py::TestNNDeviceType::test_rnn_fused: CUDA-only (torch's fused CUDA cell kernels against cuDNN).
- test_nn.py::TestNNDeviceType::test_LSTM_differentiable_backward_using_oneDNN: oneDNN on against off; ported as
  recurrent against torch.nn (test_nn_LSTM_differentiable_backward_like_torch).
- test_nn.py::TestNNDeviceType::test_save_lstm_compatibility: loads torch.nn's pre-1.8 pickles (no proj_size);
  recurrent has no older format to stay compatible with.
- test_nn.py::TestNN::test_invalid_dropout_p: about nn.Dropout and F.dropout, not the RNN modules (the RNNs'
  dropout argument checks are test_modules' error inputs here and tests/parity/test_errors.py).
- test/nn/test_packed_sequence.py: torch.nn.utils.rnn's packing functions, not the modules (the modules on
  packed input: test_nn_variable_sequence here, tests/parity/test_packed.py).
- test_nn.py::TestNN::test_projections_errors_on_gru_and_rnn: already in
  tests/parity/test_conformance_inputs.py::test_proj_size_rejected_by_rnn_and_gru_like_torch.
- test_nn.py::TestNN::test_error_RNN_seq_len_zero: already in
  tests/parity/test_conformance_inputs.py::test_zero_length_sequence_raises_like_torch.
- test_nn.py::TestNN::test_RNN_input_size_zero (an empty batch, (5, 0, 3)): already in
  tests/parity/test_conformance_inputs.py::test_layer_empty_batch_like_torch and
  test_layer_empty_batch_backward_fills_grad.
- There is no test_RNN_grad_and_gradgrad upstream (only the LSTM and GRU ones, ported); nn.RNN's gradients are
  checked by test_modules_grad / test_modules_gradgrad.
- test/test_expanded_weights.py::TestExpandedWeightModule::test_module: per-sample gradients of RNN/GRU/LSTM
  (module_db samples with_packed_sequence=True, bidirectional included) through ExpandedWeights, torch's
  per-sample-gradient machinery; that is the torch.func-over-packed-bidirectional ground being reworked now.
None of the ported tests needs torch.func over packed bidirectional input or torch.autograd.forward_ad
(upstream's module gradchecks leave forward AD off and use unbatched, unpacked samples).
"""

from __future__ import annotations

import copy
import io
import itertools
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import pytest
import torch
from helpers import TOLERANCE, as_float64, assert_as_accurate, float64_call, float64_twin, pair, triton_forced
from torch import Tensor, nn
from torch.nn.utils import rnn as rnn_utils

import recurrent

CELLS = ["RNNCell", "GRUCell", "LSTMCell"]
LAYERS = ["RNN", "GRU", "LSTM"]
KINDS = LAYERS + CELLS
# module_db: RNN, GRU and LSTM have train_and_eval_differ=True (their samples run in both modes), the cells not.
TRAIN_AND_EVAL_DIFFER = {"RNN": True, "GRU": True, "LSTM": True, "RNNCell": False, "GRUCell": False, "LSTMCell": False}


# -- nested arguments and outputs -------------------------------------------------------------------------------


def leaves(obj) -> list[Tensor]:
    """The tensors of a nested tuple/list, depth first (what torch.utils._pytree.tree_leaves gives here)."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in leaves(item)]
    return []


def rebuild(template, flat: Iterator[Tensor]):
    """``template``'s structure with its tensors taken in order from ``flat``."""
    if isinstance(template, Tensor):
        return next(flat)
    if isinstance(template, (tuple, list)):
        return type(template)(rebuild(item, flat) for item in template)
    return template


def map_tensors(obj, fn: Callable[[Tensor], Tensor]):
    return rebuild(obj, iter([fn(t) for t in leaves(obj)]))


def assert_tree_close(actual, expected, dtype: torch.dtype, what: str = "", exact=None, **tolerance) -> None:
    """Leaf by leaf: to ``tolerance`` (default: the dtype's, as upstream), or, given ``exact`` (the float64
    result of a float32 comparison with torch.nn's), as accurate as ``expected`` (helpers.assert_as_accurate)."""
    a, e = leaves(actual), leaves(expected)
    assert len(a) == len(e), f"{what}: {len(a)} tensors, expected {len(e)}"
    tol = tolerance or TOLERANCE[dtype]
    judged = leaves(exact) if exact is not None and dtype != torch.float64 else None
    for i, (x, y) in enumerate(zip(a, e)):
        assert x.shape == y.shape, f"{what} #{i}: shape {tuple(x.shape)}, expected {tuple(y.shape)}"
        if judged is not None:
            assert_as_accurate(x, y, judged[i], f"{what} #{i}")
        else:
            torch.testing.assert_close(x, y, **tol, msg=lambda m: f"{what} #{i}: {m}")


def twin(ours: nn.Module) -> nn.Module:
    """torch.nn's module of ours' class and constructor arguments, with ours' weights (and dtype, mode)."""
    sample_args = ours._port_ctor  # set by construct()
    reference = getattr(nn, type(ours).__name__)(*sample_args[0], **sample_args[1])
    first = next(ours.parameters())
    # Not under swap_module_params_on_conversion: torch.nn's RNNs keep weak references to their weights, which
    # torch.utils.swap_tensors refuses (a torch.nn limitation, not the module under test).
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(False)
    try:
        reference.to(device=first.device, dtype=first.dtype)
        reference.load_state_dict(ours.state_dict(), strict=True)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    reference.train(ours.training)
    return reference


# -- the module_db samples (common_modules.py), written out again -------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One ModuleInput: constructor arguments, the forward arguments as nested shapes, and which of
    common_modules' no_batch_dim_reference_* functions upstream compares with."""

    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    forward: tuple = ()  # nested shapes; a shape is a tuple of ints
    reference: str = "cell"  # "cell" | "lstmcell" | "rnn_gru" | "lstm"

    @property
    def batch_first(self) -> bool:
        return bool(self.kwargs.get("batch_first", False))


def is_shape(spec) -> bool:
    return isinstance(spec, tuple) and all(isinstance(s, int) for s in spec)


def build(spec, dtype: torch.dtype, requires_grad: bool = False, device="cpu"):
    """Tensors for nested shapes, as common_modules' make_input (make_tensor: uniform in [-9, 9])."""
    if is_shape(spec):
        return torch.testing.make_tensor(spec, dtype=dtype, device=device, requires_grad=requires_grad)
    return tuple(build(s, dtype, requires_grad, device) for s in spec)


def cell_samples(kind: str) -> list[Sample]:
    """module_inputs_torch_nn_RNN_GRU_Cell (is_rnn for RNNCell) and module_inputs_torch_nn_LSTMCell: unbatched
    input of 5 features, hidden size 10, compared with a batch of one."""
    lstm = kind == "LSTMCell"
    forward = ((5,), ((10,), (10,))) if lstm else ((5,), (10,))
    reference = "lstmcell" if lstm else "cell"
    samples = [
        Sample("5-10", (5, 10), {}, forward, reference),
        Sample("5-10-bias", (5, 10), {"bias": True}, forward, reference),
    ]
    if kind == "RNNCell":
        samples.append(Sample("5-10-bias-relu", (5, 10), {"bias": True, "nonlinearity": "relu"}, forward, reference))
    return samples


def layer_samples(kind: str) -> list[Sample]:
    """module_inputs_torch_nn_RNN_GRU (is_rnn for RNN) and module_inputs_torch_nn_LSTM: two layers over every
    bias/batch_first/bidirectional (and nonlinearity, proj_size) combination, each with an unbatched input
    without initial states and one with them."""
    samples = []
    if kind == "LSTM":
        for bias, batch_first, bidirectional, proj_size in itertools.product((False, True), repeat=3 + 1):
            proj_size = 2 if proj_size else 0
            kwargs = dict(
                input_size=2,
                hidden_size=3,
                num_layers=2,
                proj_size=proj_size,
                batch_first=batch_first,
                bias=bias,
                bidirectional=bidirectional,
            )
            name = f"b{int(bias)}-bf{int(batch_first)}-bi{int(bidirectional)}-p{proj_size}"
            states = 4 if bidirectional else 2
            samples.append(Sample(name, (), kwargs, ((2, 2),), "lstm"))
            hidden = ((states, proj_size or 3), (states, 3))
            samples.append(Sample(name + "-hx", (), kwargs, ((3, 2), hidden), "lstm"))
        return samples
    for nonlinearity in ("relu", "tanh") if kind == "RNN" else (None,):
        for bias, batch_first, bidirectional in itertools.product((False, True), repeat=3):
            common = dict(input_size=2, num_layers=2, batch_first=batch_first, bias=bias, bidirectional=bidirectional)
            if nonlinearity:
                common["nonlinearity"] = nonlinearity
            name = (
                f"{nonlinearity + '-' if nonlinearity else ''}b{int(bias)}-bf{int(batch_first)}-bi{int(bidirectional)}"
            )
            samples.append(Sample(name, (), dict(common, hidden_size=2), ((3, 2),), "rnn_gru"))
            samples.append(
                Sample(
                    name + "-hx", (), dict(common, hidden_size=3), ((3, 2), (4 if bidirectional else 2, 3)), "rnn_gru"
                )
            )
    return samples


SAMPLES = {kind: (cell_samples(kind) if kind in CELLS else layer_samples(kind)) for kind in KINDS}


def training_modes(kind: str) -> list[bool]:
    return [True, False] if TRAIN_AND_EVAL_DIFFER[kind] else [True]


KIND_TRAINING = [(k, t) for k in KINDS for t in training_modes(k)]
KIND_TRAINING_IDS = [f"{k}-{'train' if t else 'eval'}" for k, t in KIND_TRAINING]


# The layers have 16 or 32 samples each; the slower checks take a covering subset of them: the option rows of a
# pairwise covering array (every pair of the layer's on/off options seen in all four combinations), each with
# and without initial states (10 RNN, 8 GRU, 10 LSTM samples; the cells keep all theirs).
PAIRWISE = {
    3: ["000", "011", "101", "110"],
    4: ["0000", "0111", "1011", "1101", "1110"],
}


def sample_name(kind: str, bits: str) -> str:
    if kind == "RNN":
        nonlinearity, bias, batch_first, bidirectional = bits
        return f"{'relu' if nonlinearity == '1' else 'tanh'}-b{bias}-bf{batch_first}-bi{bidirectional}"
    if kind == "LSTM":
        bias, batch_first, bidirectional, proj = bits
        return f"b{bias}-bf{batch_first}-bi{bidirectional}-p{2 if proj == '1' else 0}"
    bias, batch_first, bidirectional = bits
    return f"b{bias}-bf{batch_first}-bi{bidirectional}"


def fullest(kind: str) -> str:
    return sample_name(kind, "1" * (3 if kind == "GRU" else 4)) + "-hx"


def emptiest(kind: str) -> str:
    return sample_name(kind, "0" * (3 if kind == "GRU" else 4))


def covering_samples(kind: str) -> list[Sample]:
    if kind in CELLS:
        return SAMPLES[kind]
    by_name = {s.name: s for s in SAMPLES[kind]}
    return [
        by_name[sample_name(kind, bits) + suffix]
        for bits in PAIRWISE[3 if kind == "GRU" else 4]
        for suffix in ("", "-hx")
    ]


def samples_for(kind: str, dtype: torch.dtype, training: bool) -> list[Sample]:
    """Every sample in float32 and train mode; the covering subset in float64 or eval mode (with no dropout in the
    samples, eval differs only in the flag)."""
    return SAMPLES[kind] if dtype == torch.float32 and training else covering_samples(kind)


def construct(kind: str, sample: Sample, dtype: torch.dtype = torch.float32, training: bool = True, **factory):
    """Ours, as upstream builds the module under test: ``cls(*args, **kwargs).to(dtype)``, in ``training``."""
    module = getattr(recurrent, kind)(*sample.args, **sample.kwargs, **factory)
    module.to(dtype)
    module.train(training)
    module._port_ctor = (sample.args, sample.kwargs)
    return module


def batched_of_one(module: nn.Module, sample: Sample, args: tuple):
    """common_modules' no_batch_dim_reference_fn / _lstmcell / _rnn_gru / _lstm: the unbatched call run as a
    batch of one, its outputs squeezed back."""
    if sample.reference == "cell":
        return module(*[a.unsqueeze(0) for a in args]).squeeze(0)
    if sample.reference == "lstmcell":
        x, (h, c) = args
        out = module(x.unsqueeze(0), (h.unsqueeze(0), c.unsqueeze(0)))
        return out[0].squeeze(0), out[1].squeeze(0)
    batch_dim = 0 if sample.batch_first else 1
    x = args[0].unsqueeze(batch_dim)
    hx = args[1] if len(args) > 1 else None
    if sample.reference == "rnn_gru":
        out, h = module(x, None if hx is None else hx.unsqueeze(1))
        return out.squeeze(batch_dim), h.squeeze(1)
    out, (h, c) = module(x, None if hx is None else (hx[0].unsqueeze(1), hx[1].unsqueeze(1)))
    return out.squeeze(batch_dim), (h.squeeze(1), c.squeeze(1))


def assert_parameters_are(module: nn.Module, device, dtype: torch.dtype) -> None:
    """TestModule._assert_module_parameters_and_buffer_are."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # upstream's device strings name the index: cuda:0
        device = torch.device("cuda", torch.cuda.current_device())
    for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
        assert t.device == device, f"{name} is on {t.device}, expected {device}"
        if t.dtype.is_floating_point:
            assert t.dtype == dtype, f"{name} is {t.dtype}, expected {dtype}"


# ================================================================================================================
# test/test_modules.py (TestModule, TestModuleCPUOnly) over the six modules' module_db entries
# ================================================================================================================


# test/test_modules.py::TestModule::test_forward (module_inputs_torch_nn_RNN_GRU_Cell, _LSTMCell, _RNN_GRU, _LSTM)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind,training", KIND_TRAINING, ids=KIND_TRAINING_IDS)
def test_modules_forward(kind, training, dtype):
    """Each sample's unbatched output equals the batched-of-one reference (upstream's check) and torch.nn's
    output with the same weights (the port's); then .float()/.double() keeps the module usable and converted."""
    for sample in samples_for(kind, dtype, training):
        torch.manual_seed(0)
        ours = construct(kind, sample, dtype, training)
        reference = twin(ours)
        args = build(sample.forward, dtype)
        outputs = ours(*args)
        assert_tree_close(outputs, batched_of_one(ours, sample, args), dtype, f"{sample.name} vs batch of one")
        exact = float64_call(reference, *args)
        assert_tree_close(outputs, reference(*args), dtype, f"{sample.name} vs torch.nn", exact)
        getattr(ours, "float" if dtype == torch.float32 else "double")()
        ours(*args)
        assert_parameters_are(ours, "cpu", dtype)


# test/test_modules.py::TestModule::test_factory_kwargs
@pytest.mark.parametrize("factory_device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_modules_factory_kwargs(kind, dtype, factory_device):
    """device= and dtype= given to the constructor reach every parameter ('meta' too: the port's addition)."""
    for sample in SAMPLES[kind]:
        module = getattr(recurrent, kind)(*sample.args, **sample.kwargs, device=factory_device, dtype=dtype)
        assert_parameters_are(module, factory_device, dtype)
        reference = getattr(nn, kind)(*sample.args, **sample.kwargs, device=factory_device, dtype=dtype)
        assert [(n, p.shape, p.dtype) for n, p in module.named_parameters()] == [
            (n, p.shape, p.dtype) for n, p in reference.named_parameters()
        ]


# test/test_modules.py::TestModule::test_multiple_device_transfer (onlyAccelerator upstream: here the dtype
# transfers on the CPU, and the device round trip cpu -> device -> cpu -> device where CUDA is present)
@pytest.mark.parametrize("kind", KINDS)
def test_modules_multiple_device_transfer(kind, device):
    for sample in covering_samples(kind):
        torch.manual_seed(0)
        ours = construct(kind, sample, torch.float32).to(device)
        reference = twin(ours).to(device)
        for dtype in (torch.float64, torch.float32, torch.float64):
            ours.to(dtype)
            reference.to(dtype)
            args = build(sample.forward, dtype, device=device)
            exact = float64_call(reference, *args)
            assert_tree_close(ours(*args), reference(*args), dtype, f"{sample.name} after .to({dtype})", exact)
            assert_parameters_are(ours, device, dtype)
        # Forced Triton runs CPU tensors only under its interpreter, so a GPU run of it skips the CPU leg.
        cpu_runs = not triton_forced() or os.environ.get("TRITON_INTERPRET") == "1"
        if device != "cpu" and cpu_runs:
            args = build(sample.forward, torch.float64)
            ours.cpu()
            reference.cpu()
            assert_tree_close(ours(*args), reference(*args), torch.float64, f"{sample.name} back on the CPU")
            assert_parameters_are(ours, "cpu", torch.float64)
            ours.to(device)
            ours(*build(sample.forward, torch.float64, device=device))
            assert_parameters_are(ours, device, torch.float64)


# test/test_modules.py::TestModule::test_repr
@pytest.mark.parametrize("kind", KINDS)
def test_modules_repr(kind):
    """repr and str work (upstream); and they are torch.nn's (the port's addition; a relu RNN: the next test)."""
    for sample in SAMPLES[kind]:
        ours = construct(kind, sample)
        text = repr(ours)
        assert str(ours) == text and text.startswith(kind + "(")
        assert text == repr(getattr(nn, kind)(*sample.args, **sample.kwargs))


# test/test_modules.py::TestModule::test_save_load
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind,training", KIND_TRAINING, ids=KIND_TRAINING_IDS)
def test_modules_save_load(kind, training, dtype):
    """torch.save of the whole module and torch.load (weights_only=False) give a module with the same outputs;
    the state_dict comes back equal, with weights_only=True too."""
    for sample in samples_for(kind, dtype, training):
        torch.manual_seed(0)
        ours = construct(kind, sample, dtype, training)
        state = ours.state_dict()
        args = build(sample.forward, dtype)
        output = ours(*args)
        buffer = io.BytesIO()
        torch.save(ours, buffer)
        buffer.seek(0)
        copied = torch.load(buffer, weights_only=False)
        assert type(copied) is type(ours)
        assert_tree_close(copied(*args), output, dtype, sample.name, rtol=0, atol=0)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        for weights_only in (False, True):
            buffer.seek(0)
            loaded = torch.load(buffer, weights_only=weights_only)
            assert list(loaded) == list(state)
            assert all(torch.equal(loaded[k], state[k]) for k in state)


def make_non_contiguous(t: Tensor) -> Tensor:
    """TestModule.test_non_contiguous_tensors' helper: same values, every other element of a doubled last dim."""
    if t.dim() == 0:
        return t
    out = torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach()
    out.requires_grad = t.requires_grad
    return out


def backward_all(outputs, grad_outputs) -> None:
    for o, g in zip(leaves(outputs), leaves(grad_outputs)):
        if o.requires_grad:
            o.backward(g, retain_graph=True)


# test/test_modules.py::TestModule::test_non_contiguous_tensors
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind,training", KIND_TRAINING, ids=KIND_TRAINING_IDS)
def test_modules_non_contiguous_tensors(kind, training, dtype):
    """Inputs, initial states and incoming gradients made non-contiguous change neither the outputs nor any
    gradient."""
    for sample in samples_for(kind, dtype, training):
        torch.manual_seed(0)
        ours = construct(kind, sample, dtype, training)
        args = build(sample.forward, dtype, requires_grad=True)
        default_output = ours(*args)
        grad_output = map_tensors(default_output, lambda o: o.detach().clone().normal_())
        backward_all(default_output, grad_output)
        default_input_grads = [a.grad.clone() for a in leaves(args)]
        default_param_grads = [p.grad.clone() for p in ours.parameters()]

        nc_args = map_tensors(args, make_non_contiguous)
        nc_grad_output = map_tensors(grad_output, make_non_contiguous)
        assert not all(t.is_contiguous() for t in leaves(nc_args))
        for inputs, grads in itertools.product([args, nc_args], [grad_output, nc_grad_output]):
            for t in leaves(inputs):
                t.grad = None
            ours.zero_grad()
            out = ours(*inputs)
            backward_all(out, grads)
            assert_tree_close(out, default_output, dtype, f"{sample.name} output")
            assert_tree_close(
                [t.grad for t in leaves(inputs)],
                default_input_grads,
                dtype,
                f"{sample.name} input grads",
                atol=1e-4,
                rtol=0,
            )
            assert_tree_close(
                [p.grad for p in ours.parameters()], default_param_grads, dtype, f"{sample.name} param grads"
            )


def check_gradients(check: Callable, module: nn.Module, args: tuple, per_parameter: bool = True) -> None:
    """TestModule._test_gradients_helper: ``check`` (gradcheck or gradgradcheck, with upstream's defaults from
    torch.testing._internal.common_utils: fast_mode=True, check_batched_grad=True) on the total derivative over
    inputs and parameters, then on the partial derivatives, one parameter at a time."""
    params = tuple(module.parameters())
    n_args = len(leaves(args))

    def run(*flat):
        new_args = rebuild(args, iter(flat[:n_args]))
        return tuple(leaves(module(*new_args)))

    def do_check():
        flat = (*leaves(args), *params)
        assert check(run, flat, fast_mode=True, check_batched_grad=True, nondet_tol=0.0)

    do_check()
    if not per_parameter:
        return
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            do_check()
            p.requires_grad_(False)
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


# Upstream checks the gradients of every sample in both modes, each sample once over inputs and parameters together
# and then once per parameter: here that costs minutes (about 0.1 s a gradcheck and 1 s a gradgradcheck on these
# 2-core machines). So gradcheck runs on the layers' covering subset (covering_samples) in train mode, the
# per-parameter checks for the cells and each layer's fullest sample, eval mode for that sample; gradgradcheck
# for the cells and two samples per layer (all options off without states, all on with them).
def gradient_cases(second_order: bool) -> list:
    """(kind, sample, training, per-parameter checks) for test_modules_grad / test_modules_gradgrad."""
    cases = []
    for kind in KINDS:
        by_name = {s.name: s for s in SAMPLES[kind]}
        if kind in CELLS:
            cases += [(kind, s, True, not second_order) for s in SAMPLES[kind]]
        elif second_order:
            cases += [(kind, by_name[fullest(kind)], True, False), (kind, by_name[emptiest(kind)], True, False)]
        else:
            cases += [(kind, sample, True, sample.name == fullest(kind)) for sample in covering_samples(kind)]
            cases.append((kind, by_name[fullest(kind)], False, False))
    return [
        pytest.param(
            *case, id=f"{case[0]}-{case[1].name}-{'train' if case[2] else 'eval'}{'-per-parameter' if case[3] else ''}"
        )
        for case in cases
    ]


# test/test_modules.py::TestModule::test_grad (float64 only, as upstream)
@pytest.mark.parametrize("kind,sample,training,per_parameter", gradient_cases(second_order=False))
def test_modules_grad(kind, sample, training, per_parameter):
    torch.manual_seed(0)
    ours = construct(kind, sample, torch.float64, training)
    args = build(sample.forward, torch.float64, requires_grad=True)
    check_gradients(torch.autograd.gradcheck, ours, args, per_parameter)


# test/test_modules.py::TestModule::test_gradgrad (float64 only; module_db: supports_gradgrad for all six)
@pytest.mark.parametrize("kind,sample,training,per_parameter", gradient_cases(second_order=True))
def test_modules_gradgrad(kind, sample, training, per_parameter):
    torch.manual_seed(0)
    ours = construct(kind, sample, torch.float64, training)
    args = build(sample.forward, torch.float64, requires_grad=True)
    check_gradients(torch.autograd.gradgradcheck, ours, args, per_parameter)


# test/test_modules.py::TestModule::test_memory_format (inputs of at most 3 dimensions: the contiguous input format,
# the module in preserve_format and contiguous_format)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind,training", KIND_TRAINING, ids=KIND_TRAINING_IDS)
def test_modules_memory_format(kind, training, dtype):
    for sample in samples_for(kind, dtype, training):
        torch.manual_seed(0)
        ours = construct(kind, sample, dtype, training)
        args = build(sample.forward, dtype, requires_grad=True)
        desired = ours(*args)
        inputs = (*leaves(args), *ours.parameters())
        grad_outputs = [torch.rand_like(t) for t in leaves(desired)]
        ref_grads = torch.autograd.grad(leaves(desired), inputs, grad_outputs) if training else None
        for module_format in (torch.preserve_format, torch.contiguous_format):
            ours.to(memory_format=module_format)
            outputs = ours(*args)
            assert_tree_close(outputs, desired, dtype, sample.name)
            assert all(t.is_contiguous() for t in leaves(outputs)), "outputs not contiguous"
            if training:
                grads = torch.autograd.grad(leaves(outputs), (*leaves(args), *ours.parameters()), grad_outputs)
                assert_tree_close(grads, ref_grads, dtype, f"{sample.name} grads")
                assert all(g.is_contiguous() for g in grads), "gradients not contiguous"


# test/test_modules.py::TestModule::test_if_train_and_eval_modes_differ (train mode only, as upstream)
@pytest.mark.parametrize("kind", KINDS)
def test_modules_if_train_and_eval_modes_differ(kind):
    """With the ``training`` attribute deleted, a forward that reads it raises an AttributeError naming it; that
    is allowed only for module_db entries with train_and_eval_differ=True (the layers, not the cells)."""
    for sample in SAMPLES[kind]:
        ours = construct(kind, sample)
        delattr(ours, "training")
        try:
            ours(*build(sample.forward, torch.float32))
        except AttributeError as error:
            if "'training'" not in str(error):
                raise
            assert TRAIN_AND_EVAL_DIFFER[kind], f"{kind}'s forward reads self.training, but torch.nn's does not"


# -- test/test_modules.py::TestModule::test_errors ----------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCase:
    """One ErrorModuleInput: a module built from ``args``/``kwargs`` (the CONSTRUCTION_ERROR cases raise there),
    called on ``forward`` (nested shapes; dtype ``forward_dtype``) for the FORWARD_ERROR cases."""

    name: str
    args: tuple
    kwargs: dict
    forward: Optional[tuple]
    error: type
    regex: str
    forward_dtype: Optional[torch.dtype] = None


# Upstream's messages, the same for every cell: what each error says.
_INPUT_SIZE = "input has inconsistent input_size: got 11 expected 10"
_HIDDEN_SIZE = "hidden0 has inconsistent hidden_size: got 21, expected 20"
_HIDDEN_BATCH = "Input batch size 3 doesn't match hidden0 batch size 5"


def cell_error_cases(kind: str) -> list[ErrorCase]:
    """module_error_inputs_torch_nn_RNN_GRU_Cell (RNNCell, GRUCell) and module_error_inputs_torch_nn_LSTMCell."""
    if kind == "LSTMCell":
        return [
            ErrorCase("input_size 11", (10, 20), {}, ((3, 11), ((3, 20), (3, 20))), RuntimeError, _INPUT_SIZE),
            ErrorCase("hidden_size 21", (10, 20), {}, ((3, 10), ((3, 21), (3, 21))), RuntimeError, _HIDDEN_SIZE),
            ErrorCase("hidden batch 5", (10, 20), {}, ((3, 10), ((5, 20), (5, 20))), RuntimeError, _HIDDEN_BATCH),
            ErrorCase(
                "hx 4-D",
                (10, 20),
                {},
                ((3, 10), ((3, 1, 1, 20), (3, 1, 1, 20))),
                ValueError,
                r"Expected hx\[0\] to be 1D or 2D, got 4D instead",
            ),  # fmt: skip
        ]
    return [
        ErrorCase("input_size 11", (10, 20), {}, ((3, 11), (3, 20)), RuntimeError, _INPUT_SIZE),
        ErrorCase("hidden_size 21", (10, 20), {}, ((3, 10), (3, 21)), RuntimeError, _HIDDEN_SIZE),
        ErrorCase("hidden batch 5", (10, 20), {}, ((3, 10), (5, 20)), RuntimeError, _HIDDEN_BATCH),
        ErrorCase(
            "hx 4-D",
            (10, 20),
            {},
            ((3, 10), (3, 1, 1, 20)),
            ValueError,
            "Expected hidden to be 1D or 2D, got 4D instead",
        ),
        # Upstream's third positional argument is the cell's bias (a truthy string for torch.nn), not its
        # nonlinearity; torch.nn then fails in the forward on the hidden size.
        ErrorCase("third arg 'relu'", (10, 20, "relu"), {}, ((3, 10), (3, 21)), RuntimeError, _HIDDEN_SIZE),
        ErrorCase("third arg 'tanh'", (10, 20, "tanh"), {}, ((3, 10), (3, 21)), RuntimeError, _HIDDEN_SIZE),
    ]


def layer_error_cases(dtype: torch.dtype) -> list[ErrorCase]:
    """module_error_inputs_torch_nn_RNN_GRU (for RNN, GRU and LSTM), as torch 2.14's common_modules has them."""
    other = torch.float64 if dtype == torch.float32 else torch.float32
    return [
        ErrorCase("hidden_size 0", (10, 0, 1), {}, None, ValueError, "hidden_size must be greater than zero"),
        ErrorCase("num_layers 0", (10, 10, 0), {}, None, ValueError, "num_layers must be greater than zero"),
        ErrorCase(
            "input dtype",
            (3, 5),
            {"dtype": dtype},
            ((2, 4, 3),),
            ValueError,
            r"RNN input dtype .* does not match weight dtype .* "
            r"Convert input: input\.to\(.*\), or convert model: model\.to\(.*\)",
            forward_dtype=other,
        ),
        ErrorCase("bias 0", (3, 5), {"bias": 0}, None, TypeError, "bias should be of type bool, got: int"),
        ErrorCase("bias 1", (3, 5), {"bias": 1}, None, TypeError, "bias should be of type bool, got: int"),
        ErrorCase("bias 'True'", (3, 5), {"bias": "True"}, None, TypeError, "bias should be of type bool, got: str"),
        ErrorCase(
            "batch_first 0", (3, 5), {"batch_first": 0}, None, TypeError, "batch_first should be of type bool, got: int"
        ),
        ErrorCase(
            "batch_first 1", (3, 5), {"batch_first": 1}, None, TypeError, "batch_first should be of type bool, got: int"
        ),
        ErrorCase(
            "batch_first 'False'",
            (3, 5),
            {"batch_first": "False"},
            None,
            TypeError,
            "batch_first should be of type bool, got: str",
        ),
        ErrorCase("input_size 3.0", (3.0, 5), {}, None, TypeError, "input_size should be of type int, got: float"),
        ErrorCase("input_size '10'", ("10", 5), {}, None, TypeError, "input_size should be of type int, got: str"),
        ErrorCase("input_size 0", (0, 5), {}, None, ValueError, "input_size must be greater than zero"),
        ErrorCase("input_size -1", (-1, 5), {}, None, ValueError, "input_size must be greater than zero"),
        ErrorCase("hidden_size 5.0", (3, 5.0), {}, None, TypeError, "hidden_size should be of type int, got: float"),
    ]


def error_case_params():
    params = []
    for kind in KINDS:
        for dtype in (torch.float32, torch.float64):
            cases = cell_error_cases(kind) if kind in CELLS else layer_error_cases(dtype)
            for case in cases:
                params.append(
                    pytest.param(
                        kind, case, dtype, id=f"{kind}-{case.name}-{'float32' if dtype == torch.float32 else 'float64'}"
                    )
                )
    return params


def raise_error_case(kind: str, case: ErrorCase, dtype: torch.dtype) -> None:
    """Construct (and, for a FORWARD_ERROR case, call) the module; whatever it raises propagates."""
    module = getattr(recurrent, kind)(*case.args, **case.kwargs)
    if case.forward is not None:
        if "dtype" not in case.kwargs:
            module.to(dtype)
        module(*build(case.forward, case.forward_dtype or dtype))


# test/test_modules.py::TestModule::test_errors (module_error_inputs_torch_nn_RNN_GRU_Cell, _LSTMCell, _RNN_GRU)
@pytest.mark.parametrize("kind,case,dtype", error_case_params())
def test_modules_errors(kind, case, dtype):
    with pytest.raises(case.error, match=case.regex) as raised:
        raise_error_case(kind, case, dtype)
    assert raised.type is case.error


# -- .to(), .to_empty(), device context ----------------------------------------------------------------------------


def swap_mode(swap: bool):
    """Sets torch.__future__'s swap_module_params_on_conversion for a block, as wrapSwapTensorsTest does."""

    class _Swap:
        def __enter__(self):
            self.previous = torch.__future__.get_swap_module_params_on_conversion()
            torch.__future__.set_swap_module_params_on_conversion(swap)

        def __exit__(self, *exc):
            torch.__future__.set_swap_module_params_on_conversion(self.previous)

    return _Swap()


# test/test_modules.py::TestModule::test_to (float32 samples; module_db dtypes: float32, float64)
@pytest.mark.parametrize("set_grad", [True, False], ids=["grad", "no grad"])
@pytest.mark.parametrize("swap", [True, False], ids=["swap", "no swap"])
@pytest.mark.parametrize("kind", KINDS)
def test_modules_to(kind, swap, set_grad):
    """.to(device, dtype) keeps Parameters, converts them (and their .grad), and either swaps the tensors in place
    (same Python objects, new storage) or sets .data (same objects, same _cdata) as swap mode says; the module
    still computes torch.nn's numbers afterwards (the port's addition)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with swap_mode(swap):
        for sample in covering_samples(kind):
            ours = module_to_convert(kind, sample, swap, set_grad)
            previous = ("cpu", torch.float32)
            for device_, dtype_ in itertools.product(devices, (torch.float32, torch.float64)):
                check_to(ours, device_, dtype_, swap, set_grad, grad_unchanged=(device_, dtype_) == previous)
                previous = (device_, dtype_)
                reference = twin(ours)
                args = build(sample.forward, dtype_, device=device_)
                what = f"{sample.name} after .to({device_}, {dtype_})"
                assert_tree_close(ours(*args), reference(*args), dtype_, what, float64_call(reference, *args))


def module_to_convert(kind: str, sample: Sample, swap: bool, set_grad: bool) -> nn.Module:
    """Ours for ``sample`` with new float32 Parameters set with setattr (upstream's _to), with .grad if
    ``set_grad``; in swap mode without grads, once run and converted to half and back."""
    torch.manual_seed(0)
    ours = getattr(recurrent, kind)(*sample.args, **sample.kwargs)
    ours._port_ctor = (sample.args, sample.kwargs)
    for name, p in list(ours.named_parameters()):
        new = nn.Parameter(p.detach().clone().to("cpu", torch.float32))
        setattr(ours, name, new)
        if set_grad:
            new.grad = torch.randn_like(new)
    if swap and not set_grad:
        leaves(ours(*build(sample.forward, torch.float32)))[0].sum().backward()
        ours.to(dtype=torch.half)
        ours.to(dtype=torch.float32)
    return ours


def check_to(ours: nn.Module, device_: str, dtype_: torch.dtype, swap: bool, set_grad: bool, grad_unchanged: bool):
    """``ours.to(device_, dtype_)``: the same Parameter objects, converted, their storage swapped or kept as
    the swap mode says (and their .grad's, which a conversion to what they already are leaves as they are)."""
    params = list(ours.parameters())
    ids, cdatas = [id(p) for p in params], [p._cdata for p in params]
    grad_ids = [id(p.grad) for p in params] if set_grad else []
    grad_cdatas = [p.grad._cdata for p in params] if set_grad else []
    ours.to(device=device_, dtype=dtype_)
    params = list(ours.parameters())
    assert all(isinstance(p, nn.Parameter) for p in params)
    assert all(p.device.type == device_ and p.dtype == dtype_ for p in params)
    if set_grad:
        assert all(p.grad.device.type == device_ and p.grad.dtype == dtype_ for p in params)
    assert [id(p) for p in params] == ids
    if swap:
        assert all(a != b for a, b in zip(cdatas, [p._cdata for p in params]))
        if set_grad:
            after = [p.grad._cdata for p in params]
            assert all((a == b) if grad_unchanged else (a != b) for a, b in zip(grad_cdatas, after))
    else:
        assert [p._cdata for p in params] == cdatas
        if set_grad:
            assert [id(p.grad) for p in params] == grad_ids and [p.grad._cdata for p in params] == grad_cdatas


# test/test_modules.py::TestModule::test_to_empty (float32)
@pytest.mark.parametrize("swap", [True, False], ids=["swap", "no swap"])
@pytest.mark.parametrize("kind", KINDS)
def test_modules_to_empty(kind, swap):
    """A module built under torch.device('meta') materialises on the CPU with to_empty: Parameters of the right
    device and dtype, swapped in place or replaced as swap mode says; after reset_parameters it runs (the port's
    addition)."""
    with swap_mode(swap):
        for sample in covering_samples(kind):
            with torch.device("meta"):
                ours = getattr(recurrent, kind)(*sample.args, **sample.kwargs)
            assert all(p.is_meta for p in ours.parameters())
            ids = [id(p) for p in ours.parameters()]
            cdatas = [p._cdata for p in ours.parameters()]
            ours.to_empty(device=torch.device("cpu"))
            assert all(isinstance(p, nn.Parameter) for p in ours.parameters())
            assert all(p.device == torch.device("cpu") and p.dtype == torch.float32 for p in ours.parameters())
            after_ids, after_cdatas = [id(p) for p in ours.parameters()], [p._cdata for p in ours.parameters()]
            if swap:
                assert after_ids == ids and all(a != b for a, b in zip(cdatas, after_cdatas))
            else:
                assert all(a != b for a, b in zip(ids, after_ids)) and all(a != b for a, b in zip(cdatas, after_cdatas))
            ours.reset_parameters()
            assert all(torch.isfinite(t).all() for t in leaves(ours(*build(sample.forward, torch.float32))))


# test/test_modules.py::TestModuleCPUOnly::test_device_ctx_init
@pytest.mark.parametrize("kind", KINDS)
def test_modules_device_ctx_init(kind):
    """Built under torch.device('meta'), every parameter is a meta tensor with the CPU module's metadata."""
    for sample in SAMPLES[kind]:
        on_cpu = getattr(recurrent, kind)(*sample.args, **sample.kwargs)
        with torch.device("meta"):
            on_meta = getattr(recurrent, kind)(*sample.args, **sample.kwargs)
        pairs = list(zip(on_meta.named_parameters(), on_cpu.named_parameters()))
        assert len(pairs) == len(list(on_cpu.parameters())) > 0
        for (name, p_meta), (_, p_cpu) in pairs:
            assert p_meta.is_meta, name
            assert type(p_meta) is type(p_cpu), name
            assert (p_meta.shape, p_meta.dtype, p_meta.stride(), p_meta.requires_grad) == (
                p_cpu.shape,
                p_cpu.dtype,
                p_cpu.stride(),
                p_cpu.requires_grad,
            ), name


# ================================================================================================================
# test/test_nn.py (TestNN, TestNNDeviceType) and test/test_autograd.py
# ================================================================================================================


def assert_grads_like(ours_module: nn.Module, reference: nn.Module, exact: nn.Module) -> None:
    """ours' float32 .grad as accurate as torch.nn's, judged by ``exact``'s (torch.nn's float64 twin's)."""
    for (name, p), (_, q), e in zip(ours_module.named_parameters(), reference.named_parameters(), exact.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            assert_as_accurate(p.grad, q.grad, e.grad, f"grad of {name}")


# test/test_nn.py::TestNN::test_RNN_cell
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["RNNCell", "GRUCell"])
def test_nn_RNN_cell(kind, bias):
    """Six steps of a cell then a backward (a smoke test upstream); here also torch.nn's numbers."""
    torch.manual_seed(0)
    reference, ours = pair(kind, 10, 20, bias=bias)
    exact = float64_twin(reference)
    x, h0 = torch.randn(3, 10), torch.randn(3, 20)
    finals = []
    for module in (reference, ours, exact):
        hx, inputs = as_float64((h0, x)) if module is exact else (h0, x)
        for _ in range(6):
            hx = module(inputs, hx)
        hx.sum().backward()
        finals.append(hx)
    assert_as_accurate(finals[1], finals[0], finals[2], "h after six steps")
    assert_grads_like(ours, reference, exact)


# test/test_nn.py::TestNN::test_RNN_cell_forward_zero_hidden_size
def test_nn_RNN_cell_forward_zero_hidden_size():
    x, hx = torch.randn(3, 10), torch.randn(3, 0)
    for cell in (
        recurrent.RNNCell(10, 0, nonlinearity="relu"),
        recurrent.RNNCell(10, 0, nonlinearity="tanh"),
        recurrent.GRUCell(10, 0),
    ):
        assert cell(x, hx).shape == torch.Size([3, 0])


# test/test_nn.py::TestNN::test_RNN_cell_no_broadcasting
@pytest.mark.parametrize("what", ["hidden batch", "hidden size", "input size"])
def test_nn_RNN_cell_no_broadcasting(what):
    """A state or input that would broadcast (a batch of 1, a size of 1) is rejected with a RuntimeError, for
    every cell and for each of LSTMCell's two states."""
    x, good = torch.randn(3, 10), torch.randn(3, 20)
    bad = {"hidden batch": torch.randn(1, 20), "hidden size": torch.randn(3, 1), "input size": good}[what]
    if what == "input size":
        x = torch.randn(3, 1)
    calls = [
        (recurrent.RNNCell(10, 20), bad),
        (recurrent.GRUCell(10, 20), bad),
        (recurrent.LSTMCell(10, 20), (bad, good)),
        (recurrent.LSTMCell(10, 20), (good, bad)),
    ]
    for cell, hx in calls:
        with pytest.raises(RuntimeError) as raised:
            cell(x, hx)
        assert raised.type is RuntimeError


# test/test_nn.py::TestNN::test_LSTM_cell
@pytest.mark.parametrize("bias", [True, False])
def test_nn_LSTM_cell(bias):
    torch.manual_seed(0)
    reference, ours = pair("LSTMCell", 10, 20, bias=bias)
    exact = float64_twin(reference)
    x, h0, c0 = torch.randn(3, 10), torch.randn(3, 20), torch.randn(3, 20)
    finals = []
    for module in (reference, ours, exact):
        inputs, hx, cx = as_float64((x, h0, c0)) if module is exact else (x, h0, c0)
        for _ in range(6):
            hx, cx = module(inputs, (hx, cx))
        (hx + cx).sum().backward()
        finals.append((hx, cx))
    assert_tree_close(finals[1], finals[0], torch.float32, "(h, c)", finals[2])
    assert_grads_like(ours, reference, exact)


# test/test_nn.py::TestNN::test_LSTM_cell_forward_input_size
def test_nn_LSTM_cell_forward_input_size():
    lstm = recurrent.LSTMCell(10, 20)
    with pytest.raises(Exception):
        lstm(torch.randn(3, 11), (torch.randn(3, 20), torch.randn(3, 20)))


# test/test_nn.py::TestNN::test_LSTM_cell_forward_hidden_size
def test_nn_LSTM_cell_forward_hidden_size():
    lstm = recurrent.LSTMCell(10, 20)
    x, hx, cx = torch.randn(3, 10), torch.randn(3, 21), torch.randn(3, 20)
    with pytest.raises(Exception):
        lstm(x, (hx, cx))
    with pytest.raises(Exception):
        lstm(x, (cx, hx))


# test/test_nn.py::TestNN::test_cudnn_forward_exception (no cuDNN needed: it runs on the CPU upstream too)
def test_nn_cudnn_forward_exception():
    rnns = [
        (recurrent.LSTM(10, 20, batch_first=True), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
        (recurrent.LSTM(10, 20, batch_first=True, proj_size=10), (torch.zeros(1, 2, 19), torch.zeros(1, 2, 19))),
        (recurrent.GRU(10, 20, batch_first=True), torch.zeros(1, 2, 19)),
        (recurrent.RNN(10, 20, batch_first=True), torch.zeros(1, 2, 19)),
    ]
    x_wrong, x_right = torch.randn(2, 3, 3), torch.randn(2, 3, 10)
    for rnn, hidden in rnns:
        with pytest.raises(RuntimeError, match="Expected hidden.*size.*got"):
            rnn(x_right, hidden)
        with pytest.raises(RuntimeError, match=re.escape("input.size(-1) must be equal to input_size")):
            rnn(x_wrong)


def update_shape(shape: tuple, dim: int, size: int) -> tuple:
    new = list(shape)
    new[dim] = size
    return tuple(new)


# test/test_nn.py::TestNN::test_rnn_args_check
@pytest.mark.parametrize("mode", LAYERS)
def test_nn_rnn_args_check(mode):
    """Wrong input batch, hidden batch, input size, hidden size or layer count: a RuntimeError (for LSTM with the
    bad state as h0 and as c0)."""
    input_size, hidden_size, num_layers, batch, steps, bad = 3, 5, 2, 4, 6, 7
    good_input, good_hidden = (steps, batch, input_size), (num_layers, batch, hidden_size)
    configs = [
        (update_shape(good_input, 1, bad), good_hidden),
        (good_input, update_shape(good_hidden, 1, bad)),
        (update_shape(good_input, 2, bad), good_hidden),
        (good_input, update_shape(good_hidden, 2, bad)),
        (good_input, update_shape(good_hidden, 0, bad)),
    ]
    for input_shape, hidden_shape in configs:
        x, h = torch.randn(input_shape), torch.randn(hidden_shape)
        if mode != "LSTM":
            calls = [h]
        elif hidden_shape == good_hidden:
            calls = [(h, h)]
        else:
            calls = [(h, torch.randn(good_hidden)), (torch.randn(good_hidden), h)]
        for hidden in calls:
            model = getattr(recurrent, mode)(input_size, hidden_size, num_layers)
            with pytest.raises(RuntimeError) as raised:
                model(x, hidden)
            assert raised.type is RuntimeError


# test/test_nn.py::TestNN::test_projections_lstm_args_check
def test_nn_projections_lstm_args_check():
    input_size, hidden_size, proj_size, num_layers, batch, steps, bad = 3, 5, 2, 2, 4, 6, 7
    good_input = (steps, batch, input_size)
    good_h, good_c = (num_layers, batch, proj_size), (num_layers, batch, hidden_size)
    configs = [
        (update_shape(good_input, 1, bad), good_h, good_c),
        (good_input, update_shape(good_h, 1, bad), update_shape(good_c, 1, bad)),
        (update_shape(good_input, 2, bad), good_h, good_c),
        (good_input, update_shape(good_h, 2, bad), update_shape(good_c, 2, bad)),
        (good_input, update_shape(good_h, 0, bad), update_shape(good_c, 0, bad)),
        (good_input, update_shape(good_h, 0, hidden_size), good_c),
        (good_input, update_shape(good_h, 0, bad), good_c),
        (good_input, good_h, update_shape(good_c, 0, bad)),
    ]
    for input_shape, h_shape, c_shape in configs:
        model = recurrent.LSTM(input_size, hidden_size, num_layers, proj_size=proj_size)
        with pytest.raises(RuntimeError) as raised:
            model(torch.randn(input_shape), (torch.randn(h_shape), torch.randn(c_shape)))
        assert raised.type is RuntimeError


# test/test_nn.py::TestNN::test_rnn_initial_hidden_state
@pytest.mark.parametrize("mode", LAYERS)
def test_nn_rnn_initial_hidden_state(mode):
    """Zero initial states given or left out: the same outputs (and torch.nn's, the port's addition)."""
    torch.manual_seed(0)
    reference, ours = pair(mode, 30, 20, 2)
    x, hidden = torch.randn(10, 32, 30), torch.zeros(2, 32, 20)
    if mode == "LSTM":
        hidden = (hidden, hidden)
    with_states, without = ours(x, hidden), ours(x)
    assert_tree_close(with_states, without, torch.float32, "given zeros vs none", rtol=0, atol=0)
    exact = float64_call(reference, x, hidden)
    assert_tree_close(with_states, reference(x, hidden), torch.float32, "vs torch.nn", exact)


# test/test_nn.py::TestNN::test_projections_lstm_initial_hidden_state
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nn_projections_lstm_initial_hidden_state(bidirectional):
    torch.manual_seed(0)
    reference, ours = pair("LSTM", 30, 20, 2, bidirectional=bidirectional, proj_size=10)
    directions = 2 if bidirectional else 1
    x = torch.randn(10, 32, 30)
    hidden = (torch.zeros(2 * directions, 32, 10), torch.zeros(2 * directions, 32, 20))
    with_states, without = ours(x, hidden), ours(x)
    assert_tree_close(with_states, without, torch.float32, "given zeros vs none", rtol=0, atol=0)
    exact = float64_call(reference, x, hidden)
    assert_tree_close(with_states, reference(x, hidden), torch.float32, "vs torch.nn", exact)


def cpu_vs_torch_nn_configs():
    """Per module and dropout (0; and 1, the only other value with a deterministic result)."""
    params = []
    for module in ("RNN", "GRU", "LSTM", "LSTM_proj", "RNN_nonlinearity"):
        for dropout in (0.0, 1.0):
            params.append(pytest.param(module, dropout, id=f"{module}-dropout{int(dropout)}"))
    return params


def pairwise_six(with_complements: bool) -> list[tuple[bool, ...]]:
    """Rows of on/off values for six options in which every pair of options takes all four combinations: the
    all-off row, then row r has option i on when r is in the i-th 3-subset of range(5) (any two such subsets
    meet and differ). With their complements (12 rows), every option is on as often as off."""
    columns = list(itertools.combinations(range(5), 3))[:6]
    rows = [(False,) * 6] + [tuple(r in column for column in columns) for r in range(5)]
    return rows + [tuple(not v for v in row) for row in rows] if with_complements else rows


def forward_backward(
    rnn: nn.Module,
    input_val,
    grad_output: Tensor,
    hx_val: Tensor,
    grad_hy: Tensor,
    cx_val: Optional[Tensor] = None,
    grad_cy: Optional[Tensor] = None,
) -> dict:
    """_test_RNN_cpu_vs_cudnn's forward_backward: a forward from fresh leaf copies of the input and states, a
    backward with the given output gradients; the outputs and every gradient."""
    lstm = isinstance(rnn, (nn.LSTM, recurrent.LSTM))
    if isinstance(input_val, rnn_utils.PackedSequence):
        data = input_val.data.detach().clone().requires_grad_(True)
        x = rnn_utils.PackedSequence(data, input_val.batch_sizes)
        x_leaf = data
    else:
        x = x_leaf = input_val.detach().clone().requires_grad_(True)
    if lstm:
        c = (hx_val.add(1) if cx_val is None else cx_val.add(1)).detach().requires_grad_(True)
        hx = (hx_val.detach().clone().requires_grad_(True), c)
    else:
        hx = hx_val.detach().clone().requires_grad_(True)
    output, hy = rnn(x, hx)
    if isinstance(output, rnn_utils.PackedSequence):
        output = output.data
    if lstm:
        second = grad_hy + 1 if grad_cy is None else grad_cy + 1
        torch.autograd.backward([output, hy[0], hy[1]], [grad_output, grad_hy, second])
    else:
        torch.autograd.backward([output, hy], [grad_output, grad_hy])
    return {
        "output": output.detach(),
        "hy": (hy[0] if lstm else hy).detach(),
        "cy": hy[1].detach() if lstm else None,
        "grad_input": x_leaf.grad,
        "grad_hx": (hx[0] if lstm else hx).grad,
        "grad_cx": hx[1].grad if lstm else None,
        "weight_grads": [p.grad for p in rnn.parameters()],
    }


# test/test_nn.py::TestNN::test_RNN_cpu_vs_cudnn_no_dropout / test_RNN_cpu_vs_cudnn_with_dropout
# (_test_RNN_cpu_vs_cudnn): cuDNN upstream; here recurrent against torch.nn's CPU kernels, float64, the same sizes.
# Upstream's grid is every combination of bias, bidirectional, batch_first, contiguous, variable length and
# lengths as a tensor (64 per module); at about 0.1 s a configuration here, the port takes a pairwise covering
# subset (pairwise_six: 12 rows without dropout, 6 with).
@pytest.mark.parametrize("module,dropout", cpu_vs_torch_nn_configs())
def test_nn_RNN_cpu_vs_torch_nn(module, dropout):
    if module == "RNN_nonlinearity":  # upstream's last loop: both nonlinearities, bias off, one direction
        grid = [("RNN", dict(bias=False, nonlinearity=nl), False, False, True, False, False) for nl in ("tanh", "relu")]
    else:
        kind = module.partition("_")[0]
        extra = {"proj_size": 3} if module == "LSTM_proj" else {}
        grid = [
            (kind, dict(bias=b, **extra), bi, bf, contig, var, as_tensor)
            for b, bi, bf, contig, var, as_tensor in pairwise_six(with_complements=dropout == 0)
        ]
    torch.manual_seed(0)
    for kind, kwargs, bidirectional, batch_first, contig, variable_len, lens_as_tensor in grid:
        values = cpu_vs_torch_nn_values(kwargs, bidirectional, batch_first, contig, variable_len, lens_as_tensor)
        reference, ours = pair(
            kind, 10, 6, 2, dropout=dropout, bidirectional=bidirectional, batch_first=batch_first,
            dtype=torch.float64, **kwargs,
        )  # fmt: skip
        expected, actual = forward_backward(reference, *values), forward_backward(ours, *values)
        what = (
            f"{kind} {kwargs} bidirectional={bidirectional} batch_first={batch_first} contig={contig} "
            f"variable_len={variable_len}"
        )
        for key in expected:
            assert_tree_close(actual[key], expected[key], torch.float64, f"{what}: {key}")


def cpu_vs_torch_nn_values(kwargs: dict, bidirectional: bool, batch_first: bool, contig: bool, variable_len: bool,
                           lens_as_tensor: bool) -> tuple:  # fmt: skip
    """_test_RNN_cpu_vs_cudnn's (input, grad_output, hx, grad_hy, cx, grad_cy) for input size 10, hidden 6,
    2 layers, 7 steps, a batch of 6: non-contiguous or packed as asked."""
    dtype, directions = torch.float64, 2 if bidirectional else 1
    out_size = kwargs.get("proj_size", 0) or 6
    lead = (6, 7) if batch_first else (7, 6)
    input_val = torch.randn(*lead, 10, dtype=dtype)
    grad_output = torch.randn(*lead, out_size * directions, dtype=dtype)
    hx_val = torch.randn(2 * directions, 6, out_size, dtype=dtype)
    grad_hy = torch.randn(2 * directions, 6, out_size, dtype=dtype)
    cx_val = grad_cy = None
    if "proj_size" in kwargs:
        cx_val, grad_cy = torch.randn(2 * directions, 6, 6, dtype=dtype), torch.randn(2 * directions, 6, 6, dtype=dtype)
    if not contig:
        noncontig = lambda t: torch.stack([t.clone().zero_(), t], t.dim()).select(t.dim(), 1)  # noqa: E731
        input_val, grad_output, hx_val, grad_hy = map(noncontig, (input_val, grad_output, hx_val, grad_hy))
        if cx_val is not None:
            cx_val, grad_cy = noncontig(cx_val), noncontig(grad_cy)
    if variable_len:
        lengths = [7, 5, 5, 2, 1, 1]
        if lens_as_tensor:
            lengths = torch.tensor(lengths, dtype=torch.long)
        input_val = rnn_utils.pack_padded_sequence(input_val, lengths, batch_first=batch_first)
        grad_output = rnn_utils.pack_padded_sequence(grad_output, lengths, batch_first=batch_first).data
    return input_val, grad_output, hx_val, grad_hy, cx_val, grad_cy


# test/test_nn.py::TestNN::test_cudnn_weight_tying (cuDNN against the CPU upstream; here the tying itself: a
# parameter shared by both directions, trained one SGD step, ours against torch.nn on the CPU)
@pytest.mark.parametrize("kind", ["LSTM", "LSTM_proj", "GRU", "RNN"])
def test_nn_weight_tying_like_torch(kind):
    torch.manual_seed(0)
    name = kind.partition("_")[0]
    extra = {"proj_size": 10} if kind == "LSTM_proj" else {}
    reference, ours = pair(name, 10, 20, batch_first=True, bidirectional=True, **extra)
    x = torch.randn(5, 4, 10)
    h0 = torch.randn(2, 5, 10 if extra else 20)
    hidden = (h0, torch.randn(2, 5, 20)) if name == "LSTM" else h0
    outputs = []
    exact = float64_twin(reference)  # the same step in float64 judges both float32 results
    for module in (reference, ours, exact):
        inputs = as_float64((x, hidden)) if module is exact else (x, hidden)
        module.bias_ih_l0_reverse = module.bias_ih_l0
        assert len(list(module.parameters())) == len(module.state_dict()) - 1
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        optimizer.zero_grad()
        module(*inputs)[0].sum().backward()
        optimizer.step()
        assert module.bias_ih_l0_reverse is module.bias_ih_l0
        outputs.append(module(*inputs))
    assert_tree_close(outputs[1], outputs[0], torch.float32, "after a step with tied biases", outputs[2])


# test/test_nn.py::TestNN::test_partial_flat_weights (CUDA upstream: .cuda() on a module with a deleted weight;
# here .double(), the same _apply path, on the CPU)
def test_nn_partial_flat_weights():
    torch.manual_seed(0)
    reference, m = pair("LSTM", 10, 6, 2)
    x = torch.randn(3, 2, 10)
    expected = float64_call(reference, x)[0]
    weight = m.weight_hh_l0
    del m.weight_hh_l0
    assert not hasattr(m, "weight_hh_l0")
    m.double()  # torch.nn: no error with a weight missing
    m.weight_hh_l0 = nn.Parameter(weight.detach().double())
    torch.testing.assert_close(m(x.double())[0], expected, **TOLERANCE[torch.float64])


# test/test_nn.py::TestNN::test_RNN_dropout (the CPU half; cuDNN-gated upstream)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("p", [0, 0.276, 0.731, 1])
def test_nn_RNN_dropout(p, train):
    """Dropout acts between the layers only: with every weight 1 and a relu, layer 1's units are all 10, and the
    output is 10 times the number of kept units over 1 - p (all 1000 without dropout, none at p = 1)."""
    torch.manual_seed(0)
    rnn = recurrent.RNN(10, 1000, 2, bias=False, dropout=p, nonlinearity="relu", dtype=torch.float64)
    rnn.train(train)
    with torch.no_grad():
        for w in rnn.parameters():
            w.fill_(1)
    output, hy = rnn(torch.ones(1, 1, 10, dtype=torch.float64), torch.zeros(2, 1, 1000, dtype=torch.float64))
    assert output.min() == output.max()
    value = output[0, 0, 0].item()
    if p == 0 or not train:
        assert value == 10000
    elif p == 1:
        assert value == 0
    else:
        assert 8000 < value < 12000
        kept = (value * (1 - p)) % 10
        assert min(kept, 10 - kept) < 1e-2
    assert hy[0].min() == hy[0].max() and hy[1].min() == hy[1].max()
    assert hy[0, 0, 0].item() == 10
    assert hy[1, 0, 0].item() == value


# test/test_nn.py::TestNN::test_RNN_dropout_state (the CPU half)
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("p", [0, 0.1234])
def test_nn_RNN_dropout_state(p, train):
    """Two calls draw different dropout masks in training (equal results otherwise), and so does a copy saved
    and loaded with torch.save/torch.load (flatten_parameters on it: a documented no-op)."""
    torch.manual_seed(0)
    rnn = recurrent.RNN(100, 100, 2, bias=False, dropout=p, nonlinearity="relu")
    rnn.train(train)
    x, hx = torch.rand(1, 1, 100), torch.rand(2, 1, 100)
    output1, hy1 = rnn(x, hx)
    output2, hy2 = rnn(x, hx)
    buffer = io.BytesIO()
    torch.save(rnn, buffer)
    buffer.seek(0)
    rnn2 = torch.load(buffer, weights_only=False)
    rnn2.flatten_parameters()
    output3, hy3 = rnn2(x, hx)
    if p == 0 or not train:
        for a, b in ((output1, output2), (output1, output3), (hy1, hy2), (hy1, hy3)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        for a, b in ((output1, output2), (output1, output3), (hy1, hy2), (hy1, hy3)):
            assert not torch.equal(a, b)


# test/test_nn.py::TestNN::test_RNN_change_dropout (the CPU half)
@pytest.mark.parametrize("train", [True, False])
def test_nn_RNN_change_dropout(train):
    """Assigning rnn.dropout after construction takes effect at the next call."""
    torch.manual_seed(0)
    rnn = recurrent.RNN(100, 100, 2, dropout=0, nonlinearity="relu", dtype=torch.float64)
    rnn.train(train)
    x = torch.rand(3, 2, 100, dtype=torch.float64)
    previous = None
    for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
        rnn.dropout = p
        output1, hy1 = rnn(x)
        output2, hy2 = rnn(x)
        if p == 0 or p == 1 or not train:
            assert torch.equal(output1, output2) and torch.equal(hy1, hy2)
        else:
            assert not torch.equal(output1, output2) and not torch.equal(hy1, hy2)
        if previous is not None:
            if not train:
                assert torch.equal(output1, previous) and torch.equal(output2, previous)
            else:
                assert not torch.equal(output1, previous) and not torch.equal(output2, previous)
        previous = output1.detach()


# test/test_nn.py::TestNN::test_rnn_weight_norm
@pytest.mark.parametrize(
    "name,kwargs,count",
    [("weight_ih_l0", {}, 4), ("weight_hr_l0", {"proj_size": 16}, 5)],
    ids=["weight_ih_l0", "weight_hr_l0"],
)
def test_nn_rnn_weight_norm(name, kwargs, count):
    """weight_norm on one weight turns it into a plain tensor in _flat_weights (one Parameter fewer) and
    remove_weight_norm restores the Parameter, with no _g/_v left; meanwhile the module computes what torch.nn
    computes under the same reparametrisation (the port's addition)."""
    torch.manual_seed(0)
    reference, ours = pair("LSTM", 32, 32, **kwargs)
    x = torch.randn(3, 2, 32)
    exact = float64_twin(reference)  # before weight_norm: its modules do not deepcopy
    ours, reference, exact = (torch.nn.utils.weight_norm(m, name=name) for m in (ours, reference, exact))
    assert sum(isinstance(p, nn.Parameter) for p in ours._flat_weights) == count - 1
    assert_tree_close(ours(x), reference(x), torch.float32, "under weight norm", exact(x.double()))
    ours, reference, exact = (torch.nn.utils.remove_weight_norm(m, name=name) for m in (ours, reference, exact))
    assert sum(isinstance(p, nn.Parameter) for p in ours._flat_weights) == count
    assert name in ours._parameters and ours._parameters[name] is not None
    assert name + "_v" not in ours._parameters and name + "_g" not in ours._parameters
    named = dict(ours.named_parameters())
    assert name in named and named[name] is not None
    assert name + "_v" not in named and name + "_g" not in named
    assert_tree_close(ours(x), reference(x), torch.float32, "after removing weight norm", exact(x.double()))


# test/test_nn.py::TestNN::test_RNN_nonlinearity
def test_nn_RNN_nonlinearity():
    assert recurrent.RNN(1, 10).nonlinearity == "tanh"
    assert recurrent.RNN(1, 10, nonlinearity="relu").nonlinearity == "relu"
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        recurrent.RNN(1, 10, nonlinearity="garbage")


# test/test_nn.py::TestNN::test_RNN_nonlinearity_passed_as_arg
def test_nn_RNN_nonlinearity_passed_as_arg():
    assert recurrent.RNN(2, 3, 1, "relu").nonlinearity == "relu"


# test/test_nn.py::TestNNDeviceType::test_rnn_retain_variables (float64 on the CPU)
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_nn_rnn_retain_variables(mode):
    """Backward through the same graph five times (retain_graph) gives the same gradients each time; and
    torch.nn's (the port's addition)."""
    torch.manual_seed(0)
    reference, rnn = pair(mode, 10, 20, num_layers=2, dtype=torch.float64)
    x = torch.randn(5, 6, 10, dtype=torch.float64, requires_grad=True)
    output = rnn(x)
    output[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone()] + [p.grad.clone() for p in rnn.parameters()]
    for _ in range(4):
        rnn.zero_grad()
        x.grad.zero_()
        output[0].sum().backward(retain_graph=True)
        assert_tree_close(
            [x.grad] + [p.grad for p in rnn.parameters()], grads, torch.float64, "retained", rtol=0, atol=0
        )
    x_ref = x.detach().clone().requires_grad_(True)
    reference(x_ref)[0].sum().backward()
    assert_tree_close(grads, [x_ref.grad] + [p.grad for p in reference.parameters()], torch.float64, "vs torch.nn")


# test/test_nn.py::TestNNDeviceType::test_variable_sequence (float64 on the CPU)
@pytest.mark.parametrize("proj_size", [0, 2])
@pytest.mark.parametrize("default_hiddens", [True, False], ids=["no hx", "hx"])
@pytest.mark.parametrize(
    "enforce_sorted,lengths",
    [
        (True, [5]),
        (False, [5]),
        (True, [10, 10, 6, 2, 2, 1, 1]),
        (False, [10, 10, 6, 2, 2, 1, 1]),
        (False, [2, 1, 3, 2, 10, 5, 3]),
    ],
    ids=["one sorted", "one unsorted", "sorted", "sorted, enforce_sorted=False", "unsorted"],
)
def test_nn_variable_sequence(enforce_sorted, lengths, default_hiddens, proj_size):
    """A bidirectional two-layer LSTM on a packed batch equals the same LSTM run on each sequence alone (outputs,
    final states, input and weight gradients); and torch.nn's packed run (the port's addition)."""
    dtype = torch.float64
    input_size, hidden_size, layers, directions = 3, 4, 2, 2
    torch.manual_seed(0)
    reference, lstm = pair(
        "LSTM", input_size, hidden_size, layers, bidirectional=True, proj_size=proj_size, dtype=dtype
    )
    lstm2 = copy.deepcopy(lstm)
    max_length = max(lengths)
    x = torch.randn(max_length, len(lengths), input_size, dtype=dtype, requires_grad=True)
    hidden0 = None
    if not default_hiddens:
        hidden0 = (
            torch.randn(directions * layers, len(lengths), proj_size or hidden_size, dtype=dtype),
            torch.randn(directions * layers, len(lengths), hidden_size, dtype=dtype),
        )

    seq_outs, seq_hiddens = [], []
    for i, n in enumerate(lengths):
        hidden_i = None if hidden0 is None else tuple(h[:, i : i + 1].contiguous() for h in hidden0)
        out, hid = lstm2(x[:n, i : i + 1], hidden_i)
        seq_outs.append(torch.cat([out, out.new_zeros(max_length - n, *out.shape[1:])]))
        seq_hiddens.append(hid)
    seq_out = torch.cat(seq_outs, 1)
    seq_hidden = tuple(torch.cat(parts, 1) for parts in zip(*seq_hiddens))

    packed = rnn_utils.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    packed_out, packed_hidden = lstm(packed, hidden0)
    unpacked, unpacked_len = rnn_utils.pad_packed_sequence(packed_out)
    assert_tree_close(packed_hidden, seq_hidden, dtype, "final states")
    assert_tree_close(unpacked, seq_out, dtype, "output")
    assert unpacked_len.tolist() == lengths

    ref_out, ref_hidden = reference(packed, hidden0)
    assert_tree_close(packed_out.data, ref_out.data, dtype, "output vs torch.nn")
    assert_tree_close(packed_hidden, ref_hidden, dtype, "final states vs torch.nn")

    seq_out.sum().backward()
    grad_x = x.grad.clone()
    x.grad.zero_()
    unpacked.sum().backward()
    torch.testing.assert_close(x.grad, grad_x, **TOLERANCE[dtype])
    for (name, p1), p2 in zip(lstm.named_parameters(), lstm2.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, **TOLERANCE[dtype], msg=lambda m: f"grad of {name}: {m}")


# test/test_nn.py::TestNNDeviceType::test_lstmcell_backward_only_one_output_grad (onlyCUDA upstream; the CPU here)
def test_nn_lstmcell_backward_only_one_output_grad():
    """A backward from h' alone, then from c' alone (the other output's gradient undefined) reaches the input."""
    torch.manual_seed(0)
    cell = recurrent.LSTMCell(2, 3, dtype=torch.float64)
    s = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    for i in range(2):
        cell(s)[i].sum().backward()
        assert s.grad is not None and s.grad.abs().sum().item() != 0


# test/test_nn.py::TestNNDeviceType::test_LSTM_grad_and_gradgrad, test_GRU_grad_and_gradgrad (_test_rnn_mod)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_nn_grad_and_gradgrad(mode, bias):
    """gradcheck and gradgradcheck of every output (output, h_n[, c_n]) with respect to the input; element by
    element (upstream's wrapper would use fast mode; these sizes allow the full check)."""
    torch.manual_seed(0)
    hsize = 4
    module = getattr(recurrent, mode)(hsize, hsize, bias=bias, dtype=torch.float64)
    inp = torch.rand(1, 3, hsize, dtype=torch.float64, requires_grad=True)

    def flatten_out(x):
        return tuple(leaves(module(x)))

    assert torch.autograd.gradcheck(flatten_out, (inp,), check_batched_grad=False)
    assert torch.autograd.gradgradcheck(flatten_out, (inp,), check_batched_grad=False)


# test/test_nn.py::TestNNDeviceType::test_LSTM_differentiable_backward_using_oneDNN (oneDNN on against off upstream;
# here the same double backward, recurrent against torch.nn)
def test_nn_LSTM_differentiable_backward_like_torch():
    torch.manual_seed(0)
    reference, ours = pair("LSTM", 3, 3, 4, batch_first=True)  # upstream: 20 layers (deep for oneDNN's sake)
    x = torch.rand(10, 12, 3)
    results = []
    for module in (reference, ours, float64_twin(reference)):
        x1 = x.to(next(module.parameters()).dtype, copy=True).requires_grad_(True)
        out, _ = module(x1)
        der_out = torch.autograd.grad(out, x1, grad_outputs=torch.ones_like(out), retain_graph=True, create_graph=True)[
            0
        ]
        der_out.sum().backward(retain_graph=True)
        results.append((der_out, x1.grad))
    assert_tree_close(results[1], results[0], torch.float32, "(d out/d x, d^2)", results[2])


# test/test_autograd.py::TestAutogradDeviceType::test_rnn_backward_to_input_but_not_parameters (onlyCUDA upstream)
def test_autograd_rnn_backward_to_input_but_not_parameters():
    """Frozen weights, an input that needs a gradient: the input gets one (and torch.nn's)."""
    torch.manual_seed(0)
    reference, ours = pair("LSTM", 2, 3)
    grads = []
    for module in (reference, ours, float64_twin(reference)):
        for p in module.parameters():
            p.requires_grad = False
        s = torch.ones(1, 1, 2, dtype=next(module.parameters()).dtype).requires_grad_(True)
        out, _ = module(s)
        out.sum().backward()
        assert s.grad is not None and s.grad.abs().sum().item() != 0
        assert all(p.grad is None for p in module.parameters())
        grads.append(s.grad)
    assert_as_accurate(grads[1], grads[0], grads[2], "the input's gradient")
