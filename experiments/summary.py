"""The grid's summary in experiments/results/: summary.json, summary.md and figures, from the finished runs."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from experiments import data, plots
from experiments.files import atomic_write, write_json
from experiments.models import IMPLS, RECIPES
from experiments.train import METRICS, REPORT_BATCH, RunSpec

RESULTS_DIR = data.REPO / "experiments" / "results"
REPORT_TEST_IMAGES = 10_000  # the report tested on Fashion-MNIST's whole test set
REPORT_TEST_BATCHES = math.ceil(REPORT_TEST_IMAGES / REPORT_BATCH)  # its test loader kept the short last batch
# What the report printed (accuracy as a fraction; loss as the sum of its per-batch means over the test batches).
REPORT = {
    "rnn": {"best_epoch": 4, "test_accuracy": 0.88, "test_loss_report_form": 27.2451},
    "gru": {"best_epoch": 9, "test_accuracy": 0.90, "test_loss_report_form": 21.8582},
}
# The report's accuracies are rounded to two digits: a target is the lowest value that rounds to it.
TARGETS = {"rnn": 0.875, "gru": 0.895}
STRONG_TARGET = 0.92
PARITY_POINTS = 0.3  # recurrent and torch.nn means within this many accuracy points
IMPL_LABEL = {"torch": "torch.nn", "recurrent": "recurrent"}

Run = dict[str, Any]  # one run's record in summary.json


def same_settings(config: dict[str, Any], spec: RunSpec) -> bool:
    """Whether a finished run's numbers belong to this grid cell (on any device, with any threads)."""
    wanted = spec.as_dict()
    return all(config.get(k) == wanted[k] for k in ("model", "impl", "seed", "recipe", "limit"))


def load_finished(out_root: Path) -> list[dict[str, Any]]:
    """The metrics of every complete run under `out_root`, in the order of their folder names."""
    runs = []
    for path in sorted(out_root.glob(f"*/{METRICS}")):
        metrics = json.loads(path.read_text())
        if metrics.get("complete"):
            runs.append(metrics)
    return runs


def run_record(m: dict[str, Any]) -> Run:
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
    report = {k: v | {"test_loss": v["test_loss_report_form"] / REPORT_TEST_BATCHES} for k, v in REPORT.items()}
    summary = {"command": command, "runs_dir": str(runs_dir), "limit": specs[0].limit, "report": report,
               "runs": runs, "candidates": candidates}
    (results / "figures").mkdir(parents=True, exist_ok=True)
    write_json(summary, results / "summary.json")
    figures = make_figures(runs, results / "figures")
    atomic_write(results / "summary.md", markdown(summary, figures).encode())
    return summary


def groups(runs: list[Run], *keys: str) -> dict[tuple, list[Run]]:
    """Runs grouped by the values of `keys`, in the order the groups first appear."""
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def make_figures(runs: list[Run], folder: Path) -> dict[str, list[str]]:
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


def markdown(summary: dict[str, Any], figures: dict[str, list[str]]) -> str:
    runs = summary["runs"]
    lines = (results_table(summary) + targets(runs) + candidate_table(summary["candidates"])
             + parity_table(runs) + timing_table(runs) + figure_section(figures))
    return "\n".join(lines)


def mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def results_table(summary: dict[str, Any]) -> list[str]:
    """The title, how the numbers were made, and per model the report's row beside each impl's."""
    lines = [
        "# Fashion-MNIST: the report vs torch.nn vs recurrent", "",
        f"Generated by `{summary['command']}` from the finished runs in `{summary['runs_dir']}`"
        + (f" (smoke settings: --limit {summary['limit']})" if summary["limit"] else "") + ".",
        "Test accuracy is the fraction of the test images classified right; test loss is the mean "
        f"cross-entropy per test image; the report-form loss is the report's sum over its {REPORT_TEST_BATCHES} "
        f"test batches of {REPORT_BATCH} of each batch's mean loss. Each run keeps the epoch with the lowest "
        "validation loss and is tested with those weights. Mean ± sample standard deviation over seeds.", "",
        "| model | source | device | seeds | best epoch | test accuracy | test loss | test loss, report form |",
        "| --- | --- | --- | ---: | --- | --- | --- | --- |",
    ]
    for (model,), model_runs in groups(summary["runs"], "model").items():
        if model in summary["report"]:
            r = summary["report"][model]
            lines.append(f"| {model} | report | – | 1 | {r['best_epoch']} | {r['test_accuracy']:.2f} | "
                         f"{r['test_loss']:.3f} | {r['test_loss_report_form']:.4f} |")
        for (impl, device), rs in groups(model_runs, "impl", "device_type").items():
            best_epochs = ", ".join(str(r["best_epoch"]) for r in rs)
            lines.append(
                f"| {model} | {IMPL_LABEL[impl]} | {device} | {len(rs)} | {best_epochs} "
                f"| {mean_std([r['test_accuracy'] for r in rs])} | {mean_std([r['test_loss'] for r in rs])} "
                f"| {mean_std([r['test_loss_report_form'] for r in rs], 2)} |")
    return lines


def targets(runs: list[Run]) -> list[str]:
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


def candidate_table(candidates: list[Run]) -> list[str]:
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


def parity_table(runs: list[Run]) -> list[str]:
    """For each seed and device that ran both impls: how far apart their curves came."""
    lines = ["", "## recurrent vs torch.nn, same seed and device, per epoch", "",
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
    return lines


def timing_table(runs: list[Run]) -> list[str]:
    lines = ["", "## Seconds per epoch", "",
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
    return lines


def figure_section(figures: dict[str, list[str]]) -> list[str]:
    lines = ["", "## Figures", ""]
    for model, (curves, matrix) in figures.items():
        lines += [f"### {model}", "", f"![{model} learning curves]({curves})", "",
                  f"![{model} confusion matrix]({matrix})", ""]
    return lines
