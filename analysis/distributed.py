"""Several processes, the PyTorch way: ``torchrun`` starts them and sets WORLD_SIZE, RANK and LOCAL_RANK;
``process_group`` joins them (NCCL on GPUs, gloo on CPUs) and ``Dist`` offers the few collectives training and
tracing need. Without torchrun everything runs as one process and every collective is a no-op.

    torchrun --nproc_per_node 4 -m analysis train ...                         # one machine, 4 processes
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 4 -m analysis train ...
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .backbones import pick_device
from .errors import DE3Error

TIMEOUT = datetime.timedelta(hours=2)  # a rank may wait this long for another (e.g. while it saves a checkpoint)


@dataclass(frozen=True)
class Dist:
    """This process's place among ``world_size`` processes; rank 0 writes files and logs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over all processes, in place."""
        if self.enabled:
            for t in tensors:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def all_gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` from rank ``src`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_ok(self, ok: bool) -> bool:
        """True on every rank when ``ok`` holds on every rank (to fail together instead of waiting forever)."""
        if not self.enabled:
            return ok
        flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return int(flag.item()) == 0

    def max_divergence(self, tensors: list[torch.Tensor]) -> float:
        """Largest elementwise difference of ``tensors`` between any two processes (0.0 when identical)."""
        if not self.enabled:
            return 0.0
        worst = 0.0
        for t in tensors:
            hi, lo = t.detach().float().clone(), t.detach().float().clone()
            dist.all_reduce(hi, op=dist.ReduceOp.MAX)
            dist.all_reduce(lo, op=dist.ReduceOp.MIN)
            if hi.numel():
                worst = max(worst, float((hi - lo).max()))
        return worst


def _collective_device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def env_dist() -> Dist:
    """Where torchrun placed this process (rank 0 of 1 when not launched by torchrun)."""
    try:
        return Dist(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise DE3Error("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[tuple[Dist, torch.device]]:
    """Join the torchrun process group (if any) and pick this process's device.

    "auto" gives each process its own GPU (cuda:LOCAL_RANK) when CUDA is present, else the CPU; the backend
    is NCCL for GPUs and gloo for CPUs. The group is left on exit.
    """
    ctx = env_dist()
    if not ctx.enabled:
        yield ctx, pick_device(device)
        return
    if device == "auto":
        device = f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{ctx.local_rank}"
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield ctx, dev
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
