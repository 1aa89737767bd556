"""The grid's summary in experiments/results/: summary.json, summary.md and figures, from the finished runs.

The runs are those whose folders are under the runs folder, plus the runs of the previous summary.json
(the one being replaced) whose folders are not there: run folders are git-ignored and stay on the machine
that made them, while summary.json is committed and holds every number and curve the summary and its
figures are made from. So a summary rebuilt on another machine keeps the rows it had, and a run folder
present here replaces the old record of the same run (same model, impl, seed, device type and
settings). `fresh=True` (reproduce --fresh) leaves the previous records out.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from experiments import data, gates, plots
from experiments.files import atomic_write, write_json
from experiments.models import BASELINES, IMPLS, RECIPES
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
    # A torchrun job's global batch is world_size times the recipe's: another experiment. (Runs from
    # before world_size was recorded had one process.)
    return (
        all(config.get(k) == wanted[k] for k in ("model", "impl", "seed", "recipe", "limit"))
        and config.get("world_size", 1) == wanted["world_size"]
    )


def load_finished(out_root: Path) -> list[dict[str, Any]]:
    """The metrics of every complete run under `out_root`, in the order of their folder names, with
    the run's gate means (gates.json) under "gates" where it has them."""
    runs = []
    for path in sorted(out_root.glob(f"*/{METRICS}")):
        metrics = json.loads(path.read_text())
        if metrics.get("complete"):
            if (path.parent / gates.GATES_JSON).is_file():
                metrics["gates"] = json.loads((path.parent / gates.GATES_JSON).read_text())
            runs.append(metrics)
    return runs


def run_key(r: dict[str, Any]) -> str:
    """What makes two records the same run: model, impl, seed, device type and settings."""
    c = r["config"]
    return json.dumps([r["model"], r["impl"], r["seed"], r["device_type"], c["recipe"], c["limit"]], sort_keys=True)


def previous_records(results: Path) -> tuple[list[Run], list[Run]]:
    """The runs and candidates of the summary.json in `results` (none if there is none)."""
    path = results / "summary.json"
    if not path.is_file():
        return [], []
    previous = json.loads(path.read_text())
    return previous.get("runs", []), previous.get("candidates", [])


def carried_over(previous: list[Run], local: list[Run], wanted) -> list[Run]:
    """The previous records that `wanted` accepts and that no local run replaces, marked as carried over."""
    here = {run_key(r) for r in local}
    return [r | {"carried_over": True} for r in previous if run_key(r) not in here and wanted(r)]


def is_strong(model: str) -> bool:
    """A stronger configuration of ours (bigru), as opposed to a report model or one compared with it."""
    return model not in TARGETS and model not in BASELINES


def run_record(m: dict[str, Any]) -> Run:
    keys = (
        "model",
        "impl",
        "seed",
        "best_epoch",
        "test_accuracy",
        "test_loss",
        "test_loss_report_form",
        "seconds_per_epoch",
        "device",
        "device_type",
        "threads",
        "torch_version",
        "sizes",
        "per_class_accuracy",
        "confusion_matrix",
        "history",
    )
    best_val_acc = m["history"][m["best_epoch"] - 1]["val_acc"]
    record = {k: m[k] for k in keys} | {
        "epochs": m["epochs_done"],
        "best_val_acc": best_val_acc,
        "config": m["config"],
        "carried_over": False,
    }
    if "gates" in m:
        record["gates"] = m["gates"]
    return record


