"""Compile every Triton kernel configuration the dispatcher can launch, ahead of time, and check
that each fits the GPU: shared memory within the per-block limit, and no register spills.

    python tools/triton_check.py [--arch 90 80] [--kernels all|persistent|resident] [--jobs N] [--json PATH]

Why: the persistent kernels (recurrent/kernels/triton) keep a block of batch rows on one SM for
the whole sequence. A configuration that asks for more shared memory than a block may have fails
only at launch, on the GPU that runs it; one that spills registers to local memory still runs,
just many times slower. Both are fixed at compile time, so this check needs no GPU: it compiles
each entry of ``targets.compile_targets()`` (and ``resident_targets()``) with Triton's compiler for
sm_90 (H100/H200) and sm_80 (A100), as Triton's launcher would (unit weight strides compiled in; every size and pointer
divisible by 16, and none: the two ends of what a launch can meet), then reads

- shared memory: the compiled kernel's metadata, against the architecture's per-block limit;
- registers and spills: ``cuobjdump -res-usage`` on the cubin (REG, STACK, LOCAL) and
  ``ptxas -v`` on the PTX (spill stores and loads), both the tools bundled with Triton.

The kernels generated from custom cells' steps (recurrent.kernels.triton.generated) are checked the
same way, for the cells of :func:`example_cells`. The resident kernels (recurrent.kernels.triton.resident),
every configuration their ``fit`` accepts, are checked for two more things: that no load from W_hh sits
inside the time loop (read from the compiled TTGIR: every ``tt.load`` in the loop whose pointer derives
from ``w_ptr`` fails it, and at least one outside must), and that the compiled shared memory is within
what ``fit`` assumed (``resident.shared_bytes``). Exits 1 when any configuration fails to compile,
exceeds shared memory or spills, or breaks one of those.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere, against this checkout
# Under Triton's interpreter the kernels are not JIT functions and cannot be compiled.
os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from recurrent.kernels.triton.resident import SHARED_LIMITS as SHARED_LIMIT  # noqa: E402
from recurrent.kernels.triton.targets import (  # noqa: E402
    CompileTarget,
    ResidentTarget,
    compile_targets,
    generated_kernels,
    resident_targets,
)

PTXAS_ARCH = {90: "sm_90a", 80: "sm_80"}  # Triton's sm_90 PTX targets sm_90a
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@dataclass
class Result:
    name: str
    arch: int
    shared: int = 0  # bytes
    registers: int = 0  # per thread
    stack: int = 0  # bytes of stack frame (cuobjdump)
    local: int = 0  # bytes of local memory (cuobjdump)
    spill_stores: int = 0  # bytes (ptxas -v)
    spill_loads: int = 0
    resident: bool = False  # a resident kernel: W_hh loaded before the time loop, shared within its estimate
    weight_loads: int = 0  # loads of W_hh before the time loop
    weight_loads_in_loop: int = 0  # inside it
    shared_estimate: int = 0  # bytes resident.fit assumed
    error: Optional[str] = None  # compile or tool failure

    @property
    def problems(self) -> List[str]:
        if self.error:
            return [self.error]
        found = []
        if self.shared > SHARED_LIMIT[self.arch]:
            found.append(f"shared {self.shared} > {SHARED_LIMIT[self.arch]} B")
        if self.spill_stores or self.spill_loads or self.stack or self.local:
            found.append("spills")
        if self.resident and (self.weight_loads_in_loop or not self.weight_loads):
            found.append(f"W_hh loads: {self.weight_loads} before the time loop, {self.weight_loads_in_loop} inside")
        if self.resident and self.shared > self.shared_estimate:
            found.append(f"shared {self.shared} > the {self.shared_estimate} B resident.fit assumed")
        return found


DEFINITION = re.compile(r"^\s*(%[\w.#]+)(?::\d+)? = ([\w.]+) (.*)$")
LOOP_ARGUMENT = re.compile(r"(%[\w.#]+) = (%[\w.#]+)")  # iter_args(%argument = %initial value, ...)
TIME_LOOP = re.compile(r"scf\.for %\w+ = \S+ to %steps ")
# The ops that read global memory: plain loads, and the asynchronous copies Triton pipelines K loops into.
GLOBAL_LOADS = ("tt.load", "ttg.async_copy_global_to_local", "tt.descriptor_load")


def weight_loads(ttgir: str) -> tuple:
    """(loads of W_hh before the time loop, inside it) in a kernel's TTGIR: the global loads whose
    pointer derives, through the ops that define it and loops' arguments, from the ``w_ptr`` argument."""
    lines = ttgir.splitlines()
    operands: dict = {}  # SSA value -> the values its defining op reads (a loop argument: its initial value)
    for text in lines:
        m = DEFINITION.match(text)
        if m:
            operands[m.group(1)] = re.findall(r"%[\w.#]+", m.group(3).split(" : ")[0])
        for arguments in re.findall(r"iter_args\((.*?)\)", text):
            for name, initial in LOOP_ARGUMENT.findall(arguments):
                operands.setdefault(name, []).append(initial)
    seen: dict = {}

    def from_weights(value: str) -> bool:
        if value == "%w_ptr":
            return True
        if value not in seen:
            seen[value] = False  # cycles (loop-carried values) end here
            seen[value] = any(from_weights(v) for v in operands.get(value, []))
        return seen[value]

    start = next(i for i, text in enumerate(lines) if TIME_LOOP.search(text))
    depth, end = 0, len(lines)
    for i in range(start, len(lines)):
        depth += lines[i].count("{") - lines[i].count("}")
        if depth == 0:
            end = i
            break
    before = inside = 0
    for i, text in enumerate(lines):
        m = DEFINITION.match(text)
        if m and m.group(2) in GLOBAL_LOADS and from_weights(re.findall(r"%[\w.#]+", m.group(3))[0]):
            if start < i <= end:
                inside += 1
            elif i < start:
                before += 1
    return before, inside


