"""The Fashion-MNIST harness: data loading and checks, models, training, resume, CLI and grid."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, assert_as_accurate, float64_call
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from experiments import data, fashion_mnist, reproduce
from experiments.models import RECIPES, SequenceClassifier, build_model, impls_for, layers_for, override
from experiments.train import BEST, LAST, METRICS, ResumeError, RunSpec, atomic_write, augment, evaluate_test, run

REAL_DIR, _ = data.default_data_dir()
needs_data = pytest.mark.skipif(
    not all((data.raw_dir(REAL_DIR) / name).is_file() for name in data.FILES),
    reason=f"Fashion-MNIST gz files not found under {REAL_DIR}",
)


# run() sets the thread count and seeds torch: keep that from leaking into other tests.
pytestmark = pytest.mark.usefixtures("isolated_torch_state")


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped IDX file: big-endian magic (2051 images, 2049 labels), dimensions, then uint8 data."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes())


@pytest.fixture
def synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Small IDX files in torchvision's layout, with data.FILES patched to their MD5s."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (20, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 20),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 10),
    }
    for name, array in arrays.items():
        write_idx(raw / name, array)
    monkeypatch.setattr(data, "FILES", {n: hashlib.md5((raw / n).read_bytes()).hexdigest() for n in arrays})
    return {"root": tmp_path / "root", "raw": raw, "cache": tmp_path / "cache", "arrays": arrays}


@pytest.mark.parametrize("layout", ["root", "FashionMNIST", "raw"])
def test_loader_reads_synthetic_idx_files(synthetic: dict, layout: str) -> None:
    data_dir = {"root": synthetic["root"], "FashionMNIST": synthetic["root"] / "FashionMNIST", "raw": synthetic["raw"]}[
        layout
    ]
    a = data.load_arrays(data_dir, synthetic["cache"])
    images = torch.from_numpy(synthetic["arrays"]["train-images-idx3-ubyte.gz"].astype(np.float32))
    torch.testing.assert_close(a["train_x"], (images / 255 - 0.5) / 0.497)
    assert a["train_x"].shape == (20, 28, 28) and a["test_x"].shape == (10, 28, 28)
    assert a["test_y"].tolist() == synthetic["arrays"]["t10k-labels-idx1-ubyte.gz"].tolist()
    assert a["train_y"].dtype == torch.int64
    # Extracted into the cache, never next to the source files.
    assert sorted(p.name for p in (synthetic["cache"] / "FashionMNIST" / "raw").iterdir()) == sorted(
        n.removesuffix(".gz") for n in data.FILES
    )
    assert sorted(p.name for p in synthetic["raw"].iterdir()) == sorted(data.FILES)


def test_missing_file_is_a_clear_error(synthetic: dict) -> None:
    missing = synthetic["raw"] / "t10k-labels-idx1-ubyte.gz"
    missing.unlink()
    with pytest.raises(data.DataError) as info:
        data.verify(synthetic["root"])
    message = str(info.value)
    for needed in ("t10k-labels-idx1-ubyte.gz", str(missing), "download=True", "--data-dir", data.ENV_VAR):
        assert needed in message


def test_corrupted_file_is_a_clear_error(synthetic: dict) -> None:
    path = synthetic["raw"] / "train-images-idx3-ubyte.gz"
    corrupted = bytearray(path.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    path.write_bytes(corrupted)
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(data.DataError) as info:
        data.load_arrays(synthetic["root"], synthetic["cache"])
    message = str(info.value)
    for needed in ("train-images-idx3-ubyte.gz", str(path), data.FILES[path.name], actual, "download=True"):
        assert needed in message
    assert not (synthetic["cache"] / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_md5_table_is_the_one_shared_data_documents() -> None:
    """data.FILES equals the file/MD5 table of ../shared/data/FashionMNIST/SOURCE.md, all four rows."""
    source = ROOT.parent / "shared" / "data" / "FashionMNIST" / "SOURCE.md"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    rows = re.findall(r"^\| (\S+\.gz) \| [\d,]+ \| ([0-9a-f]{32}) \|", source.read_text(), re.MULTILINE)
    assert dict(rows) == data.FILES


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    assert data.default_data_dir() == (tmp_path, f"${data.ENV_VAR}")
    monkeypatch.delenv(data.ENV_VAR)
    shared = data.REPO.parent / "shared" / "data"
    assert data.default_data_dir()[0] == (shared if shared.is_dir() else data.REPO / "data")


def test_bulk_transform_equals_torchvision(synthetic: dict) -> None:
    a = data.load_arrays(synthetic["root"], synthetic["cache"])
    tv = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.497,))])
    ds = FashionMNIST(root=synthetic["cache"], train=True, transform=tv)
    for i in range(len(ds)):
        image, label = ds[i]
        assert torch.equal(a["train_x"][i], image[0])
        assert a["train_y"][i].item() == label
    assert len(a["train_x"].unique()) == 256  # every pixel value was compared


def test_split_is_seeded_and_sized() -> None:
    train, val = data.split_indices(60_000)
    again_train, again_val = data.split_indices(60_000)
    assert len(train) == 54_000 and len(val) == 6_000
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    assert torch.equal(torch.cat((train, val)).sort().values, torch.arange(60_000))
    assert not torch.equal(val, data.split_indices(60_000, seed=1)[1])


def test_batches_follow_the_generator() -> None:
    first = data.batches(300, 128, torch.Generator().manual_seed(5))
    second = data.batches(300, 128, torch.Generator().manual_seed(5))
    assert [len(b) for b in first] == [128, 128, 44]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(torch.cat(first).sort().values, torch.arange(300))


def test_rank_batches_deal_each_process_its_own_share() -> None:
    shares = [torch.cat(data.rank_batches(10, 3, seed=0, epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert [len(s) for s in shares] == [5, 5] and len(data.rank_batches(10, 3, 0, 1, 0, 2)) == 2
    assert torch.equal(torch.cat(shares).sort().values, torch.arange(10))  # disjoint halves of the set
    assert not torch.equal(shares[0], torch.cat(data.rank_batches(10, 3, seed=0, epoch=2, rank=0, world_size=2)))
    # 11 samples: one repeats so that both processes take the same number of steps (DDP needs that).
    odd = [torch.cat(data.rank_batches(11, 3, seed=0, epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert [len(s) for s in odd] == [6, 6] and set(torch.cat(odd).tolist()) == set(range(11))


def test_augment_flips_and_shifts_rows_only() -> None:
    r = RECIPES["bigru"]
    x = torch.randn(16, 28, 28)
    out = augment(x, r, torch.Generator().manual_seed(0))
    s, background = r.shift, (0 - data.MEAN) / data.STD
    padded = torch.nn.functional.pad(torch.stack((x, x.flip(2)), 1), (s, s, s, s), value=background)
    for i in range(len(x)):
        candidates = [
            padded[i, f, dy : dy + 28, dx : dx + 28]
            for f in range(2)
            for dy in range(2 * s + 1)
            for dx in range(2 * s + 1)
        ]
        assert any(torch.equal(out[i], c) for c in candidates)
    assert not torch.equal(out, x)


@pytest.mark.parametrize("model", [m for m in sorted(RECIPES) if "torch" in impls_for(RECIPES[m])])
def test_impls_start_from_identical_weights(model: str) -> None:
    recipe = RECIPES[model]
    ours, ref = build_model(recipe, "recurrent", 3), build_model(recipe, "torch", 3)
    assert isinstance(ours.rnn, layers_for("recurrent").GRU if recipe.cell == "gru" else layers_for("recurrent").RNN)
    assert type(ref.rnn).__module__.startswith("torch.nn")
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert list(ours_state) == list(ref_state)
    assert all(torch.equal(ours_state[k], ref_state[k]) for k in ref_state)
    x = torch.randn(4, 28, 28)
    ours.eval(), ref.eval()
    assert_as_accurate(ours(x), ref(x), float64_call(ref, x), "logits")


def test_report_models_have_the_reports_shapes() -> None:
    rnn = SequenceClassifier(RECIPES["rnn"], torch.nn)
    assert rnn.fc.in_features == 28 * 256 and rnn.fc.out_features == 512 and rnn.fc2.out_features == 10
    gru = SequenceClassifier(RECIPES["gru"], torch.nn)
    assert (gru.rnn.num_layers, gru.rnn.hidden_size, gru.fc.in_features, gru.fc2) == (2, 128, 128, None)
    assert gru(torch.randn(3, 28, 28)).shape == (3, 10)


def test_override_parses_types_and_rejects_unknown_keys() -> None:
    r = override(RECIPES["gru"], ["lr=0.01", "epochs=3", "augment=true", "optimizer=adamw"])
    assert (r.lr, r.epochs, r.augment, r.optimizer) == (0.01, 3, True, "adamw")
    for bad in (["nope=1"], ["epochs"], ["epochs=x"], ["augment=maybe"], ["optimizer=sgd"]):
        with pytest.raises(ValueError):
            override(RECIPES["gru"], bad)


def spec(model: str = "rnn", impl: str = "recurrent", limit: int = 256, sets: tuple[str, ...] = ()) -> RunSpec:
    return RunSpec(
        model=model,
        impl=impl,
        seed=0,
        recipe=override(RECIPES[model], list(sets)),
        limit=limit,
        device="cpu",
        threads=1,
        data_dir=str(REAL_DIR),
    )


def curves(metrics: dict) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in metrics["history"]]


@needs_data
def test_smoke_training_beats_chance(tmp_path: Path) -> None:
    metrics = run(spec(limit=3000, sets=("epochs=1",)), tmp_path)
    assert metrics["sizes"] == {"train": 3000, "val": 3000, "test": 3000}
    assert metrics["history"][0]["val_acc"] > 0.6  # chance is 0.1; this measured 0.76
    assert metrics["test_accuracy"] > 0.6


@needs_data
def test_resume_with_schedule_and_augmentation_equals_uninterrupted(tmp_path: Path) -> None:
    # bigru's recipe (AdamW, warm-up + cosine, clipping, augmentation, dropout between layers), made small.
    s = spec("bigru", sets=("hidden_size=16", "epochs=3"))
    whole = run(s, tmp_path / "whole")
    assert not run(s, tmp_path / "parts", stop_after=1)["complete"]
    run(s, tmp_path / "parts", resume=True, stop_after=2)
    parts = run(s, tmp_path / "parts", resume=True)
    assert curves(parts) == curves(whole)
    assert [parts[k] for k in ("best_epoch", "test_accuracy", "test_loss")] == [
        whole[k] for k in ("best_epoch", "test_accuracy", "test_loss")
    ]


@needs_data
def test_extending_a_constant_lr_run_equals_running_it_whole(tmp_path: Path) -> None:
    whole = run(spec("gru", sets=("epochs=2",)), tmp_path / "whole")
    run(spec("gru", sets=("epochs=1",)), tmp_path / "parts")
    parts = run(spec("gru", sets=("epochs=2",)), tmp_path / "parts", resume=True)
    assert curves(parts) == curves(whole) and parts["test_loss"] == whole["test_loss"]


@needs_data
def test_resume_refuses_other_settings_and_overwriting(tmp_path: Path) -> None:
    s = spec("bigru", sets=("hidden_size=8", "epochs=2"))
    run(s, tmp_path, stop_after=1)
    with pytest.raises(FileExistsError):
        run(s, tmp_path)
    with pytest.raises(ResumeError, match="recipe.epochs"):  # the schedule depends on the run's length
        run(spec("bigru", sets=("hidden_size=8", "epochs=3")), tmp_path, resume=True)
    with pytest.raises(ResumeError, match="impl"):
        run(spec("bigru", "torch", sets=("hidden_size=8", "epochs=2")), tmp_path, resume=True)


@needs_data
def test_checkpoints_round_trip(tmp_path: Path) -> None:
    s = spec("gru", sets=("epochs=2",))
    metrics = run(s, tmp_path)
    best = torch.load(tmp_path / BEST)
    assert best["epoch"] == metrics["best_epoch"] and best["spec"] == s.as_dict()
    model = SequenceClassifier(s.recipe, layers_for("recurrent"))
    model.load_state_dict(best["model"], strict=True)
    again = evaluate_test(model, data.load_splits(REAL_DIR, s.limit))
    assert (again["test_accuracy"], again["test_loss"]) == (metrics["test_accuracy"], metrics["test_loss"])
    last = torch.load(tmp_path / LAST)
    assert set(last) >= {"model", "optimizer", "schedule", "rng", "history", "best"}
    assert last["history"] == metrics["history"] and last["best"]["epoch"] == metrics["best_epoch"]
    assert not list(tmp_path.glob("*.tmp"))


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "gru", "--limit", "0"], "--limit: must be a positive integer"),
        (["--model", "lstm"], "invalid choice: 'lstm'"),
        (["--model", "gru", "--set", "colour=red"], "KEY one of"),
        (["--model", "gru", "--device", "tpu"], "--device"),
    ],
)
def test_cli_rejects_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        fashion_mnist.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_cli_reports_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = fashion_mnist.main(["--model", "gru", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "train-images-idx3-ubyte.gz is missing" in capsys.readouterr().err


@needs_data
def test_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.fashion_mnist",
            "--model",
            "gru",
            "--impl",
            "recurrent",
            "--limit",
            "512",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        cwd=data.REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {
        "best.pt",
        "last.pt",
        "metrics.json",
        "curves.png",
        "confusion.png",
        "gates.json",
        "gates.png",
    }  # gates: cell gru, impl recurrent
    m = json.loads((out / METRICS).read_text())
    assert m["complete"] and m["best_epoch"] == 1 and m["sizes"]["train"] == 512
    assert set(m["history"][0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    assert 0 <= m["test_accuracy"] <= 1 and m["test_loss"] > 0 and m["test_loss_report_form"] > 0
    assert set(m["per_class_accuracy"]) == set(data.CLASSES) and len(m["confusion_matrix"]) == 10
    assert m["seconds_per_epoch"] > 0 and m["device"] and m["torch_version"] == torch.__version__
    assert m["threads"] == 1 and m["config"]["recipe"]["epochs"] == 1 and m["config"]["impl"] == "recurrent"


@needs_data
def test_grid_summarizes_and_skips_finished_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = [
        "--models",
        "rnn",
        "--seeds",
        "0",
        "--strong",
        "--epochs",
        "1",
        "--limit",
        "128",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--out-root",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "results"),
    ]
    assert reproduce.main(argv) == 0
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert sorted((r["model"], r["impl"]) for r in summary["runs"]) == [("rnn", "recurrent"), ("rnn", "torch")]
    fields = {"seed", "best_epoch", "test_accuracy", "test_loss", "seconds_per_epoch", "device", "history"}
    assert all(fields <= set(r) for r in summary["runs"])
    md = (tmp_path / "results" / "summary.md").read_text()
    assert "| rnn | report | – | 1 | 4 | 0.88 | 0.345 | 27.2451 |" in md
    assert "| rnn | recurrent | cpu | 1 |" in md and "| rnn | 0 | cpu |" in md
    assert (tmp_path / "results" / "figures" / "rnn-curves.png").is_file()

    capsys.readouterr()
    assert reproduce.main(argv + ["--skip-existing"]) == 0
    assert capsys.readouterr().err.count("finished, reused") == 2
    (tmp_path / "results" / "summary.md").unlink()
    assert reproduce.main(argv + ["--summarize-only"]) == 0
    rebuilt = (tmp_path / "results" / "summary.md").read_text()
    assert rebuilt.replace(" --summarize-only", "") == md


@needs_data
def torchrun(args: list[str], out: Path) -> subprocess.CompletedProcess:
    """``python -m experiments.fashion_mnist args`` as a torchrun job of 2 processes on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    command += ["-m", "experiments.fashion_mnist", *args, "--out", str(out)]
    return subprocess.run(command, cwd=data.REPO, capture_output=True, text=True, timeout=120)


