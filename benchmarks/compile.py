"""What torch.compile costs a model holding our layer, against the same model holding torch.nn's.

    python benchmarks/compile.py [--kinds GRU,LSTM] [--threads T] [--reps N] [--quick] [--out DIR]

The model is the Fashion-MNIST recipe's shape (experiments/models.py): a 2-layer RNN of 128 over rows of
28 pixels, its last output through a linear layer to 10 classes, trained with cross-entropy and SGD.
Per kind, for torch.nn's layer and ours (the same weights), each compiled with ``torch.compile(model)``'s
defaults (Inductor, automatic dynamic shapes) from a cold start: each in a process of its own (Inductor
keeps what it compiled in memory too), with a fresh Inductor cache folder. (dynamo does not compile
torch.nn's RNN layers: it falls back to running a model holding one eagerly, so torch.nn's figures are
those of a model nothing of which is compiled.)

  first step       the first training step's time, compiling included, at batch 128 × 28 steps, and what
                   compiling adds to it (minus the eager step's median)
  new shapes       the first step at 28 × 41, 96 × 57, 13 × 128 in turn (time, and whether it compiled)
  step             the compiled training step's median, against the eager one's (interleaved, after
                   warm-up, batch 128 × 28)

A third model, "no recurrent layer" (a per-step linear layer and tanh in the RNN's place), shows what
torch.compile costs a model of this shape by itself: the floor under any recurrent layer's figures.

Writes DIR/compile-cpu[-quick].json and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere, against this checkout

import recurrent  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from speed import machine  # noqa: E402  (speed.py's machine description, for one table format)

INPUT, HIDDEN, LAYERS, CLASSES = 28, 128, 2, 10
FIRST = (128, 28)
NEW_SHAPES = [(128, 41), (96, 57), (128, 13)]


FLOOR = "no recurrent layer"  # the same model with a per-step linear layer in the RNN's place


class PerStep(nn.Module):
    """tanh(W x + b) at every step, no recurrence: what torch.compile costs a model of this shape by itself."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(INPUT, HIDDEN)

    def forward(self, x: torch.Tensor) -> tuple:
        return torch.tanh(self.linear(x)), None


class Classifier(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.out = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(x)
        return self.out(output[:, -1])


def models(kind: str) -> Dict[str, nn.Module]:
    """torch.nn's model and ours, with the same weights."""
    torch.manual_seed(0)
    reference = Classifier(getattr(nn, kind)(INPUT, HIDDEN, LAYERS, batch_first=True, dropout=0.1))
    ours = Classifier(getattr(recurrent, kind)(INPUT, HIDDEN, LAYERS, batch_first=True, dropout=0.1))
    ours.load_state_dict(reference.state_dict())
    return {"torch.nn": reference, "recurrent": ours, FLOOR: Classifier(PerStep())}


def trainer(model: nn.Module, call: Callable) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One SGD training step of ``model`` run through ``call`` (the model or its compiled form)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(call(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def batch(size: int, steps: int) -> tuple:
    return torch.randn(size, steps, INPUT), torch.randint(0, CLASSES, (size,))


def timed(step: Callable, shape: tuple) -> float:
    x, y = batch(*shape)
    start = time.perf_counter()
    step(x, y)
    return time.perf_counter() - start


def compile_costs(model: nn.Module, eager_step: float) -> dict:
    """The first compiled step and the new shapes' first steps, from a cold cache."""
    torch._dynamo.reset()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    counter = CompileCounterWithBackend("inductor")
    step = trainer(model, torch.compile(model, backend=counter))
    first = timed(step, FIRST)
    result = {"first_step_s": first, "compile_adds_s": first - eager_step, "graphs_first": counter.frame_count}
    shapes = []
    for shape in NEW_SHAPES:
        before = counter.frame_count
        seconds = timed(step, shape)
        shapes.append({"batch": shape[0], "steps": shape[1], "first_call_s": seconds,
                       "compiled": counter.frame_count > before})  # fmt: skip
    return {**result, "new_shapes": shapes, "step": step}


def medians(steps: Dict[str, Callable], reps: int) -> Dict[str, float]:
    """Each step's median over ``reps`` calls on the same batch, interleaved, after two warm-up rounds."""
    x, y = batch(*FIRST)
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for rep in range(reps + 2):
        for name, step in steps.items():
            start = time.perf_counter()
            step(x, y)
            if rep >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(kind: str, contender: str, reps: int) -> dict:
    """One model's figures (run in a process of its own: ``--one``)."""
    model = models(kind)[contender]
    eager = trainer(model, model)
    eager_step = medians({"eager": eager}, max(3, reps // 4))["eager"]
    costs = compile_costs(model, eager_step)
    steady = medians({"eager": eager, "compiled": costs.pop("step")}, reps)
    return {"kind": kind, "contender": contender, **costs, "eager_step_ms": 1e3 * steady["eager"],
            "compiled_step_ms": 1e3 * steady["compiled"],
            "compiled_over_eager": steady["compiled"] / steady["eager"]}  # fmt: skip


def run_one(kind: str, contender: str, reps: int, threads: int) -> dict:
    """One model's figures, measured in a fresh process."""
    command = [sys.executable, __file__, "--one", f"{kind}:{contender}", "--reps", str(reps), "--threads", str(threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(table_row(row), flush=True)
    return row


HEADER = (
    "| model | compiling adds (s) | new shapes: first call (s), recompiled? | eager step (ms) | "
    "compiled step (ms) | compiled / eager |\n| --- | --- | --- | --- | --- | --- |"
)


def table_row(row: dict) -> str:
    shapes = ", ".join(
        f"{s['batch']}×{s['steps']}: {s['first_call_s']:.2f}{' (recompiled)' if s['compiled'] else ''}"
        for s in row["new_shapes"]
    )
    label = row["contender"] if row["contender"] == FLOOR else f"{row['kind']}, {row['contender']}"
    return (
        f"| {label} | {row['compile_adds_s']:.1f} | {shapes} | {row['eager_step_ms']:.1f} | "
        f"{row['compiled_step_ms']:.1f} | {row['compiled_over_eager']:.2f}x |"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", default="GRU,LSTM")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="the GRU only, 3 repetitions (a smoke run)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--one", help=argparse.SUPPRESS)  # KIND:CONTENDER, measured in this process (run_one)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(*args.one.split(":"), args.reps)))
        return 0
    kinds, reps = (["GRU"], 3) if args.quick else (args.kinds.split(","), args.reps)
    cpu = machine(torch.device("cpu"))
    print(f"{cpu}, {args.threads} threads, torch {torch.__version__}\n\n{HEADER}", flush=True)
    contenders = [(kind, contender) for kind in kinds for contender in ("torch.nn", "recurrent")]
    rows = [run_one(kind, contender, reps, args.threads) for kind, contender in contenders + [(kinds[0], FLOOR)]]
    stem = "compile-cpu" + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": cpu, "threads": args.threads, "torch": torch.__version__, "reps": reps,
            "date": datetime.date.today().isoformat(), "command": " ".join(["python"] + sys.argv)}  # fmt: skip
    (args.out / f"{stem}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    table = "\n".join([HEADER] + [table_row(r) for r in rows])
    (args.out / f"{stem}.md").write_text(
        f"`{meta['command']}` on {meta['machine']}, {args.threads} threads, torch {meta['torch']}, "
        f"{meta['date']} (medians of {reps}):\n\n{table}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
