"""Render benchmark JSON files (from benchmarks/speed.py and export_speed.py) into benchmarks/RESULTS.md.

    python benchmarks/report.py [JSON ...] [--output PATH] [--notes PATH]

Without JSON arguments it takes every benchmarks/results/speed-*.json and export-*.json except --quick runs.
The hand-written analysis lives in benchmarks/NOTES.md and is included verbatim at the end, so
regenerating the file never overwrites it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REFERENCE = "torch.nn"
FMNIST = ["fmnist-gru2", "fmnist-birnn"]
FMNIST_CUDA = ["fmnist-gru2", "fmnist-birnn", "fmnist-lstm2"]

SMALL_CALLS = [f"step-{kind}-N{n}" for kind in ("rnn", "gru", "lstm") for n in (1, 20)]
SMALL_CALLS += ["cell-rnn", "cell-gru", "cell-lstm"]

# (device, target, shapes (None: every non-tiny shape), modes, contender, versus, metric, limit):
# met when metric(contender) / metric(versus) <= limit for every listed (shape, mode) measured. A device
# "cpu-t1" holds for runs at 1 thread only. A run lists the targets it measured something of.
TARGETS: list[tuple[str, str, Optional[list[str]], list[str], str, str, str, float]] = [
    (
        "cpu",
        "GRU 2-layer, Fashion-MNIST, fwd+bwd ≤ 0.8× torch.nn",
        ["fmnist-gru2"],
        ["fwd+bwd"],
        "recurrent",
        REFERENCE,
        "median_ms",
        0.8,
    ),
    (
        "cpu",
        "bidirectional RNN, Fashion-MNIST, fwd+bwd ≤ 0.8× torch.nn",
        ["fmnist-birnn"],
        ["fwd+bwd"],
        "recurrent",
        REFERENCE,
        "median_ms",
        0.8,
    ),
    (
        "cpu",
        "GRU 2-layer, Fashion-MNIST, inference ≤ 1.0× torch.nn",
        ["fmnist-gru2"],
        ["inference"],
        "recurrent",
        REFERENCE,
        "median_ms",
        1.0,
    ),
    (
        "cpu",
        "bidirectional RNN, Fashion-MNIST, inference ≤ 1.0× torch.nn",
        ["fmnist-birnn"],
        ["inference"],
        "recurrent",
        REFERENCE,
        "median_ms",
        1.0,
    ),
    (
        "cpu",
        "GRU N=64 L=100 H=256, fwd+bwd ≤ 1.0× torch.nn",
        ["gru-L100-H256"],
        ["fwd+bwd"],
        "recurrent",
        REFERENCE,
        "median_ms",
        1.0,
    ),
    (
        "cpu",
        "LSTM, Fashion-MNIST and N=64 L=100 H=256, inference and fwd+bwd ≤ 1.0× torch.nn (oneDNN's fused layer)",
        ["fmnist-lstm2", "lstm-L100-H256"],
        ["inference", "fwd+bwd"],
        "recurrent",
        REFERENCE,
        "median_ms",
        1.0,
    ),
    (
        "cpu",
        "recurrent ≥ 2× faster than eager cells (time ratio ≤ 0.5), every shape and mode",
        None,
        ["inference", "fwd+bwd"],
        "recurrent",
        "eager cells",
        "median_ms",
        0.5,
    ),
    (
        "cpu",
        "peak memory fwd+bwd ≤ 1.2× torch.nn, every shape",
        None,
        ["fwd+bwd"],
        "recurrent",
        REFERENCE,
        "peak_mb",
        1.2,
    ),
    (
        "cpu",
        "one-step calls of RNN/GRU/LSTM(200, 200, 2 layers) at batch 1 and 20, and the cells at batch 32, "
        "inference and fwd+bwd ≤ 1.0× torch.nn",
        SMALL_CALLS,
        ["inference", "fwd+bwd"],
        "recurrent",
        REFERENCE,
        "median_ms",
        1.0,
    ),
    (
        "cpu-t1",
        "the word language model's LSTM (L=35, N=20, H=200, 2 layers), fwd+bwd at 1 thread ≤ 0.9× torch.nn",
        ["wordlm-lstm2"],
        ["fwd+bwd"],
        "recurrent",
        REFERENCE,
        "median_ms",
        0.9,
    ),
    (
        "cuda",
        "Fashion-MNIST shapes and GRU N=64 L=100 H=256, fwd+bwd ≤ 0.5× cuDNN",
        FMNIST_CUDA + ["gru-L100-H256"],
        ["fwd+bwd"],
        "recurrent",
        REFERENCE,
        "median_ms",
        0.5,
    ),
    (
        "cuda",
        "GRU N=64 L=256 H=512, fwd+bwd ≤ 1.0× cuDNN",
        ["gru-L256-H512"],
        ["fwd+bwd"],
        "recurrent",
        REFERENCE,
        "median_ms",
        1.0,
    ),
    (
        "cuda",
        "custom cell (torch.nn's GRU step) on generated Triton kernels, fwd+bwd ≤ 1.1× the built-in Triton GRU",
        ["fmnist-gru2", "gru-L100-H256"],
        ["fwd+bwd"],
        "custom cell (Triton)",
        "recurrent (Triton)",
        "median_ms",
        1.1,
    ),
    (
        "cuda",
        "Fashion-MNIST shapes, inference ≤ 0.5× cuDNN",
        FMNIST_CUDA,
        ["inference"],
        "recurrent",
        REFERENCE,
        "median_ms",
        0.5,
    ),
]


def num(v: Optional[float], fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def index(doc: dict) -> dict[tuple[str, str, str], dict]:
    return {(r["shape"], r["mode"], r["contender"]): r for r in doc["results"]}


def target_lines(doc: dict) -> list[str]:
    rows = index(doc)
    # Tiny shapes only exercise the code paths; the targets are about the real ones.
    measured = [s["name"] for s in doc["shapes"] if s["group"] != "tiny"]
    lines = []
    for device, text, shapes, modes, who, versus, metric, limit in TARGETS:
        device, _, threads = device.partition("-t")
        if device != doc["meta"]["device"] or threads and int(threads) != doc["meta"]["threads"]:
            continue
        ratios = []  # (ratio, shape, mode)
        for shape in shapes or measured:
            for mode in modes:
                a, b = rows.get((shape, mode, who), {}), rows.get((shape, mode, versus), {})
                if a.get(metric) and b.get(metric):
                    ratios.append((a[metric] / b[metric], shape, mode))
        missing = shapes is not None and {s for _, s, _ in ratios} != set(shapes)
        if not ratios and set(shapes or []) & set(measured):
            lines.append(f"- [ ] {text}: not measured")
        if not ratios:
            continue
        worst, shape, mode = max(ratios)
        mark = "x" if worst <= limit and not missing else " "
        note = " (some shapes not measured)" if missing else ""
        lines.append(f"- [{mark}] {text}: worst {worst:.2f}× ({shape}, {mode}){note}")
    return lines


def results_table(doc: dict) -> list[str]:
    lines = [
        "| shape | mode | contender | median ms | IQR ms | min ms | × torch.nn | peak MB | × torch.nn |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        cells = [r["shape"], r["mode"], r["contender"]]
        if r["status"] != "ok":
            cells += [r["status"]] + [""] * 5
        else:
            cells += [num(r["median_ms"]), num(r["iqr_ms"]), num(r["min_ms"])]
            cells += [num(r["ratio"], ".2f"), num(r["peak_mb"], ".2f"), num(r["mem_ratio"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def lengths_note(doc: dict) -> list[str]:
    """The spread of sequence lengths of the packed ('-var') shapes; older JSON has no lengths."""
    lines = [
        f"- `{s['name']}`: {len(lens)} sequences padded to L={s['seq_len']}, lengths "
        f"{min(lens)}–{max(lens)} (mean {sum(lens) / len(lens):.1f})"
        for s in doc["shapes"]
        if (lens := s.get("lengths"))
    ]
    if not lines:
        return []
    return ["Packed shapes (lengths uniform in [L/2, L], `enforce_sorted=False`):", "", *lines, ""]


def small_calls(threads: int) -> str:
    return f", small calls, {threads} thread{'' if threads == 1 else 's'}"


def section(path: Path, doc: dict, out_dir: Path) -> list[str]:
    m = doc["meta"]
    chart = Path(os.path.relpath(path.parent / m["chart"], out_dir)).as_posix()
    cuda = f", CUDA {m['cuda']}, cuDNN TF32 {'on' if m['cudnn_tf32'] else 'off'}" if m["cuda"] else ""
    cuda += f", triton {m['triton']}" if m["cuda"] and m.get("triton") else ""
    bad = [
        f"{shape}/{name} ({c['max_abs_diff']:.1e})"
        for shape, by_name in doc["checks"].items()
        for name, c in by_name.items()
        if not c["ok"]
    ]
    return [
        f"## {m['device'].upper()}: {m['machine']}"
        + (" (quick run)" if m["quick"] else "")
        + (small_calls(m["threads"]) if all(s["group"] == "small" for s in doc["shapes"]) else ""),
        "",
        f"- torch {m['torch']}{cuda}",
        f"- threads: {m['threads']}; date: {m['date']}; commit: {m['git_commit'] or 'unknown'}",
        *([f"- note: {m['note']}"] if m.get("note") else []),
        f"- command: `{m['command']}` (source: `{path.name}`)",
        f"- timing: {m['reps']} repetitions; {m['timing_method']}",
        f"- memory: {m['memory_method']}",
        f"- outputs checked against torch.nn before timing (max |diff| ≤ {m['tolerance']:g}): "
        + (f"MISMATCH {', '.join(bad)}" if bad else "all match"),
        "",
        "### Targets",
        "",
        *target_lines(doc),
        "",
        "### Timings",
        "",
        *results_table(doc),
        "",
        *lengths_note(doc),
        f"![speed ratios to torch.nn]({chart})",
        "",
    ]


EXPORT_TARGET = 1.5  # our ONNX models' time, at most this many times torch.nn's native-op models'


def export_targets(doc: dict) -> list[str]:
    lines = []
    for contender in ("recurrent (Scan)", "recurrent (native ops)"):
        rows = [r for r in doc["rows"] if r["contender"] == contender]
        if rows:
            worst = max(rows, key=lambda r: r["ratio"])
            mark = "x" if worst["ratio"] <= EXPORT_TARGET else " "
            lines.append(
                f"- [{mark}] {contender} in onnxruntime ≤ {EXPORT_TARGET}× torch.nn's native-op model, every shape: "
                f"worst {worst['ratio']:.2f}× ({worst['shape']})"
            )
    return lines


def export_section(path: Path, doc: dict) -> list[str]:
    """The tables of benchmarks/export_speed.py: exported models' inference, ratios to torch.nn's."""
    m = doc["meta"]
    bad = [f"{r['shape']}/{r['contender']} ({r['max_abs_diff']:.1e})" for r in doc["rows"] if not r["ok"]]
    lines = [
        f"## Exported models, CPU inference: {m['machine']}" + (" (quick run)" if "--quick" in m["command"] else ""),
        "",
        f"- torch {m['torch']}, onnxruntime {m['onnxruntime']}; threads: {m['threads']}; date: {m['date']}",
        f"- command: `{m['command']}` (source: `{path.name}`)",
        f"- timing: {m['reps']} repetitions after warm-up; the onnxruntime contenders interleaved round-robin, "
        "then the torch ones (one runtime's spinning threads slow the other's next call); median; ratios to "
        "the first of each runtime's group",
        f"- outputs checked against torch.nn's eager layer (max |diff| ≤ {m['tolerance']:g}): "
        + (f"MISMATCH {', '.join(bad)}" if bad else "all match"),
        "",
        *export_targets(doc),
        "",
        "| shape | runtime | contender | median ms | min ms | × reference | reference |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['shape']} | {r['runtime']} | {r['contender']} | {r['median_ms']:.3f} | {r['min_ms']:.3f} "
            f"| {r['ratio']:.2f} | {r['reference']} |"
        )
    return lines + [""]


def render(paths: list[Path], out: Path, notes: Path) -> str:
    parts = [
        "# Speed results",
        "",
        "Generated by `benchmarks/report.py` from `benchmarks/speed.py`, `benchmarks/export_speed.py` and "
        "`benchmarks/compile.py` output; do not edit by hand "
        "(the analysis below comes from `benchmarks/NOTES.md`). Ratios are to torch.nn "
        "(cuDNN on GPU); below 1 is faster / smaller.",
        "",
    ]
    for path in paths:
        if path.stem.startswith("compile-"):
            parts += compile_section(path)
            continue
        doc = json.loads(path.read_text())
        parts += export_section(path, doc) if path.stem.startswith("export-") else section(path, doc, out.parent)
    if notes.exists():
        parts.append(notes.read_text().strip())
    else:
        parts += ["## What limits it", "", f"_To be written in `{notes.name}`._"]
    return "\n".join(parts) + "\n"


def compile_section(path: Path) -> list[str]:
    """torch.compile's costs: the table benchmarks/compile.py wrote beside its JSON."""
    table = path.with_suffix(".md").read_text().strip()
    return ["## torch.compile (CPU)", "", f"From `{path.relative_to(HERE.parent)}`: {table}", ""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="*", type=Path, help="default: benchmarks/results/{speed,export,compile}-*.json")
    p.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--notes", type=Path, default=HERE / "NOTES.md")
    args = p.parse_args()
    # Per kind, the full runs (speed-cpu, speed-cuda) before the small-call runs (speed-cpu-small-t1, ...).
    found = [
        q
        for kind in ("speed", "export", "compile")
        for q in sorted((HERE / "results").glob(f"{kind}-*.json"), key=lambda q: ("-small" in q.stem, q.stem))
    ]
    paths = args.json or [q for q in found if not q.stem.endswith("-quick")]
    if not paths:
        print("no benchmark JSON found; run benchmarks/speed.py first", file=sys.stderr)
        return 1
    args.output.write_text(render(paths, args.output, args.notes))
    print(f"wrote {args.output} from {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
