"""The gate figure (experiments.gates), the LayerNorm GRU recipe (lngru) and the summary that keeps the
previous summary.json's runs. No real dataset: data.load_splits is replaced by small random splits.

A plain loop kept here records the GRU's gates from the layer's parameters (the stand-in):
recurrent.record_gates is tested against it, and the gate figure is tested with both."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import recurrent
from experiments import data, fashion_mnist, gates, plots, reproduce, summary
from experiments.models import (
    N_CLASSES,
    RECIPES,
    SequenceClassifier,
    build_model,
    check_impl,
    impls_for,
    override,
)
from experiments.train import RunSpec, run, run_name

# run() sets the thread count and seeds torch: keep that from leaking into other tests.
pytestmark = pytest.mark.usefixtures("isolated_torch_state")


# -- the stand-in recorder ---------------------------------------------------------------------------


def plain_gru(layer: nn.Module, x: Tensor, hx: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """A torch.nn.GRU-shaped layer's gates r, z, n, each (num_layers, num_directions, batch, time,
    hidden_size), batch-major and in natural time order, and its output, by a plain loop over the steps
    from its parameters (eval mode: no dropout between layers)."""
    if not layer.batch_first:
        x = x.transpose(0, 1)
    batch, steps, _ = x.shape
    directions, size = 2 if layer.bidirectional else 1, layer.hidden_size
    found = {g: x.new_empty(layer.num_layers, directions, batch, steps, size) for g in "rzn"}
    inputs = x
    for k in range(layer.num_layers):
        outputs = []
        for d in range(directions):
            suffix = "_reverse" if d else ""
            w_ih, w_hh = getattr(layer, f"weight_ih_l{k}{suffix}"), getattr(layer, f"weight_hh_l{k}{suffix}")
            b_ih = getattr(layer, f"bias_ih_l{k}{suffix}") if layer.bias else torch.zeros(3 * size)
            b_hh = getattr(layer, f"bias_hh_l{k}{suffix}") if layer.bias else torch.zeros(3 * size)
            h = x.new_zeros(batch, size) if hx is None else hx[k * directions + d]
            ys = x.new_empty(batch, steps, size)
            for t in range(steps) if d == 0 else reversed(range(steps)):
                i_r, i_z, i_n = (inputs[:, t] @ w_ih.T + b_ih).chunk(3, 1)
                h_r, h_z, h_n = (h @ w_hh.T + b_hh).chunk(3, 1)
                r = torch.sigmoid(i_r + h_r)
                z = torch.sigmoid(i_z + h_z)
                n = torch.tanh(i_n + r * h_n)
                h = (1 - z) * n + z * h
                for name, value in zip("rzn", (r, z, n)):
                    found[name][k, d, :, t] = value
                ys[:, t] = h
            outputs.append(ys)
        inputs = torch.cat(outputs, -1)
    return found, inputs if layer.batch_first else inputs.transpose(0, 1)


def _record_call(calls: list, layer: nn.Module, args: tuple, output) -> None:
    with torch.no_grad():
        calls.append(plain_gru(layer, args[0], args[1] if len(args) > 1 else None)[0])


@contextmanager
def plain_record_gates(model: nn.Module):
    """recurrent.record_gates' interface, for the GRU layers of ours inside `model` only."""
    record: dict[str, list] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, recurrent.GRU):
            record[name] = []
            handles.append(module.register_forward_hook(partial(_record_call, record[name])))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(params=["stand-in", "recurrent.record_gates"])
def recorder(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """The gate figure's tests, once with the stand-in recorder and once with the library's."""
    if request.param == "stand-in":
        monkeypatch.setattr(recurrent, "record_gates", plain_record_gates)
    return request.param


def tiny_gru(seed: int = 0, **sets: object) -> SequenceClassifier:
    recipe = override(RECIPES["gru"], [f"{k}={v}" for k, v in ({"hidden_size": 8} | sets).items()])
    return build_model(recipe, "recurrent", seed)


def test_stand_in_recomputes_the_layers_output() -> None:
    """The stand-in's loop is the GRU's own math: its outputs are the layer's."""
    torch.manual_seed(0)
    for batch_first in (True, False):
        layer = recurrent.GRU(5, 4, num_layers=2, bidirectional=True, batch_first=batch_first).eval()
        x = torch.randn(3, 6, 5) if batch_first else torch.randn(6, 3, 5)
        h0 = torch.randn(4, 3, 4)
        with torch.no_grad():
            gates_found, output = plain_gru(layer, x, h0)
            expected, _ = layer(x, h0)
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-6)
        assert gates_found["z"].shape == (2, 2, 3, 6, 4)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_record_gates_equals_the_plain_loop(batch_first: bool, bidirectional: bool) -> None:
    torch.manual_seed(1)
    model = nn.ModuleDict(
        {"rnn": recurrent.GRU(5, 4, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)}
    ).eval()
    x = torch.randn(3, 7, 5) if batch_first else torch.randn(7, 3, 5)
    with torch.no_grad():
        with recurrent.record_gates(model) as record:
            model["rnn"](x)
        with plain_record_gates(model) as plain:
            model["rnn"](x)
    assert len(record["rnn"]) == 1
    for g in "rzn":
        torch.testing.assert_close(record["rnn"][0][g], plain["rnn"][0][g], rtol=1e-5, atol=1e-6)


