"""The experiment's models and their training recipes, all configured in RECIPES below."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SEQ_LEN, INPUT_SIZE, N_CLASSES = 28, 28, 10  # each image is 28 rows of 28 pixels


@dataclass(frozen=True)
class Recipe:
    # model
    cell: str  # "rnn" | "gru" | "lngru" (recurrent.variants.LayerNormGRU: impl "recurrent" only)
    hidden_size: int
    num_layers: int
    bidirectional: bool
    readout: str  # "flatten" (all steps) | "last" (last step) | "pool" (mean and max over time)
    dropout: float  # before the classifier's last Linear (flatten: after fc, before ReLU)
    fc_hidden: int = 0  # 0: Dropout -> Linear(features, 10); else Linear -> Dropout -> ReLU -> Linear
    rnn_dropout: float = 0.0  # between stacked recurrent layers (the layers' own `dropout` argument)
    # training
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"  # "adam" | "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" | "onecycle" (linear warm-up, then cosine to zero)
    warmup: float = 0.1  # fraction of the steps spent warming up (onecycle only)
    clip_grad_norm: float = 0.0  # 0: no clipping
    augment: bool = False  # random horizontal flip and shifts of up to `shift` pixels
    shift: int = 2


RECIPES: dict[str, Recipe] = {
    # The report's bidirectional RNN: all 28 steps' outputs (28 x 256) -> fc(512) -> Dropout -> ReLU -> fc2.
    "rnn": Recipe(
        cell="rnn", hidden_size=128, num_layers=1, bidirectional=True, readout="flatten", dropout=0.2, fc_hidden=512
    ),
    # The report's 2-layer GRU: last step's output (128) -> Dropout(0.1) -> Linear(128, 10).
    "gru": Recipe(cell="gru", hidden_size=128, num_layers=2, bidirectional=False, readout="last", dropout=0.1),
    # The report's GRU with a layer-normalised recurrent layer (recurrent.variants.LayerNormGRU): gru's
    # recipe and budget, and at the start gru's weights (see build_model), so only the layer norm differs.
    "lngru": Recipe(cell="lngru", hidden_size=128, num_layers=2, bidirectional=False, readout="last", dropout=0.1),
    # Our stronger configuration, chosen on the validation set only (see experiments/results/summary.md):
    # both directions, mean+max pooling over time, AdamW with a one-cycle schedule, clipping, and
    # row-preserving augmentation (horizontal flips, shifts of up to 1 pixel; 2 pixels did worse),
    # 256 wide (128 did worse), 20 epochs (12 did worse).
    "bigru": Recipe(
        cell="gru",
        hidden_size=256,
        num_layers=2,
        bidirectional=True,
        readout="pool",
        dropout=0.3,
        rnn_dropout=0.1,
        epochs=20,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.05,
        schedule="onecycle",
        clip_grad_norm=1.0,
        augment=True,
        shift=1,
    ),
}
# A model compared with a report model trained with the same recipe: model -> the report model.
BASELINES = {"lngru": "gru"}
IMPLS = ("recurrent", "torch")
CELL_IMPLS = {"rnn": IMPLS, "gru": IMPLS, "lngru": ("recurrent",)}  # torch.nn has no LayerNorm GRU
CHOICES = {
    "cell": tuple(CELL_IMPLS),
    "readout": ("flatten", "last", "pool"),
    "optimizer": ("adam", "adamw"),
    "schedule": ("constant", "onecycle"),
}


def override(recipe: Recipe, settings: list[str]) -> Recipe:
    """Apply KEY=VALUE strings (from --set) to a recipe, parsing each value as its field's type."""
    types = {f.name: type(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)}
    changes: dict[str, object] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(types)}")
        if types[key] is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {item!r}: {key} takes true or false")
            changes[key] = value.lower() in ("true", "1")
        else:
            try:
                changes[key] = types[key](value)
            except ValueError:
                raise ValueError(f"--set {item!r}: {key} takes a {types[key].__name__}") from None
        if key in CHOICES and value not in CHOICES[key]:
            raise ValueError(f"--set {item!r}: {key} is one of {', '.join(CHOICES[key])}")
    return dataclasses.replace(recipe, **changes)


def impls_for(recipe: Recipe) -> tuple[str, ...]:
    """The impls that can run a recipe: both for torch.nn's kinds, "recurrent" alone for lngru."""
    return CELL_IMPLS[recipe.cell]


