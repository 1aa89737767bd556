"""Time the persistent Triton kernels alone under candidate block configurations, to pin them by
measurement on a GPU (the route's table is ``recurrent.kernels.triton.common.blocks``).

    python benchmarks/triton_tune.py [--dtype float32|bfloat16] [--reps N] [--json PATH] [--smoke]

Why a separate script: speed.py times whole layers against cuDNN, where the input projection and
the weight-gradient products share the time; the choice of BLOCK_N, BLOCK_K, warps, stages and
registers only moves the recurrent kernels, so they are timed here one launch at a time, per
time step. Each shape (the recurrent part of speed.py's shapes: kind, directions, batch, steps,
hidden) runs its forward (saving the activations, as training does) and its backward kernel under
every candidate, interleaved round-robin after a warm-up, through the kind's Triton Kernel pair
with ``common.blocks`` replaced by the candidate. Prints microseconds per step (median of the
repetitions), each candidate's ratio to the pinned configuration, and the largest difference of
its outputs from the pinned configuration's (blocks change the summation order only).

A candidate is only a measurement: the route launches nothing that
``tools/triton_check.py`` has not compiled, so adopting one means changing ``blocks`` (and
the check then covers it). ``--smoke`` runs two tiny shapes and two candidates, for CPU tests
under ``TRITON_INTERPRET=1``; its times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere, against this checkout

from recurrent.kernels import KINDS  # noqa: E402
from recurrent.kernels.common import previous_blocks  # noqa: E402
from recurrent.kernels.triton import common  # noqa: E402
from recurrent.kernels.triton.common import Blocks  # noqa: E402


class Case(NamedTuple):
    name: str  # speed.py's shape this is the recurrent part of
    mode: str
    directions: int
    batch: int
    steps: int
    hidden: int


CASES = [
    Case("fmnist-gru2", "GRU", 1, 128, 28, 128),
    Case("fmnist-birnn", "RNN_TANH", 2, 128, 28, 128),
    Case("fmnist-lstm2", "LSTM", 1, 128, 28, 128),
    Case("gru-L100-H256", "GRU", 1, 64, 100, 256),
    Case("lstm-L100-H256", "LSTM", 1, 64, 100, 256),
    Case("gru-L256-H512", "GRU", 1, 64, 256, 512),
]
SMOKE_CASES = [Case("tiny-gru", "GRU", 2, 4, 3, 20), Case("tiny-lstm", "LSTM", 1, 3, 2, 8)]
# (rows, cols, k, warps, stages, registers) beside the pinned one: stages, chunk and column widths, warps.
CANDIDATES = [
    Blocks(16, 32, 16, 8, 3, 255),
    Blocks(16, 64, 16, 8, 2, 255),
    Blocks(16, 64, 16, 8, 4, 255),
    Blocks(16, 64, 32, 8, 3, 255),
    Blocks(16, 128, 16, 8, 3, 255),
    Blocks(16, 64, 16, 4, 3, 255),
]
PINNED = "pinned"


def label(config: Blocks) -> str:
    return f"n{config.cols} k{config.k} w{config.warps} s{config.stages} r{config.registers}"


def inputs(case: Case, dtype: torch.dtype, device: str) -> dict:
    """Random kernel inputs of a padded batch, scaled so that the gates stay in their working range."""
    kind, d, n, t, h = KINDS[case.mode], case.directions, case.batch, case.steps, case.hidden
    make = lambda *shape, scale=1.0: (torch.randn(*shape, device=device) * scale).to(dtype)  # noqa: E731
    states = [make(d, n, h, scale=0.5) for _ in range(2 if case.mode == "LSTM" else 1)]
    w_hh = make(d, kind.gates * h, h, scale=h**-0.5)
    b_hh = None if kind.folds_bias else make(d, 1, kind.gates * h, scale=0.1)
    return dict(gi=make(d, t * n, kind.gates * h), states=states, w_hh=w_hh, b_hh=b_hh, batch_sizes=[n] * t)


def passes(case: Case, dtype: torch.dtype, device: str) -> Dict[str, Callable[[], object]]:
    """The forward (saving) and backward launches of one case, as zero-argument calls."""
    kernel, x = KINDS[case.mode].kernel("triton"), inputs(case, dtype, device)

    def forward():
        return kernel.forward(x["gi"], x["states"], x["w_hh"].transpose(1, 2), x["b_hh"], [], x["batch_sizes"], True)

    hs, finals, saved = forward()
    grad_hs, grad_finals = torch.randn_like(hs), [torch.randn_like(f) for f in finals]
    h_prev = previous_blocks(x["states"][0], hs, x["batch_sizes"])

    def backward():
        return kernel.backward(grad_hs, grad_finals, x["states"], hs, h_prev, saved, x["w_hh"], [], x["batch_sizes"])

    return {"forward": forward, "backward": backward}


def precision(dtype: torch.dtype, device: str) -> str:
    """The dot precision the kernels run these inputs at (TF32 for float32 on CUDA unless switched off)."""
    return common.dot_precision(torch.empty(0, dtype=dtype, device=device))


def with_blocks(config: Optional[Blocks], fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``common.blocks`` answering ``config`` (None: the pinned table)."""

    def run():
        pinned = common.blocks
        if config is not None:
            common.blocks = lambda hidden, *_: config if hidden > 16 else config._replace(cols=16, k=16)
        try:
            return fn()
        finally:
            common.blocks = pinned

    return run