def test_torchrun_job_trains_one_model_and_rank_0_writes_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, limit, batch_size = tmp_path / "run", 256, 32
    args = ["--model", "gru", "--impl", "recurrent", "--epochs", "1", "--limit", str(limit)]
    args += ["--set", f"batch_size={batch_size}", "--threads", "1", "--device", "cpu", "--data-dir", str(REAL_DIR)]
    done = torchrun(args, out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("test accuracy") == 1  # rank 0 reports, once
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "metrics.json", "curves.png", "confusion.png"}
    assert not list(out.glob("*.tmp"))
    m = json.loads((out / METRICS).read_text())
    assert m["complete"] and m["config"]["world_size"] == 2 and m["sizes"]["train"] == limit
    last = torch.load(out / LAST)
    # Each process stepped through its half of the training set (per-process batch size): half the
    # steps of a single process; which indices make up each half is test_rank_batches_... above.
    assert last["schedule"]["last_epoch"] == math.ceil(limit / 2 / batch_size)
    assert len(last["rng"]) == 2 and not torch.equal(last["rng"][0]["torch"], last["rng"][1]["torch"])
    # The checkpoints hold the bare model, not DDP's wrapper: they load into a single-process model.
    model = SequenceClassifier(override(RECIPES["gru"], [f"batch_size={batch_size}"]), layers_for("recurrent"))
    model.load_state_dict(torch.load(out / BEST)["model"], strict=True)
    again = evaluate_test(model, data.load_splits(REAL_DIR, limit))
    assert again["test_accuracy"] == m["test_accuracy"]
    assert again["test_loss"] == pytest.approx(m["test_loss"], rel=1e-6)
    # A single process cannot continue it: its data split and schedule are those of 2 processes.
    capsys.readouterr()
    assert fashion_mnist.main([*args, "--out", str(out), "--resume"]) == 2
    assert "world_size: 2 -> 1" in capsys.readouterr().err
