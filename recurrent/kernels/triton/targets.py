"""Every kernel configuration the route can launch, described for ahead-of-time compilation
(``tools/triton_check.py`` compiles each for sm_90 and sm_80 and checks its resources).

Each is described as Triton's launcher would compile it: the weights' unit stride as a constant,
and the ``tt.divisibility`` hints of its arguments, in two variants (every pointer and size divisible
by 16, as with hidden sizes like 128; and none, as with 100) that bracket what a launch can meet."""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, NamedTuple, Sequence, Tuple

import torch

from . import resident
from .common import configurations, launch_options
from .generated import generated_loop
from .gru import gru_backward_kernel, gru_forward_kernel
from .lstm import lstm_backward_kernel, lstm_forward_kernel
from .lstm_proj import lstm_proj_backward_kernel, lstm_proj_forward_kernel
from .rnn import rnn_backward_kernel, rnn_forward_kernel

# (dtype, dot precision) pairs the route launches; float64 is only ever forced, never chosen.
PRECISIONS = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee"), (torch.bfloat16, "ieee")]
KERNELS = [  # (name, kernel, its own compile-time constants)
    ("rnn_tanh_forward", rnn_forward_kernel, {"RELU": False}),
    ("rnn_tanh_backward", rnn_backward_kernel, {"RELU": False}),
    ("rnn_relu_forward", rnn_forward_kernel, {"RELU": True}),
    ("rnn_relu_backward", rnn_backward_kernel, {"RELU": True}),
    ("gru_forward", gru_forward_kernel, {}),
    ("gru_backward", gru_backward_kernel, {}),
    ("lstm_forward", lstm_forward_kernel, {}),
    ("lstm_backward", lstm_backward_kernel, {}),
    ("lstm_proj_forward", lstm_proj_forward_kernel, {}),
    ("lstm_proj_backward", lstm_proj_backward_kernel, {}),
]
RESIDENT_KERNELS = [  # (name, kernel, its own compile-time constants, the mode whose W_hh it holds)
    ("resident_rnn_tanh_forward", resident.rnn_forward_kernel, {"RELU": False}, "RNN_TANH"),
    ("resident_rnn_tanh_backward", resident.rnn_backward_kernel, {"RELU": False}, "RNN_TANH"),
    ("resident_rnn_relu_forward", resident.rnn_forward_kernel, {"RELU": True}, "RNN_RELU"),
    ("resident_rnn_relu_backward", resident.rnn_backward_kernel, {"RELU": True}, "RNN_RELU"),
    ("resident_gru_forward", resident.gru_forward_kernel, {}, "GRU"),
    ("resident_gru_backward", resident.gru_backward_kernel, {}, "GRU"),
    ("resident_lstm_forward", resident.lstm_forward_kernel, {}, "LSTM"),
    ("resident_lstm_backward", resident.lstm_backward_kernel, {}, "LSTM"),
]
# The backward's running gradients (and a generated backward's parameter sums) stay in float32.
ACCUMULATOR_POINTERS = {"dh_ptr", "dc_ptr", "dp_ptr", "ds0_ptr", "ds1_ptr", "part_ptr"}
INT_POINTERS = {"sizes_ptr", "starts_ptr", "tickets_ptr"}
# Python bools at launch: Triton passes them as i1
FLAGS = {"has_bias", "save", "packed", "has_h0", "has_dhn", "has_dcn", "copy", "sums"}
POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64"}
# Strides that the launchers make 1 (common.unit_stride), which Triton then compiles in as constants.
UNIT_STRIDES = {"forward": ("stride_wk", "stride_rk"), "backward": ("stride_wn", "stride_rn")}
# Sizes and strides that Triton specializes on when divisible by 16 (pointers too: torch allocates aligned).
SIZES = {"H", "P", "stride_wd", "stride_wk", "stride_wn", "stride_rd", "stride_rk", "stride_rn"}
# Which of those the compiled variant takes as divisible by 16: both ends of what the JIT can meet.
ALIGNMENTS = {"aligned": True, "unaligned": False}


class CompileTarget(NamedTuple):
    name: str
    kernel: Any  # a triton JITFunction
    signature: Dict[str, str]
    constexprs: Dict[str, Any]
    attrs: Dict[Tuple[int], List[List[Any]]]  # the divisibility hints, as Triton's launcher derives them
    options: Dict[str, int]  # num_warps, num_stages (and maxnreg where Triton has it)