def summarize(specs: list[RunSpec], out_root: Path, results: Path, command: str, fresh: bool = False) -> dict[str, Any]:
    """Collect the finished runs matching the grid's settings into summary.json, summary.md and figures:
    those under `out_root`, and unless `fresh` those of the previous summary.json in `results` whose
    folders are not under `out_root` (see the module's docstring)."""
    finished = [run_record(m) for m in load_finished(out_root)]
    old_runs, old_candidates = ([], []) if fresh else previous_records(results)

    def in_grid(r: Run) -> bool:
        return any(same_settings(r["config"], s) for s in specs)

    # Every finished run of a stronger model, whatever its settings: the candidates it was chosen from.
    strong = {s.model for s in specs if is_strong(s.model)}

    def candidate(r: Run) -> bool:
        return r["model"] in strong and r["config"]["limit"] == specs[0].limit

    runs = [r for r in finished if in_grid(r)] + carried_over(old_runs, finished, in_grid)
    if not runs:
        raise SystemExit(f"no finished runs matching these settings under {out_root}")
    runs.sort(key=lambda r: (list(RECIPES).index(r["model"]), r["impl"], r["device_type"], r["seed"]))
    candidates = [r for r in finished if candidate(r)] + carried_over(old_candidates, finished, candidate)
    runs_dir = out_root.resolve()
    if runs_dir.is_relative_to(data.REPO):  # keep the committed summary free of local paths
        runs_dir = runs_dir.relative_to(data.REPO)
    report = {k: v | {"test_loss": v["test_loss_report_form"] / REPORT_TEST_BATCHES} for k, v in REPORT.items()}
    summary = {
        "command": command,
        "runs_dir": str(runs_dir),
        "limit": specs[0].limit,
        "report": report,
        "runs": runs,
        "candidates": candidates,
    }
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


Figure = tuple[str, str, str]  # (alt text, path relative to the summary, caption or "")


def make_figures(runs: list[Run], folder: Path) -> dict[str, list[Figure]]:
    """Per model: its impls' curves overlaid (lowest seed, most common device; a model compared with a
    report model also shows that model's recurrent run of the same seed and device), one confusion
    matrix, and the update-gate heatmap where the run shown has its gate means."""
    figures: dict[str, list[Figure]] = {}
    for (model,), model_runs in groups(runs, "model").items():
        device = Counter(r["device_type"] for r in model_runs).most_common(1)[0][0]
        chosen = [r for r in model_runs if r["device_type"] == device]
        seed = min(r["seed"] for r in chosen)
        chosen = {r["impl"]: r for r in chosen if r["seed"] == seed}
        figures[model] = [curves_figure(model, chosen, runs, seed, device, folder)]
        shown = chosen.get("recurrent") or next(iter(chosen.values()))
        matrix = f"{model}-confusion.png"
        plots.confusion(
            shown["confusion_matrix"],
            data.CLASSES,
            folder / matrix,
            f"{model} ({IMPL_LABEL[shown['impl']]}), seed {seed}, epoch {shown['best_epoch']}",
        )
        figures[model].append((f"{model} confusion matrix", f"figures/{matrix}", ""))
        if "gates" in shown:
            figures[model].append(gates_figure(model, shown, seed, folder))
    return figures


def curves_figure(model: str, chosen: dict[str, Run], runs: list[Run], seed: int, device: str, folder: Path) -> Figure:
    """The impls' learning curves overlaid, and beside them the report model's where ``model`` has one."""
    curves = f"{model}-curves.png"
    lines = {IMPL_LABEL[i]: (r["history"], r["best_epoch"]) for i, r in sorted(chosen.items())}
    baseline = next(
        (
            r
            for r in runs
            if r["model"] == BASELINES.get(model)
            and r["impl"] == "recurrent"
            and r["seed"] == seed
            and r["device_type"] == device
        ),
        None,
    )
    heading = f"{model}: seed {seed}, {device}"
    if baseline is not None:
        lines = {f"{model} ({label})": curve for label, curve in lines.items()}
        lines[f"{baseline['model']} (recurrent)"] = (baseline["history"], baseline["best_epoch"])
        heading = f"{model} beside {baseline['model']} (same recipe and initial weights): seed {seed}, {device}"
    plots.curves(lines, folder / curves, heading)
    return (f"{model} learning curves", f"figures/{curves}", "")


