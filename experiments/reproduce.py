"""Run the report's grid ({rnn, gru} x {recurrent, torch} x seeds, plus our stronger model) and
summarise it in experiments/results/: python -m experiments.reproduce [--skip-existing]."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from experiments import data, plots
from experiments.fashion_mnist import RUNS_DIR, add_common_args, check_device, data_dir_and_origin, non_negative
from experiments.models import IMPLS, RECIPES, override
from experiments.train import METRICS, ResumeError, RunSpec, atomic_write, run, run_name, write_json

RESULTS_DIR = data.REPO / "experiments" / "results"
TEST_BATCHES = math.ceil(10_000 / 128)  # the report's test loader: 79 batches of 128
# What the report printed (accuracy as a fraction; loss as the sum of 79 per-batch means).
REPORT = {
    "rnn": {"best_epoch": 4, "test_accuracy": 0.88, "test_loss_report_form": 27.2451},
    "gru": {"best_epoch": 9, "test_accuracy": 0.90, "test_loss_report_form": 21.8582},
}
IMPL_LABEL = {"torch": "torch.nn", "recurrent": "recurrent"}


def grid(args: argparse.Namespace) -> list[RunSpec]:
    data_dir, origin = data_dir_and_origin(args.data_dir)
    cells = [(m, i, s) for m in args.models for i in args.impls for s in args.seeds]
    cells += [(m, "recurrent", s) for m in args.strong for s in args.strong_seeds]
    epochs = [f"epochs={args.epochs}"] if args.epochs else []
    return [RunSpec(model=m, impl=i, seed=s, recipe=override(RECIPES[m], epochs), limit=args.limit,
                    device=args.device, threads=args.threads, data_dir=str(data_dir), data_origin=origin)
            for m, i, s in cells]


def same_settings(config: dict[str, Any], spec: RunSpec) -> bool:
    """Whether a finished run's numbers belong to this grid cell (on any device, with any threads)."""
    wanted = spec.as_dict()
    return all(config.get(k) == wanted[k] for k in ("model", "impl", "seed", "recipe", "limit"))


