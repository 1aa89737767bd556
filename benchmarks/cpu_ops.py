"""The measurements behind the fast CPU path (benchmarks/NOTES.md, recurrent/kernels/products.py).

    python benchmarks/cpu_ops.py [--threads T] [--reps N] [--profile KIND:MODE ...]

Part one times the pieces on their own, each a median of interleaved repetitions: torch's tanh
against its sigmoid and against the fast path's tanh (2σ(2a) − 1 in place) on 128x128 floats; one
time step's hidden product (128x128 rows, new ones every step as in a loop, times 128x512) through
MKL (``torch.mm``), oneDNN with the weight as it is, and oneDNN with the weight packed; the input
projection of the Fashion-MNIST shape (3584x28 and 3584x128 rows) through MKL and oneDNN; a weight
gradient over those rows (and 6400 rows of the L=100 LSTM's) through MKL, through oneDNN
(:func:`products.weight_grad`) and through the native op (recurrent/kernels/cpu); one LSTM
step's gate math as the fast path runs it and compiled by torch.compile (Inductor's C++ loop); an
LSTM's time loop per step, torch.nn's (oneDNN) against the native sequence op (recurrent/kernels/cpu).
Part two profiles our layer at the Fashion-MNIST shape (2 layers, N=128, L=28, H=128) and prints the
self CPU time per op and call, for ``KIND:MODE`` pairs such as ``LSTM:inference`` or ``GRU:fwd+bwd``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, against this checkout

import recurrent  # noqa: E402
from recurrent.cells import lstm_step  # noqa: E402
from recurrent.kernels import cpu, products  # noqa: E402


def interleaved(contenders: Dict[str, Callable[[], object]], reps: int, calls: int = 1) -> Dict[str, float]:
    """Median microseconds per call of each contender, round-robin after a warm-up."""
    for fn in contenders.values():
        for _ in range(3):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e6 / calls)
    return {name: statistics.median(ts) for name, ts in times.items()}


def show(title: str, result: Dict[str, float]) -> None:
    print(title + ": " + ", ".join(f"{name} {us:.1f} µs" for name, us in result.items()))


def pieces(reps: int) -> None:
    a = torch.randn(128, 128)
    show(
        "128x128 floats",
        interleaved(
            {
                "torch.tanh": lambda: torch.tanh(a),
                "torch.sigmoid": lambda: torch.sigmoid(a),
                "torch.tanh_ (in place, a copy first)": lambda: a.clone().tanh_(),
            },
            reps * 10,
        ),
    )
    if not products.ONEDNN:
        print("this torch build has no oneDNN linear: the fast path is off")
        return
    products_of_a_step(reps)
    weight_gradients(reps)
    compiled_step(reps, show)
    recurrence(reps, show)


def products_of_a_step(reps: int) -> None:
    """A step's hidden product through MKL, oneDNN and oneDNN with W_hh packed; the input projections."""
    onednn = torch.ops.mkldnn._linear_pointwise
    w = torch.randn(512, 128) * 0.1
    packed = torch.ops.mkldnn._reorder_linear_weight(w, 128)
    rows = [torch.randn(128, 128) for _ in range(28)]
    show(
        "step product, 28 new 128x128 row blocks times 128x512, per step",
        interleaved(
            {
                "MKL": lambda: [torch.mm(h, w.t()) for h in rows],
                "oneDNN": lambda: [onednn(h, w, None, "none", [], "") for h in rows],
                "oneDNN packed": lambda: [onednn(h, packed, None, "none", [], "") for h in rows],
            },
            reps,
            calls=28,
        ),
    )
    bias = torch.randn(512)
    for width in (28, 128):
        x, w_ih = torch.randn(3584, width), torch.randn(512, width)
        show(
            f"input projection 3584x{width} times {width}x512",
            interleaved(
                {
                    "MKL": lambda x=x, w_ih=w_ih: torch.addmm(bias, x, w_ih.t()),
                    "oneDNN": lambda x=x, w_ih=w_ih: onednn(x, w_ih, bias, "none", [], ""),
                },
                reps,
            ),
        )


def weight_gradients(reps: int) -> None:
    """Σ gradᵀ x over rows through MKL, oneDNN and the native op, at the layers' shapes."""
    shapes = ((3584, 512, 28), (3584, 512, 128), (3584, 128, 128), (3584, 192, 128), (6400, 1024, 256))
    for rows, gates, width in shapes:
        grad, x = torch.randn(1, rows, gates), torch.randn(1, rows, width)
        contenders = {
            "MKL (transposed in place)": lambda grad=grad, x=x: torch.bmm(grad.transpose(1, 2), x),
            "oneDNN (products.weight_grad)": lambda grad=grad, x=x: products.weight_grad(grad, [x]),
        }
        if cpu.available():
            native = torch.ops.recurrent_cpu.weight_grad
            contenders["native (recurrent_cpu.weight_grad)"] = lambda grad=grad, x=x: native(grad, [x], [], False)
        title = f"weight gradient, {rows} rows of a {gates}-wide gradient times {width}-wide inputs"
        show(title, interleaved(contenders, reps))


