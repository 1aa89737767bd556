"""Fashion-MNIST from the canonical gz files, verified, normalised once and kept in memory."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import FashionMNIST

from experiments.files import atomic_file

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO / ".cache"  # git-ignored; extraction never writes into the (read-only) data dir
ENV_VAR = "RECURRENT_DATA_DIR"

# Canonical MD5s, as listed by torchvision and ../shared/data/FashionMNIST/SOURCE.md.
FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASSES = FashionMNIST.classes
MEAN, STD = 0.5, 0.497  # the report's Normalize((0.5,), (0.497,))
N_VAL = 6000  # the report's random_split(train, (54000, 6000))
SPLIT_SEED = 0  # one validation set shared by every model, impl and seed, so their numbers compare


class DataError(RuntimeError):
    """A Fashion-MNIST file is missing or corrupted."""


def default_data_dir() -> tuple[Path, str]:
    """The data dir from $RECURRENT_DATA_DIR, else ../shared/data, else <repo>/data; with its origin."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    shared = REPO.parent / "shared" / "data"
    return (shared if shared.is_dir() else REPO / "data"), "the default (../shared/data, else <repo>/data)"


def raw_dir(data_dir: Path) -> Path:
    """Accept torchvision's root (holding FashionMNIST/raw), the FashionMNIST folder or raw itself."""
    for candidate in (data_dir / "FashionMNIST" / "raw", data_dir / "raw", data_dir):
        if any((candidate / name).is_file() for name in FILES):
            return candidate
    return data_dir / "FashionMNIST" / "raw"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _how_to_get(data_dir: Path) -> str:
    return (
        'To get the files (needs internet): python -c "import torchvision; '
        f"torchvision.datasets.FashionMNIST('{data_dir}', download=True)\", "
        f"then pass --data-dir {data_dir} or set {ENV_VAR}={data_dir}."
    )


def verify(data_dir: Path) -> Path:
    """Check the four gz files against their MD5s; return the folder holding them."""
    raw = raw_dir(data_dir)
    for name, expected in FILES.items():
        path = raw / name
        if not path.is_file():
            raise DataError(
                f"Fashion-MNIST file {name} is missing: expected at {path} "
                f"(data dir {data_dir}). {_how_to_get(data_dir)}"
            )
        actual = _md5(path)
        if actual != expected:
            raise DataError(
                f"Fashion-MNIST file {name} at {path} is corrupted: MD5 expected {expected}, "
                f"got {actual}. Replace it with the canonical file. {_how_to_get(data_dir)}"
            )
    return raw


def _extract(gz: Path, dest: Path) -> None:
    """Decompress atomically, so a concurrent or interrupted run never sees half a file."""
    with atomic_file(dest) as out, gzip.open(gz, "rb") as src:
        shutil.copyfileobj(src, out)


def normalize(images: Tensor) -> Tensor:
    """ToTensor() then Normalize((0.5,), (0.497,)) on a whole uint8 (N, 28, 28) tensor at once."""
    mean = torch.tensor(MEAN, dtype=torch.float32)
    std = torch.tensor(STD, dtype=torch.float32)
    # Same ops in the same order as torchvision (so bitwise equal), in place on one fresh copy.
    return images.to(torch.float32).div_(255).sub_(mean).div_(std)


@lru_cache(maxsize=4)
def load_arrays(data_dir: Path, cache_dir: Path = CACHE_DIR) -> dict[str, Tensor]:
    """Verified, normalised train and test tensors: images float32 (N, 28, 28), labels int64."""
    raw = verify(data_dir)
    extracted = cache_dir / "FashionMNIST" / "raw"
    extracted.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        dest = extracted / name.removesuffix(".gz")
        if not dest.is_file():
            _extract(raw / name, dest)
    arrays = {}
    for split, train in (("train", True), ("test", False)):
        ds = FashionMNIST(root=cache_dir, train=train, download=False)
        arrays[f"{split}_x"] = normalize(ds.data)
        arrays[f"{split}_y"] = ds.targets.long()
    return arrays


@dataclass(frozen=True)
class Splits:
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def to(self, device: torch.device | str) -> Splits:
        return Splits(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def split_indices(n: int, n_val: int = N_VAL, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """Train and validation indices, as random_split(range(n), (n - n_val, n_val)) with a seeded generator."""
    train, val = torch.utils.data.random_split(
        range(n), (n - n_val, n_val), generator=torch.Generator().manual_seed(seed)
    )
    return torch.tensor(train.indices), torch.tensor(val.indices)


def load_splits(data_dir: Path, limit: int | None = None, cache_dir: Path = CACHE_DIR) -> Splits:
    """54,000 / 6,000 / 10,000 split. `limit` keeps the first `limit` images of each part so that a
    smoke run (training and its evaluations) stays cheap; the split itself does not change."""
    a = load_arrays(Path(data_dir).resolve(), Path(cache_dir).resolve())
    train_idx, val_idx = split_indices(len(a["train_y"]))
    test_idx = torch.arange(len(a["test_y"]))
    if limit is not None:
        train_idx, val_idx, test_idx = train_idx[:limit], val_idx[:limit], test_idx[:limit]
    return Splits(
        a["train_x"][train_idx],
        a["train_y"][train_idx],
        a["train_x"][val_idx],
        a["train_y"][val_idx],
        a["test_x"][test_idx],
        a["test_y"][test_idx],
    )


def batches(n: int, batch_size: int, generator: torch.Generator) -> tuple[Tensor, ...]:
    """One epoch's shuffled index batches; the last one may be short, like DataLoader(drop_last=False)."""
    return torch.randperm(n, generator=generator).split(batch_size)


def rank_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> tuple[Tensor, ...]:
    """One epoch's index batches for process `rank` of `world_size`, as DistributedSampler deals them:
    the shuffle depends on (seed, epoch) alone, so every process sees the same permutation and takes
    every world_size-th index of it. When world_size does not divide n, the first few indices repeat
    so that every process gets ceil(n / world_size) and all take the same number of steps."""
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)  # a new order each epoch
    return torch.tensor(list(sampler), dtype=torch.int64).split(batch_size)
