"""The benchmark scripts run end to end on tiny shapes, and their CPU memory probe is exact."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT

BENCH = ROOT / "benchmarks"
CUSTOM, CUSTOM_LOOP = "custom cell", "custom cell, Python loop"
CONTENDERS = {
    "torch.nn",
    "recurrent",
    "recurrent (TorchScript)",
    "recurrent (compiled)",
    "eager cells",
    "scripted",
    CUSTOM,
    CUSTOM_LOOP,
}  # on CPU
MODES = {"inference", "fwd+bwd"}
NO_PACKED_PATH = "n/a: cell loop has no packed path"
NOT_GRU = "n/a: the custom cell is timed on GRU shapes"


def expected_status(doc: dict, shape: str, contender: str) -> str:
    """'ok', or why a contender does not run a shape: the cell loops have no packed path, the
    custom cell is timed on GRU shapes only."""
    kind = next(s["kind"] for s in doc["shapes"] if s["name"] == shape)
    if contender in (CUSTOM, CUSTOM_LOOP) and kind != "gru":
        return NOT_GRU
    if shape in packed(doc) and contender == "eager cells":
        return NO_PACKED_PATH
    if shape in packed(doc) and contender == CUSTOM_LOOP:
        return "n/a: the Python loop has no packed path"
    return "ok"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("bench_speed", BENCH / "speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("speed")
    cmd = [sys.executable, str(BENCH / "speed.py"), "--device", "cpu", "--shapes", "tiny"]
    subprocess.run(cmd + ["--reps", "3", "--threads", "1", "--out", str(out)], check=True, timeout=120)
    path = out / "speed-cpu.json"
    return path, json.loads(path.read_text())


def packed(doc: dict) -> set[str]:
    return {s["name"] for s in doc["shapes"] if s["packed"]}


def test_json_has_every_contender_and_mode(run) -> None:
    path, doc = run
    shapes = {s["name"] for s in doc["shapes"]}
    assert {s["kind"] for s in doc["shapes"]} >= {"gru", "lstm"} and packed(doc)
    got = {(r["shape"], r["mode"], r["contender"]): r["status"] for r in doc["results"]}
    assert set(got) == {(s, m, c) for s in shapes for m in MODES for c in CONTENDERS}
    for key, status in got.items():
        assert status == expected_status(doc, key[0], key[2]), key
    for s in doc["shapes"]:
        lens = s["lengths"]
        assert (lens is not None) == s["packed"]
        if lens:
            assert len(lens) == s["batch"]
            assert s["seq_len"] // 2 <= min(lens) <= max(lens) <= s["seq_len"]
    for r in doc["results"]:
        if r["status"] != "ok":
            continue
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0
        assert len(r["times_ms"]) == 3
        if r["mode"] == "fwd+bwd":
            assert math.isfinite(r["mem_ratio"]) and r["mem_ratio"] > 0
    assert (path.parent / doc["meta"]["chart"]).stat().st_size > 0
    assert doc["meta"]["threads"] == 1 and doc["meta"]["torch"] == torch.__version__


def test_every_contender_matched_torch_nn(run) -> None:
    doc = run[1]
    for shape, by_name in doc["checks"].items():
        skipped = {"torch.nn"} | {c for c in CONTENDERS if expected_status(doc, shape, c) != "ok"}
        assert set(by_name) == CONTENDERS - skipped
        assert all(c["ok"] for c in by_name.values()), by_name


def test_report_renders_markdown(run, tmp_path: Path) -> None:
    path, doc = run
    out = tmp_path / "RESULTS.md"
    notes = tmp_path / "NOTES.md"
    notes.write_text("## What limits it\n\nhand-written\n")
    subprocess.run(
        [sys.executable, str(BENCH / "report.py"), str(path), "--output", str(out), "--notes", str(notes)],
        check=True,
        timeout=60,
    )
    text = out.read_text()
    assert "| shape | mode | contender | median ms |" in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny-")]
    assert len(rows) == len(doc["results"])
    assert "### Targets" in text and "hand-written" in text
    for name in packed(doc):
        assert f"- `{name}`: " in text and "lengths" in text
    chart = text.split("](", 1)[1].split(")", 1)[0]  # the one image link, relative to RESULTS.md
    assert (out.parent / chart).resolve() == (path.parent / "speed-cpu.png").resolve()


def test_cpu_peak_memory_probe_is_exact(speed) -> None:
    """A known allocation pattern: 1 MiB + 3 MiB live together, then 2 MiB alone -> peak 4 MiB."""

    def pattern() -> None:
        a = torch.empty(1 << 20, dtype=torch.uint8)
        b = torch.empty(3 << 20, dtype=torch.uint8)
        del a, b
        torch.empty(2 << 20, dtype=torch.uint8)

    assert speed.peak_cpu_bytes(pattern) == 4 << 20


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_cell_loop_matches_layer_gradients(speed, kind: str) -> None:
    """The eager-cell contender computes torch.nn's function, gradients included."""
    layer = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True)
    loop = speed.CellLoop(layer, getattr(torch.nn, kind + "Cell"), {})
    x = torch.randn(5, 2, 3, requires_grad=True)
    ref, mine = speed.flat(layer(x)), speed.flat(loop(x))
    for a, b in zip(ref, mine):
        torch.testing.assert_close(a, b)
    (gx_ref,) = torch.autograd.grad(sum(t.sum() for t in ref), x)
    (gx,) = torch.autograd.grad(sum(t.sum() for t in mine), x)
    torch.testing.assert_close(gx_ref, gx)


