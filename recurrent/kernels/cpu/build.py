"""Builds the native sequence library (``sequences.cpp``) on the user's machine and loads it into
``torch.ops.recurrent_cpu``.

The op schemas are declared here, at import, whether or not the library ever loads; the ops are
only called once :func:`available` says it did. The
library is compiled once per machine with the C++ compiler at hand (``$CXX``, else ``c++``) against
the installed torch's headers, for this CPU (``-march=native``), into the cache directory
(``RECURRENT_CACHE_DIR``, else ``~/.cache/recurrent``), named by the hash of everything that went
into it; later processes load it from there. No compiler, a failed build or a wrong answer from its
self-check leave the ATen fast path in charge, and :func:`status` says why. ``RECURRENT_NATIVE_CPU=0``
turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import List, Tuple

import torch

from ..._cache import cached_file

LOG = logging.getLogger("recurrent")
SOURCE = Path(__file__).with_name("sequences.cpp")
HEADERS = [Path(__file__).with_name(name) for name in ("gate_math.h", "gate_sums.h")]

SCHEMAS = [
    # x: each direction's input rows (D, R, I); the weights as the layer stacks them (D, G, ·); grad_out:
    # the gradient of the layer's output rows (R, D·H), reverse: the second direction's row order.
    "lstm_sequence(Tensor x, Tensor w_ih, Tensor? bias, Tensor h0, Tensor c0, Tensor w_hh, int[] batch_sizes, "
    "bool save) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "lstm_sequence_backward(Tensor grad_out, Tensor? reverse, Tensor dh_n, Tensor dc_n, Tensor gates, Tensor cs, "
    "Tensor c0, Tensor w_hh, int[] batch_sizes) -> (Tensor, Tensor, Tensor)",
    "gru_sequence(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor h0, Tensor w_hh, Tensor? b_hh, int[] batch_sizes, "
    "bool save) -> (Tensor, Tensor, Tensor, Tensor)",
    "gru_sequence_backward(Tensor grad_out, Tensor? reverse, Tensor dh_n, Tensor gates, Tensor ghn, Tensor hs, "
    "Tensor h0, Tensor w_hh, int[] batch_sizes) -> (Tensor, Tensor, Tensor)",
    "rnn_sequence(Tensor x, Tensor w_ih, Tensor? bias, Tensor h0, Tensor w_hh, int[] batch_sizes, bool relu) "
    "-> (Tensor, Tensor)",
    # The backward ops write their gradients over saved buffers (gates, ghn, the RNN's hs) without
    # declaring it: the layer's backward runs them on its own buffers, and autograd's check of saved
    # tensors would refuse a second backward, which the layer handles itself (autograd.py).
    "rnn_sequence_backward(Tensor grad_out, Tensor? reverse, Tensor dh_n, Tensor hs, Tensor h0, Tensor w_hh, "
    "int[] batch_sizes, bool relu) -> (Tensor, Tensor)",
    # Σ over rows of gradᵀ x, gradᵀ h and grad: grad (D, R, G), x and h as row blocks (D, ·, I), (D, ·, H)
    # → (D, G, I), (D, G, H), (D, G) (empty without `bias`).
    "weight_grad(Tensor grad, Tensor[] x_blocks, Tensor[] h_blocks, bool bias) -> (Tensor, Tensor, Tensor)",
]
_LIBRARY = torch.library.Library("recurrent_cpu", "DEF")
for _schema in SCHEMAS:
    _LIBRARY.define(_schema)


def _compiler() -> Tuple[str, str]:
    """(the compiler's path, its version line); OSError where there is none."""
    name = os.environ.get("CXX", "c++")
    path = shutil.which(name)
    if path is None:
        raise OSError(f"no C++ compiler: {name!r} is not on PATH (set CXX)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    return path, version.splitlines()[0] if version else "unknown"


def _flags() -> List[str]:
    """The compile and link flags: optimised for this CPU, against the installed torch."""
    torch_dir = Path(torch.__file__).parent
    lib = torch_dir / "lib"
    flags = ["-O3", "-std=c++20", "-shared", "-fPIC", "-march=native", "-fno-math-errno", "-fno-trapping-math"]
    flags.append("-fopenmp-simd")  # the row loops' `omp simd`: vectorize, the gate blocks do not overlap
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-mprefer-vector-width=512")  # compilers default to 256 bits; the rows are wide enough
    if "OpenMP" in torch.__config__.parallel_info():
        flags.append("-fopenmp")  # at::parallel_for's OpenMP regions are compiled into this library
    flags += [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"-I{torch_dir / 'include'}"]
    return flags + [f"-L{lib}", f"-Wl,-rpath,{lib}", "-ltorch_cpu", "-lc10"]


def _cpu() -> str:
    """What -march=native compiles for: the CPU's feature flags (a library built for one CPU may not run on another)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(compiler: str, flags: List[str], out: Path) -> None:
    done = subprocess.run([compiler, str(SOURCE), "-o", str(out), *flags], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # RuntimeError: the next cache directory would fail the same way
        errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()[-3:]
        raise RuntimeError(f"{Path(compiler).name} failed: {' | '.join(errors[:3])}")


def _self_check() -> None:
    """Two LSTM steps over one row past a tile and odd widths, against the same math in ATen ops: a
    miscompiled library, or a torch whose brgemm cannot run here, is not used."""
    gen = torch.Generator().manual_seed(0)
    hidden, rows = 9, 65
    x = torch.randn(1, 2 * rows, 5, generator=gen)
    w_ih, w_hh = torch.randn(1, 4 * hidden, 5, generator=gen), torch.randn(1, 4 * hidden, hidden, generator=gen) / 3
    h0, c0 = torch.randn(1, rows, hidden, generator=gen), torch.randn(1, rows, hidden, generator=gen)
    bias = torch.randn(1, 4 * hidden, generator=gen)
    h, c, hs_ref = h0[0], c0[0], []
    for t in range(2):
        a = x[0, t * rows : (t + 1) * rows] @ w_ih[0].t() + bias[0] + h @ w_hh[0].t()
        i, f, g, o = a.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs_ref.append(h)
    hs, h_n, c_n, _, _ = torch.ops.recurrent_cpu.lstm_sequence(x, w_ih, bias, h0, c0, w_hh, [rows, rows], False)
    expected = (torch.cat(hs_ref)[None], h[None], c[None])
    if not all(torch.allclose(a, e, atol=1e-5) for a, e in zip((hs, h_n, c_n), expected)):
        raise RuntimeError("its LSTM disagrees with ATen's")


@functools.cache
def _load() -> Tuple[bool, str]:
    if os.environ.get("RECURRENT_NATIVE_CPU", "1") == "0":
        return False, "off: RECURRENT_NATIVE_CPU=0"
    try:
        compiler, version = _compiler()
        flags = _flags()
        sources = [path.read_text() for path in (SOURCE, *HEADERS)]
        key = "\n".join([*sources, compiler, version, *flags, torch.__version__, _cpu()])
        name = f"sequences-{hashlib.sha256(key.encode()).hexdigest()[:24]}.so"
        start = time.perf_counter()
        path = cached_file("cpu-sequences", name, lambda partial: _build(compiler, flags, partial))
        built = time.perf_counter() - start
        torch.ops.load_library(str(path))
        _self_check()
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        LOG.info("recurrent: native CPU kernels not used: %s", err)
        return False, f"not used: {err}"
    LOG.info("recurrent: native CPU kernels loaded from %s (%.1f s)", path, built)
    return True, f"loaded from {path} ({built:.1f} s to build or find)"


def available() -> bool:
    """Whether the native sequence ops are loaded (built or found on the first call: seconds, once per machine)."""
    return _load()[0]


def status() -> str:
    """What became of the native sequence library in this process, and why."""
    return _load()[1]
