"""DistributedDataParallel over our layers: 2 CPU processes (gloo) take one step on halves of a global
batch, and must hold the gradients and parameters of one process taking that step on the whole batch."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils.rnn import pack_padded_sequence

import recurrent

WORLD_SIZE, GLOBAL_BATCH, MAX_LEN, INPUT_SIZE, N_CLASSES = 2, 8, 6, 5, 3
# Guards against a hang, far above the ~15 s the test takes: a rank that never arrives makes the other
# give up after COLLECTIVE_TIMEOUT, and the whole spawn is killed after TIMEOUT_S. Generous because on a
# loaded 2-core CI machine one rank may start (import, compile) much later than the other.
TIMEOUT_S = 300
COLLECTIVE_TIMEOUT = timedelta(seconds=120)
CASES = ("packed", "padded")

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)


class Net(nn.Module):
    """A 2-layer bidirectional GRU feeding an LSTM and a Linear head: every parameter gets a gradient."""

    def __init__(self, packed: bool) -> None:
        super().__init__()
        self.packed = packed
        self.gru = recurrent.GRU(INPUT_SIZE, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.lstm = recurrent.LSTM(12, 4, batch_first=True)
        self.head = nn.Linear(4, N_CLASSES)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        if self.packed:
            # Unsorted lengths: the layers sort and unsort the batch themselves.
            out, _ = self.gru(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            _, (h, _) = self.lstm(out)
            return self.head(h[-1])  # each sequence's state at its own last step
        out, _ = self.gru(x)
        out, _ = self.lstm(out)
        return self.head(out.mean(1))


def global_batch() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, MAX_LEN, INPUT_SIZE, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, MAX_LEN + 1, (GLOBAL_BATCH,), generator=g)
    y = torch.randint(0, N_CLASSES, (GLOBAL_BATCH,), generator=g)
    return x, lengths, y


def make(case: str) -> tuple[Net, torch.optim.Optimizer]:
    torch.manual_seed(0)  # the same initial weights in every process (DDP would broadcast rank 0's anyway)
    model = Net(packed=case == "packed").double()
    # SGD with momentum: the step is linear in the gradient, so a wrong gradient shows in the parameters
    # (Adam's first step is about lr * sign(gradient) and would hide most errors).
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, lengths: Tensor, y: Tensor) -> dict:
    """One training step, with the mean loss over the batch as DDP's averaging of gradients assumes."""
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x, lengths), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    return {"grads": grads, "params": {n: p.detach().clone() for n, p in model.named_parameters()}}


def worker(rank: int, store: str, results: str) -> None:
    """One rank: its local (unsynchronised) gradients on its half, then a DDP step; saved for the test."""
    torch.set_num_threads(1)  # 2 processes on a 2-core CI machine, maybe next to another xdist worker
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD_SIZE, timeout=COLLECTIVE_TIMEOUT
    )
    try:
        x, lengths, y = global_batch()
        mine = slice(rank * GLOBAL_BATCH // WORLD_SIZE, (rank + 1) * GLOBAL_BATCH // WORLD_SIZE)
        out = {}
        for case in CASES:
            model, optimizer = make(case)
            local = torch.autograd.grad(
                F.cross_entropy(model(x[mine], lengths[mine]), y[mine]), list(model.parameters())
            )
            ddp = DistributedDataParallel(model)
            out[case] = step(ddp, optimizer, x[mine], lengths[mine], y[mine])
            out[case]["local"] = dict(zip((n for n, _ in model.named_parameters()), local))
            # DDP names parameters "module.<name>"; compare under the model's own names.
            for kind in ("grads", "params"):
                out[case][kind] = {n.removeprefix("module."): v for n, v in out[case][kind].items()}
        torch.save(out, Path(results) / f"rank{rank}.pt")
        # Both ranks done with every collective before either tears the group down: once, on a loaded
        # CI machine, a rank aborted in gloo's teardown ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(store: Path, results: Path) -> dict[str, dict]:
    """mp.spawn with a deadline: a rank that hangs is killed and the test fails instead of stalling CI.
    The single-process reference is computed here while the ranks start up: it overlaps their imports."""
    deadline = time.monotonic() + TIMEOUT_S
    context = mp.start_processes(
        worker, args=(str(store), str(results)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    try:
        x, lengths, y = global_batch()
        references = {case: step(*make(case), x, lengths, y) for case in CASES}
        while not context.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"the {WORLD_SIZE} DDP processes did not finish within {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
    return references


def test_ddp_step_equals_one_process_on_the_global_batch(tmp_path: Path) -> None:
    references = spawn(tmp_path / "store", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    for case, reference in references.items():
        names = list(reference["grads"])
        zero, other = ranks[0][case], ranks[1][case]
        # The halves give different gradients, so matching the reference below needs the allreduce.
        assert all(not torch.allclose(zero["local"][n], other["local"][n]) for n in names), case
        for n in names:
            # Both ranks hold the same averaged gradient (a + b == b + a exactly) and so the same step.
            assert torch.equal(zero["grads"][n], other["grads"][n]), (case, n)
            assert torch.equal(zero["params"][n], other["params"][n]), (case, n)
            torch.testing.assert_close(
                zero["grads"][n], reference["grads"][n], rtol=1e-10, atol=1e-10, msg=f"{case}: gradient of {n}"
            )
            torch.testing.assert_close(
                zero["params"][n], reference["params"][n], rtol=1e-10, atol=1e-10, msg=f"{case}: {n} after the step"
            )
