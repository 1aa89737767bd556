"""One training run: fit with early stopping on validation loss, checkpoint, resume, evaluate, report."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from experiments import data, gates, plots
from experiments.files import BEST, LAST, METRICS, atomic_write, write_json
from experiments.models import N_CLASSES, Recipe, build_model

EVAL_BATCH = 1000  # evaluation batch size: only speed depends on it
REPORT_BATCH = 128  # the report's test loss is a sum of per-batch means over batches of 128
DROPOUT_SEED_OFFSET = 1_000_003  # training randomness must not replay the weight initialisation's stream
# Rank r of a torchrun job draws augmentations and dropout masks as seed + r * RANK_SEED_STRIDE would:
# its own, and rank 0's are those of a single-process run.
RANK_SEED_STRIDE = 1_000_000_007
# Settings that may change when resuming; everything else must match the checkpoint.
RESUMABLE_CHANGES = {"device", "threads", "data_dir"}


@dataclass(frozen=True)
class RunSpec:
    model: str
    impl: str
    seed: int
    recipe: Recipe
    limit: int | None
    device: str
    threads: int
    data_dir: str
    # Processes of a torchrun (DistributedDataParallel) job; recipe.batch_size is per process.
    world_size: int = 1

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ResumeError(ValueError):
    """The checkpoint in the run folder was made with settings that cannot be continued."""


def run_name(spec: RunSpec) -> str:
    """Run folder name; the device type is part of it so that runs from several machines can sit together."""
    limit = f"-limit{spec.limit}" if spec.limit else ""
    processes = f"-ddp{spec.world_size}" if spec.world_size > 1 else ""
    return f"{spec.model}-{spec.impl}-seed{spec.seed}-{torch.device(spec.device).type}{processes}{limit}"


def world() -> tuple[int, int]:
    """This process's rank and the number of processes: from the process group that the CLI sets up
    under torchrun; (0, 1) in a single-process run."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def progress_off() -> bool | None:
    """tqdm's `disable`: None shows bars on a terminal; only rank 0 shows them, not one per process."""
    return None if world()[0] == 0 else True


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, buffer.getvalue())


def make_optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[r.optimizer]
    return kind(model.parameters(), lr=r.lr, weight_decay=r.weight_decay)


def make_schedule(
    optimizer: torch.optim.Optimizer, r: Recipe, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per batch. A LambdaLR over the whole run's steps: its state is only the step count.
    "onecycle": linear warm-up over the first r.warmup of the steps, then cosine decay to zero."""
    if r.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warm = max(1, round(r.warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def augment(x: Tensor, r: Recipe, generator: torch.Generator) -> Tensor:
    """Random horizontal flip and a random shift of up to r.shift pixels each way, filled with
    background; rows stay rows. Draws come from the CPU batch generator so that they resume exactly."""
    n, s = len(x), r.shift
    flip = torch.rand(n, generator=generator) < 0.5
    dy, dx = (torch.randint(0, 2 * s + 1, (2, n), generator=generator)).to(x.device)
    x = torch.where(flip.to(x.device)[:, None, None], x.flip(2), x)
    padded = F.pad(x, (s, s, s, s), value=(0 - data.MEAN) / data.STD)  # a black pixel, normalised
    ar = torch.arange(x.shape[1], device=x.device)
    rows, cols = dy[:, None] + ar, dx[:, None] + ar
    return padded[torch.arange(n, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample losses and predicted classes, in eval mode."""
    model.eval()
    losses, preds = [], []
    for i in range(0, len(x), EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH])
        losses.append(F.cross_entropy(logits, y[i : i + EVAL_BATCH], reduction="none"))
        preds.append(logits.argmax(1))
    return torch.cat(losses), torch.cat(preds)


