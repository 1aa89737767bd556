"""What the trained GRU's update gates do: the mean update-gate (z) activation per image row and class.

python -m experiments.gates --run experiments/runs/gru-recurrent-seed0-cpu

One pass over the test set, in eval mode and without gradients, with the run's best weights (best.pt),
recording the gates with recurrent.record_gates. For each layer (and direction), each class and each
image row (time step), z is averaged over the hidden units and over the class's test images. Written
into the run folder: gates.json (the numbers) and gates.png (a heatmap, one panel per layer). A
training run of a model with cell gru and impl recurrent does this at its end; the summary draws the
figure again from gates.json (experiments/results/figures/<model>-gates.png).

In the GRU h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}: z near 1 keeps the state, z near 0 rewrites it from the row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from experiments import data, plots
from experiments.files import BEST, write_json
from experiments.models import N_CLASSES, Recipe, SequenceClassifier, layers_for

GATE = "z"  # the update gate
GATES_JSON, GATES_PNG = "gates.json", "gates.png"
LAYER = "rnn"  # SequenceClassifier's recurrent layer, as named by named_modules()
BATCH = 1000  # images per recorded forward pass: only speed and memory depend on it


def applies(recipe: Recipe, impl: str) -> bool:
    """Whether a run gets the gate figure: torch.nn.GRU-shaped layers of ours (cell gru, impl recurrent)."""
    return recipe.cell == "gru" and impl == "recurrent"


def recorder_available() -> bool:
    """Whether this `recurrent` has the gate-recording API (recurrent.record_gates)."""
    import recurrent

    return hasattr(recurrent, "record_gates")


@torch.no_grad()
def gate_means(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    gate: str = GATE,
    layer: str = LAYER,
    n_classes: int = N_CLASSES,
    batch_size: int = BATCH,
) -> tuple[Tensor, Tensor]:
    """Mean activation of `gate` of the recurrent layer `layer` of `model`, over its hidden units and
    over the images of each class: float64 (num_layers, num_directions, n_classes, time), NaN for a
    class without images; and the number of images per class. Runs `model` in eval mode on `x`
    (batch-major sequences) in batches; the model's mode is restored afterwards."""
    import recurrent  # looked up at call time: the tests may stand in for recurrent.record_gates

    was_training = model.training
    model.eval()
    sums: Tensor | None = None
    counts = torch.zeros(n_classes, dtype=torch.float64)
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size].cpu()
            # A recorder per batch: its records (every gate of every step) are dropped after the batch.
            with recurrent.record_gates(model) as record:
                model(xb)
            calls = record[layer]
            if len(calls) != 1:
                raise RuntimeError(f"expected one forward call of {layer!r} per batch, recorded {len(calls)}")
            per_image = calls[0][gate].detach().to("cpu", torch.float64).mean(-1)  # (L, D, batch, time)
            if sums is None:
                layers, directions, _, steps = per_image.shape
                sums = torch.zeros(layers, directions, n_classes, steps, dtype=torch.float64)
            sums.index_add_(2, yb, per_image)
            counts += torch.bincount(yb, minlength=n_classes).double()
    finally:
        model.train(was_training)
    if sums is None:
        raise ValueError("no images to average the gates over")
    return sums / counts[:, None], counts  # 0 / 0: NaN for a class without images


def write(means: Tensor, counts: Tensor, out: Path, title: str, info: dict[str, Any]) -> dict[str, Any]:
    """gates.json and gates.png in `out`; returns what gates.json holds."""
    record = {
        "gate": GATE,
        "layer": LAYER,
        "split": "test",
        "classes": list(data.CLASSES),
        "images_per_class": [int(c) for c in counts.tolist()],
        **info,
        # (num_layers, num_directions, classes, time); null where a class had no images
        "means": [[[[None if v != v else v for v in row] for row in d] for d in lay] for lay in means.tolist()],
    }
    write_json(record, out / GATES_JSON)
    plots.gates(record["means"], record["classes"], out / GATES_PNG, title, gate=GATE)
    return record


def for_model(model: nn.Module, splits: data.Splits, out: Path, title: str, info: dict[str, Any]) -> dict[str, Any]:
    """The figure of a trained model (its current weights) over the test set of `splits`."""
    means, counts = gate_means(model, splits.test_x, splits.test_y)
    return write(means, counts, out, title, info)


def after_training(spec: Any, model: nn.Module, splits: data.Splits, out: Path, epoch: int) -> None:
    """Called by experiments.train at the end of a complete run, `model` holding its best weights: the
    figure for a run with cell gru and impl recurrent (one pass over the test set), nothing otherwise."""
    if not applies(spec.recipe, spec.impl):
        return
    if not recorder_available():
        print("gate figure skipped: this recurrent has no record_gates", file=sys.stderr)
        return
    for_model(
        model,
        splits,
        out,
        title(spec.as_dict(), epoch),
        {"model": spec.model, "impl": spec.impl, "seed": spec.seed, "epoch": epoch},
    )


def for_run(run_dir: Path, data_dir: Path | None = None, device: str = "cpu") -> dict[str, Any]:
    """The figure of a finished (or interrupted) run, from its best checkpoint best.pt."""
    best = torch.load(run_dir / BEST, map_location="cpu", weights_only=True)
    spec = best["spec"]
    recipe = Recipe(**spec["recipe"])
    if not applies(recipe, spec["impl"]):
        raise ValueError(
            f"{run_dir}: the gate figure is for cell gru with impl recurrent, this run has cell "
            f"{recipe.cell!r} and impl {spec['impl']!r}"
        )
    model = SequenceClassifier(recipe, layers_for(spec["impl"]))
    model.load_state_dict(best["model"], strict=True)
    if data_dir is None:
        saved = Path(spec["data_dir"])
        data_dir = saved if saved.exists() else data.default_data_dir()[0]
    splits = data.load_splits(data_dir, spec["limit"]).to(device)
    return for_model(
        model.to(device),
        splits,
        run_dir,
        title(spec, best["epoch"]),
        {"model": spec["model"], "impl": spec["impl"], "seed": spec["seed"], "epoch": best["epoch"]},
    )


def title(spec: dict[str, Any], epoch: int) -> str:
    return (
        f"{spec['model']} ({spec['impl']}), seed {spec['seed']}, epoch {epoch}: "
        f"mean update gate z per class and image row, test set"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.gates", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, required=True, help="a run folder holding best.pt (cell gru, impl recurrent)")
    p.add_argument("--data-dir", type=Path, help="Fashion-MNIST folder (default: the run's, else the usual default)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (default: %(default)s)")
    args = p.parse_args(argv)
    if not (args.run / "best.pt").is_file():
        p.error(f"--run {args.run}: no best.pt there (a run folder from experiments.fashion_mnist)")
    if not recorder_available():
        p.error("this recurrent has no record_gates (the gate-recording API)")
    torch.set_num_threads(args.threads)
    try:
        record = for_run(args.run, args.data_dir, args.device)
    except (ValueError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.run / GATES_JSON} and {GATES_PNG} ({sum(record['images_per_class'])} test images)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
