"""Building a torch.nn reference and our module with the same weights, and comparing them."""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

import recurrent

ROOT = Path(__file__).resolve().parents[1]  # the repository
TOLERANCE = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-5, atol=1e-5)}
OUTPUT_NAMES = ("output", "h_n", "c_n")  # what flat() returns, in order


def pair(kind: str, *args, **kwargs) -> tuple[nn.Module, nn.Module]:
    """(torch.nn module, our module) with ours loaded from torch.nn's state_dict."""
    reference = getattr(nn, kind)(*args, **kwargs)
    ours = getattr(recurrent, kind)(*args, **kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def scripted(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(module)


def constructor_extras(kind: str, proj_size: int = 0) -> dict:
    """The kind's extra constructor arguments: "RNN_relu" -> nonlinearity="relu", "LSTM" -> proj_size."""
    name, _, nonlinearity = kind.partition("_")
    if nonlinearity:
        return {"nonlinearity": nonlinearity}
    return {"proj_size": proj_size} if name == "LSTM" else {}


def initial_states(
    kind: str, hidden_size: int, proj_size: int, lead: tuple[int, ...], dtype: torch.dtype, device: str = "cpu"
) -> list[Tensor]:
    """[h0] or [h0, c0] with torch.nn's shapes (h0 of size proj_size for a projected LSTM)."""
    sizes = [proj_size or hidden_size, hidden_size] if kind.startswith("LSTM") else [hidden_size]
    return [torch.randn(*lead, size, dtype=dtype, device=device, requires_grad=True) for size in sizes]


def hidden_arg(states: Sequence[Tensor]) -> Union[None, Tensor, tuple[Tensor, ...]]:
    """The hx argument for a list of initial states: None, h0, or (h0, c0)."""
    if not states:
        return None
    return states[0] if len(states) == 1 else tuple(states)


def flat(result: tuple) -> list[Tensor]:
    """(output, h_n) or (output, (h_n, c_n)) as a flat list of tensors."""
    output, finals = result
    return [output, *(finals if isinstance(finals, tuple) else (finals,))]


def gradient_names(module: nn.Module, states: int) -> list[str]:
    """Names for the gradients of [input, *initial states, *module.parameters()], in that order."""
    return [f"grad of {n}" for n in ["input", "h0", "c0"][: 1 + states] + [n for n, _ in module.named_parameters()]]


def grads(outputs: Sequence[Tensor], inputs: Sequence[Tensor]) -> list[Optional[Tensor]]:
    """Gradients of a loss that weighs every output element differently (catches transposed grads)."""
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view_as(o)).sum() for o in outputs)
    # retain_graph: the reference and ours may share the graph of their input (e.g. a PackedSequence).
    return list(torch.autograd.grad(loss, list(inputs), allow_unused=True, retain_graph=True))


def assert_close(
    actual: Tensor, expected: Tensor, dtype: torch.dtype, what: str, exact: Optional[Tensor] = None
) -> None:
    """float64: element by element to 1e-9. Any other dtype: judged against ``exact``, the same
    computation in float64 (:func:`assert_as_accurate`); torch.nn's float32 is not exact either."""
    if dtype == torch.float64:
        torch.testing.assert_close(actual, expected, **TOLERANCE[dtype], msg=lambda m: f"{what}: {m}")
        return
    assert exact is not None, f"{what}: a {dtype} comparison needs the float64 result to judge both by"
    assert_as_accurate(actual, expected, exact, what)


