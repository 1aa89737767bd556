"""Building a torch.nn reference and our module with the same weights, and comparing them."""

from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

import recurrent

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


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, what: str) -> None:
    tolerance = TOLERANCE[dtype]
    if actual.is_cuda and dtype == torch.float32:
        # cuDNN's float32 kernels and compiled ones (ours on Triton) round differently: compilers fuse
        # a*b + c into one FMA where torch rounds twice, and near tanh's saturation 1 - h*h magnifies
        # that one ulp (measured: 4e-5 relative in an input gradient). float64 stays at 1e-9.
        tolerance = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual, expected, **tolerance, msg=lambda m: f"{what}: {m}")


def assert_all_close(
    actual: Sequence[Optional[Tensor]], expected: Sequence[Optional[Tensor]], dtype: torch.dtype, names: Sequence[str]
) -> None:
    """Pairwise assert_close, after checking that nothing is missing: as many tensors as torch.nn, one name each,
    and a None (an unused input's gradient) exactly where torch.nn has one."""
    assert len(actual) == len(expected) == len(names), (
        f"{len(actual)} tensors, torch.nn has {len(expected)}, {len(names)} names: {list(names)}"
    )
    for a, e, name in zip(actual, expected, names):
        if e is None:
            assert a is None, f"{name}: torch.nn's is None, ours is not"
        else:
            assert a is not None, f"{name}: ours is None, torch.nn's is not"
            assert_close(a, e, dtype, name)


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
