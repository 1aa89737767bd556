"""Run the report's grid ({rnn, gru} x {recurrent, torch} x seeds, the LayerNorm GRU (lngru, recurrent
only) x seeds, plus our stronger model) and summarise it in experiments/results/:
python -m experiments.reproduce [--skip-existing]. The summary keeps the previous summary.json's runs
whose folders are not under --out-root (--fresh: only the run folders found)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from experiments import data
from experiments.fashion_mnist import (
    RUNS_DIR,
    add_common_args,
    check_device,
    data_dir_and_origin,
    data_error_message,
    fail,
    non_negative,
)
from experiments.models import IMPLS, RECIPES, impls_for, override
from experiments.summary import RESULTS_DIR, load_finished, same_settings, summarize
from experiments.train import ResumeError, RunSpec, run, run_name


def grid(args: argparse.Namespace, data_dir: Path) -> list[RunSpec]:
    # A model runs with the asked-for impls it has (lngru: recurrent alone; torch.nn has no LayerNorm GRU).
    cells = [(m, i, s) for m in args.models for i in args.impls if i in impls_for(RECIPES[m]) for s in args.seeds]
    cells += [(m, "recurrent", s) for m in args.strong for s in args.strong_seeds]
    epochs = [f"epochs={args.epochs}"] if args.epochs else []
    return [
        RunSpec(
            model=m,
            impl=i,
            seed=s,
            recipe=override(RECIPES[m], epochs),
            limit=args.limit,
            device=args.device,
            threads=args.threads,
            data_dir=str(data_dir),
        )
        for m, i, s in cells
    ]


def run_grid(specs: list[RunSpec], out_root: Path, skip_existing: bool) -> None:
    finished = load_finished(out_root) if skip_existing else []
    for n, spec in enumerate(specs, 1):
        label = f"[{n}/{len(specs)}] {run_name(spec)}"
        if any(
            same_settings(m["config"], spec) and m["device_type"] == torch.device(spec.device).type for m in finished
        ):
            print(f"{label}: finished, reused", file=sys.stderr)
            continue
        print(f"{label}: training", file=sys.stderr)
        # With --skip-existing an interrupted run continues from its last checkpoint.
        run(spec, out_root / run_name(spec), resume=skip_existing)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__)
    p.add_argument(
        "--models",
        nargs="+",
        choices=sorted(RECIPES),
        default=["rnn", "gru", "lngru"],
        help="each with each of --impls that it has (lngru: recurrent only)",
    )
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--seeds", nargs="+", type=non_negative, default=[0, 1, 2])
    p.add_argument(
        "--strong",
        nargs="*",
        choices=sorted(RECIPES),
        default=["bigru"],
        help="stronger configurations, run with impl recurrent only (none: --strong)",
    )
    p.add_argument("--strong-seeds", nargs="+", type=non_negative, default=[0])
    p.add_argument("--out-root", type=Path, default=RUNS_DIR, help="run folders (default: %(default)s)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="summary folder (default: %(default)s)")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="reuse finished runs with the same settings, resume interrupted ones",
    )
    p.add_argument(
        "--summarize-only",
        action="store_true",
        help="train nothing; summarise the finished runs under --out-root (from any device)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="summarise only the run folders under --out-root: drop the records of the previous "
        "summary.json whose folders are not there (kept by default)",
    )
    add_common_args(p)
    return p


def train_grid(specs: list[RunSpec], args: argparse.Namespace, origin: str) -> int:
    """Runs the grid (0), or says why it could not (2, as argparse's errors)."""
    try:
        run_grid(specs, args.out_root, args.skip_existing)
    except FileExistsError as e:
        return fail(f"{e} (for the grid: pass --skip-existing, or delete that folder)")
    except data.DataError as e:
        return fail(data_error_message(e, origin))
    except ResumeError as e:
        return fail(str(e))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_device(p, args.device)
    data_dir, origin = data_dir_and_origin(args.data_dir)
    specs = grid(args, data_dir)
    for m in args.models:
        if not set(args.impls) & set(impls_for(RECIPES[m])):
            print(f"note: {m} runs only with --impls {' '.join(impls_for(RECIPES[m]))}; left out", file=sys.stderr)
    if not specs:
        p.error("no runs in this grid")
    status = 0 if args.summarize_only else train_grid(specs, args, origin)
    if status:
        return status
    command = shlex.join(["python", "-m", "experiments.reproduce", *(sys.argv[1:] if argv is None else argv)])
    summarize(specs, args.out_root, args.results, command, fresh=args.fresh)
    print(f"wrote {args.results / 'summary.md'} and summary.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
