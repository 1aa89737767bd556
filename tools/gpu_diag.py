"""One-off GPU diagnostics of the first GPU run's test failures, as run in the second run from the repo
root (``PYTHONPATH=$PWD python tools/gpu_diag.py``; its output is benchmarks/results/gpu-h200-2026-12-04/
run2/diag.log): the spread of bfloat16 autocast errors of a ReLU RNN over seeds (cuDNN's own, ours on
TorchScript and on Triton), the cancellation in a 16-bit projected-LSTM case, and the size of TF32
errors at real shapes. A check, not a benchmark: kept with the tools."""

import os
import statistics
import sys

sys.path.insert(0, "tests")
import torch

import recurrent
from recurrent.kernels import KINDS
from recurrent.kernels.common import previous_blocks

torch.backends.cudnn.allow_tf32 = False
dev = "cuda"


def rel(a, e):
    return ((a.float() - e).norm() / e.norm().clamp_min(1e-6)).item()


# 1. autocast ReLU RNN: spread of bf16 gradient errors against fp32 torch.nn, over seeds
rows = {"cudnn-bf16": [], "torchscript-bf16": [], "triton-bf16": []}
for seed in range(30):
    torch.manual_seed(seed)
    ref = torch.nn.RNN(6, 8, 2, bidirectional=True, nonlinearity="relu").to(dev)
    ours = recurrent.RNN(6, 8, 2, bidirectional=True, nonlinearity="relu").to(dev)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 4, 6, device=dev, requires_grad=True)

    def g(m, amp, backend=None):
        if backend:
            os.environ["RECURRENT_BACKEND"] = backend
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            out, h = m(x)
        outs = [out.float(), h.float()]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), device=dev).view_as(o)).sum() for o in outs)
        os.environ.pop("RECURRENT_BACKEND", None)
        return torch.autograd.grad(loss, [x, *m.parameters()])

    base = g(ref, False)
    for name, gr in (
        ("cudnn-bf16", g(ref, True)),
        ("torchscript-bf16", g(ours, True, "torchscript")),
        ("triton-bf16", g(ours, True, "triton")),
    ):
        rows[name].append(max(rel(a, e) for a, e in zip(gr, base)))
for name, errs in rows.items():
    print(
        f"autocast relu {name:18s} worst-param error: median {statistics.median(errs):.3f} "
        f"max {max(errs):.3f} seed0 {errs[0]:.3f}"
    )

# 2. projected LSTM, H=3 P=1, one step, fp16: cancellation in dh0?
import test_triton as T  # noqa: E402 - tests/ is on the path from above

for dtype in (torch.float16, torch.bfloat16, torch.float32):
    torch.manual_seed(0)
    gi, states, w_hh, b_hh, extra = T.kernel_inputs("LSTM", True, 1, 3, [1], dtype)
    ref, tri = KINDS["LSTM"].kernel("torchscript"), KINDS["LSTM"].kernel("triton")
    r_in = [gi.double(), [s.double() for s in states], w_hh.double()]
    ex = [e.double() for e in extra]
    hs, finals, saved = ref.forward(r_in[0], r_in[1], r_in[2].transpose(1, 2), None, ex, [1], True)
    grad_hs = torch.randn_like(hs)
    grad_finals = [torch.randn_like(f) for f in finals]
    exp = ref.backward(grad_hs, grad_finals, r_in[1], hs, previous_blocks(r_in[1][0], hs, [1]), saved, r_in[2], ex, [1])
    act = tri.backward(
        grad_hs.to(dtype),
        [q.to(dtype) for q in grad_finals],
        states,
        hs.to(dtype),
        previous_blocks(states[0], hs.to(dtype), [1]),
        [s.to(dtype) for s in saved],
        w_hh,
        extra,
        [1],
    )
    terms = exp[1].flatten() * r_in[2][0, :, 0]
    print(
        f"lstm-proj P=1 {dtype}: dh0 expected {exp[2][0].item():.5f} actual {act[2][0].float().item():.5f} "
        f"sum|terms|/|sum| {(terms.abs().sum() / terms.sum().abs()).item():.1f}; dgates err {rel(act[0], exp[0]):.1e}"
    )

# 3. TF32 error sizes at a real shape (what the tf32 test tolerance must hold)
torch.backends.cudnn.allow_tf32 = True
for kind, h in (("GRU", 128), ("LSTM", 128), ("GRU", 512)):
    torch.manual_seed(0)
    ref = getattr(torch.nn, kind)(32, h, 1).to(dev, torch.float64)
    ours = getattr(recurrent, kind)(32, h, 1)
    ours.load_state_dict(ref.state_dict())
    ours = ours.to(dev)
    x = torch.randn(64, 37, 32, device=dev, dtype=torch.float64)
    os.environ["RECURRENT_BACKEND"] = "triton"
    xo = x.float().requires_grad_()
    xr = x.clone().requires_grad_()
    o1 = ours(xo)[0]
    o2 = ref(xr)[0]
    w = torch.randn_like(o2)
    g1 = torch.autograd.grad((o1 * w.float()).sum(), [xo, *ours.parameters()])
    g2 = torch.autograd.grad((o2 * w).sum(), [xr, *ref.parameters()])
    os.environ.pop("RECURRENT_BACKEND")
    print(f"tf32 {kind} H={h}: output {rel(o1, o2):.1e}, worst gradient {max(rel(a, e) for a, e in zip(g1, g2)):.1e}")