def gates_figure(model: str, shown: Run, seed: int, folder: Path) -> Figure:
    """The mean update gate per class and image row of the run shown."""
    g = shown["gates"]
    heatmap = f"{model}-gates.png"
    plots.gates(
        g["means"],
        g["classes"],
        folder / heatmap,
        f"{model} ({IMPL_LABEL[shown['impl']]}), seed {seed}, epoch {g['epoch']}: "
        f"mean update gate {g['gate']} per class and image row, test set",
        gate=g["gate"],
    )
    return (f"{model} mean update gate per class and image row", f"figures/{heatmap}", gate_caption(model, g))


def markdown(summary: dict[str, Any], figures: dict[str, list[Figure]]) -> str:
    runs = summary["runs"]
    lines = (
        results_table(summary)
        + targets(runs)
        + candidate_table(summary["candidates"])
        + baseline_tables(runs)
        + parity_table(runs)
        + timing_table(runs)
        + figure_section(figures)
    )
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
        "# Fashion-MNIST: the report vs torch.nn vs recurrent",
        "",
        f"Generated by `{summary['command']}` from the finished runs in `{summary['runs_dir']}`"
        + (f" (smoke settings: --limit {summary['limit']})" if summary["limit"] else "")
        + ".",
        "Test accuracy is the fraction of the test images classified right; test loss is the mean "
        f"cross-entropy per test image; the report-form loss is the report's sum over its {REPORT_TEST_BATCHES} "
        f"test batches of {REPORT_BATCH} of each batch's mean loss. Each run keeps the epoch with the lowest "
        "validation loss and is tested with those weights. Mean ± sample standard deviation over seeds."
        + carried_note(summary),
        "",
        "| model | source | device | seeds | best epoch | test accuracy | test loss | test loss, report form |",
        "| --- | --- | --- | ---: | --- | --- | --- | --- |",
    ]
    for (model,), model_runs in groups(summary["runs"], "model").items():
        if model in summary["report"]:
            r = summary["report"][model]
            lines.append(
                f"| {model} | report | – | 1 | {r['best_epoch']} | {r['test_accuracy']:.2f} | "
                f"{r['test_loss']:.3f} | {r['test_loss_report_form']:.4f} |"
            )
        for (impl, device), rs in groups(model_runs, "impl", "device_type").items():
            best_epochs = ", ".join(str(r["best_epoch"]) for r in rs)
            lines.append(
                f"| {model} | {IMPL_LABEL[impl]} | {device} | {len(rs)} | {best_epochs} "
                f"| {mean_std([r['test_accuracy'] for r in rs])} | {mean_std([r['test_loss'] for r in rs])} "
                f"| {mean_std([r['test_loss_report_form'] for r in rs], 2)} |"
            )
    return lines


def carried_note(summary: dict[str, Any]) -> str:
    """Which records come from the previous summary.json rather than from run folders on this machine."""
    runs = [r for r in summary["runs"] if r.get("carried_over")]
    candidates = [r for r in summary["candidates"] if r.get("carried_over")]
    if not runs and not candidates:
        return ""
    names = ", ".join(sorted({f"{r['model']}/{IMPL_LABEL[r['impl']]}" for r in runs}))
    kept = " and ".join(
        part
        for part in (
            f"{len(runs)} of the {len(summary['runs'])} runs ({names})" if runs else "",
            f"{len(candidates)} of the {len(summary['candidates'])} stronger configurations tried"
            if candidates
            else "",
        )
        if part
    )
    return (
        f" {kept} come from the previous summary.json: their run folders are on the machine that made "
        "them, not on this one."
    )


