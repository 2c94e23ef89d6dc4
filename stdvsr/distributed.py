"""Everything distributed in one place: joining and leaving torchrun's process group, and the few collectives
the stages use (loss values averaged over ranks, a barrier, a digest to check replicas agree). Outside torchrun
every function here is a cheap no-op or returns the single-process answer."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def torchrun_group(backend: str | None = None, timeout_minutes: float = 30) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment, starting the process group on first use
    (``backend`` None: NCCL with CUDA, else gloo); ``(0, 1, 0)`` outside torchrun. The one place that joins a group:
    every distributed command ends it with :func:`end_process_group`."""
    import datetime
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def end_process_group() -> None:
    """Shut torchrun's process group down, if one is up. Call it when a distributed command ends, success or not:
    left to interpreter exit, gloo's threads can abort a rank ("terminate called without an active exception") and
    torchrun then reports a finished run as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # a DistributedDataParallel module kept alive by a reference cycle (a run's state and its checkpoint
        # callback) would otherwise outlive the group and tear gloo down at interpreter exit: the abort above
        import gc

        gc.collect()
        dist.destroy_process_group()


def weights_digest(module: nn.Module) -> str:
    """A blake2b digest of every parameter and buffer's bytes (identical replicas ⇔ identical digests)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def digests_across_ranks(module: nn.Module, world: int) -> list[str]:
    """Every rank's :func:`weights_digest` of ``module``, in rank order (every rank gets the list)."""
    digest = weights_digest(module)
    if world <= 1:
        return [digest]
    import torch.distributed as dist

    digests = [None] * world
    dist.all_gather_object(digests, digest)
    return digests


def mean_across_ranks(values: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Loss terms averaged over ranks (every rank gets the same numbers, so every rank decides alike)."""
    names = sorted(values)
    vec = torch.stack([values[k].detach().float() for k in names])
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(vec)
        vec /= world
    return dict(zip(names, vec.tolist()))


def barrier(pg: bool) -> None:
    """Wait for every rank (a no-op without a process group)."""
    if pg:
        import torch.distributed as dist

        dist.barrier()