def epoch_batches(spec: RunSpec, n: int, generator: torch.Generator, epoch: int) -> tuple[Tensor, ...]:
    """This process's index batches for one epoch: a single process shuffles all `n` with the batch
    generator; under torchrun each rank takes its share as DistributedSampler deals it."""
    rank, world_size = world()
    if world_size == 1:
        return data.batches(n, spec.recipe.batch_size, generator)
    return data.rank_batches(n, spec.recipe.batch_size, spec.seed, epoch, rank, world_size)


def train_epoch(
    model: nn.Module,
    splits: data.Splits,
    batches: tuple[Tensor, ...],
    r: Recipe,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    desc: str,
) -> tuple[float, float]:
    """One pass over `batches` of the training set; mean loss and accuracy, measured on the fly (dropout
    on). Under torchrun `model` is the DistributedDataParallel wrapper (its backward averages the
    gradients across processes), and the numbers are those of all processes' batches together."""
    model.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=splits.train_x.device)
    correct = torch.zeros((), dtype=torch.int64, device=splits.train_x.device)
    n = sum(len(idx) for idx in batches)
    for idx in tqdm(batches, desc=desc, leave=False, disable=progress_off()):
        idx = idx.to(splits.train_x.device)
        x, y = splits.train_x[idx], splits.train_y[idx]
        if r.augment:
            x = augment(x, r, generator)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if r.clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), r.clip_grad_norm)
        optimizer.step()
        schedule.step()
        # Accumulate on the device: no host sync per batch.
        total_loss += loss.detach().double() * len(y)
        correct += (logits.argmax(1) == y).sum()
    if dist.is_initialized():  # the whole training set's numbers, not only this process's share
        sums = torch.stack((total_loss, correct.double(), total_loss.new_tensor(n)))
        dist.all_reduce(sums)
        loss_sum, correct_sum, n_sum = sums.tolist()
        return loss_sum / n_sum, correct_sum / n_sum
    return total_loss.item() / n, correct.item() / n


def rng_states(generator: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "batches": generator.get_state(),
    }


def restore_rng(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["batches"])


def _flat(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "recipe"} | {f"recipe.{k}": v for k, v in spec["recipe"].items()}


def check_resumable(saved: dict[str, Any], spec: RunSpec) -> None:
    old, new = _flat(saved), _flat(spec.as_dict())
    # A checkpoint from before a setting existed was made with its default (world_size: 1 process).
    defaults = {f.name: f.default for f in dataclasses.fields(RunSpec) if f.default is not dataclasses.MISSING}
    old = defaults | old
    diffs = [k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k]]
    # Extending a run is fine when the learning rate does not depend on its length.
    if diffs == ["recipe.epochs"] and spec.recipe.schedule == "constant":
        return
    if diffs:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diffs)
        raise ResumeError(f"cannot resume: the checkpoint was made with other settings ({detail})")


def device_name(device: torch.device) -> str:
    """The GPU's or CPU's model name, for the timing tables."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return f"{name or platform.processor() or 'CPU'} ({os.cpu_count()} logical cores)"


@dataclass
class Training:
    """Everything that carries over from one epoch to the next; the last checkpoint holds all of it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # augmentation draws, and the batch order of a single-process run
    history: list[dict[str, float]]
    best: dict[str, Any]  # the epoch with the lowest validation loss so far: epoch, val_loss, model state

    def checkpoint(self, spec: RunSpec) -> dict[str, Any]:
        """The last checkpoint's contents. Under torchrun every rank must call it (it gathers each
        rank's random streams, which differ, into a list indexed by rank); rank 0 saves it."""
        rng: dict[str, Any] | list[dict[str, Any]] = rng_states(self.generator)
        if dist.is_initialized():
            every_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(every_rank, rng)
            rng = every_rank
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": rng,
            "history": self.history,
            "best": self.best,
            "spec": spec.as_dict(),
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        rng = ckpt["rng"]  # a list under torchrun: check_resumable made sure it has this job's number of ranks
        restore_rng(rng[world()[0]] if isinstance(rng, list) else rng, self.generator)
        self.history, self.best = ckpt["history"], ckpt["best"]