def targets(runs: list[Run]) -> list[str]:
    """The targets, each with the measured figure and whether it is met."""
    lines = ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    by = groups(runs, "model", "impl")
    for model, floor in TARGETS.items():
        ours, ref = by.get((model, "recurrent")), by.get((model, "torch"))
        if ours:
            mean = statistics.mean(r["test_accuracy"] for r in ours)
            lines.append(
                f"| {model}, recurrent: mean test accuracy ≥ {floor} | {mean:.4f} ({len(ours)} seeds) "
                f"| {'yes' if mean >= floor else 'no'} |"
            )
        if ours and ref:
            gap = 100 * abs(
                statistics.mean(r["test_accuracy"] for r in ours) - statistics.mean(r["test_accuracy"] for r in ref)
            )
            lines.append(
                f"| {model}: recurrent and torch.nn means within {PARITY_POINTS} points | {gap:.2f} points "
                f"| {'yes' if gap <= PARITY_POINTS else 'no'} |"
            )
    for (model, impl), rs in by.items():
        if not is_strong(model):
            continue
        best = max(rs, key=lambda r: r["best_val_acc"])  # chosen on validation, never on test
        lines.append(
            f"| {model} ({IMPL_LABEL[impl]}), stronger configuration: test accuracy ≥ {STRONG_TARGET} "
            f"| {best['test_accuracy']:.4f} (seed {best['seed']}, validation {best['best_val_acc']:.4f}) "
            f"| {'yes' if best['test_accuracy'] >= STRONG_TARGET else 'no'} |"
        )
        recipe = ", ".join(f"{k}={v}" for k, v in best["config"]["recipe"].items())
        lines += ["", f"`{model}` recipe: {recipe}."]
    return lines


def candidate_table(candidates: list[Run]) -> list[str]:
    """The stronger configurations tried, with the settings in which they differ; chosen by validation."""
    if len(candidates) < 2:
        return []
    recipes = [c["config"]["recipe"] for c in candidates]
    differing = [k for k in recipes[0] if len({str(r[k]) for r in recipes}) > 1]
    lines = [
        "",
        "Stronger configurations tried (the one with the best validation accuracy is kept):",
        "",
        "| model | seed | " + " | ".join(differing) + " | best epoch | validation accuracy | test accuracy |",
        "| --- | ---: | " + " | ".join("---" for _ in differing) + " | ---: | ---: | ---: |",
    ]
    for c, r in zip(candidates, recipes):
        lines.append(
            f"| {c['model']} | {c['seed']} | "
            + " | ".join(str(r[k]) for k in differing)
            + f" | {c['best_epoch']} | {c['best_val_acc']:.4f} | {c['test_accuracy']:.4f} |"
        )
    return lines