def recurrence(reps: int, show: Callable[[str, Dict[str, float]], None]) -> None:
    """A layer's time loop, per step: torch.nn's LSTM with input size 1 (oneDNN's fused layer; the
    input projection next to nothing) against the native sequence op (recurrent/kernels/cpu) on the
    same weights and input, 28 steps of 128 rows, H = 128, both without gradients."""
    if not cpu.available():
        print(f"native sequence ops: {cpu.status()}")
        return
    steps, rows, hidden = 28, 128, 128
    reference = torch.nn.LSTM(1, hidden)
    x = torch.randn(steps, rows, 1)
    w_ih, w_hh = reference.weight_ih_l0.detach()[None], reference.weight_hh_l0.detach()[None]
    bias = (reference.bias_ih_l0 + reference.bias_hh_l0).detach()[None]
    h0 = torch.zeros(1, rows, hidden)
    with torch.no_grad():
        result = interleaved(
            {
                "torch.nn (oneDNN layer, I = 1)": lambda: reference(x),
                "native op (recurrent_cpu.lstm_sequence)": lambda: torch.ops.recurrent_cpu.lstm_sequence(
                    x.view(1, -1, 1), w_ih, bias, h0, h0, w_hh, [rows] * steps, False
                ),
            },
            reps * 5,
            calls=steps,
        )
    show(f"LSTM recurrence, {steps} steps of {rows}x{hidden}, per step", result)


def _lstm_math(gi: torch.Tensor, gh: torch.Tensor, c: torch.Tensor):
    """One LSTM step's gate math as plain ops (cells.lstm_step's formula), for Inductor to fuse."""
    i, f, g, o = (gi + gh).chunk(4, -1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c_new), c_new


def compiled_step(reps: int, show: Callable[[str, Dict[str, float]], None]) -> None:
    """A compiled CPU step (issue 22's last idea): one LSTM step's gate math at the Fashion-MNIST
    shape (128 rows, H = 128) as the fast path runs it (lstm_step(fast=True): in place on the step's
    product) and as one loop generated by torch.compile (Inductor's C++ backend), whose first call
    (the compile) is timed too. Every contender gets a fresh copy of gh (the fast path works in place
    on it, as on each step's new product), so each time includes one 128x512 copy. Needs a C++
    compiler; reported as missing otherwise."""
    gi, gh, c = torch.randn(1, 128, 512), torch.randn(1, 128, 512), torch.randn(1, 128, 128)
    start = time.perf_counter()
    try:
        fused = torch.compile(_lstm_math, dynamic=False)
        with torch.no_grad():
            fused(gi, gh, c)
    except Exception as err:  # noqa: BLE001 - no compiler, or Inductor unavailable: say so
        print(f"LSTM step gate math compiled: not available here ({type(err).__name__}: {err})")
        return
    compile_s = time.perf_counter() - start
    contenders = {
        "fast path (lstm_step)": lambda: lstm_step(gi, gh.clone(), c, True),
        "torch.compile (Inductor C++)": lambda: fused(gi, gh.clone(), c),
        "plain ops": lambda: _lstm_math(gi, gh.clone(), c),
    }
    with torch.no_grad():
        result = interleaved(
            contenders,
            reps * 10,
        )
    show(f"LSTM step gate math, 128x128 (compile {compile_s:.1f} s, first call)", result)


def profile(kind: str, mode: str, reps: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    layer = getattr(recurrent, kind)(28, 128, 2)
    x = torch.randn(28, 128, 28, requires_grad=mode == "fwd+bwd")

    def step() -> None:
        if mode == "inference":
            with torch.no_grad():
                layer(x)
            return
        layer.zero_grad(set_to_none=True)
        out = layer(x)[0]
        out.backward(torch.ones_like(out))

    for _ in range(3):
        step()
    wall = interleaved({"ours": step}, reps)["ours"] / 1e3
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            step()
    ms: Dict[str, float] = collections.Counter()
    calls: Dict[str, float] = collections.Counter()
    for event in prof.key_averages():
        ms[event.key] += event.self_cpu_time_total / reps / 1e3
        calls[event.key] += event.count / reps
    print(f"{kind} {mode}: {wall:.2f} ms a call unprofiled; profiled, self CPU time per call:")
    for name, t in ms.most_common(12):
        print(f"  {name:34s} {t:7.2f} ms {calls[name]:6.0f} calls")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2, as speed.py's table)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--profile", nargs="*", default=["LSTM:inference", "LSTM:fwd+bwd", "GRU:fwd+bwd"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    pieces(args.reps)
    for pair in args.profile:
        kind, mode = pair.split(":")
        profile(kind, mode, max(3, args.reps // 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
