"""Speed and memory of `recurrent` against torch.nn, side by side in one process.

    python benchmarks/speed.py --device cpu|cuda [--quick] [--out DIR] [--threads T] [--reps N] [--shapes S]

Contenders, all built from the same weights (torch.nn's state_dict loaded into ours):
  torch.nn     the reference (cuDNN on GPU, ATen's native loop on CPU)
  recurrent    our layer as a user gets it by default (RECURRENT_BACKEND unset), eager fast path
  recurrent (TorchScript)  our layer with RECURRENT_BACKEND=torchscript: the TorchScript time loop
  recurrent (compiled)  torch.compile(our layer, dynamic=True): each layer one op in the graph, which
               runs the default route's kernels (compiling happens in the warm-up)
  recurrent (Triton)  (CUDA) our layer with RECURRENT_BACKEND=triton: the persistent Triton
               kernels (n/a, saying why, where they cannot run the layer, e.g. Triton missing)
  recurrent (resident)  (CUDA) our layer with RECURRENT_BACKEND=resident: the Triton kernels that
               hold W_hh on-chip for the whole sequence (n/a, saying why, where it does not fit)
  eager cells  our cells driven by a plain Python loop over layers, directions and time steps
  scripted     torch.jit.script(our layer): a TorchScript loop that autograd differentiates
  recurrent+graph  (CUDA, fp32) our default layer captured in CUDA graphs (make_graphed_callables
               for fwd+bwd)
  custom cell  (GRU shapes) torch.nn's GRU step written as a recurrent.CustomCell (GRUMath below),
               run by recurrent.CustomRNN: its TorchScript loop, gradients by autograd
  custom cell (Triton)  (GRU shapes, CUDA) the same layer with RECURRENT_BACKEND=triton: kernels
               generated from GRUMath.step (recurrent.kernels.triton.generated)
  custom cell, Python loop  (GRU shapes, padded) the same GRUMath.step called from a plain Python
               loop over layers, directions and time steps
Our layer's contenders set RECURRENT_BACKEND around each call (the library reads it on every
call; the backward follows the forward's backend), so the shell's setting does not leak in.
Modes: inference (forward under no_grad) and fwd+bwd (backward into every parameter and the
input); on CUDA also both under bf16 autocast. Packed shapes ('-var') give every contender a
PackedSequence of a batch whose lengths vary; the cell loop has no packed path.

Small shapes (--shapes small: one-step calls, the cells, the word language model's LSTM) time torch.nn
and our layer or cell only, called directly, each sample the mean of 20 calls where one takes microseconds;
run them at --threads 1 and 2, which write speed-<device>-small-t1.json and -t2.json.
Writes DIR/speed-<device>[-quick].json and a .png chart next to it; benchmarks/report.py turns
them into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere, against this checkout

import recurrent  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # a key of KINDS
    layers: int
    bidirectional: bool
    batch: int  # N
    seq_len: int  # L
    input_size: int  # I
    hidden_size: int  # H
    group: str  # 'fmnist' | 'large' | 'tiny' | 'small', selectable with --shapes
    packed: bool  # lengths drawn by lengths(), input packed from the padded batch

    @property
    def cell(self) -> bool:
        """No layers: the kind's cell, called on (N, I) input."""
        return self.layers == 0

    @property
    def calls(self) -> int:
        """Calls per timed sample: a one-step call or a cell takes tens of microseconds, which one
        perf_counter reading resolves but scheduling noise swamps; their samples time 20 calls."""
        return 20 if self.cell or (self.group == "small" and self.seq_len == 1) else 1