# -- the gate figure ---------------------------------------------------------------------------------


def direct_update_gates(model: SequenceClassifier, x: Tensor) -> Tensor:
    """z of each layer (num_layers, batch, time, hidden) of the unidirectional, batch-first GRU `model.rnn`,
    without a loop of ours: each layer's states come from a one-layer recurrent.GRU holding its weights,
    and z_t = σ(x_t W_izᵀ + b_iz + h_(t−1) W_hzᵀ + b_hz) is computed for all steps at once."""
    rnn, found, inputs = model.rnn, [], x
    size = rnn.hidden_size
    for k in range(rnn.num_layers):
        one = recurrent.GRU(inputs.shape[-1], size, batch_first=True)
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        one.load_state_dict({f"{n}_l0": getattr(rnn, f"{n}_l{k}") for n in names})
        with torch.no_grad():
            states, _ = one(inputs)
            before = torch.cat((states.new_zeros(len(x), 1, size), states[:, :-1]), 1)
            w_iz, b_iz = one.weight_ih_l0[size : 2 * size], one.bias_ih_l0[size : 2 * size]
            w_hz, b_hz = one.weight_hh_l0[size : 2 * size], one.bias_hh_l0[size : 2 * size]
            found.append(torch.sigmoid(inputs @ w_iz.T + b_iz + before @ w_hz.T + b_hz))
        inputs = states
    return torch.stack(found)


def test_gate_means_are_the_per_class_means(recorder: str) -> None:
    model = tiny_gru().train()  # gate_means must switch to eval mode (dropout) and back
    torch.manual_seed(2)
    x = torch.randn(25, 28, 28)
    y = torch.arange(25) % 9  # class 9 has no images
    means, counts = gates.gate_means(model, x, y, batch_size=7)  # batches of 7, the last one short
    assert model.training
    assert means.shape == (2, 1, N_CLASSES, 28) and means.dtype == torch.float64
    assert counts.tolist() == [3] * 7 + [2, 2, 0]
    z = direct_update_gates(model.eval(), x).double().mean(-1)  # (layers, images, time)
    for c in range(9):
        torch.testing.assert_close(means[:, 0, c], z[:, y == c].mean(1), rtol=1e-5, atol=1e-6)
    assert means[:, :, 9].isnan().all()


def test_gate_figure_and_numbers_are_written(tmp_path: Path) -> None:
    model = tiny_gru()
    x, y = torch.randn(30, 28, 28), torch.arange(30) % 10
    means, counts = gates.gate_means(model, x, y)
    record = gates.write(means, counts, tmp_path, "tiny", {"model": "gru", "epoch": 1})
    assert (tmp_path / gates.GATES_PNG).stat().st_size > 0
    saved = json.loads((tmp_path / gates.GATES_JSON).read_text())
    assert saved == record and saved["classes"] == list(data.CLASSES) and saved["gate"] == "z"
    torch.testing.assert_close(torch.tensor(saved["means"], dtype=torch.float64), means)
    # Two directions: one panel per layer and direction; a class without images is left blank.
    means2 = torch.rand(2, 2, N_CLASSES, 28, dtype=torch.float64)
    means2[:, :, 3] = float("nan")
    gates.write(means2, counts, tmp_path, "bidirectional", {})
    assert json.loads((tmp_path / gates.GATES_JSON).read_text())["means"][0][1][3][0] is None


def fake_splits(n: int = 64, seed: int = 0) -> data.Splits:
    g = torch.Generator().manual_seed(seed)
    x = lambda: torch.randn(n, 28, 28, generator=g)  # noqa: E731
    y = lambda: torch.randint(0, N_CLASSES, (n,), generator=g)  # noqa: E731
    return data.Splits(x(), y(), x(), y(), x(), y())


