"""Where the time of one forward+backward goes: torch.nn vs recurrent, by kind of op.

    python benchmarks/profile_ops.py [--shape fmnist-gru2] [--threads T] [--steps N]

Profiles N fwd+bwd steps of each (after warm-up) with torch.profiler and sums the self CPU time of
ATen ops, oneDNN's (the fast CPU path's products and weight packing) and our native sequence ops
(``recurrent_cpu::``) into matrix products (mm, bmm, addmm, baddbmm, oneDNN's linear), copies
(copy_, cat, stack, index ops, weight packing) and everything else (elementwise gate math, the sequence
ops, reductions), and counts the minor page faults per step
(getrusage, outside the profiler): every fresh multi-megabyte buffer that the allocator has handed
back to the OS is faulted in again page by page. The shapes are speed.py's.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import KINDS, SHAPES, flat, quiet_fd2  # noqa: E402

import recurrent  # noqa: E402

MATMUL = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "mkldnn::_linear_pointwise"}
COPIES = {
    "aten::copy_",
    "aten::cat",
    "aten::stack",
    "aten::index_select",
    "aten::index_copy_",
    "aten::index_add",
    "aten::clone",
    "aten::contiguous",
    "mkldnn::_reorder_linear_weight",
}


def breakdown(model: nn.Module, x: torch.Tensor, steps: int) -> dict[str, float]:
    """Per step: self milliseconds of matrix products, copies and the rest, and minor page faults."""
    from torch.profiler import ProfilerActivity, profile

    def step() -> None:
        outs = flat(model(x))
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    for _ in range(3):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    with quiet_fd2(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals = {"matrix products": 0.0, "copies": 0.0, "other ops": 0.0}
    for event in prof.key_averages():
        if not event.key.startswith(("aten::", "mkldnn::", "recurrent_cpu::")):
            continue
        kind = "matrix products" if event.key in MATMUL else "copies" if event.key in COPIES else "other ops"
        totals[kind] += event.self_cpu_time_total / 1e3 / steps
    totals["all ops"] = sum(totals.values())
    totals["page faults"] = faults
    return totals


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="fmnist-gru2", choices=[s.name for s in SHAPES if not s.packed])
    p.add_argument("--threads", type=int)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = next(s for s in SHAPES if s.name == args.shape)
    layer_name, _, kwargs = KINDS[shape.kind]
    torch.manual_seed(0)
    kw = dict(kwargs, num_layers=shape.layers, bidirectional=shape.bidirectional)
    reference = getattr(nn, layer_name)(shape.input_size, shape.hidden_size, **kw)
    ours = getattr(recurrent, layer_name)(shape.input_size, shape.hidden_size, **kw)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(shape.seq_len, shape.batch, shape.input_size, requires_grad=True)
    rows = {name: breakdown(m, x, args.steps) for name, m in (("torch.nn", reference), ("recurrent", ours))}
    print(
        f"{shape.name}, fwd+bwd, ms per step "
        f"(self CPU time, {torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    kinds = list(rows["torch.nn"])
    print(f"{'':18}" + "".join(f"{k:>18}" for k in kinds))
    for name, totals in rows.items():
        print(f"{name:18}" + "".join(f"{totals[k]:18.2f}" for k in kinds))


if __name__ == "__main__":
    main()
