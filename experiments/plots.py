"""Learning-curve and confusion-matrix figures (Agg backend: no display needed)."""

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
                ax.plot([best], [val[epochs.index(best)]], "*", color=color, markersize=14,
                        markeredgecolor="black", label=f"{prefix}best epoch ({best})")
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
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