# fmt: off
SHAPES = [Shape(*row) for row in [
    # name                  kind        layers bidir    N    L    I    H   group     packed
    ("fmnist-gru2",         "gru",      2,     False, 128,  28,  28, 128, "fmnist", False),
    ("fmnist-birnn",        "rnn_tanh", 1,     True,  128,  28,  28, 128, "fmnist", False),
    ("fmnist-lstm2",        "lstm",     2,     False, 128,  28,  28, 128, "fmnist", False),
    ("fmnist-gru2-var",     "gru",      2,     False, 128,  28,  28, 128, "fmnist", True),
    ("gru-L100-H256",       "gru",      1,     False,  64, 100, 256, 256, "large",  False),
    ("rnn-L100-H256",       "rnn_tanh", 1,     False,  64, 100, 256, 256, "large",  False),
    ("lstm-L100-H256",      "lstm",     1,     False,  64, 100, 256, 256, "large",  False),
    ("gru-L100-H256-var",   "gru",      1,     False,  64, 100, 256, 256, "large",  True),
    ("lstm-L100-H256-var",  "lstm",     1,     False,  64, 100, 256, 256, "large",  True),
    ("gru-L256-H512",       "gru",      1,     False,  64, 256, 512, 512, "large",  False),
    ("rnn-L256-H512",       "rnn_tanh", 1,     False,  64, 256, 512, 512, "large",  False),
    ("tiny-gru2-bi",        "gru",      2,     True,    4,   6,   5,   8, "tiny",   False),
    ("tiny-rnn-relu",       "rnn_relu", 1,     False,   4,   6,   5,   8, "tiny",   False),
    ("tiny-lstm2-bi",       "lstm",     2,     True,    4,   6,   5,   8, "tiny",   False),
    ("tiny-gru2-bi-var",    "gru",      2,     True,    4,   6,   5,   8, "tiny",   True),
    # Small calls (--shapes small, at --threads 1 and 2): one step of a 2-layer stack, as generation, RL
    # actors and streaming decoders call it; the cells (layers 0); the word language model's LSTM.
    ("step-rnn-N1",         "rnn_tanh", 2,     False,   1,   1, 200, 200, "small",  False),
    ("step-gru-N1",         "gru",      2,     False,   1,   1, 200, 200, "small",  False),
    ("step-lstm-N1",        "lstm",     2,     False,   1,   1, 200, 200, "small",  False),
    ("step-rnn-N20",        "rnn_tanh", 2,     False,  20,   1, 200, 200, "small",  False),
    ("step-gru-N20",        "gru",      2,     False,  20,   1, 200, 200, "small",  False),
    ("step-lstm-N20",       "lstm",     2,     False,  20,   1, 200, 200, "small",  False),
    ("cell-rnn",            "rnn_tanh", 0,     False,  32,   1,  64, 128, "small",  False),
    ("cell-gru",            "gru",      0,     False,  32,   1,  64, 128, "small",  False),
    ("cell-lstm",           "lstm",     0,     False,  32,   1,  64, 128, "small",  False),
    ("wordlm-lstm2",        "lstm",     2,     False,  20,  35, 200, 200, "small",  False),
]]
# fmt: on

# kind -> (layer class, cell class, extra constructor arguments); same names in torch.nn and ours.
KINDS: dict[str, tuple[str, str, dict]] = {
    "gru": ("GRU", "GRUCell", {}),
    "rnn_tanh": ("RNN", "RNNCell", {"nonlinearity": "tanh"}),
    "rnn_relu": ("RNN", "RNNCell", {"nonlinearity": "relu"}),
    "lstm": ("LSTM", "LSTMCell", {}),
}

# mode -> (backward?, autocast dtype)
MODES: dict[str, tuple[bool, Optional[torch.dtype]]] = {
    "inference": (False, None),
    "fwd+bwd": (True, None),
    "inference bf16": (False, torch.bfloat16),
    "fwd+bwd bf16": (True, torch.bfloat16),
}
CPU_MODES = ["inference", "fwd+bwd"]
CUDA_MODES = list(MODES)

