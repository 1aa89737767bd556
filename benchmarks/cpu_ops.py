"""The measurements behind the fast CPU path (benchmarks/NOTES.md, recurrent/kernels/products.py).

    python benchmarks/cpu_ops.py [--threads T] [--reps N] [--profile KIND:MODE ...]

Part one times the pieces on their own, each a median of interleaved repetitions: torch's tanh
against its sigmoid and against the fast path's tanh (2σ(2a) − 1 in place) on 128x128 floats; one
time step's hidden product (128x128 rows, new ones every step as in a loop, times 128x512) through
MKL (``torch.mm``), oneDNN with the weight as it is, and oneDNN with the weight packed; the input
projection of the Fashion-MNIST shape (3584x28 and 3584x128 rows) through MKL and oneDNN; and the
copy that oneDNN's product would need before a weight gradient (a 3584x384 gradient transposed).
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
from recurrent.cells import tanh_  # noqa: E402
from recurrent.kernels import products  # noqa: E402


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


def pieces(reps: int) -> None:
    def show(title: str, result: Dict[str, float]) -> None:
        print(title + ": " + ", ".join(f"{name} {us:.1f} µs" for name, us in result.items()))

    a = torch.randn(128, 128)
    show(
        "128x128 floats",
        interleaved(
            {
                "torch.tanh": lambda: torch.tanh(a),
                "torch.sigmoid": lambda: torch.sigmoid(a),
                "tanh_": lambda: tanh_(a.clone()),
            },
            reps * 10,
        ),
    )
    if not products.ONEDNN:
        print("this torch build has no oneDNN linear: the fast path is off")
        return
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
    grad = torch.randn(3584, 384)
    show("a 3584x384 gradient transposed into a new tensor", interleaved({"copy": lambda: grad.t().contiguous()}, reps))


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
