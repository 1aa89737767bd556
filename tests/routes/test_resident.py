"""The resident Triton kernels' fit rule, and what the compile check (tools/triton_check.py) reads of them:
every configuration the rule accepts is compiled, and a W_hh load inside the time loop fails it. Their
numbers are tested against the TorchScript kernels and torch.nn in test_triton.py (interpreter or GPU)."""

import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT

pytest.importorskip("triton")


def test_fit_takes_what_holds_on_chip_and_says_why_it_refuses_the_rest():
    from recurrent.kernels.triton import resident

    assert resident.fit("GRU", torch.float32, "tf32", 128) is None  # the Fashion-MNIST layer: 192 KB of W_hh
    assert resident.fit("RNN_TANH", torch.bfloat16, "ieee", 256) is None
    assert "shared memory" in resident.fit("LSTM", torch.float32, "tf32", 128)  # 256 KB
    assert "shared memory" in resident.fit("GRU", torch.float32, "tf32", 128, shared_limit=166912)  # an A100
    assert "registers" in resident.fit("GRU", torch.float32, "ieee", 128)
    assert "multiple of 16" in resident.fit("GRU", torch.float32, "tf32", 100)
    assert resident.fit("GRU", torch.float32, "tf32", 60) is None
    assert "no resident kernels" in resident.fit("CUSTOM", torch.float32, "tf32", 16)


def test_the_compile_check_covers_every_size_fit_takes():
    from recurrent.kernels.triton import resident
    from recurrent.kernels.triton.targets import PRECISIONS, RESIDENT_KERNELS, resident_targets

    labels = {t.name for t in resident_targets()}
    for dtype, precision in PRECISIONS:
        for name, _, _, mode in RESIDENT_KERNELS:
            for hidden in (1, 5, 16, 20, 37, 60, 64, 100, 128, 200, 256):
                if resident.fit(mode, dtype, precision, hidden) is None:
                    alignment = "unaligned" if hidden % 16 else "aligned"
                    width = resident.padded(hidden)
                    label = f"{name} {str(dtype).replace('torch.', '')} {precision} width={width} {alignment}"
                    assert label in labels, f"the compile check misses {label}"


# Compiled in a process of its own: a test before this one in the same worker may have imported the kernels
# under the interpreter (TRITON_INTERPRET=1 is read at import), where they cannot be compiled.
WEIGHT_LOADS = """
import sys, triton
sys.path.insert(0, "tools")
import triton_check
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from recurrent.kernels.triton.targets import compile_targets, resident_targets

for name in sys.argv[1:]:
    target = next(t for t in [*compile_targets(), *resident_targets()] if t.name == name)
    source = ASTSource(fn=target.kernel, signature=target.signature, constexprs=target.constexprs, attrs=target.attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=target.options)
    print(*triton_check.weight_loads(compiled.asm["ttgir"]))
"""


def test_the_compile_check_fails_a_weight_load_inside_the_time_loop():
    """The persistent kernels read W_hh inside the loop by design: the reading that passes the resident
    kernels must see it there."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    names = ["gru_forward float32 tf32 width=32 aligned", "resident_gru_forward float32 tf32 width=32 aligned"]
    done = subprocess.run(
        [sys.executable, "-c", WEIGHT_LOADS, *names], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (_, inside), held = [tuple(map(int, line.split())) for line in done.stdout.split("\n") if line]
    assert inside >= 3, f"the persistent GRU reads its three gates' W_hh in the loop; the check saw {inside}"
    assert held == (3, 0), "the resident GRU loads its three gate tiles once, before the loop"