def timer(device: str) -> Callable[[Callable[[], object], int], float]:
    """Microseconds per call over ``reps`` back-to-back calls (CUDA events on a GPU)."""
    if device != "cuda":

        def cpu_us(fn, reps):
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            return (time.perf_counter() - start) * 1e6 / reps

        return cpu_us
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def cuda_us(fn, reps):
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / reps

    return cuda_us


def max_difference(result, reference) -> float:
    """The largest absolute difference between two launches' outputs (a candidate must not change them)."""
    flat = lambda r: [t for x in r for t in (x if isinstance(x, list) else [x])]  # noqa: E731
    return max(
        ((a.float() - b.float()).abs().max().item() for a, b in zip(flat(result), flat(reference)) if a.numel()),
        default=0.0,
    )


def tune(
    case: Case, configs: Dict[str, Optional[Blocks]], dtype: torch.dtype, device: str, reps: int, rounds: int
) -> List[dict]:
    calls = passes(case, dtype, device)
    time_us = timer(device)
    runs = {(c, p): with_blocks(cfg, fn) for c, cfg in configs.items() for p, fn in calls.items()}
    outputs = {}
    for (c, p), run in runs.items():  # warm-up: compiles every candidate's kernels
        run()
        outputs[(c, p)] = run()
    samples: Dict[tuple, List[float]] = {key: [] for key in runs}
    keys = list(runs)
    for r in range(rounds):  # interleaved, the order rotated every round
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            samples[key].append(time_us(runs[key], reps) / case.steps)
    rows = []
    for c, cfg in configs.items():
        pinned = common.blocks(case.hidden, dtype, precision(dtype, device))
        row = {"case": case.name, "config": c, "blocks": (cfg or pinned)._asdict()}
        for p in calls:
            row[f"{p}_us_per_step"] = statistics.median(samples[(c, p)])
            row[f"{p}_max_diff"] = max_difference(outputs[(c, p)], outputs[(PINNED, p)])
        rows.append(row)
    for row in rows:
        for p in calls:
            row[f"{p}_vs_pinned"] = row[f"{p}_us_per_step"] / rows[0][f"{p}_us_per_step"]
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--reps", type=int, default=10, help="back-to-back launches per sample")
    p.add_argument("--rounds", type=int, default=7, help="samples per candidate (the median is reported)")
    p.add_argument("--json", type=Path, help="write the rows there")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, two candidates (CPU tests)")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("needs a GPU, or TRITON_INTERPRET=1 (with --smoke: the times then mean nothing)")
    cases, candidates = (SMOKE_CASES, CANDIDATES[:1]) if args.smoke else (CASES, CANDIDATES)
    if args.cases:
        cases = [c for c in cases if c.name in args.cases.split(",")]
        if not cases:
            p.error(f"--cases: none of {args.cases} (known: {', '.join(c.name for c in CASES)})")
    reps, rounds = (1, 2) if args.smoke else (args.reps, args.rounds)
    configs: Dict[str, Optional[Blocks]] = {PINNED: None, **{label(c): c for c in candidates}}
    dtype = getattr(torch, args.dtype)
    gpu = torch.cuda.get_device_name() if device == "cuda" else ""
    head = f"{device} {gpu} torch {torch.__version__} {args.dtype}, {precision(dtype, device)} dots"
    print(f"# Triton kernels per time step, microseconds (median of {rounds} x {reps} launches); {head}")
    print(f"# pinned: {label(common.blocks(128, dtype, precision(dtype, device)))} (hidden > 32)")
    print(f"{'case':<16} {'config':<22} {'fwd us':>8} {'bwd us':>8} {'fwd x':>6} {'bwd x':>6} {'max diff':>9}")
    rows = []
    for case in cases:
        found = tune(case, configs, dtype, device, reps, rounds)
        for r in found:
            print(
                f"{r['case']:<16} {r['config']:<22} {r['forward_us_per_step']:8.2f} {r['backward_us_per_step']:8.2f} "
                f"{r['forward_vs_pinned']:6.2f} {r['backward_vs_pinned']:6.2f} "
                f"{max(r['forward_max_diff'], r['backward_max_diff']):9.1e}",
                flush=True,
            )
        rows += found
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": head, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
