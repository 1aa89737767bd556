"""Learning-curve, confusion-matrix and gate figures (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

History = list[dict[str, float]]


def curves(runs: dict[str, tuple[History, int]], path: Path, title: str) -> None:
    """Train (dashed) and validation (solid) loss and accuracy per epoch for one or more runs,
    each run's best epoch marked on its validation curves. `runs` maps a label to (history, best epoch)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, (history, best)) in enumerate(runs.items()):
        color = f"C{i}"
        epochs = [h["epoch"] for h in history]
        prefix = f"{label} " if label else ""
        for ax, metric in zip(axes, ("loss", "acc")):
            val = [h[f"val_{metric}"] for h in history]
            ax.plot(epochs, [h[f"train_{metric}"] for h in history], "--", color=color, label=f"{prefix}train")
            ax.plot(epochs, val, "-o", color=color, markersize=3, label=f"{prefix}validation")
            if best:
                ax.plot(
                    [best],
                    [val[epochs.index(best)]],
                    "*",
                    color=color,
                    markersize=14,
                    markeredgecolor="black",
                    label=f"{prefix}best epoch ({best})",
                )
    for ax, name in zip(axes, ("cross-entropy loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str) -> None:
    """Counts per (true, predicted) class, coloured by their share of the true class."""
    fig, ax = plt.subplots(figsize=(7, 6))
    totals = [max(1, sum(row)) for row in matrix]
    shares = [[c / t for c in row] for row, t in zip(matrix, totals)]
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(
                j, i, str(count), ha="center", va="center", fontsize=7, color="white" if shares[i][j] > 0.5 else "black"
            )
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def gates(
    means: Sequence[Sequence[Sequence[Sequence[float | None]]]],
    classes: Sequence[str],
    path: Path,
    title: str,
    gate: str = "z",
) -> None:
    """Heatmaps of a gate's mean activation, `means[layer][direction][class][time step]` (None: no
    images): one panel per layer (and direction), classes down, image rows (time steps) across, one
    colour scale and colour bar for all panels."""
    panels = [
        (layer, direction, grid) for layer, per_layer in enumerate(means) for direction, grid in enumerate(per_layer)
    ]
    directions = len(means[0]) if means else 1
    values = [v for _, _, grid in panels for row in grid for v in row if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.2 + 5.2 * len(panels), 4.6), squeeze=False, sharey=True, layout="constrained"
    )
    image = None
    for ax, (layer, direction, grid) in zip(axes[0], panels):
        shown = [[float("nan") if v is None else v for v in row] for row in grid]
        image = ax.imshow(shown, cmap="viridis", vmin=low, vmax=high, aspect="auto", interpolation="nearest")
        steps = len(grid[0]) if grid else 0
        ticks = [t for t in range(steps) if t == 0 or (t + 1) % 4 == 0]
        ax.set_xticks(ticks, [str(t + 1) for t in ticks])
        ax.set_xlabel("image row (time step)")
        ax.set_yticks(range(len(classes)), classes)
        name = f"layer {layer + 1}" + ((" forward", " reverse")[direction] if directions == 2 else "")
        ax.set_title(name)
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label=f"mean {gate} (over units and images)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)
