"""Inference speed of exported models: ours in onnxruntime against torch.nn's, and our torch.export
program against our eager layer, side by side in one process.

    python benchmarks/export_speed.py [--threads T] [--reps N] [--quick] [--out DIR]

Contenders per shape, all from the same weights (torch.nn's state_dict loaded into ours), every
model exported with dynamic batch and time axes at a shorter example than the one timed:
  torch.nn (native ops)        torch.nn's layer, torch.onnx.export(dynamo=False): ONNX's own RNN,
                               GRU or LSTM operator per layer, in onnxruntime (the reference of
                               the two below)
  recurrent (Scan)             our layer, torch.onnx.export(dynamo=True): its loops as ONNX Scan
  recurrent (native ops)       our layer, torch.onnx.export(dynamo=False): ONNX's own operators,
                               as torch.nn's (recurrent.onnx_native)
  recurrent exported program   torch.export.export(our layer).module(), in torch
  recurrent eager              our layer as a user calls it, in torch
  torch.nn eager                torch.nn's layer, in torch (the reference of the two above)
onnxruntime runs on the CPU with intra-op threads = T; torch with torch.set_num_threads(T). All
under no_grad. The onnxruntime contenders are timed together, then the torch ones: interleaved,
a call of one runtime right after the other's ran slower (their thread pools keep spinning after a
call), by up to 2x. Outputs are checked against torch.nn's eager layer before timing.

Writes DIR/export-cpu[-quick].json; benchmarks/report.py adds it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere, against this checkout

import onnxruntime  # noqa: E402

import recurrent  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from speed import machine  # noqa: E402  (speed.py's machine description, for one table format)


@dataclass(frozen=True)
class Shape:
    name: str
    kind: str  # GRU, LSTM or RNN (tanh)
    layers: int
    bidirectional: bool
    batch: int
    seq_len: int
    input_size: int
    hidden_size: int


SHAPES = [
    Shape("fmnist-gru2", "GRU", 2, False, 128, 28, 28, 128),
    Shape("fmnist-lstm2", "LSTM", 2, False, 128, 28, 28, 128),
    Shape("fmnist-birnn", "RNN", 1, True, 128, 28, 28, 128),
    Shape("gru-L100-H256", "GRU", 1, False, 64, 100, 256, 256),
    Shape("lstm-L100-H256", "LSTM", 1, False, 64, 100, 256, 256),
    Shape("birnn-L100-H256", "RNN", 1, True, 64, 100, 256, 256),
]
QUICK = Shape("tiny-gru", "GRU", 1, False, 4, 6, 3, 5)  # --quick: what the tests run
# Each group is timed apart, interleaved within; its first contender is its reference.
GROUPS = {
    "onnxruntime": ["torch.nn (native ops)", "recurrent (Scan)", "recurrent (native ops)"],
    "torch": ["torch.nn eager", "recurrent exported program", "recurrent eager"],
}
WARMUP = 3
TOLERANCE = 1e-4


def layers(shape: Shape) -> tuple[nn.Module, nn.Module]:
    """(torch.nn's layer, ours with its weights), in eval mode."""
    args = (shape.input_size, shape.hidden_size, shape.layers)
    kwargs = dict(bidirectional=shape.bidirectional, batch_first=True)
    reference = getattr(nn, shape.kind)(*args, **kwargs).eval()
    ours = getattr(recurrent, shape.kind)(*args, **kwargs).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def onnx_session(model: nn.Module, example: torch.Tensor, dynamo: bool, path: Path, threads: int):
    """The model exported to ONNX with dynamic batch and time, as an onnxruntime session."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch's deprecation of the legacy exporter, its axis-name notes
        if dynamo:
            dims = {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("time", min=1, max=4096)}
            torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes={"input": dims}, verbose=False).save(
                str(path)
            )
        else:
            axes = {"input": {0: "batch", 1: "time"}}
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"], dynamic_axes=axes)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def contenders(shape: Shape, work: Path, threads: int) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> a call from the input (N, L, I) to the output (N, L, D·H)."""
    reference, ours = layers(shape)
    example = torch.randn(2, 5, shape.input_size)
    sessions = {
        "torch.nn (native ops)": onnx_session(reference, example, False, work / f"{shape.name}-nn.onnx", threads),
        "recurrent (Scan)": onnx_session(ours, example, True, work / f"{shape.name}-scan.onnx", threads),
        "recurrent (native ops)": onnx_session(ours, example, False, work / f"{shape.name}-native.onnx", threads),
    }
    calls: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for name, session in sessions.items():
        input_name = session.get_inputs()[0].name
        calls[name] = lambda x, s=session, n=input_name: torch.from_numpy(s.run(None, {n: x.numpy()})[0])
    dims = {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("time", min=1, max=4096)}
    program = torch.export.export(ours, (example,), dynamic_shapes={"input": dims}).module()
    calls["recurrent exported program"] = lambda x: program(x)[0]
    calls["recurrent eager"] = lambda x: ours(x)[0]
    calls["torch.nn eager"] = lambda x: reference(x)[0]
    return calls


def bench(calls: Dict[str, Callable], x: torch.Tensor, reps: int) -> Dict[str, List[float]]:
    """Seconds per call of each contender: warm-up, then round-robin with the order rotated."""
    names = list(calls)
    times: Dict[str, List[float]] = {name: [] for name in names}
    with torch.no_grad():
        for name in names:
            for _ in range(WARMUP):
                calls[name](x)
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                start = time.perf_counter()
                calls[name](x)
                times[name].append(time.perf_counter() - start)
    return times


def run_shape(shape: Shape, reps: int, threads: int, work: Path) -> List[dict]:
    torch.manual_seed(0)
    calls = contenders(shape, work, threads)
    x = torch.randn(shape.batch, shape.seq_len, shape.input_size)
    with torch.no_grad():
        expected = calls["torch.nn eager"](x)
        diffs = {name: (call(x) - expected).abs().max().item() for name, call in calls.items()}
    rows = []
    for group, names in GROUPS.items():
        times = bench({name: calls[name] for name in names}, x, reps)
        reference = statistics.median(times[names[0]])
        for name, ts in times.items():
            median = statistics.median(ts)
            row = dict(shape=shape.name, runtime=group, contender=name, reference=names[0], median_ms=median * 1e3)
            row.update(min_ms=min(ts) * 1e3, ratio=median / reference, max_abs_diff=diffs[name])
            rows.append(dict(row, ok=diffs[name] <= TOLERANCE))
            print(f"{shape.name:16s} {name:28s} {median * 1e3:9.3f} ms {median / reference:5.2f}x {diffs[name]:.1e}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="a tiny GRU only, 3 repetitions (a smoke run)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shapes, reps = ([QUICK], 3) if args.quick else (SHAPES, args.reps)
    rows: List[dict] = []
    with tempfile.TemporaryDirectory() as work:
        for shape in shapes:
            rows += run_shape(shape, reps, args.threads, Path(work))
    meta = dict(
        command="python benchmarks/export_speed.py" + (" --quick" if args.quick else ""),
        machine=machine(torch.device("cpu")),
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
        threads=args.threads,
        reps=reps,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tolerance=TOLERANCE,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("export-cpu-quick.json" if args.quick else "export-cpu.json")
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {path}")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