def assert_all_close(
    actual: Sequence[Optional[Tensor]],
    expected: Sequence[Optional[Tensor]],
    dtype: torch.dtype,
    names: Sequence[str],
    exact: Optional[Sequence[Optional[Tensor]]] = None,
) -> None:
    """Pairwise assert_close, after checking that nothing is missing: as many tensors as torch.nn, one name each,
    and a None (an unused input's gradient) exactly where torch.nn has one. ``exact``: the float64 results,
    which a float32 comparison needs."""
    assert len(actual) == len(expected) == len(names), (
        f"{len(actual)} tensors, torch.nn has {len(expected)}, {len(names)} names: {list(names)}"
    )
    exact = [None] * len(expected) if exact is None else exact
    assert len(exact) == len(expected), f"{len(exact)} float64 results for {len(expected)} tensors"
    for a, e, x, name in zip(actual, expected, exact, names):
        if e is None:
            assert a is None, f"{name}: torch.nn's is None, ours is not"
        else:
            assert a is not None, f"{name}: ours is None, torch.nn's is not"
            assert_close(a, e, dtype, name, x)


# -- float32 judged against float64 ------------------------------------------------------------------
# A float32 result is never exact, torch.nn's no more than ours: two float32 results that sum in another
# order (another CPU's vector width, another thread split) differ by their rounding, which a fixed
# tolerance between them mistakes for a bug on some CPU or other. So ours is judged against the same
# computation in float64 and must be about as accurate as torch.nn's float32 is: at most
# ACCURACY_FACTOR times torch.nn's largest error, plus ACCURACY_FLOOR float32 roundings of the tensor's
# largest magnitude (where torch.nn happens to be exact). A real bug (a wrong row, a dropped term) is off
# by about the values themselves: thousands of times more (tests/parity/test_accuracy.py injects such errors).
ACCURACY_FACTOR = 4.0
ACCURACY_FLOOR = 64


def accuracy(actual: Tensor, baseline: Tensor, exact: Tensor) -> tuple[float, float]:
    """(ours' largest distance from ``exact``, the distance allowed it: ACCURACY_FACTOR times
    ``baseline``'s plus ACCURACY_FLOOR roundings of the largest |exact|). NaN and infinities must stand
    where ``exact`` has them (inf: the same sign); only the finite elements are measured."""
    exact = exact.detach().to(torch.float64)
    actual, baseline = actual.detach().to(exact), baseline.detach().to(exact)
    assert actual.shape == exact.shape == baseline.shape, (
        f"shapes: ours {tuple(actual.shape)}, baseline {tuple(baseline.shape)}, float64 {tuple(exact.shape)}"
    )
    finite = exact.isfinite()
    special = ~finite
    same_nan = actual[special].isnan() == exact[special].isnan()
    same_inf = (actual[special] == exact[special]) | exact[special].isnan()
    assert bool((same_nan & same_inf).all()), "NaN or infinities where the float64 result has none, or the reverse"
    if not bool(finite.any()):
        return 0.0, 0.0
    eps = torch.finfo(torch.float32).eps
    # A NaN of ours where the float64 result is finite is infinitely far; one of the baseline's says nothing.
    error = (actual[finite] - exact[finite]).abs().nan_to_num(float("inf")).max().item()
    baseline_error = (baseline[finite] - exact[finite]).abs().nan_to_num(0.0, 0.0).max().item()
    return error, ACCURACY_FACTOR * baseline_error + ACCURACY_FLOOR * eps * exact[finite].abs().max().item()


def assert_as_accurate(actual: Tensor, baseline: Tensor, exact: Tensor, what: str) -> None:
    """Ours (``actual``) no further from the float64 result ``exact`` than :func:`accuracy` allows, given
    ``baseline`` (torch.nn's result, or another path's, in the same dtype as ours)."""
    error, allowed = accuracy(actual, baseline, exact)
    if os.environ.get("RECURRENT_ACCURACY_LOG"):  # what each judgement measured, for a report of the margins
        with open(os.environ["RECURRENT_ACCURACY_LOG"], "a") as log:
            log.write(
                json.dumps({"what": what, "error": error, "allowed": allowed, **_measured(baseline, exact)}) + "\n"
            )
    assert error <= allowed, (
        f"{what}: {error:.3e} from the float64 result, allowed {allowed:.3e} "
        f"({ACCURACY_FACTOR:g}x the baseline's {accuracy(baseline, baseline, exact)[0]:.3e} "
        f"+ {ACCURACY_FLOOR} roundings of the largest magnitude)"
    )


