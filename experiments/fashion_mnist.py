"""Train one model on Fashion-MNIST: python -m experiments.fashion_mnist --model gru --impl recurrent.
Under torchrun (torchrun --nproc_per_node=N -m experiments.fashion_mnist ...) the N processes train one
model with DistributedDataParallel; recipe batch_size is per process."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from experiments import data
from experiments.models import IMPLS, RECIPES, check_impl, override
from experiments.train import ResumeError, RunSpec, run, run_name

RUNS_DIR = data.REPO / "experiments" / "runs"


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options shared with experiments.reproduce."""
    p.add_argument("--epochs", type=positive, help="override the recipe's number of epochs")
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (default: cuda if available)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help=f"folder holding FashionMNIST/raw/*.gz (default: ${data.ENV_VAR}, else ../shared/data, else <repo>/data)",
    )
    p.add_argument(
        "--limit", type=positive, help="use only the first N images of train, validation and test (smoke runs)"
    )
    p.add_argument(
        "--threads", type=positive, default=torch.get_num_threads(), help="CPU threads for torch (default: %(default)s)"
    )


def check_device(p: argparse.ArgumentParser, device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError:
        p.error(f"--device {device!r} is not a device name")
    if kind not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was asked for but torch sees no CUDA device")


def torchrun_world() -> tuple[int, int, int]:
    """The number of processes, this one's rank and its rank on this node, from the variables torchrun
    sets; (1, 0, 0) otherwise. torchrun --nproc_per_node=1 runs as a plain single process would."""
    env = os.environ
    return int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))


def process_device(p: argparse.ArgumentParser, device: str, local_rank: int) -> str:
    """The device of one torchrun process: the CPU, or the GPU cuda:LOCAL_RANK (one GPU per process)."""
    if torch.device(device).type == "cpu":
        return "cpu"
    if device != "cuda":
        p.error(f"under torchrun pass --device cuda (each process takes cuda:LOCAL_RANK) or cpu, got {device!r}")
    if local_rank >= torch.cuda.device_count():
        p.error(
            f"torchrun started local rank {local_rank} but torch sees {torch.cuda.device_count()} CUDA "
            f"device(s): start at most that many processes per node, or pass --device cpu"
        )
    return f"cuda:{local_rank}"


@contextmanager
def process_group(world_size: int, device: str) -> Iterator[None]:
    """Join the torchrun job's process group (env:// rendezvous from torchrun's variables): nccl between
    GPUs, gloo on CPUs; leave it on the way out. A single process needs none."""
    if world_size == 1:
        yield
        return
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(device)  # nccl's collectives run on the current device
    dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def data_dir_and_origin(arg: Path | None) -> tuple[Path, str]:
    """The data dir to read and what chose it: --data-dir if given, else data.default_data_dir()."""
    return (arg, "--data-dir") if arg is not None else data.default_data_dir()


def data_error_message(e: data.DataError, origin: str) -> str:
    """What chose the data dir, then the loader's message (what was expected, what was found, where)."""
    return f"data dir from {origin}: {e}"


def fail(message: str) -> int:
    """Report an error found after the arguments were parsed: one line on stderr, exit status 2 like argparse."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.fashion_mnist", description=__doc__)
    p.add_argument("--model", choices=sorted(RECIPES), required=True)
    p.add_argument("--impl", choices=IMPLS, default="recurrent", help="our layers or torch.nn's")
    p.add_argument("--seed", type=non_negative, default=0)
    p.add_argument(
        "--out", type=Path, help="run folder (default: experiments/runs/<model>-<impl>-seed<S>-<device>[-limit<N>])"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (or start it if there is none)",
    )
    p.add_argument(
        "--stop-after",
        type=positive,
        metavar="EPOCH",
        help="stop after this epoch, resumable later with --resume (e.g. to fit a time slot)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set lr=0.002 --set augment=false (repeatable)",
    )
    add_common_args(p)
    return p


def run_spec(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[RunSpec, str]:
    """The run the arguments ask for (errors through ``p``), and where its data come from."""
    check_device(p, args.device)
    world_size, _, local_rank = torchrun_world()
    device = process_device(p, args.device, local_rank) if world_size > 1 else args.device
    try:
        recipe = override(RECIPES[args.model], args.set + ([f"epochs={args.epochs}"] if args.epochs else []))
        check_impl(recipe, args.impl, args.model)  # lngru: --impl recurrent only
    except ValueError as e:
        p.error(str(e))
    data_dir, origin = data_dir_and_origin(args.data_dir)
    spec = RunSpec(
        model=args.model,
        impl=args.impl,
        seed=args.seed,
        recipe=recipe,
        limit=args.limit,
        device=device,
        threads=args.threads,
        data_dir=str(data_dir),
        world_size=world_size,
    )
    return spec, origin


def report(spec: RunSpec, metrics: dict, out: Path) -> None:
    """One line on the finished (or stopped) run."""
    if metrics["complete"]:
        print(
            f"{spec.model}/{spec.impl} seed {spec.seed}: best epoch {metrics['best_epoch']}, "
            f"test accuracy {metrics['test_accuracy']:.4f}, test loss {metrics['test_loss']:.4f} "
            f"({metrics['seconds_per_epoch']:.1f} s/epoch) -> {out}"
        )
    else:
        epochs = spec.recipe.epochs
        print(f"stopped after epoch {metrics['epochs_done']} of {epochs}; continue with --resume -> {out}")


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    spec, origin = run_spec(p, args)
    out = args.out or RUNS_DIR / run_name(spec)
    try:
        with process_group(spec.world_size, spec.device):
            metrics = run(spec, out, resume=args.resume, stop_after=args.stop_after)
    except data.DataError as e:
        return fail(data_error_message(e, origin))
    except (FileExistsError, ResumeError) as e:
        return fail(str(e))
    if torchrun_world()[1] == 0:  # rank 0 reports for the whole job
        report(spec, metrics, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
