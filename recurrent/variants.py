"""GRU and LSTM variants built on :mod:`recurrent.custom`: layer normalisation, zoneout, weight drop.

- :class:`GRUVariantCell` and :class:`LSTMVariantCell`: torch.nn's GRU and LSTM step (gate orders
  r, z, n and i, f, g, o) with three independent options, for :class:`recurrent.custom.CustomRNN`:
  ``CustomRNN(GRUVariantCell(zoneout=0.1, weight_drop=0.2), 28, 128, num_layers=2)``.
  With every option off they compute exactly what torch.nn.GRU and torch.nn.LSTM compute.
- :class:`LayerNormGRU` and :class:`LayerNormLSTM`: those cells with ``layer_norm=True``, as layers
  with torch.nn's constructor and forward, plus keyword-only ``zoneout`` and ``weight_drop``.

The options:

- ``layer_norm`` (Ba, Kiros & Hinton 2016, "Layer Normalization"): the input projection
  gi = x W_ihᵀ + b_ih and the hidden projection gh = h W_hhᵀ + b_hh are normalised apart, each over
  its full width G·H with its own gain γ (init 1) and shift β (init 0):
  LN(a) = (a − mean(a)) / sqrt(var(a) + eps) ⊙ γ + β, var the biased variance, eps = 1e-5 as in
  torch.nn.LayerNorm. The LSTM also normalises its cell state before the output tanh.
- ``zoneout`` p (Krueger et al. 2016, "Zoneout: Regularizing RNNs by Randomly Preserving Hidden
  Activations"): in training each unit of the state keeps its previous value with probability p, a
  fresh Bernoulli draw per step and unit; in evaluation the state is the expected mixture
  p·prev + (1 − p)·new.
- ``weight_drop`` p (DropConnect on W_hh, the weight drop of Merity et al. 2017's AWD-LSTM): once per
  forward pass and layer, W_hh is ``F.dropout(W_hh, p, training)``: one mask for every step of the
  pass, a new one for the next pass, nothing in evaluation.
"""

from __future__ import annotations

import numbers
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .custom import CustomCell, CustomRNN, _CustomRNNPair

__all__ = ["GRUVariantCell", "LSTMVariantCell", "LayerNormGRU", "LayerNormLSTM"]