def _measured(baseline: Tensor, exact: Tensor) -> dict:
    """The baseline's largest error and the largest magnitude of the float64 result (finite elements)."""
    finite = exact.isfinite()
    exact64 = exact.detach().double()[finite]
    if not exact64.numel():
        return {"baseline_error": 0.0, "magnitude": 0.0}
    error = (baseline.detach().double()[finite] - exact64).abs().max().item()
    return {"baseline_error": error, "magnitude": exact64.abs().max().item()}


def float64_twin(module: nn.Module) -> nn.Module:
    """A float64 copy of ``module`` (torch.nn's or ours), the same weights: it computes what float32 rounds."""
    return copy.deepcopy(module).to(torch.float64)


def float64_leaves(tensors: Sequence[Tensor]) -> list[Tensor]:
    """float64 copies of ``tensors`` as leaves, needing gradients where the originals do."""
    return [t.detach().to(torch.float64).requires_grad_(t.requires_grad) for t in tensors]


def triton_forced() -> bool:
    """The suite's second run (.ci/run): RECURRENT_BACKEND=triton under Triton's interpreter."""
    return os.environ.get("RECURRENT_BACKEND") == "triton"


# Autocast's 16-bit dtype for the CPU tests: bfloat16, except under Triton's interpreter, whose
# bfloat16 dots are not trustworthy (the GPU run covers bfloat16 there).
AUTOCAST_DTYPE = torch.float16 if triton_forced() else torch.bfloat16


def ops_called(module: nn.Module, data: Tensor, grad: bool) -> set:
    """The names of the ops (torch.profiler's keys) that one call of ``module`` on ``data`` runs:
    under no_grad when not ``grad``, else with grad mode on and a backward from the output's sum."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.set_grad_enabled(grad):
            out = module(data)[0]
        if grad:
            out.sum().backward()
    return {event.key for event in prof.key_averages()}


def assert_like_torch_nn(
    run: Callable[[nn.Module, list[Tensor]], list[Optional[Tensor]]],
    reference: nn.Module,
    ours: nn.Module,
    inputs: Sequence[Tensor],
    names: Optional[Sequence[str]] = None,
) -> None:
    """``run(module, inputs)`` (the tensors a test compares: outputs, gradients, ...) of ours against
    torch.nn's: in float64 to 1e-9; in float32 as accurate as torch.nn's, both judged by ``run`` of
    torch.nn's float64 twin on the inputs in float64 (:func:`assert_as_accurate`)."""
    dtype = inputs[0].dtype
    expected, actual = run(reference, list(inputs)), run(ours, list(inputs))
    exact = None if dtype == torch.float64 else run(float64_twin(reference), float64_leaves(inputs))
    names = [f"tensor {i}" for i in range(len(expected))] if names is None else names
    assert_all_close(actual, expected, dtype, names, exact)


def float64_inputs(x: Tensor, states: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """(x, states) as float64 leaves (:func:`float64_leaves`): the arguments of a float64 twin's call."""
    x64, *states64 = float64_leaves([x, *states])
    return x64, states64


def as_float64(value):
    """``value`` with every floating tensor in it in float64: a tensor, a PackedSequence, or a tuple or
    list of them; anything else as it is."""
    if isinstance(value, (Tensor, PackedSequence)):
        return value.to(torch.float64) if _floating(value) else value
    if isinstance(value, (tuple, list)):
        return type(value)(as_float64(v) for v in value)
    return value


def _floating(value: Union[Tensor, PackedSequence]) -> bool:
    return (value.data if isinstance(value, PackedSequence) else value).is_floating_point()


def float64_call(module: nn.Module, *args):
    """What ``module(*args)`` computes, in float64: its twin on the arguments in float64."""
    return float64_twin(module)(*as_float64(args))