def check_impl(recipe: Recipe, impl: str, model: str | None = None) -> None:
    """A clear ValueError when `impl` cannot run `recipe` (e.g. lngru with --impl torch)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose from {', '.join(IMPLS)}")
    if impl not in impls_for(recipe):
        name = f"model {model!r} (cell {recipe.cell!r})" if model else f"cell {recipe.cell!r}"
        raise ValueError(
            f"{name} runs only with --impl {' or '.join(impls_for(recipe))}: torch.nn has no "
            "LayerNorm GRU (it is recurrent.variants.LayerNormGRU)"
        )


def layer_class(cell: str, layers: ModuleType) -> type[nn.Module]:
    """The recurrent layer class of `cell` in `layers` (torch.nn or recurrent)."""
    if cell == "lngru":
        if layers is nn:
            raise ValueError("cell 'lngru' runs only with impl 'recurrent': torch.nn has no LayerNorm GRU")
        return importlib.import_module(f"{layers.__name__}.variants").LayerNormGRU
    return {"rnn": layers.RNN, "gru": layers.GRU}[cell]


class SequenceClassifier(nn.Module):
    """A recurrent layer reading the image row by row, a readout over its outputs, and a classifier."""

    def __init__(self, recipe: Recipe, layers: ModuleType) -> None:
        super().__init__()
        r = recipe
        cell = layer_class(r.cell, layers)
        self.readout = r.readout
        self.rnn = cell(
            INPUT_SIZE,
            r.hidden_size,
            r.num_layers,
            batch_first=True,
            bidirectional=r.bidirectional,
            dropout=r.rnn_dropout,
        )
        width = r.hidden_size * (2 if r.bidirectional else 1)
        features = {"flatten": SEQ_LEN * width, "last": width, "pool": 2 * width}[r.readout]
        self.dropout = nn.Dropout(r.dropout)
        self.fc = nn.Linear(features, r.fc_hidden or N_CLASSES)
        self.fc2 = nn.Linear(r.fc_hidden, N_CLASSES) if r.fc_hidden else None

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)  # (batch, 28, width)
        if self.readout == "flatten":
            features = out.flatten(1)
        elif self.readout == "last":
            features = out[:, -1]
        else:
            features = torch.cat((out.mean(1), out.amax(1)), dim=1)
        if self.fc2 is None:
            return self.fc(self.dropout(features))
        return self.fc2(F.relu(self.dropout(self.fc(features))))


def layers_for(impl: str) -> ModuleType:
    """The module providing RNN and GRU: ours or torch.nn (imported lazily: torch runs need no `recurrent`)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose from {', '.join(IMPLS)}")
    return nn if impl == "torch" else importlib.import_module("recurrent")


def build_model(recipe: Recipe, impl: str, seed: int) -> SequenceClassifier:
    """Initialise with torch.nn layers under `seed`, then copy into `impl`'s layers, so that both
    impls start from the same weights (their state_dict keys are identical by design).

    lngru (impl "recurrent" only) starts from the weights that gru's recipe gets under the same seed:
    the torch.nn GRU model is built exactly as for gru (same draws, in the same order), and every
    parameter the two share is copied: the classifier head (fc), and W_ih, W_hh, b_ih, b_hh of each
    layer, which LayerNormGRU names and shapes as torch.nn.GRU does. Only the layer norms' gains (1) and
    shifts (0), which a GRU does not have, keep LayerNormGRU's own initialisation. So, seed for seed,
    an lngru run and a gru run start from the same point, and their difference is the layer norm's."""
    check_impl(recipe, impl)
    torch.manual_seed(seed)
    if recipe.cell == "lngru":
        reference = SequenceClassifier(dataclasses.replace(recipe, cell="gru"), nn)
        model = SequenceClassifier(recipe, layers_for(impl))
        missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
        if unexpected or any(".ln_" not in k for k in missing):  # nothing but the layer norms may differ
            raise RuntimeError(
                f"lngru and gru differ in more than the layer norms: missing {missing}, unexpected {unexpected}"
            )
        return model
    reference = SequenceClassifier(recipe, nn)
    if impl == "torch":
        return reference
    model = SequenceClassifier(recipe, layers_for(impl))
    model.load_state_dict(reference.state_dict(), strict=True)
    return model
