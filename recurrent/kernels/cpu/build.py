"""Builds the native sequence library (``sequences.cpp``) on the user's machine and loads it into
``torch.ops.recurrent_cpu``.

The op schemas are declared here, at import, whether or not the library ever loads; the ops are
only called once :func:`available` says it did. The library is compiled once per machine with the C++
compiler at hand (``$CXX``, else ``c++``) against the installed torch's headers, for this CPU
(``-march=native``; ``RECURRENT_NATIVE_MARCH`` names another target, e.g. ``x86-64-v3`` for any AVX2
machine or ``x86-64`` for any x86-64 one), into the cache (:mod:`recurrent._cache`), named by the hash
of everything that went into it; later processes load it from there. The first build prints one line on
stderr (what, for which CPU, where, and that it happens once); ``python -m recurrent.build`` does it
ahead of time. No compiler, a failed build or a wrong answer from its self-check leave the ATen fast path
in charge and :func:`status` says why; a failed build says so once on stderr and is not retried by later
processes (``python -m recurrent.build`` retries it). ``RECURRENT_NATIVE_CPU=0`` turns it off.
``RECURRENT_NATIVE_SANITIZE=address,undefined`` builds it under those sanitizers (``make test-sanitizers``:
the process must preload their runtime).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import torch

from ... import settings
from ..._cache import cache_folders, cached_file, untrusted

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
    # A whole stack: rows (R, I), state0 [h0] or [h0, c0] (layers·D, N, ·), torch.nn's flat weights → (output
    # rows (R, D·H), final states, what the backward needs where `save`); its backward → (dx, dstate0, dweights).
    "stack_forward(str mode, Tensor rows, Tensor[] state0, Tensor[] weights, int num_layers, bool bidirectional, "
    "int[] batch_sizes, float dropout, bool train, bool save) -> (Tensor, Tensor[], Tensor[])",
    # The backward writes over the saved tensors (as the layers' backward ops do: autograd.py handles it).
    "stack_backward(str mode, Tensor grad_out, Tensor[] grad_finals, Tensor rows, Tensor[] state0, Tensor[] weights, "
    "Tensor[] saved, int num_layers, bool bidirectional, int[] batch_sizes, bool input_grad) "
    "-> (Tensor, Tensor[], Tensor[])",
    # A cell's step (one layer, direction and step): x (N, I), h and c (N, H) or none for zeros, the cell's own
    # weights → [h', what its backward needs]; the backward (writing over those) → [dx, dh(, dc), dW_ih, dW_hh(,
    # db_ih, db_hh)], dx and the states' empty where not asked for.
    "cell_forward(str mode, Tensor x, Tensor? h, Tensor? c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
    "-> Tensor[]",
    "cell_backward(str mode, Tensor grad_h, Tensor? grad_c, Tensor x, Tensor? h, Tensor? c, Tensor w_ih, "
    "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor[] saved, bool input_grad, bool state_grad) -> Tensor[]",
]
_LIBRARY = torch.library.Library("recurrent_cpu", "DEF")
for _schema in SCHEMAS:
    _LIBRARY.define(_schema)


KIND = "cpu-sequences"  # the library's folder in the cache


def _compiler() -> Tuple[str, str]:
    """(the compiler's path, its version line); OSError where there is none."""
    name = os.environ.get("CXX", "c++")
    path = shutil.which(name)
    if path is None:
        raise OSError(f"no C++ compiler: {name!r} is not on PATH (set CXX)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, env=_compiler_env())
    lines = version.stdout.splitlines()
    return path, lines[0] if lines else "unknown"


def _compiler_env() -> dict:
    """The environment for the compiler: this process's, without a preloaded sanitizer runtime (under
    ``make test-sanitizers`` the Python process preloads one; the compiler need not run under it)."""
    return {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}


target = settings.native_march  # the CPU the library is compiled for, as -march takes it
_sanitizers = settings.native_sanitizers  # the sanitizers asked for, e.g. address, undefined


def _flags() -> List[str]:
    """The compile and link flags: optimised for the target CPU, against the installed torch."""
    torch_dir = Path(torch.__file__).parent
    lib = torch_dir / "lib"
    flags = ["-O3", "-std=c++20", "-shared", "-fPIC", f"-march={target()}", "-fno-math-errno", "-fno-trapping-math"]
    flags.append("-fopenmp-simd")  # the row loops' `omp simd`: vectorize, the gate blocks do not overlap
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.append("-mprefer-vector-width=512")  # compilers default to 256 bits; the rows are wide enough
        flags.append("-Wno-psabi")  # vector arguments' ABI notes: every call of them is inside this library
    if "OpenMP" in torch.__config__.parallel_info():
        flags.append("-fopenmp")  # at::parallel_for's OpenMP regions are compiled into this library
    sanitizers = _sanitizers()
    if sanitizers:  # any report aborts the process: a test run under them fails on the first one
        flags[0] = "-O1"  # a third of -O3's compile time under the sanitizers, and clearer reports
        flags += [f"-fsanitize={','.join(sanitizers)}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
    flags += [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", f"-I{torch_dir / 'include'}"]
    return flags + [f"-L{lib}", f"-Wl,-rpath,{lib}", "-ltorch_cpu", "-lc10"]


def _cpu() -> str:
    """What -march=native compiles for: the CPU's feature flags (a library built for one CPU may not run on another)."""
    return _cpuinfo(("flags", "Features")) or platform.processor() or platform.machine()


def _cpuinfo(keys: Tuple[str, ...]) -> str:
    """The first line of /proc/cpuinfo that starts with one of ``keys``, or ''."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line
    except OSError:
        pass
    return ""


def describe_target() -> str:
    """The target in words: -march=native with the CPU's model, or another -march and what runs it; and
    the sanitizers, if any."""
    if target() != "native":
        described = f"-march={target()} (any CPU that has its instructions)"
    else:
        model = _cpuinfo(("model name",)).partition(":")[2].strip() or platform.processor() or platform.machine()
        described = f"-march=native ({model})"
    sanitizers = _sanitizers()
    return described + (f", under -fsanitize={','.join(sanitizers)}" if sanitizers else "")


class Plan(NamedTuple):
    """How the library is built here, and the file name that identifies that build."""

    compiler: str
    version: str
    flags: List[str]
    name: str


def _plan() -> Plan:
    compiler, version = _compiler()
    flags = _flags()
    sources = [path.read_text() for path in (SOURCE, *HEADERS)]
    key = "\n".join([*sources, compiler, version, *flags, torch.__version__, _cpu()])
    return Plan(compiler, version, flags, f"sequences-{hashlib.sha256(key.encode()).hexdigest()[:24]}.so")


def _build(plan: Plan, out: Path) -> None:
    """Compiles the library into ``out``, saying so first: the first call that needs it waits for this."""
    print(
        f"recurrent: building the native CPU kernels with {Path(plan.compiler).name} for {describe_target()} into "
        f"{out.with_name(plan.name)}: once for this CPU and torch, 10-30 s (`python -m recurrent.build` does it "
        "ahead of time)",
        file=sys.stderr,
        flush=True,
    )
    command = [plan.compiler, str(SOURCE), "-o", str(out), *plan.flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_compiler_env())
    if done.returncode != 0:  # RuntimeError: the next cache directory would fail the same way
        errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()[-3:]
        raise RuntimeError(f"{Path(plan.compiler).name} failed: {' | '.join(errors[:3])}")


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


def _failure(name: str) -> Optional[str]:
    """Why the build ``name`` failed before, as a trusted folder of the cache recorded it, or None."""
    for folder, _ in cache_folders(KIND, private=False):  # a private folder is new: it has no record
        record = None if folder is None else folder / f"{name}.failed"
        if record is not None and record.is_file() and untrusted(record, directory=False) is None:
            return record.read_text().strip()
    return None


def _record_failure(name: str, reason: str) -> None:
    """Keeps ``reason`` beside where the library would be, so that later processes do not build it again."""
    try:
        cached_file(KIND, f"{name}.failed", lambda partial: partial.write_text(reason + "\n"))
    except OSError:
        pass  # nowhere to keep it: the next process tries (and says why) again


def _attempt(retry: bool) -> Tuple[bool, str]:
    """Builds or finds the library and loads it: (loaded, what happened). ``retry``: build again even
    where an earlier build failed."""
    if not settings.native_cpu():
        return False, "off: RECURRENT_NATIVE_CPU=0"
    try:
        plan = _plan()
    except (OSError, subprocess.SubprocessError) as err:  # no compiler: nothing to build, nothing to say
        LOG.info("recurrent: native CPU kernels not used: %s", err)
        return False, f"not used: {err}"
    earlier = None if retry else _failure(plan.name)
    if earlier is not None:
        return False, f"not used: {earlier} (an earlier build; `python -m recurrent.build` tries again)"
    start = time.perf_counter()
    built: List[bool] = []

    def build(partial: Path) -> None:
        built.append(True)
        _build(plan, partial)

    try:
        path = cached_file(KIND, plan.name, build)
        torch.ops.load_library(str(path))
        _self_check()
    except OSError as err:  # nowhere to write it: a later process may have somewhere
        LOG.info("recurrent: native CPU kernels not used: %s", err)
        return False, f"not used: {err}"
    except (RuntimeError, subprocess.SubprocessError) as err:
        print(f"recurrent: native CPU kernels not used ({err}); the ATen path runs instead", file=sys.stderr)
        _record_failure(plan.name, str(err))
        return False, f"not used: {err}"
    seconds = time.perf_counter() - start
    how = f"built in {seconds:.1f} s" if built else "found in the cache"
    LOG.info("recurrent: native CPU kernels loaded from %s (%s)", path, how)
    return True, f"loaded from {path} ({how}; {describe_target()})"


_RESULT: List[Tuple[bool, str]] = []  # this process's attempt, made on first use


def _load(retry: bool = False) -> Tuple[bool, str]:
    if not _RESULT:
        _RESULT.append(_attempt(retry))
    return _RESULT[0]


def available() -> bool:
    """Whether the native sequence ops are loaded (built or found on the first call: seconds, once per machine)."""
    return _load()[0]


def status() -> str:
    """What became of the native sequence library in this process, and why."""
    return _load()[1]


def prebuild() -> Tuple[bool, str]:
    """Builds (or finds) and loads the library now, trying again where an earlier build failed."""
    return _load(retry=True)
