"""Multi-process training through torchrun: set-up, rank helpers and metric reduction, in one place.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (and runs the rendezvous for
several machines); we only read them. nccl on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import AlexnetError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun prepared (if any); return this rank's info and device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    info = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
        # Share the machine's cores between the ranks on it instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.local_world_size))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return info, device


_held = False  # inside `held()`: the group outlives each run (`alexnet tune`'s trials)


@contextlib.contextmanager
def held(device: torch.device) -> Iterator[tuple[Dist, torch.device]]:
    """Join the process group (as `setup`) and keep it for the whole block: the runs trained inside it (each
    `train` call tears down at its end) leave it in place, so rank 0 can send every rank the next run over it."""
    global _held
    info, device = setup(device)
    _held = True
    try:
        yield info, device
    except BaseException:
        _held = False
        teardown(synchronize=False)
        raise
    _held = False
    teardown()


def teardown(synchronize: bool = True) -> None:
    """Leave the process group. Ranks first meet at a barrier so none tears down gloo's threads while a
    peer still talks to it (that aborts the process: "terminate called without an active exception").
    Inside `held()` the group stays."""
    if _held:
        return
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def check_batch(batch_size: int, world: int, accum_steps: int) -> int:
    """The per-rank micro-batch: --batch-size is the global batch, split over ranks and accumulation."""
    per_step = world * accum_steps
    if batch_size % per_step:
        raise AlexnetError(f"--batch-size {batch_size} must be divisible by the number of processes ({world}) "
                           f"times --accum-steps ({accum_steps})")
    return batch_size // per_step


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_strided(t: torch.Tensor, total: int, info: Dist) -> torch.Tensor:
    """Undo strided sharding: rank r holds rows r, r+W, ...; return all `total` rows in order."""
    if not info.enabled:
        return t
    per_rank = -(-total // info.world_size)
    padded = torch.zeros((per_rank, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    # Interleave back: row i of rank r is sample r + i*W.
    stacked = torch.stack(parts, dim=1).reshape(per_rank * info.world_size, *t.shape[1:])
    return stacked[:total]


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if any rank says so (e.g. a non-finite loss must stop them all)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t).item() > 0)


def weight_fingerprints(model: torch.nn.Module, info: Dist) -> list[list[float]]:
    """Per-rank (sum, sum of squares, checksum) of all parameters: equal lists prove the replicas agree."""
    with torch.no_grad():
        flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
        weights = torch.arange(1, len(flat) + 1, dtype=torch.float64, device=flat.device) % 97
        mine = torch.stack([flat.sum(), (flat * flat).sum(), (flat * weights).sum()])
    if not info.enabled:
        return [mine.tolist()]
    parts = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(parts, mine)
    return [p.tolist() for p in parts]