def example_cells() -> dict:
    """The custom cells whose generated kernels are checked too: the shipped examples, torch.nn's GRU
    step (with zoneout in evaluation) and LSTM step (weight drop leaves the step as it is)."""
    from recurrent import GRUVariantCell, LSTMVariantCell
    from recurrent.example_cells import IndRNNCell, MinimalGatedUnit, PeepholeLSTMCell

    return {
        "mgu": MinimalGatedUnit(),
        "peephole_lstm": PeepholeLSTMCell(),
        "indrnn": IndRNNCell(),
        "gru_cell": GRUVariantCell(),
        "gru_cell_zoneout_eval": GRUVariantCell(zoneout=0.1).eval(),
        "lstm_cell_weight_drop": LSTMVariantCell(weight_drop=0.3),
    }


KERNEL_SETS = ("all", "persistent", "resident")  # --kernels: the persistent and generated kernels, the resident ones


@functools.cache
def targets(arch: int, kernels: str = "all") -> List[CompileTarget]:
    """What the route can launch on ``arch``: the resident kernels only where their W_hh fits its shared memory."""
    found: List[CompileTarget] = []
    if kernels in ("all", "persistent"):
        found += [*compile_targets(), *compile_targets(generated_kernels(example_cells()), aligned_above=32)]
    if kernels in ("all", "resident"):
        found += list(resident_targets(SHARED_LIMIT[arch]))
    return found


def tool(name: str, *args: str) -> str:
    done = subprocess.run([str(TOOLS / name), *args], capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"{name} failed: {done.stderr.strip()[:300]}")
    return done.stdout + done.stderr


def check(index: int, arch: int, kernels: str = "all") -> Result:
    """Compile target ``index`` for ``arch`` and measure it (runs in a worker process)."""
    t = targets(arch, kernels)[index]
    result = Result(t.name, arch)
    try:
        source = ASTSource(fn=t.kernel, signature=t.signature, constexprs=t.constexprs, attrs=t.attrs)
        kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=t.options)
        result.shared = kernel.metadata.shared
        if isinstance(t, ResidentTarget):
            result.resident, result.shared_estimate = True, t.shared_estimate
            result.weight_loads, result.weight_loads_in_loop = weight_loads(kernel.asm["ttgir"])
        with tempfile.TemporaryDirectory() as tmp:
            cubin, ptx = Path(tmp, "k.cubin"), Path(tmp, "k.ptx")
            cubin.write_bytes(kernel.asm["cubin"])
            ptx.write_text(kernel.asm["ptx"])
            usage = tool("cuobjdump", "-res-usage", str(cubin))
            arch_flag = f"-arch={PTXAS_ARCH[arch]}"
            verbose = tool("ptxas", "-v", arch_flag, str(ptx), "-o", str(cubin.with_suffix(".o")))
        registers = re.search(r"REG:(\d+) STACK:(\d+) .*LOCAL:(\d+)", usage)
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", verbose)
        if not registers or not spills:
            raise RuntimeError("could not parse the resource usage")
        result.registers, result.stack, result.local = map(int, registers.groups())
        result.spill_stores = sum(int(s) for s, _ in spills)
        result.spill_loads = sum(int(loads) for _, loads in spills)
    except Exception as e:  # noqa: BLE001 - reported as this configuration's failure
        first = (str(e).strip().splitlines() or [""])[0]
        result.error = f"{type(e).__name__}: {first}"[:300]
    return result


def line(r: Result) -> str:
    verdict = "FAIL: " + "; ".join(r.problems) if r.problems else "ok"
    return (
        f"{r.name:<40} sm_{r.arch}  shared {r.shared:>6} B  regs {r.registers:>3}  "
        f"spills {r.spill_stores}/{r.spill_loads} B  stack {r.stack}  local {r.local}  {verdict}"
    )


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", choices=sorted(SHARED_LIMIT), default=[90, 80])
    p.add_argument("--jobs", type=int, default=2, help="compiles in parallel (processes)")
    p.add_argument("--json", type=Path, help="write the results there")
    p.add_argument("--kernels", choices=KERNEL_SETS, default="all", help="which kernels (default: all)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    jobs = [(i, arch, args.kernels) for arch in args.arch for i in range(len(targets(arch, args.kernels)))]
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = []
        for r in pool.map(check, *zip(*jobs)):
            print(line(r), flush=True)
            results.append(r)
    failed = [r for r in results if r.problems]
    verdict = f"{len(failed)} fail" if failed else "all fit"
    print(
        f"{len(jobs)} configurations on {len(args.arch)} architectures: {verdict} "
        f"(max {max(r.registers for r in results)} registers, max {max(r.shared for r in results)} B shared; "
        f"triton {triton.__version__}, {time.perf_counter() - start:.0f} s)"
    )
    if args.json:
        limits = {f"sm_{a}": SHARED_LIMIT[a] for a in args.arch}
        rows = [dict(asdict(r), problems=r.problems) for r in results]
        doc = {"triton": triton.__version__, "shared_limit": limits, "results": rows}
        args.json.write_text(json.dumps(doc, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