REFERENCE = "torch.nn"
TORCHSCRIPT, TRITON, COMPILED = "recurrent (TorchScript)", "recurrent (Triton)", "recurrent (compiled)"
RESIDENT = "recurrent (resident)"
# The table order of the contenders.
CUSTOM, CUSTOM_LOOP, CUSTOM_TRITON = "custom cell", "custom cell, Python loop", "custom cell (Triton)"
CONTENDERS = [
    REFERENCE,
    "recurrent",
    TORCHSCRIPT,
    TRITON,
    RESIDENT,
    COMPILED,
    "eager cells",
    "scripted",
    "recurrent+graph",
    CUSTOM,
    CUSTOM_TRITON,
    CUSTOM_LOOP,
]
WARMUP = 3
WARMUP_SCRIPTED = 10  # the profiling executor records shapes on the first calls, then optimises
# cuDNN's kernels sum in another order than cuBLAS GEMMs + pointwise ops, which drifts over L steps.
TOLERANCE = {"cpu": 1e-4, "cuda": 1e-3}

TIMING_METHOD = (
    "warm-up ({} calls, {} for scripted), then contenders interleaved round-robin with the order "
    "rotated every repetition; median, IQR and min of the repetitions; {}; packed shapes pack the "
    "padded input (pack_padded_sequence, enforce_sorted=False) inside every timed call, the same "
    "work for every contender and counted in its time and memory"
)
MEMORY_METHOD = {
    "cpu": "peak of the running sum of the CPU allocator's allocation/free events recorded by "
    "torch.profiler (profile_memory=True) over one fwd+bwd step, gradients cleared beforehand, "
    "so tensors alive before the step (weights, input) are not counted",
    "cuda": "torch.cuda.max_memory_allocated() over one fwd+bwd step minus memory_allocated() "
    "before it, gradients cleared beforehand; CUDA-graph contenders are not measured (their "
    "memory sits in the graph's private pool)",
}


def flat(result) -> list[Tensor]:
    """(output, h_n) -> [output, h_n]; also flattens LSTM's (output, (h_n, c_n)) and takes a
    PackedSequence's data."""
    if isinstance(result, Tensor):
        return [result]
    # Duck-typed: a scripted module returns TorchScript's PackedSequence, a twin of torch.nn's.
    if hasattr(result, "batch_sizes"):
        return [result.data]
    return [t for item in result for t in flat(item)]


class CellLoop(nn.Module):
    """A layer's function computed by single cells in a Python loop, with the layer's weights."""

    def __init__(self, layer: nn.Module, cell_cls: type, kwargs: dict) -> None:
        super().__init__()
        self.lstm = isinstance(layer, nn.LSTM)  # its cells take and return the state (h, c)
        self.num_layers = layer.num_layers
        self.dirs = 2 if layer.bidirectional else 1
        cells = []
        for k in range(self.num_layers):
            for d in range(self.dirs):
                suffix = f"_l{k}" + ("_reverse" if d else "")
                in_size = layer.input_size if k == 0 else layer.hidden_size * self.dirs
                cell = cell_cls(in_size, layer.hidden_size, bias=layer.bias, **kwargs)
                with torch.no_grad():
                    for name, p in cell.named_parameters():
                        p.copy_(getattr(layer, name + suffix))
                cells.append(cell)
        self.cells = nn.ModuleList(cells)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        last = []  # final state per layer and direction: h, or (h, c)
        for k in range(self.num_layers):
            outs = []
            for d in range(self.dirs):
                cell = self.cells[k * self.dirs + d]
                steps = range(x.size(0) - 1, -1, -1) if d else range(x.size(0))
                state = None
                ys: list[Tensor] = [x] * x.size(0)  # placeholders, every slot is overwritten
                for t in steps:
                    state = cell(x[t], state)
                    ys[t] = state[0] if self.lstm else state
                outs.append(torch.stack(ys))
                last.append(state)
            x = torch.cat(outs, -1) if self.dirs > 1 else outs[0]
        if self.lstm:
            return x, (torch.stack([h for h, _ in last]), torch.stack([c for _, c in last]))
        return x, torch.stack(last)


class GRUMath(recurrent.CustomCell):
    """torch.nn's GRU step as a user would write it for recurrent.CustomRNN (gradients by autograd)."""

    gates = 3

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h = n + z * (state[0] - n)
        return h, [h]


