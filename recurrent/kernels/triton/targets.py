"""Every kernel configuration the dispatcher can launch, described for ahead-of-time compilation
(``benchmarks/triton_check.py`` compiles each for sm_90 and sm_80 and checks its resources)."""
from __future__ import annotations

from typing import Any, Dict, Iterator, NamedTuple

import torch

from .common import WIDTHS, Blocks, blocks, launch_options
from .gru import gru_backward_kernel, gru_forward_kernel
from .lstm import lstm_backward_kernel, lstm_forward_kernel
from .lstm_proj import lstm_proj_backward_kernel, lstm_proj_forward_kernel
from .rnn import rnn_backward_kernel, rnn_forward_kernel

# (dtype, dot precision) pairs the dispatcher launches; float64 is only ever forced, never chosen.
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
ACCUMULATOR_POINTERS = {"dh_ptr", "dc_ptr"}  # the backward's running gradients stay in float32
FLAGS = {"has_bias", "save", "packed"}  # Python bools at launch: Triton passes them as i1
POINTER_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64"}


class CompileTarget(NamedTuple):
    name: str
    kernel: Any  # a triton JITFunction
    signature: Dict[str, str]
    constexprs: Dict[str, Any]
    options: Dict[str, int]  # num_warps, num_stages (and maxnreg where Triton has it)


def _signature(kernel, dtype: torch.dtype, constexprs: Dict[str, Any]) -> Dict[str, str]:
    def arg_type(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name in FLAGS:
            return "i1"
        if name in ("sizes_ptr", "starts_ptr"):
            return "*i32"
        if name in ACCUMULATOR_POINTERS:
            return POINTER_TYPES[torch.float64 if dtype == torch.float64 else torch.float32]
        return POINTER_TYPES[dtype] if name.endswith("_ptr") else "i32"

    return {name: arg_type(name) for name in kernel.arg_names}


def compile_targets() -> Iterator[CompileTarget]:
    for width in WIDTHS:
        config: Blocks = blocks(width)
        for dtype, precision in PRECISIONS:
            options = launch_options(config, dtype, precision)
            launch = {key: options.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in options}
            for name, kernel, own in KERNELS:
                constexprs = {**options, **own}
                label = f"{name} {str(dtype).replace('torch.', '')} {precision} width={width}"
                yield CompileTarget(label, kernel, _signature(kernel, dtype, constexprs), constexprs, launch)