def run(spec: RunSpec, out: Path, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Train (or continue) the run described by `spec` in `out`; return its metrics.

    stop_after: end after that many epochs without the final evaluation, as if interrupted; a later
    call with resume=True carries on exactly.

    Under torchrun every process calls it with the same spec (but its own device) once the process
    group is set up: each trains on its share of the data and all hold the same weights throughout;
    rank 0 alone writes to `out` and evaluates the test set."""
    if spec.world_size != world()[1]:
        raise ValueError(f"spec.world_size is {spec.world_size} but {world()[1]} processes are running")
    torch.set_num_threads(spec.threads)
    splits = data.load_splits(Path(spec.data_dir), spec.limit).to(spec.device)
    out.mkdir(parents=True, exist_ok=True)  # after the data checks: a failed start leaves no folder
    training = start_or_resume(spec, len(splits.train_y), out, resume)
    net = training.model
    if dist.is_initialized():
        # Its constructor is collective (rank 0's weights are broadcast), so every rank has read `out`
        # before rank 0 writes the first checkpoint into it.
        device = torch.device(spec.device)
        net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    epochs = spec.recipe.epochs
    fit(spec, splits, training, net, out, last_epoch=epochs if stop_after is None else min(epochs, stop_after))
    return finish(spec, splits, training, out)


def start(spec: RunSpec, n_train: int) -> Training:
    """Initial weights, optimiser and schedule, and the seeded random streams of a new run."""
    r = spec.recipe
    rank, world_size = world()
    model = build_model(r, spec.impl, spec.seed).to(spec.device)  # the same weights in every process
    optimizer = make_optimizer(model, r)
    steps_per_epoch = math.ceil(math.ceil(n_train / world_size) / r.batch_size)  # one process's share
    schedule = make_schedule(optimizer, r, r.epochs * steps_per_epoch)
    stream_seed = spec.seed + RANK_SEED_STRIDE * rank
    generator = torch.Generator().manual_seed(stream_seed)
    torch.manual_seed(stream_seed + DROPOUT_SEED_OFFSET)
    return Training(
        model, optimizer, schedule, generator, history=[], best={"epoch": 0, "val_loss": math.inf, "model": None}
    )


def start_or_resume(spec: RunSpec, n_train: int, out: Path, resume: bool) -> Training:
    """A new run, or the one whose last checkpoint is in `out` when resuming is asked for."""
    training = start(spec, n_train)
    if (out / LAST).exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it, or pick another --out")
        # weights_only: unpickling never runs code from the file; on the CPU: RNG states must stay CPU tensors.
        ckpt = torch.load(out / LAST, map_location="cpu", weights_only=True)
        check_resumable(ckpt["spec"], spec)
        training.restore(ckpt)
    return training


def fit(spec: RunSpec, splits: data.Splits, training: Training, net: nn.Module, out: Path, last_epoch: int) -> None:
    """Train the epochs after those already done up to `last_epoch`, checkpointing after each.
    `net` is what a training step calls: the model, or under torchrun its DistributedDataParallel wrapper.
    Every rank keeps the same history and best epoch; rank 0 writes the checkpoints, of the bare model."""
    writes = world()[0] == 0
    started = len(training.history)
    for epoch in tqdm(
        range(started + 1, last_epoch + 1),
        desc=f"{spec.model}/{spec.impl}",
        disable=progress_off(),
        initial=started,
        total=spec.recipe.epochs,
    ):
        row = train_and_validate(spec, splits, training, net, epoch)
        training.history.append(row)
        if row["val_loss"] < training.best["val_loss"]:  # early stopping: keep the lowest validation loss
            training.best = {
                "epoch": epoch,
                "val_loss": row["val_loss"],
                "model": {k: v.clone() for k, v in training.model.state_dict().items()},
            }
            if writes:
                save_checkpoint({"model": training.best["model"], "epoch": epoch, "spec": spec.as_dict()}, out / BEST)
        last = training.checkpoint(spec)  # every rank: it gathers their random streams
        if writes:
            save_checkpoint(last, out / LAST)
            tqdm.write(
                f"{spec.model}/{spec.impl} seed {spec.seed} epoch {epoch}: train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f} | val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} "
                f"| {row['seconds']:.1f}s",
                file=sys.stderr,
            )


def train_and_validate(
    spec: RunSpec, splits: data.Splits, training: Training, net: nn.Module, epoch: int
) -> dict[str, float]:
    """One epoch of training, then the validation set: the epoch's row of the history. Under torchrun
    every rank validates on the whole set: the weights are the same everywhere, and so are the numbers."""
    t0 = time.perf_counter()
    batches = epoch_batches(spec, len(splits.train_y), training.generator, epoch)
    train_loss, train_acc = train_epoch(
        net, splits, batches, spec.recipe, training.optimizer, training.schedule, training.generator, f"epoch {epoch}"
    )
    val_losses, val_preds = predict(training.model, splits.val_x, splits.val_y)
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": val_losses.double().mean().item(),
        "val_acc": (val_preds == splits.val_y).double().mean().item(),
        "seconds": time.perf_counter() - t0,  # training and validation
    }


def finish(spec: RunSpec, splits: data.Splits, training: Training, out: Path) -> dict[str, Any]:
    """The run's metrics and figures, written to `out`; a complete run is tested with its best epoch's weights.
    Under torchrun only rank 0 does this; the other ranks return the metrics without the test set's."""
    best_epoch = training.best["epoch"]
    metrics = run_metrics(spec, splits, training.history, best_epoch)
    if world()[0] != 0:
        return metrics
    if metrics["complete"]:
        training.model.load_state_dict(training.best["model"])
        metrics.update(evaluate_test(training.model, splits))
        plots.confusion(
            metrics["confusion_matrix"],
            data.CLASSES,
            out / "confusion.png",
            f"{spec.model} ({spec.impl}), test set, epoch {best_epoch}",
        )
    plots.curves(
        {"": (training.history, best_epoch)}, out / "curves.png", f"{spec.model} ({spec.impl}), seed {spec.seed}"
    )
    write_json(metrics, out / METRICS)
    if metrics["complete"]:  # cell gru, impl recurrent: the update gates' heatmap, one pass over the test set
        gates.after_training(spec, training.model, splits, out, best_epoch)
    return metrics


def run_metrics(spec: RunSpec, splits: data.Splits, history: list[dict[str, float]], best_epoch: int) -> dict[str, Any]:
    """What the run did so far: settings, curves, best epoch, sizes, timing and the machine."""
    device = torch.device(spec.device)
    seconds = [h["seconds"] for h in history]
    return {
        "model": spec.model,
        "impl": spec.impl,
        "seed": spec.seed,
        "complete": len(history) == spec.recipe.epochs,
        "epochs_done": len(history),
        "best_epoch": best_epoch,
        "history": history,
        "sizes": {"train": len(splits.train_y), "val": len(splits.val_y), "test": len(splits.test_y)},
        "seconds_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "device": device_name(device),
        "device_type": device.type,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": spec.as_dict(),
    }


def evaluate_test(model: nn.Module, splits: data.Splits) -> dict[str, Any]:
    losses, preds = predict(model, splits.test_x, splits.test_y)
    y = splits.test_y
    confusion = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.int64)
    confusion.index_put_((y.cpu(), preds.cpu()), torch.ones(len(y), dtype=torch.int64), accumulate=True)
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double()
    return {
        "test_accuracy": (preds == y).double().mean().item(),
        "test_loss": losses.double().mean().item(),  # mean per-sample cross-entropy
        # The report's form: the sum over batches of 128 of each batch's mean loss.
        "test_loss_report_form": sum(b.double().mean().item() for b in losses.split(REPORT_BATCH)),
        "per_class_accuracy": dict(zip(data.CLASSES, per_class.tolist())),
        "confusion_matrix": confusion.tolist(),
    }