def load_finished(out_root: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(out_root.glob(f"*/{METRICS}")):
        metrics = json.loads(path.read_text())
        if metrics.get("complete"):
            runs.append(metrics)
    return runs


def run_grid(specs: list[RunSpec], out_root: Path, skip_existing: bool) -> None:
    finished = load_finished(out_root) if skip_existing else []
    for n, spec in enumerate(specs, 1):
        label = f"[{n}/{len(specs)}] {run_name(spec)}"
        if any(same_settings(m["config"], spec) and m["device_type"] == torch.device(spec.device).type
               for m in finished):
            print(f"{label}: finished, reused", file=sys.stderr)
            continue
        print(f"{label}: training", file=sys.stderr)
        # With --skip-existing an interrupted run continues from its last checkpoint.
        run(spec, out_root / run_name(spec), resume=skip_existing)


def mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def run_record(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("model", "impl", "seed", "best_epoch", "test_accuracy", "test_loss", "test_loss_report_form",
            "seconds_per_epoch", "device", "device_type", "threads", "torch_version", "sizes",
            "per_class_accuracy", "confusion_matrix", "history")
    best_val_acc = m["history"][m["best_epoch"] - 1]["val_acc"]
    return {k: m[k] for k in keys} | {"epochs": m["epochs_done"], "best_val_acc": best_val_acc, "config": m["config"]}


def summarize(specs: list[RunSpec], out_root: Path, results: Path, command: str) -> dict[str, Any]:
    """Collect the finished runs matching the grid's settings into summary.json, summary.md and figures."""
    finished = load_finished(out_root)
    runs = [run_record(m) for m in finished if any(same_settings(m["config"], s) for s in specs)]
    if not runs:
        raise SystemExit(f"no finished runs matching these settings under {out_root}")
    runs.sort(key=lambda r: (list(RECIPES).index(r["model"]), r["impl"], r["device_type"], r["seed"]))
    runs_dir = out_root.resolve()
    if runs_dir.is_relative_to(data.REPO):  # keep the committed summary free of local paths
        runs_dir = runs_dir.relative_to(data.REPO)
    # Every finished run of a stronger model, whatever its settings: the candidates it was chosen from.
    strong = {s.model for s in specs if s.model not in TARGETS}
    candidates = [run_record(m) for m in finished if m["model"] in strong and m["config"]["limit"] == specs[0].limit]
    summary = {"command": command, "runs_dir": str(runs_dir), "limit": specs[0].limit,
               "report": {k: v | {"test_loss": v["test_loss_report_form"] / TEST_BATCHES} for k, v in REPORT.items()},
               "runs": runs, "candidates": candidates}
    (results / "figures").mkdir(parents=True, exist_ok=True)
    write_json(summary, results / "summary.json")
    figures = make_figures(runs, results / "figures")
    atomic_write(results / "summary.md", markdown(summary, figures).encode())
    return summary


def groups(runs: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    """Runs grouped by the values of `keys`, in the order the groups first appear."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def make_figures(runs: list[dict[str, Any]], folder: Path) -> dict[str, list[str]]:
    """Per model: its impls' curves overlaid (lowest seed, most common device) and one confusion matrix."""
    figures: dict[str, list[str]] = {}
    for (model,), model_runs in groups(runs, "model").items():
        device = Counter(r["device_type"] for r in model_runs).most_common(1)[0][0]
        chosen = [r for r in model_runs if r["device_type"] == device]
        seed = min(r["seed"] for r in chosen)
        chosen = {r["impl"]: r for r in chosen if r["seed"] == seed}
        curves, matrix = f"{model}-curves.png", f"{model}-confusion.png"
        plots.curves({IMPL_LABEL[i]: (r["history"], r["best_epoch"]) for i, r in sorted(chosen.items())},
                     folder / curves, f"{model}: seed {seed}, {device}")
        shown = chosen.get("recurrent") or next(iter(chosen.values()))
        plots.confusion(shown["confusion_matrix"], data.CLASSES, folder / matrix,
                        f"{model} ({IMPL_LABEL[shown['impl']]}), seed {seed}, epoch {shown['best_epoch']}")
        figures[model] = [f"figures/{curves}", f"figures/{matrix}"]
    return figures


TARGETS = {"rnn": 0.875, "gru": 0.895}  # the report's 0.88 and 0.90, as the issue sets them
STRONG_TARGET = 0.92
PARITY_POINTS = 0.3  # recurrent and torch.nn means within this many accuracy points


def targets(runs: list[dict[str, Any]]) -> list[str]:
    """The targets, each with the measured figure and whether it is met."""
    lines = ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    by = groups(runs, "model", "impl")
    for model, floor in TARGETS.items():
        ours, ref = by.get((model, "recurrent")), by.get((model, "torch"))
        if ours:
            mean = statistics.mean(r["test_accuracy"] for r in ours)
            lines.append(f"| {model}, recurrent: mean test accuracy ≥ {floor} | {mean:.4f} ({len(ours)} seeds) "
                         f"| {'yes' if mean >= floor else 'no'} |")
        if ours and ref:
            gap = 100 * abs(statistics.mean(r["test_accuracy"] for r in ours)
                            - statistics.mean(r["test_accuracy"] for r in ref))
            lines.append(f"| {model}: recurrent and torch.nn means within {PARITY_POINTS} points | {gap:.2f} points "
                         f"| {'yes' if gap <= PARITY_POINTS else 'no'} |")
    for (model, impl), rs in by.items():
        if model in TARGETS:
            continue
        best = max(rs, key=lambda r: r["best_val_acc"])  # chosen on validation, never on test
        lines.append(f"| {model} ({IMPL_LABEL[impl]}), stronger configuration: test accuracy ≥ {STRONG_TARGET} "
                     f"| {best['test_accuracy']:.4f} (seed {best['seed']}, validation {best['best_val_acc']:.4f}) "
                     f"| {'yes' if best['test_accuracy'] >= STRONG_TARGET else 'no'} |")
        recipe = ", ".join(f"{k}={v}" for k, v in best["config"]["recipe"].items())
        lines += ["", f"`{model}` recipe: {recipe}."]
    return lines


def candidate_table(candidates: list[dict[str, Any]]) -> list[str]:
    """The stronger configurations tried, with the settings in which they differ; chosen by validation."""
    if len(candidates) < 2:
        return []
    recipes = [c["config"]["recipe"] for c in candidates]
    differing = [k for k in recipes[0] if len({str(r[k]) for r in recipes}) > 1]
    lines = ["", "Stronger configurations tried (the one with the best validation accuracy is kept):", "",
             "| model | seed | " + " | ".join(differing) + " | best epoch | validation accuracy | test accuracy |",
             "| --- | ---: | " + " | ".join("---" for _ in differing) + " | ---: | ---: | ---: |"]
    for c, r in zip(candidates, recipes):
        lines.append(f"| {c['model']} | {c['seed']} | " + " | ".join(str(r[k]) for k in differing)
                     + f" | {c['best_epoch']} | {c['best_val_acc']:.4f} | {c['test_accuracy']:.4f} |")
    return lines


def markdown(summary: dict[str, Any], figures: dict[str, list[str]]) -> str:
    runs, report = summary["runs"], summary["report"]
    lines = [
        "# Fashion-MNIST: the report vs torch.nn vs recurrent", "",
        f"Generated by `{summary['command']}` from the finished runs in `{summary['runs_dir']}`"
        + (f" (smoke settings: --limit {summary['limit']})" if summary["limit"] else "") + ".",
        "Test accuracy is the fraction of the test images classified right; test loss is the mean "
        "cross-entropy per test image; the report-form loss is the report's sum over its 79 test batches of "
        "128 of each batch's mean loss. Each run keeps the epoch with the lowest validation loss and is "
        "tested with those weights. Mean ± sample standard deviation over seeds.", "",
        "| model | source | device | seeds | best epoch | test accuracy | test loss | test loss, report form |",
        "| --- | --- | --- | ---: | --- | --- | --- | --- |",
    ]
    for (model,), model_runs in groups(runs, "model").items():
        if model in report:
            r = report[model]
            lines.append(f"| {model} | report | – | 1 | {r['best_epoch']} | {r['test_accuracy']:.2f} | "
                         f"{r['test_loss']:.3f} | {r['test_loss_report_form']:.4f} |")
        for (impl, device), rs in groups(model_runs, "impl", "device_type").items():
            best_epochs = ", ".join(str(r["best_epoch"]) for r in rs)
            lines.append(
                f"| {model} | {IMPL_LABEL[impl]} | {device} | {len(rs)} | {best_epochs} "
                f"| {mean_std([r['test_accuracy'] for r in rs])} | {mean_std([r['test_loss'] for r in rs])} "
                f"| {mean_std([r['test_loss_report_form'] for r in rs], 2)} |")

    lines += targets(runs)
    lines += candidate_table(summary["candidates"])

    lines += ["", "## recurrent vs torch.nn, same seed and device, per epoch", "",
              "Largest absolute difference over the epochs between the two impls' curves (same initial weights, "
              "same batches, same dropout stream).", "",
              "| model | seed | device | train loss | val loss | val accuracy | test accuracy | best epochs |",
              "| --- | ---: | --- | --- | --- | --- | --- | --- |"]
    for (model, seed, device), rs in groups(runs, "model", "seed", "device_type").items():
        pair = {r["impl"]: r for r in rs}
        if set(pair) != set(IMPLS):
            continue
        ours, ref = pair["recurrent"], pair["torch"]
        diff = {k: max(abs(a[k] - b[k]) for a, b in zip(ours["history"], ref["history"]))
                for k in ("train_loss", "val_loss", "val_acc")}
        lines.append(f"| {model} | {seed} | {device} | {diff['train_loss']:.2e} | {diff['val_loss']:.2e} | "
                     f"{diff['val_acc']:.2e} | {abs(ours['test_accuracy'] - ref['test_accuracy']):.2e} | "
                     f"{ours['best_epoch']} vs {ref['best_epoch']} |")

    lines += ["", "## Seconds per epoch", "",
              "Mean over runs; training and validation, data in memory. These runs shared the machine with "
              "other work (the report's grid ran two runs at a time, one thread each; the bigru run shared "
              "its two threads with tests and profiling), so they are a guide, not a benchmark: "
              "`benchmarks/RESULTS.md` has controlled, interleaved timings.", "",
              "| model | impl | device | threads | torch | runs | seconds per epoch |",
              "| --- | --- | --- | ---: | --- | ---: | ---: |"]
    for (model, impl, device, threads, version), rs in groups(
            runs, "model", "impl", "device", "threads", "torch_version").items():
        lines.append(f"| {model} | {IMPL_LABEL[impl]} | {device} | {threads} | {version} | {len(rs)} | "
                     f"{statistics.mean(r['seconds_per_epoch'] for r in rs):.1f} |")

    lines += ["", "## Figures", ""]
    for model, (curves, matrix) in figures.items():
        lines += [f"### {model}", "", f"![{model} learning curves]({curves})", "",
                  f"![{model} confusion matrix]({matrix})", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__)
    p.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=["rnn", "gru"])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--seeds", nargs="+", type=non_negative, default=[0, 1, 2])
    p.add_argument("--strong", nargs="*", choices=sorted(RECIPES), default=["bigru"],
                   help="stronger configurations, run with impl recurrent only (none: --strong)")
    p.add_argument("--strong-seeds", nargs="+", type=non_negative, default=[0])
    p.add_argument("--out-root", type=Path, default=RUNS_DIR, help="run folders (default: %(default)s)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="summary folder (default: %(default)s)")
    p.add_argument("--skip-existing", action="store_true",
                   help="reuse finished runs with the same settings, resume interrupted ones")
    p.add_argument("--summarize-only", action="store_true",
                   help="train nothing; summarise the finished runs under --out-root (from any device)")
    add_common_args(p)
    args = p.parse_args(argv)
    check_device(p, args.device)

    specs = grid(args)
    if not args.summarize_only:
        try:
            run_grid(specs, args.out_root, args.skip_existing)
        except FileExistsError as e:
            print(f"error: {e} (for the grid: pass --skip-existing, or delete that folder)", file=sys.stderr)
            return 2
        except (data.DataError, ResumeError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    command = shlex.join(["python", "-m", "experiments.reproduce", *(sys.argv[1:] if argv is None else argv)])
    summarize(specs, args.out_root, args.results, command)
    print(f"wrote {args.results / 'summary.md'} and summary.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