@pytest.fixture
def fake_data(monkeypatch: pytest.MonkeyPatch) -> data.Splits:
    """data.load_splits returns small random splits (no Fashion-MNIST files read)."""
    splits = fake_splits()
    monkeypatch.setattr(data, "load_splits", lambda data_dir, limit=None, cache_dir=None: splits)
    return splits


def tiny_spec(model: str = "gru", impl: str = "recurrent", seed: int = 0) -> RunSpec:
    return RunSpec(
        model=model,
        impl=impl,
        seed=seed,
        recipe=override(RECIPES[model], ["hidden_size=8", "epochs=1"]),
        limit=64,
        device="cpu",
        threads=1,
        data_dir="/nonexistent",
    )


def test_a_gru_run_ends_with_the_gate_figure_and_the_cli_remakes_it(
    tmp_path: Path, fake_data: data.Splits, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    run(tiny_spec(), out)
    made = json.loads((out / gates.GATES_JSON).read_text())
    assert (out / gates.GATES_PNG).is_file() and made["epoch"] == 1 and sum(made["images_per_class"]) == 64
    # From best.pt alone: the same numbers.
    (out / gates.GATES_JSON).unlink()
    assert gates.main(["--run", str(out), "--threads", "1"]) == 0
    assert json.loads((out / gates.GATES_JSON).read_text()) == made
    # A torch.nn run gets none, and the CLI says why it cannot make one.
    torch_out = tmp_path / "torch"
    run(tiny_spec(impl="torch"), torch_out)
    assert not (torch_out / gates.GATES_JSON).exists()
    assert gates.main(["--run", str(torch_out)]) == 2
    assert "cell gru with impl recurrent" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gates.main(["--run", str(tmp_path / "nothing")])
    assert "no best.pt" in capsys.readouterr().err


# -- lngru ---------------------------------------------------------------------------------------------


def test_lngru_is_grus_recipe_with_a_layer_norm_gru() -> None:
    assert RECIPES["lngru"] == dataclasses.replace(RECIPES["gru"], cell="lngru")
    assert impls_for(RECIPES["lngru"]) == ("recurrent",) and impls_for(RECIPES["gru"]) == ("recurrent", "torch")
    model = build_model(RECIPES["lngru"], "recurrent", 3)
    from recurrent.variants import LayerNormGRU

    assert isinstance(model.rnn, LayerNormGRU)
    assert (model.rnn.num_layers, model.rnn.hidden_size, model.rnn.batch_first) == (2, 128, True)
    # Seed for seed, gru's initial weights; the layer norms start as the identity.
    gru = build_model(RECIPES["gru"], "recurrent", 3).state_dict()
    state = model.state_dict()
    shared = [k for k in state if ".ln_" not in k]
    assert set(shared) == set(gru) and all(torch.equal(state[k], gru[k]) for k in shared)
    norms = [k for k in state if ".ln_" in k]
    assert len(norms) == 8 and all(
        torch.equal(state[k], torch.ones_like(state[k]) if ".ln_weight" in k else torch.zeros_like(state[k]))
        for k in norms
    )
    assert not torch.equal(build_model(RECIPES["lngru"], "recurrent", 4).fc.weight, model.fc.weight)


def test_lngru_trains_a_step() -> None:
    model = build_model(override(RECIPES["lngru"], ["hidden_size=16"]), "recurrent", 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(8, 28, 28), torch.arange(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())
    optimizer.step()
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in after)  # the layer norms learn too
    assert model(x).shape == (8, N_CLASSES)


def test_lngru_with_torch_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="torch.nn has no LayerNorm GRU"):
        build_model(RECIPES["lngru"], "torch", 0)
    with pytest.raises(ValueError, match="runs only with --impl recurrent"):
        check_impl(RECIPES["lngru"], "torch", "lngru")
    with pytest.raises(ValueError, match="torch.nn has no LayerNorm GRU"):
        SequenceClassifier(RECIPES["lngru"], nn)
    with pytest.raises(SystemExit) as info:
        fashion_mnist.main(["--model", "lngru", "--impl", "torch", "--out", "/nonexistent/x"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "'lngru'" in err and "--impl recurrent" in err and "LayerNorm GRU" in err
    with pytest.raises(SystemExit):  # --set cell=lngru on a recipe run with torch.nn: the same check
        fashion_mnist.main(["--model", "gru", "--impl", "torch", "--set", "cell=lngru", "--out", "/nonexistent/x"])
    assert "--impl recurrent" in capsys.readouterr().err


def grid_args(**changes: object) -> argparse.Namespace:
    defaults = dict(
        models=["gru", "lngru"],
        impls=["recurrent", "torch"],
        seeds=[0, 1],
        strong=[],
        strong_seeds=[0],
        epochs=None,
        limit=None,
        device="cpu",
        threads=1,
    )
    return argparse.Namespace(**(defaults | changes))


def test_grid_runs_lngru_with_recurrent_only() -> None:
    cells = [(s.model, s.impl, s.seed) for s in reproduce.grid(grid_args(), Path("/nonexistent"))]
    assert cells == [
        ("gru", "recurrent", 0),
        ("gru", "recurrent", 1),
        ("gru", "torch", 0),
        ("gru", "torch", 1),
        ("lngru", "recurrent", 0),
        ("lngru", "recurrent", 1),
    ]
    assert [s.model for s in reproduce.grid(grid_args(impls=["torch"]), Path("/nonexistent"))] == ["gru", "gru"]


# -- the summary -----------------------------------------------------------------------------------------


FIGURES = {"gru-curves.png", "gru-confusion.png", "gru-gates.png", "lngru-curves.png", "lngru-confusion.png"}


def test_summary_shows_lngru_beside_gru_and_keeps_previous_runs(
    tmp_path: Path, fake_data: data.Splits, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Figures as placeholder files (drawing them is tested above, and takes most of the time).
    for name, where in (("curves", 1), ("confusion", 2), ("gates", 2)):  # the path's position
        monkeypatch.setattr(plots, name, lambda *args, where=where, **kwargs: args[where].write_bytes(b"figure"))
    runs, results, elsewhere = tmp_path / "runs", tmp_path / "results", tmp_path / "elsewhere"
    specs = [tiny_spec("gru", "recurrent"), tiny_spec("gru", "torch"), tiny_spec("lngru", "recurrent")]
    for s in specs:
        run(s, runs / run_name(s))
    made = summary.summarize(specs, runs, results, "cmd")
    assert [(r["model"], r["impl"]) for r in made["runs"]] == [
        ("gru", "recurrent"),
        ("gru", "torch"),
        ("lngru", "recurrent"),
    ]
    md = (results / "summary.md").read_text()
    assert "| lngru | recurrent | cpu | 1 |" in md and "## lngru vs gru" in md
    assert "stronger configuration" not in md  # lngru is compared with gru, not a stronger configuration
    assert "![gru mean update gate per class and image row](figures/gru-gates.png)" in md
    assert {p.name for p in (results / "figures").iterdir()} == FIGURES
    assert "previous summary.json" not in md
    check_the_summary_keeps_previous_runs(specs, made, md, runs, results, elsewhere)


def check_the_summary_keeps_previous_runs(specs, made, md: str, runs: Path, results: Path, elsewhere: Path) -> None:
    """The run folders gone (another machine): the rebuilt summary keeps every record and figure; a run
    folder here replaces its old record; records of runs outside the grid are not shown."""
    shutil.move(runs, elsewhere)
    runs.mkdir()
    shutil.rmtree(results / "figures")
    again = summary.summarize(specs, runs, results, "cmd")
    strip = lambda r: {k: v for k, v in r.items() if k != "carried_over"}  # noqa: E731
    assert [strip(r) for r in again["runs"]] == [strip(r) for r in made["runs"]]
    assert all(r["carried_over"] for r in again["runs"])
    rebuilt = (results / "summary.md").read_text()
    assert (
        "3 of the 3 runs (gru/recurrent, gru/torch.nn, lngru/recurrent) come from the previous summary.json" in rebuilt
    )
    assert rebuilt.replace(summary.carried_note(again), "") == md
    assert {p.name for p in (results / "figures").iterdir()} == FIGURES
    shutil.move(elsewhere / run_name(specs[2]), runs / run_name(specs[2]))
    third = summary.summarize(specs, runs, results, "cmd")
    assert [r["carried_over"] for r in third["runs"]] == [True, True, False]
    assert [r["model"] for r in summary.summarize(specs[2:], runs, results, "cmd")["runs"]] == ["lngru"]
    fresh = summary.summarize(specs, runs, results.parent / "other", "cmd", fresh=True)
    assert [r["model"] for r in fresh["runs"]] == ["lngru"]