class CustomCellLoop(nn.Module):
    """A CustomRNN's function with its cell's step called from a plain Python loop (padded input)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        layer, dirs = self.layer, 2 if self.layer.bidirectional else 1
        last = []
        for k in range(layer.num_layers):
            outs = []
            for d in range(dirs):
                suffix = f"_l{k}" + ("_reverse" if d else "")
                w_ih, w_hh, b_ih, b_hh = (
                    getattr(layer, n + suffix) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                )
                gi = torch.addmm(b_ih, x.flatten(0, 1), w_ih.t()).view(x.size(0), x.size(1), -1)
                h = x.new_zeros(x.size(1), layer.hidden_size)
                ys: list[Tensor] = [h] * x.size(0)
                for t in range(x.size(0) - 1, -1, -1) if d else range(x.size(0)):
                    h, _ = layer.cell.step(gi[t], torch.addmm(b_hh, h, w_hh.t()), [h], [])
                    ys[t] = h
                outs.append(torch.stack(ys))
                last.append(h)
            x = torch.cat(outs, -1) if dirs > 1 else outs[0]
        return x, torch.stack(last)


@contextlib.contextmanager
def backend_env(value: Optional[str]) -> Iterator[None]:
    """RECURRENT_BACKEND set to value (None: unset) inside the block, restored afterwards."""
    saved = os.environ.get("RECURRENT_BACKEND")
    if value is None:
        os.environ.pop("RECURRENT_BACKEND", None)
    else:
        os.environ["RECURRENT_BACKEND"] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RECURRENT_BACKEND", None)
        else:
            os.environ["RECURRENT_BACKEND"] = saved


class OnBackend(nn.Module):
    """Our layer called under a RECURRENT_BACKEND setting (None: unset, the default)."""

    def __init__(self, layer: nn.Module, backend: Optional[str]) -> None:
        super().__init__()
        self.layer, self.backend = layer, backend

    def forward(self, x):
        with backend_env(self.backend):
            return self.layer(x)


def lengths(shape: Shape) -> Tensor:
    """A packed shape's sequence lengths: uniform in [L/2, L], seeded per shape so runs agree."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(shape.seq_len // 2, shape.seq_len + 1, (shape.batch,), generator=gen)


class Packed(nn.Module):
    """Feeds a contender the padded x packed to `lengths`, packing inside every call so each
    fwd+bwd step builds its own graph back into the padded leaf x."""

    def __init__(self, model: nn.Module, lengths: Tensor, scripted: bool) -> None:
        super().__init__()
        self.model, self.lengths, self.scripted = model, lengths, scripted

    def forward(self, x: Tensor) -> tuple[PackedSequence, Tensor | tuple[Tensor, Tensor]]:
        packed = pack_padded_sequence(x, self.lengths, enforce_sorted=False)
        # A scripted module's forward takes tensors only; forward_packed is its packed entry.
        return self.model.forward_packed(packed) if self.scripted else self.model(packed)


def custom_contenders(shape: Shape, ref: nn.Module, device: torch.device, models: dict, failed: dict) -> None:
    """The custom-cell contenders (GRU shapes): GRUMath on its TorchScript loop, from a Python loop,
    and (CUDA) on the kernels generated from its step."""
    if shape.kind != "gru":
        for name in [CUSTOM, CUSTOM_LOOP] + ([CUSTOM_TRITON] if device.type == "cuda" else []):
            failed[name] = "n/a: the custom cell is timed on GRU shapes"
        return

    def custom() -> nn.Module:
        layer = recurrent.CustomRNN(
            GRUMath(), shape.input_size, shape.hidden_size, num_layers=shape.layers, bidirectional=shape.bidirectional
        )
        layer.load_state_dict(ref.state_dict())
        return layer.to(device)

    models[CUSTOM] = custom()
    if shape.packed:
        failed[CUSTOM_LOOP] = "n/a: the Python loop has no packed path"
    else:
        models[CUSTOM_LOOP] = CustomCellLoop(models[CUSTOM])
    if device.type != "cuda":  # like the built-in Triton contender: a CUDA row only
        return
    on_triton = OnBackend(custom(), "triton")
    try:  # raises where Triton cannot run here; a step it cannot generate gives the reason
        with backend_env("triton"):
            backend = recurrent.backend_for(on_triton.layer, torch.zeros(1, 1, shape.input_size, device=device))
        if backend == "triton":
            models[CUSTOM_TRITON] = on_triton
        else:
            failed[CUSTOM_TRITON] = f"n/a: {backend.reason}"
    except Exception as e:  # noqa: BLE001 - reported in the results instead
        failed[CUSTOM_TRITON] = reason(e)