def _signature(kernel, dtype: torch.dtype, constexprs: Dict[str, Any]) -> Dict[str, str]:
    def arg_type(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name in FLAGS:
            return "i1"
        if name in INT_POINTERS:
            return "*i32"
        if name in ACCUMULATOR_POINTERS:
            return POINTER_TYPES[torch.float64 if dtype == torch.float64 else torch.float32]
        return POINTER_TYPES[dtype] if name.endswith("_ptr") else "i32"

    return {name: arg_type(name) for name in kernel.arg_names}


def _divisible(kernel, constexprs: Dict[str, Any], aligned: bool) -> Dict[Tuple[int], List[List[Any]]]:
    """The variant's ``tt.divisibility`` hints: on every pointer and size, or on none."""
    names = [n for n in kernel.arg_names if n not in constexprs and (n.endswith("_ptr") or n in SIZES)]
    return {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in names} if aligned else {}


def generated_kernels(cells: Dict[str, Any]) -> List[Tuple[str, Any, Dict[str, Any]]]:
    """The forward and backward kernels generated from each named custom cell's step (.generated);
    compile them with ``aligned_above=32`` (their launcher's rule, :func:`.generated.widest`)."""
    found = []
    for name, cell in cells.items():
        loop = generated_loop(cell)
        found += [(f"{name}_forward", loop.forward_kernel, {}), (f"{name}_backward", loop.backward_kernel, {})]
    return found


def compile_targets(
    kernels: Sequence[Tuple[str, Any, Dict[str, Any]]] = tuple(KERNELS), aligned_above: int = 0
) -> Iterator[CompileTarget]:
    """Every (dtype, precision, block configuration, alignment) variant of ``kernels`` (name, kernel,
    constants); with ``aligned_above``, configurations wider than that only aligned (generated.widest)."""
    for dtype, precision in PRECISIONS:
        for config in configurations(dtype, precision):
            options = launch_options(config, dtype, precision)
            launch = {key: options.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in options}
            for name, kernel, own in kernels:
                units = {s: 1 for s in UNIT_STRIDES[name.rsplit("_", 1)[1]] if s in kernel.arg_names}
                constexprs = {**options, **own, **units}
                for alignment, aligned in ALIGNMENTS.items():
                    if aligned_above and config.cols > aligned_above and not aligned:
                        continue
                    label = f"{name} {str(dtype).replace('torch.', '')} {precision} width={config.cols} {alignment}"
                    yield CompileTarget(
                        label, kernel, _signature(kernel, dtype, constexprs), constexprs,
                        _divisible(kernel, constexprs, aligned), launch,
                    )


class ResidentTarget(NamedTuple):
    """A :class:`CompileTarget` of the resident kernels, with the shared memory :func:`.resident.fit` assumed."""

    name: str
    kernel: Any
    signature: Dict[str, str]
    constexprs: Dict[str, Any]
    attrs: Dict[Tuple[int], List[List[Any]]]
    options: Dict[str, int]
    shared_estimate: int


def resident_targets(shared_limit: int = resident.SHARED_LIMIT) -> Iterator[ResidentTarget]:
    """Every variant of the resident kernels (:mod:`.resident`) that :func:`.resident.fit` lets run within
    ``shared_limit``: per dtype and precision, each padded width from 16 up to the widest that fits, for
    hidden sizes that are multiples of 16 (aligned) and not (unaligned; the width's size less one)."""
    for dtype, precision in PRECISIONS:
        for name, kernel, own, mode in RESIDENT_KERNELS:
            for width in (1 << p for p in range(4, 9)):
                options = resident.launch_options(dtype, precision, width)
                launch = {key: options.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in options}
                units = {s: 1 for s in UNIT_STRIDES[name.rsplit("_", 1)[1]] if s in kernel.arg_names}
                constexprs = {**options, **own, **units}
                for alignment, aligned in ALIGNMENTS.items():
                    if resident.fit(mode, dtype, precision, width if aligned else width - 1, shared_limit):
                        continue
                    label = f"{name} {str(dtype).replace('torch.', '')} {precision} width={width} {alignment}"
                    yield ResidentTarget(
                        label, kernel, _signature(kernel, dtype, constexprs), constexprs,
                        _divisible(kernel, constexprs, aligned), launch, resident.shared_bytes(mode, dtype, width),
                    )