def _check_probability(name: str, value: float) -> float:
    """A zoneout or weight-drop probability: a real number in [0, 1) (1 would freeze or drop everything)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {name}={value!r}")
    return float(value)


class _VariantCell(CustomCell):
    """What both variant cells share: the options, their checks, layer norm, zoneout and weight drop."""

    def __init__(
        self, layer_norm: bool = False, zoneout: float = 0.0, weight_drop: float = 0.0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        if not isinstance(layer_norm, bool):
            raise TypeError(f"layer_norm must be a bool, got {layer_norm!r}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"eps must be a positive number, got eps={eps!r}")
        # Plain attributes: TorchScript copies them into the compiled step, and the layer recompiles
        # its loop when one of them changes.
        self.layer_norm = layer_norm
        self.zoneout = _check_probability("zoneout", zoneout)
        self.weight_drop = _check_probability("weight_drop", weight_drop)
        self.eps = float(eps)

    def parameter_shapes(self, hidden_size: int) -> Dict[str, Tuple[int, ...]]:
        """With layer_norm: γ and β of the input and hidden projections, each (G·H,)."""
        if not self.layer_norm:
            return {}
        width = self.gates * hidden_size
        return {"ln_weight_ih": (width,), "ln_bias_ih": (width,), "ln_weight_hh": (width,), "ln_bias_hh": (width,)}

    def reset_parameter(self, name: str, parameter: Tensor, hidden_size: int) -> None:
        """Gains (``ln_weight_*``) to 1 and shifts (``ln_bias_*``) to 0, as torch.nn.LayerNorm."""
        if name.startswith("ln_weight"):
            nn.init.ones_(parameter)
        else:
            nn.init.zeros_(parameter)

    def hidden_weight(self, w_hh: Tensor) -> Tensor:
        """Weight drop: one DropConnect mask on W_hh (all directions) per forward pass, in training."""
        if self.weight_drop > 0.0:
            return F.dropout(w_hh, self.weight_drop, self.training)
        return w_hh

    def _normalised(self, a: Tensor, gain: Tensor, shift: Tensor) -> Tensor:
        """LN over the last dimension; gain and shift are (D, 1, width), one per direction, so the
        affine part is applied here rather than by layer_norm (which takes one (width,) pair)."""
        return F.layer_norm(a, [a.size(-1)], None, None, self.eps) * gain + shift

    def _zoned(self, previous: Tensor, new: Tensor) -> Tensor:
        """Zoneout of one state: draws one mask ``torch.rand_like(previous) < p`` (D, N, H) in training."""
        if self.zoneout == 0.0:
            return new
        if self.training:
            return torch.where(torch.rand_like(previous) < self.zoneout, previous, new)
        return self.zoneout * previous + (1.0 - self.zoneout) * new

    def extra_repr(self) -> str:
        options = [f"layer_norm={self.layer_norm}"] if self.layer_norm else []
        options += [f"{name}={getattr(self, name)}" for name in ("zoneout", "weight_drop") if getattr(self, name) != 0]
        if self.eps != 1e-5:
            options.append(f"eps={self.eps}")
        return ", ".join(options)


class GRUVariantCell(_VariantCell):
    """torch.nn.GRU's step with optional layer norm, zoneout and weight drop (see :mod:`recurrent.variants`).

    ``GRUVariantCell(layer_norm=False, zoneout=0.0, weight_drop=0.0, eps=1e-5)``, for
    :class:`recurrent.custom.CustomRNN`. Per step, with a = gi = x W_ihᵀ + b_ih and
    b = gh = h W_hhᵀ + b_hh (W_hh after weight drop), split into the blocks r, z, n of width H::

        a, b = LN_ih(a), LN_hh(b)                     (layer_norm only; γ_ih, β_ih, γ_hh, β_hh of width 3H)
        r = σ(a_r + b_r)
        z = σ(a_z + b_z)
        n = tanh(a_n + r ⊙ b_n)
        h' = (1 − z) ⊙ n + z ⊙ h
        h_t = m ⊙ h + (1 − m) ⊙ h'                    (zoneout p, training; m = 1 with probability p)
        h_t = p·h + (1 − p)·h'                        (zoneout p, evaluation)

    h_t is both the step's output and the next state. LN(v) = (v − mean v) / sqrt(var v + eps) ⊙ γ + β
    over all 3H entries (var biased). b_ih and b_hh sit inside the normalisation (the step receives
    gi and gh with them); ``bias=False`` leaves the shifts β as the only biases.

    Layer parameters added by layer_norm, per layer k and direction: ``ln_weight_ih_l{k}``,
    ``ln_bias_ih_l{k}``, ``ln_weight_hh_l{k}``, ``ln_bias_hh_l{k}``, each (3H,).

    Random draws, in order (so that a seeded run can be reproduced): per layer, first the weight-drop
    mask (``F.dropout`` of the stacked W_hh, (D, 3H, H)), then per time step one zoneout mask
    ``torch.rand_like(h) < p`` of shape (D, N_t, H): D directions, the N_t sequences running at step t in
    PackedSequence order (longest first; a padded batch in batch order), each direction at its own step t
    (the reverse direction reads every sequence from its end).
    """

    gates = 3

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        h = state[0]
        if self.layer_norm:
            gi = self._normalised(gi, params[0], params[1])
            gh = self._normalised(gh, params[2], params[3])
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        new = self._zoned(h, (1.0 - z) * n + z * h)
        return new, [new]


class LSTMVariantCell(_VariantCell):
    """torch.nn.LSTM's step with optional layer norm, zoneout and weight drop (see :mod:`recurrent.variants`).

    ``LSTMVariantCell(layer_norm=False, zoneout=0.0, weight_drop=0.0, eps=1e-5)``, for
    :class:`recurrent.custom.CustomRNN` (two states: ``(h0, c0)`` in, ``(h_n, c_n)`` out). Per step, with
    a = gi = x W_ihᵀ + b_ih and b = gh = h W_hhᵀ + b_hh (W_hh after weight drop), blocks i, f, g, o::

        a, b = LN_ih(a), LN_hh(b)                     (layer_norm only; γ, β of width 4H each)
        i, f, g, o = σ(a_i + b_i), σ(a_f + b_f), tanh(a_g + b_g), σ(a_o + b_o)
        c' = f ⊙ c + i ⊙ g
        h' = o ⊙ tanh(LN_c(c'))                       (without layer_norm: o ⊙ tanh(c'))
        h_t = m_h ⊙ h + (1 − m_h) ⊙ h',  c_t = m_c ⊙ c + (1 − m_c) ⊙ c'     (zoneout p, training)
        h_t = p·h + (1 − p)·h',          c_t = p·c + (1 − p)·c'             (zoneout p, evaluation)

    Zoneout acts on both states with the same p and independent masks m_h, m_c (1 with probability p),
    as in Krueger et al.; h' is computed from the new c', not the zoned-out c_t. The step's output is
    h_t. LN_c normalises over H with its own γ_c (init 1), β_c (init 0); the carried state is the
    un-normalised c. LN as in :class:`GRUVariantCell`; b_ih and b_hh sit inside LN_ih and LN_hh.

    Layer parameters added by layer_norm, per layer k and direction: ``ln_weight_ih_l{k}``,
    ``ln_bias_ih_l{k}``, ``ln_weight_hh_l{k}``, ``ln_bias_hh_l{k}`` (4H,), ``ln_weight_c_l{k}``,
    ``ln_bias_c_l{k}`` (H,).

    Random draws, in order: per layer, the weight-drop mask (``F.dropout`` of the stacked W_hh,
    (D, 4H, H)), then per time step the zoneout mask of h, then that of c, each
    ``torch.rand_like(state) < p`` of shape (D, N_t, H), rows as in :class:`GRUVariantCell`.
    """

    gates = 4
    state_names = ("h", "c")

    def parameter_shapes(self, hidden_size: int) -> Dict[str, Tuple[int, ...]]:
        """With layer_norm: γ and β of both projections (4H,) and of the cell state (H,)."""
        shapes = super().parameter_shapes(hidden_size)
        if self.layer_norm:
            shapes.update(ln_weight_c=(hidden_size,), ln_bias_c=(hidden_size,))
        return shapes

    def step(self, gi: Tensor, gh: Tensor, state: List[Tensor], params: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        h, c = state[0], state[1]
        if self.layer_norm:
            gi = self._normalised(gi, params[0], params[1])
            gh = self._normalised(gh, params[2], params[3])
        i, f, g, o = (gi + gh).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        shown = self._normalised(c_new, params[4], params[5]) if self.layer_norm else c_new
        h_new = torch.sigmoid(o) * torch.tanh(shown)
        h_t = self._zoned(h, h_new)  # drawn before c's mask: the documented order
        c_t = self._zoned(c, c_new)
        return h_t, [h_t, c_t]


def _variant_repr(layer: CustomRNN) -> str:
    """One line, as torch.nn's layers print: the layer's arguments, then the non-default options."""
    values = {name: getattr(layer.cell, name) for name in ("zoneout", "weight_drop")}
    options = "".join(f", {name}={value}" for name, value in values.items() if value != 0)
    return f"{type(layer).__name__}({layer.extra_repr()}{options})"


class LayerNormGRU(CustomRNN):
    """A layer-normalised GRU with torch.nn.GRU's API: :class:`GRUVariantCell` with ``layer_norm=True``.

    ``LayerNormGRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, zoneout=0.0, weight_drop=0.0)``. The step's math,
    the extra parameters (``ln_weight_ih_l{k}``, ...) and the random draws are :class:`GRUVariantCell`'s;
    ``dropout`` is torch.nn's dropout between layers. Forward: ``(input, hx=None) -> (output, h_n)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        cell = GRUVariantCell(layer_norm=True, zoneout=zoneout, weight_drop=weight_drop)
        super().__init__(
            cell, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype
        )

    def __repr__(self) -> str:
        return _variant_repr(self)


class LayerNormLSTM(_CustomRNNPair):
    """A layer-normalised LSTM with torch.nn.LSTM's API: :class:`LSTMVariantCell` with ``layer_norm=True``.

    ``LayerNormLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, device=None, dtype=None, *, zoneout=0.0, weight_drop=0.0)`` (no proj_size).
    The step's math, the extra parameters and the random draws are :class:`LSTMVariantCell`'s.
    Forward: ``(input, (h0, c0)=None) -> (output, (h_n, c_n))``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        cell = LSTMVariantCell(layer_norm=True, zoneout=zoneout, weight_drop=weight_drop)
        super().__init__(
            cell, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype
        )

    def __repr__(self) -> str:
        return _variant_repr(self)