def baseline_tables(runs: list[Run]) -> list[str]:
    """A model trained with a report model's recipe (lngru: gru's) beside that model's recurrent runs,
    seed by seed (same initial weights where build_model says so, same batches and dropout stream)."""
    lines: list[str] = []
    for model, base in BASELINES.items():
        ours = [r for r in runs if r["model"] == model]
        if not ours:
            continue
        bases = {(r["seed"], r["device_type"]): r for r in runs if r["model"] == base and r["impl"] == "recurrent"}
        pairs = [(r, bases.get((r["seed"], r["device_type"]))) for r in ours]
        lines += [
            "",
            f"## {model} vs {base}: {base}'s recipe and budget, only the recurrent layer differs",
            "",
            f"`{model}` is `{base}` with `recurrent.variants.LayerNormGRU` in place of its GRU (layer norm "
            "on the input and hidden projections); same recipe, and seed for seed the same initial weights "
            "(its layer norms start as the identity), batches and dropout stream. Test accuracy with each "
            "run's best-validation epoch; differences in accuracy points.",
            "",
            f"| seed | device | {base} test accuracy | {model} test accuracy | difference (points) "
            f"| {base} best epoch | {model} best epoch | {base} s/epoch | {model} s/epoch |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r, b in pairs:
            if b is None:
                lines.append(
                    f"| {r['seed']} | {r['device_type']} | – | {r['test_accuracy']:.4f} | – | – "
                    f"| {r['best_epoch']} | – | {r['seconds_per_epoch']:.1f} |"
                )
            else:
                lines.append(
                    f"| {r['seed']} | {r['device_type']} | {b['test_accuracy']:.4f} | "
                    f"{r['test_accuracy']:.4f} | {100 * (r['test_accuracy'] - b['test_accuracy']):+.2f} "
                    f"| {b['best_epoch']} | {r['best_epoch']} | {b['seconds_per_epoch']:.1f} "
                    f"| {r['seconds_per_epoch']:.1f} |"
                )
        matched = [(r, b) for r, b in pairs if b is not None]
        if len(matched) > 1:
            diffs = [100 * (r["test_accuracy"] - b["test_accuracy"]) for r, b in matched]
            lines.append(
                f"| mean | | {mean_std([b['test_accuracy'] for _, b in matched])} | "
                f"{mean_std([r['test_accuracy'] for r, _ in matched])} | {mean_std(diffs, 2)} | | | | |"
            )
        lines += [
            "",
            "Seconds per epoch are those of the runs' own machines and loads (see the timing table): a guide only.",
        ]
    return lines


def parity_table(runs: list[Run]) -> list[str]:
    """For each seed and device that ran both impls: how far apart their curves came."""
    lines = [
        "",
        "## recurrent vs torch.nn, same seed and device, per epoch",
        "",
        "Largest absolute difference over the epochs between the two impls' curves (same initial weights, "
        "same batches, same dropout stream).",
        "",
        "| model | seed | device | train loss | val loss | val accuracy | test accuracy | best epochs |",
        "| --- | ---: | --- | --- | --- | --- | --- | --- |",
    ]
    for (model, seed, device), rs in groups(runs, "model", "seed", "device_type").items():
        pair = {r["impl"]: r for r in rs}
        if set(pair) != set(IMPLS):
            continue
        ours, ref = pair["recurrent"], pair["torch"]
        diff = {
            k: max(abs(a[k] - b[k]) for a, b in zip(ours["history"], ref["history"]))
            for k in ("train_loss", "val_loss", "val_acc")
        }
        lines.append(
            f"| {model} | {seed} | {device} | {diff['train_loss']:.2e} | {diff['val_loss']:.2e} | "
            f"{diff['val_acc']:.2e} | {abs(ours['test_accuracy'] - ref['test_accuracy']):.2e} | "
            f"{ours['best_epoch']} vs {ref['best_epoch']} |"
        )
    return lines


def timing_table(runs: list[Run]) -> list[str]:
    lines = [
        "",
        "## Seconds per epoch",
        "",
        "Mean over runs; training and validation, data in memory. These runs shared the machine with "
        "other work (the report's grid ran two runs at a time, one thread each; the bigru run shared "
        "its two threads with tests and profiling; the runs on the Intel Xeon machine, gru seed 0 again "
        "and lngru, shared its two cores with several other engineers' test runs, a load average of 8 to "
        "10), so they are a guide, not a benchmark: `benchmarks/RESULTS.md` has controlled, interleaved "
        "timings.",
        "",
        "| model | impl | device | threads | torch | runs | seconds per epoch |",
        "| --- | --- | --- | ---: | --- | ---: | ---: |",
    ]
    for (model, impl, device, threads, version), rs in groups(
        runs, "model", "impl", "device", "threads", "torch_version"
    ).items():
        lines.append(
            f"| {model} | {IMPL_LABEL[impl]} | {device} | {threads} | {version} | {len(rs)} | "
            f"{statistics.mean(r['seconds_per_epoch'] for r in rs):.1f} |"
        )
    return lines


def figure_section(figures: dict[str, list[Figure]]) -> list[str]:
    lines = ["", "## Figures", ""]
    for model, shown in figures.items():
        lines += [f"### {model}", ""]
        for alt, path, caption in shown:
            lines += [f"![{alt}]({path})", ""] + ([caption, ""] if caption else [])
    return lines


def gate_caption(model: str, g: dict[str, Any]) -> str:
    """What the gate heatmap shows, from the run's gates.json record `g`."""
    return (
        f"The update gate z of the {model} run above (recurrent, seed {g['seed']}, best epoch {g['epoch']}), "
        f"recorded with `recurrent.record_gates` over the {sum(g['images_per_class'])} test images: per "
        "layer, its mean over the hidden units and the images of each class, at each image row (time "
        "step). In h_t = (1 − z) ⊙ n + z ⊙ h_(t−1), z near 1 keeps the state and z near 0 rewrites it from "
        f"the row. `python -m experiments.gates --run <run folder>` makes it from a run's best.pt."
    )