def test_check_flags_a_different_function(speed) -> None:
    layer = torch.nn.RNN(3, 4)
    loop = speed.CellLoop(layer, torch.nn.RNNCell, {"nonlinearity": "tanh"})
    with torch.no_grad():
        loop.cells[0].bias_hh.add_(1e-3)
    checks = speed.check_outputs({"torch.nn": layer, "eager cells": loop}, torch.randn(5, 2, 3), 1e-4)
    assert not checks["eager cells"]["ok"] and checks["eager cells"]["max_abs_diff"] > 1e-4


def test_backend_contenders_set_and_restore_the_variable(speed, monkeypatch) -> None:
    """Each of our layer's contenders runs under its RECURRENT_BACKEND; the shell's setting comes back."""
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(os.environ.get("RECURRENT_BACKEND"))
            return x

    probe = Probe()
    monkeypatch.setenv("RECURRENT_BACKEND", "auto")
    speed.OnBackend(probe, "torchscript")(torch.zeros(1))
    speed.OnBackend(probe, None)(torch.zeros(1))  # the default: the variable unset
    assert seen == ["torchscript", None] and os.environ["RECURRENT_BACKEND"] == "auto"
    monkeypatch.delenv("RECURRENT_BACKEND")
    with pytest.raises(KeyError), speed.backend_env("triton"):
        raise KeyError
    assert "RECURRENT_BACKEND" not in os.environ


def test_export_speed_quick_run_checks_and_reports(tmp_path: Path) -> None:
    """benchmarks/export_speed.py --quick: every contender times, matches torch.nn, and the report
    renders its table and targets."""
    cmd = [sys.executable, str(BENCH / "export_speed.py"), "--quick", "--threads", "1", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, timeout=300, capture_output=True)
    doc = json.loads((tmp_path / "export-cpu-quick.json").read_text())
    contenders = {row["contender"] for row in doc["rows"]}
    assert {"torch.nn (native ops)", "recurrent (Scan)", "recurrent (native ops)", "recurrent eager"} <= contenders
    assert all(row["ok"] and row["median_ms"] > 0 for row in doc["rows"])
    out = tmp_path / "RESULTS.md"
    subprocess.run(
        [sys.executable, str(BENCH / "report.py"), str(tmp_path / "export-cpu-quick.json"), "--output", str(out)],
        check=True,
        timeout=60,
    )
    text = out.read_text()
    assert "| tiny-gru | onnxruntime | recurrent (Scan) |" in text and "in onnxruntime ≤ 1.5×" in text


def test_cpu_ops_times_every_piece_and_profiles_the_fast_path() -> None:
    """benchmarks/cpu_ops.py (NOTES.md's fast-path figures): every piece timed, and the layer's profile
    shows oneDNN's products (or the native op) where the build has them."""
    cmd = [sys.executable, str(BENCH / "cpu_ops.py"), "--reps", "2", "--threads", "1", "--profile", "GRU:inference"]
    out = subprocess.run(cmd, check=True, timeout=300, capture_output=True, text=True).stdout
    assert "torch.tanh" in out and "torch.sigmoid" in out and "GRU inference" in out
    from recurrent.kernels import products

    if products.ONEDNN:
        for piece in ("oneDNN packed", "input projection 3584x128", "products.weight_grad"):
            assert piece in out, piece
        # The profiled inference runs oneDNN's products, or the native op that makes them all.
        assert "mkldnn::_linear_pointwise" in out or "recurrent_cpu::stack_forward" in out
    assert "LSTM step gate math" in out and ("torch.compile (Inductor C++)" in out or "not available here" in out)
    assert "LSTM recurrence" in out or "native sequence ops:" in out, "the native op is timed, or why not is printed"