def build_small(shape: Shape, device: torch.device) -> dict[str, nn.Module]:
    """A small shape's contenders: torch.nn and our layer (or cell) as a user calls it, directly: what is
    timed is the cost of a call, which OnBackend's setting of RECURRENT_BACKEND would add to (so the shell's
    RECURRENT_BACKEND applies; unset, ours is the default route)."""
    layer_name, cell_name, kwargs = KINDS[shape.kind]
    name = cell_name if shape.cell else layer_name
    args, kw = (shape.input_size, shape.hidden_size), dict(kwargs)
    if not shape.cell:
        kw.update(num_layers=shape.layers, bidirectional=shape.bidirectional)
    ref = getattr(nn, name)(*args, **kw).to(device)
    ours = getattr(recurrent, name)(*args, **kw).to(device)
    ours.load_state_dict(ref.state_dict())
    return {REFERENCE: ref, "recurrent": ours}


def build(shape: Shape, device: torch.device) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The contenders' modules, and the reasons for any that could not be built."""
    if shape.group == "small":
        return build_small(shape, device), {}
    layer_name, cell_name, kwargs = KINDS[shape.kind]
    args = (shape.input_size, shape.hidden_size)
    kw = dict(kwargs, num_layers=shape.layers, bidirectional=shape.bidirectional)
    ref = getattr(nn, layer_name)(*args, **kw).to(device)

    def ours() -> nn.Module:
        m = getattr(recurrent, layer_name)(*args, **kw).to(device)
        m.load_state_dict(ref.state_dict())
        return m

    models: dict[str, nn.Module] = {
        REFERENCE: ref,
        "recurrent": OnBackend(ours(), None),
        TORCHSCRIPT: OnBackend(ours(), "torchscript"),
        # compiled during warm-up, once per mode (train and eval are guarded apart)
        COMPILED: torch.compile(ours(), dynamic=True),
    }
    failed: dict[str, str] = {}
    for name, backend in [(TRITON, "triton"), (RESIDENT, "resident")] if device.type == "cuda" else []:
        on_backend = OnBackend(ours(), backend)
        try:  # raises, saying why, where these kernels cannot run this layer
            with backend_env(backend):
                recurrent.backend_for(on_backend.layer, torch.zeros(1, 1, shape.input_size, device=device))
            models[name] = on_backend
        except Exception as e:  # noqa: BLE001 - reported in the results instead
            failed[name] = reason(e)
    if shape.packed:
        failed["eager cells"] = "n/a: cell loop has no packed path"
    else:
        models["eager cells"] = CellLoop(ref, getattr(recurrent, cell_name), kwargs).to(device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's deprecation notice
            models["scripted"] = torch.jit.script(ours())
    except Exception as e:  # noqa: BLE001 - reported in the results instead
        failed["scripted"] = reason(e)
    custom_contenders(shape, ref, device, models, failed)
    if device.type == "cuda" and shape.packed:
        failed["recurrent+graph"] = "n/a: packed input is not graph-captured"
    elif device.type == "cuda":
        models["recurrent+graph"] = OnBackend(ours(), None)  # captured per mode in graph_step
    if shape.packed:
        lens = lengths(shape)
        models = {name: Packed(m, lens, name == "scripted") for name, m in models.items()}
    return models, failed


def reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"n/a: {type(e).__name__}: {text[0] if text else ''}"[:200]


def check_outputs(models: dict[str, nn.Module], x: Tensor, tol: float) -> dict[str, dict]:
    """Max |difference| of every output against torch.nn, in fp32 (cuDNN's TF32 switched off)."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            ref = flat(models[REFERENCE](x))
            checks = {}
            for name, model in models.items():
                if name == REFERENCE:
                    continue
                diff = max((a - b).abs().max().item() for a, b in zip(ref, flat(model(x))))
                checks[name] = {"max_abs_diff": diff, "ok": diff <= tol}
            return checks
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def clear_grads(model: nn.Module, x: Tensor) -> None:
    x.grad = None
    for p in model.parameters():
        p.grad = None


def make_step(model: nn.Module, x: Tensor, mode: str) -> Callable[[], None]:
    backward, amp_dtype = MODES[mode]

    def amp():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=amp_dtype)

    if not backward:

        def infer() -> None:
            with torch.no_grad(), amp():
                model(x)

        return infer

    def train() -> None:
        clear_grads(model, x)  # set_to_none: every contender allocates fresh gradients
        with amp():
            outs = flat(model(x))
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return train


def graph_step(model: nn.Module, x: Tensor, mode: str) -> Callable[[], None]:
    """Our layer with its fixed-shape forward (and for fwd+bwd, backward) captured as CUDA graphs."""
    if MODES[mode][0]:
        return make_step(torch.cuda.make_graphed_callables(model, (x,)), x, mode)
    static_x = x.detach().clone()
    side = torch.cuda.Stream()  # warm up on a side stream, as capture requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(WARMUP):
            model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        model(static_x)

    def replay() -> None:
        static_x.copy_(x)
        graph.replay()

    return replay


def timer(device: torch.device, calls: int = 1) -> Callable[[Callable[[], None]], float]:
    """Milliseconds of one call, averaged over ``calls`` consecutive ones: perf_counter on CPU, CUDA events
    around synchronised calls."""
    if device.type != "cuda":

        def cpu_ms(fn: Callable[[], None]) -> float:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - start) * 1e3 / calls

        return cpu_ms
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def cuda_ms(fn: Callable[[], None]) -> float:
        torch.cuda.synchronize()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls

    return cuda_ms


@contextlib.contextmanager
def quiet_fd2() -> Iterator[None]:
    """Silence file descriptor 2: kineto logs every profiler start/stop there from C++."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_cpu_bytes(fn: Callable[[], None]) -> int:
    """Peak bytes held by allocations made during fn, from the profiler's allocator events."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The raw '[memory]' records (+bytes on allocation, -bytes on free) carry exact timestamps;
    # prof.events() would fold them into the enclosing op and hide peaks inside an op.
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


def peak_cuda_bytes(fn: Callable[[], None]) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench_mode(
    models: dict[str, nn.Module], failed: dict[str, str], x: Tensor, mode: str, reps: int, calls: int = 1
) -> dict[str, dict]:
    """Time every contender in one mode; returns contender -> figures (or status 'n/a: ...')."""
    results: dict[str, dict] = {name: {"status": why} for name, why in failed.items()}
    steps: dict[str, Callable[[], None]] = {}
    for name, model in models.items():
        if name.endswith("+graph") and MODES[mode][1] is not None:
            continue  # graphs are captured in fp32 only
        model.train(MODES[mode][0])  # eval() for inference, so cuDNN skips its training workspace
        try:
            step = (graph_step if name.endswith("+graph") else make_step)(model, x, mode)
            for _ in range(WARMUP_SCRIPTED if name == "scripted" else WARMUP):
                step()
            steps[name] = step
        except Exception as e:  # noqa: BLE001 - one contender failing must not end the run
            results[name] = {"status": reason(e)}
    measure = timer(x.device, calls)
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    gc.collect()
    gc.disable()  # a cyclic-GC pause would land on whichever contender happens to be running
    try:
        for rep in range(reps if names else 0):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                times[name].append(measure(steps[name]))
    finally:
        gc.enable()
    for name, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0],) * 3
        results[name] = {
            "status": "ok",
            "median_ms": statistics.median(ts),
            "iqr_ms": q3 - q1,
            "min_ms": min(ts),
            "times_ms": ts,
            "peak_mb": None,
        }
    if MODES[mode][0]:
        for name in steps:
            if name.endswith("+graph"):
                continue
            clear_grads(models[name], x)  # freeing old gradients inside the window would offset it
            peak = peak_cuda_bytes if x.device.type == "cuda" else peak_cpu_bytes
            results[name]["peak_mb"] = peak(steps[name]) / 2**20
    return {name: results[name] for name in sorted(results, key=CONTENDERS.index)}


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def triton_version() -> Optional[str]:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def select(spec: str) -> list[Shape]:
    """--shapes: comma-separated shape names and groups; 'all' is every fmnist and large shape."""
    wanted = set(spec.split(","))
    if "all" in wanted:
        wanted |= {"fmnist", "large"}
    chosen = [s for s in SHAPES if s.name in wanted or s.group in wanted]
    unknown = wanted - {"all"} - {s.name for s in SHAPES} - {s.group for s in SHAPES}
    if unknown or not chosen:
        raise SystemExit(f"unknown --shapes {sorted(unknown) or spec}")
    return chosen


def print_table(rows: list[dict]) -> None:
    def num(v: Optional[float], fmt: str) -> str:
        return format(v, fmt) if v is not None else "-"

    head = f"{'shape':<19} {'mode':<15} {'contender':<23} {'median ms':>10} {'IQR':>8} {'min':>9}"
    print(head + f" {'x torch.nn':>10} {'peak MB':>9} {'x torch.nn':>10}")
    for r in rows:
        line = f"{r['shape']:<19} {r['mode']:<15} {r['contender']:<23} "
        if r["status"] != "ok":
            print(line + r["status"])
            continue
        print(
            line + f"{r['median_ms']:>10.3f} {r['iqr_ms']:>8.3f} {r['min_ms']:>9.3f} "
            f"{num(r['ratio'], '.2f'):>10} {num(r['peak_mb'], '.2f'):>9} "
            f"{num(r['mem_ratio'], '.2f'):>10}"
        )


def plot(rows: list[dict], title: str, path: Path) -> None:
    """Bar chart of time ratios to torch.nn (one panel per mode) and of fwd+bwd memory ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    panels = [(m, "ratio") for m in dict.fromkeys(r["mode"] for r in rows)]
    panels.append(("fwd+bwd", "mem_ratio"))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    contenders = [c for c in dict.fromkeys(r["contender"] for r in rows) if c != REFERENCE]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(7, 1.8 * len(shapes)), 3 * len(panels)))
    width = 0.8 / max(1, len(contenders))
    for ax, (mode, key) in zip(axes, panels):
        for i, c in enumerate(contenders):
            got = {r["shape"]: r[key] for r in rows if r["mode"] == mode and r["contender"] == c}
            xs = [j + i * width for j, s in enumerate(shapes) if got.get(s)]
            values = [got[s] for s in shapes if got.get(s)]
            # Bars grow from the 1.0 line: up is slower / bigger than torch.nn, down is better.
            bars = ax.bar(xs, [v - 1 for v in values], width, bottom=1, label=c)
            ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=6)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_yscale("log")  # ratios: 0.5x and 2x sit the same distance from the line
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, fontsize=8)
        what = "peak memory" if key == "mem_ratio" else "time"
        ax.set_ylabel(f"{what} / torch.nn")
        ax.set_title(f"{mode}: {what} relative to torch.nn (lower is better)", fontsize=9)
        ax.margins(y=0.15)  # room for the value labels
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(path: Path, meta: dict, shapes: list[Shape], checks: dict, rows: list[dict]) -> None:
    """The run's JSON: the meta, the shapes timed so far, their output checks and their rows."""
    timed = [s for s in shapes if s.name in checks]
    shape_docs = [dict(asdict(s), lengths=lengths(s).tolist() if s.packed else None) for s in timed]
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "shapes": shape_docs, "checks": checks, "results": rows}, indent=1))
    tmp.replace(path)


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="Fashion-MNIST and tiny shapes, few reps")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output DIR")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--reps", type=int, help="timed repetitions per contender (default 20, quick 5)")
    p.add_argument("--shapes", help="comma-separated names/groups: fmnist, large, tiny, small, all")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    args.reps = args.reps if args.reps is not None else (5 if args.quick else 20)
    if args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def run_tag(args: argparse.Namespace, shapes: list[Shape]) -> str:
    """What sets a run's JSON apart from speed-<device>.json: the small shapes' runs, one per thread count
    (-small-t1, -small-t2), and --quick."""
    small = f"-small-t{torch.get_num_threads()}" if any(s.group == "small" for s in shapes) else ""
    return f"{small}{'-quick' if args.quick else ''}"


