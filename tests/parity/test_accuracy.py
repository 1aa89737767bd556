"""The float32 yardstick (helpers.assert_as_accurate): ours judged against the float64 result, as accurate
as torch.nn's float32. It must pass float32 rounding on any CPU and fail a real bug: a wrong row, a dropped
term in the forward or in a gradient's sum, a NaN where there is none."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import (
    ACCURACY_FLOOR,
    accuracy,
    assert_as_accurate,
    assert_like_torch_nn,
    grads,
    hidden_arg,
    initial_states,
    pair,
    triton_forced,
)
from torch.nn.utils.rnn import pack_padded_sequence

from recurrent.kernels import cpu

pytestmark = pytest.mark.native_suite

EPS = torch.finfo(torch.float32).eps


def test_rounding_passes_and_errors_fail():
    """Element-level: float32 rounding (a few ulps of the magnitude) passes; a swapped row, an element off by
    1e-3 of the magnitude, a NaN where the float64 result is finite, a lost infinity do not."""
    torch.manual_seed(0)
    exact = torch.randn(40, 9, dtype=torch.float64) * 3
    baseline = exact.float()
    rounded = (exact * (1 + 4 * EPS * torch.randn_like(exact).clamp(-1, 1))).float()
    assert_as_accurate(rounded, baseline, exact, "rounding")
    one_element = torch.zeros_like(rounded)
    one_element[7, 2] = 1e-3 * exact.abs().max().item()
    for name, broken in {
        "a swapped row": rounded[[1, 0, *range(2, 40)]],
        "one element off by 1e-3 of the magnitude": rounded + one_element,
        "a NaN": rounded.masked_fill(torch.arange(360).view(40, 9) == 100, float("nan")),
    }.items():
        with pytest.raises(AssertionError):
            assert_as_accurate(broken, baseline, exact, name)
    with_inf = exact.clone()
    with_inf[3, 3] = float("inf")
    with pytest.raises(AssertionError, match="infinities"):
        assert_as_accurate(rounded, with_inf.float(), with_inf, "a lost infinity")


def test_the_floor_scales_with_the_magnitude():
    """Where the baseline is exact, the allowance is ACCURACY_FLOOR roundings of the largest magnitude."""
    exact = torch.tensor([1e-3, -2e-3], dtype=torch.float64)
    error, allowed = accuracy(exact.float(), exact, exact)
    assert allowed == pytest.approx(ACCURACY_FLOOR * EPS * 2e-3) and error < allowed


NOT_TRITON = pytest.mark.skipif(triton_forced(), reason="the native CPU kernels' path")
NATIVE = pytest.mark.skipif(not cpu.available(), reason="the native CPU kernels did not load")


def issue_case(kind: str = "GRU"):
    """The shape the old fixed tolerance failed on, on another CPU (issue 32): 150 packed rows of lengths 1 to
    6, two layers, both directions, one block of rows per thread."""
    torch.manual_seed(1)
    name, _, nonlinearity = kind.partition("_")
    reference, ours = pair(
        name, 3, 10, 2, bidirectional=True, **({"nonlinearity": nonlinearity} if nonlinearity else {})
    )
    lengths = torch.randint(1, 7, (150,))
    x = torch.randn(6, 150, 3, requires_grad=True)
    return reference, ours, lengths, [x, *initial_states(name, 10, 0, (4, 150), torch.float32)]


def run_packed(module, inputs, lengths, output_hook=lambda out: out):
    """Output rows, final states and every gradient, with ``output_hook`` applied to the output rows."""
    x, states = inputs[0], inputs[1:]
    out, finals = module(pack_padded_sequence(x, lengths, enforce_sorted=False), hidden_arg(states))
    outs = [output_hook(out.data), *(finals if isinstance(finals, tuple) else (finals,))]
    return outs + grads(outs, [x, *states, *module.parameters()])


@NOT_TRITON
@NATIVE
@pytest.mark.parametrize("kind", ["RNN_tanh", "GRU"])
def test_a_wrong_row_fails(kind):
    reference, ours, lengths, inputs = issue_case(kind)
    assert_like_torch_nn(lambda m, i: run_packed(m, i, lengths), reference, ours, inputs)

    def swap_two_rows(m, i):
        hook = (lambda out: out[[1, 0, *range(2, out.size(0))]]) if m is ours else (lambda out: out)
        return run_packed(m, i, lengths, hook)

    with pytest.raises(AssertionError, match="tensor 0"):
        assert_like_torch_nn(swap_two_rows, reference, ours, inputs)


def wrapped_kernel(monkeypatch, mode: str, **changes):
    """The native kernel of ``mode`` with some of its layer functions replaced (each given the original), and
    without its whole-stack ops, so that the layers run on them."""
    original = cpu.native_kernel(mode, False)
    fields = {name: (lambda wrap, inner: lambda *a, **k: wrap(inner, *a, **k))(wrap, getattr(original, name))
              for name, wrap in changes.items()}  # fmt: skip
    monkeypatch.setitem(cpu._KERNELS, mode, original._replace(stack=None, stack_backward=None, **fields))


@NOT_TRITON
@NATIVE
def test_a_dropped_term_in_the_forward_fails(monkeypatch):
    """The GRU without its hidden bias b_hn's term: off by about the bias (~0.1)."""
    reference, ours, lengths, inputs = issue_case()

    def no_hidden_bias(inner, x, w_ih, b_ih, state0, w_hh, b_hh, *rest):
        return inner(x, w_ih, b_ih, state0, w_hh, None if b_hh is None else b_hh * 0, *rest)

    wrapped_kernel(monkeypatch, "GRU", rows_forward=no_hidden_bias)
    with pytest.raises(AssertionError):
        assert_like_torch_nn(lambda m, i: run_packed(m, i, lengths), reference, ours, inputs)


@NOT_TRITON
@NATIVE
def test_a_dropped_term_in_a_gradient_sum_fails(monkeypatch):
    """One row of 900 missing from the weight and bias gradients' sums (its gate gradients zeroed): judged on
    the parameters' gradients alone, a few percent of one sum, where float32 rounding is 1e-6 of it."""
    reference, ours, lengths, inputs = issue_case()

    def without_last_row(inner, *args):
        dgi, dgh, dstate0, dextra = inner(*args)
        dgi[:, -1] = 0
        return dgi, dgh, dstate0, dextra

    def parameter_grads(module, inputs):
        return run_packed(module, inputs, lengths)[-len(list(module.parameters())) :]

    assert_like_torch_nn(parameter_grads, reference, ours, inputs)
    wrapped_kernel(monkeypatch, "GRU", backward=without_last_row)
    ours = copy.deepcopy(ours)  # a layer keeps its last route, decided before the kernel changed
    with pytest.raises(AssertionError, match=r"tensor \d+: .* from the float64 result"):
        assert_like_torch_nn(parameter_grads, reference, ours, inputs)