def run_meta(args: argparse.Namespace, device: torch.device, chart_path: Path) -> dict:
    """What the JSON says of the run: machine, versions, threads, command, methods."""
    return {
        "device": device.type,
        "machine": machine(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None,
        "triton": triton_version(),
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "command": shlex.join(["python", *sys.argv]),
        "quick": args.quick,
        "reps": args.reps,
        "timing_method": TIMING_METHOD.format(
            WARMUP,
            WARMUP_SCRIPTED,
            "CUDA events around each synchronised call"
            if device.type == "cuda"
            else "time.perf_counter around each call",
        ),
        "memory_method": MEMORY_METHOD[device.type],
        "tolerance": TOLERANCE[device.type],
        "chart": chart_path.name,
    }


def time_shape(shape: Shape, device: torch.device, reps: int) -> tuple[dict, list[dict]]:
    """(the output checks, the timing rows) of one shape, every mode and contender."""
    models, failed = build(shape, device)
    dims = (shape.batch, shape.input_size) if shape.cell else (shape.seq_len, shape.batch, shape.input_size)
    x = torch.randn(*dims, device=device)
    x.requires_grad_()
    checks = check_outputs(models, x, TOLERANCE[device.type])
    for name, c in checks.items():
        if not c["ok"]:  # timing a different function would be meaningless
            del models[name]
            failed[name] = f"n/a: output differs from torch.nn by {c['max_abs_diff']:.2e}"
    rows = []
    for mode in CUDA_MODES if device.type == "cuda" else CPU_MODES:
        figures = bench_mode(models, failed, x, mode, reps, shape.calls)
        ref = figures.get(REFERENCE, {})
        for name, f in figures.items():
            f["ratio"] = ratio(f.get("median_ms"), ref.get("median_ms"))
            f["mem_ratio"] = ratio(f.get("peak_mb"), ref.get("peak_mb"))
            rows.append({"shape": shape.name, "mode": mode, "contender": name, **f})
    return checks, rows


def main() -> int:
    args = arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = select(args.shapes or ("fmnist,tiny" if args.quick else "all"))
    device = torch.device(args.device)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"speed-{device.type}{run_tag(args, shapes)}.json"
    chart_path = json_path.with_suffix(".png")
    meta = run_meta(args, device, chart_path)
    rows: list[dict] = []
    checks: dict[str, dict] = {}
    for shape in shapes:
        print(f"[{shape.name}]", file=sys.stderr, flush=True)
        checks[shape.name], shape_rows = time_shape(shape, device, args.reps)
        rows += shape_rows
        gc.collect()
        write_json(json_path, meta, shapes, checks, rows)  # after every shape: a run cut short keeps what it timed
    plot(rows, f"{meta['machine']}, torch {meta['torch']}, {meta['threads']} threads", chart_path)
    print_table(rows)
    print(f"wrote {json_path} and {chart_path}")
    bad = [f"{s}/{n}" for s, cs in checks.items() for n, c in cs.items() if not c["ok"]]
    if bad:
        print(f"OUTPUT MISMATCH vs torch.nn: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
