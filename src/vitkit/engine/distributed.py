"""All multi-process setup in one place: torchrun env -> gloo process group, DDP, samplers.

Run ``torchrun --nproc_per_node 2 -m vitkit.cli train ...``; a single process is the
world of size 1 and uses the same code path (same sampler, same data order).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vitkit.data.datasets import collate
from vitkit.errors import VitkitError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def setup() -> DistInfo:
    """Join the process group torchrun describes (gloo, CPU); a plain run is rank 0 of 1."""
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=10))
    return DistInfo(dist.get_rank(), dist.get_world_size())


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def wrap_model(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel over gloo (gradients averaged across processes)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or torch.compile (what is saved and evaluated)."""
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def per_rank_batch(batch_size: int, info: DistInfo) -> int:
    if batch_size % info.world_size:
        raise VitkitError(
            f"batch_size {batch_size} is not divisible by {info.world_size} processes; "
            f"use a multiple of {info.world_size}"
        )
    return batch_size // info.world_size


def train_loader(dataset: Dataset, batch_size: int, seed: int, info: DistInfo,
                 workers: int = 0) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled loader whose order is a pure function of (seed, epoch): call ``set_epoch``."""
    per_rank = per_rank_batch(batch_size, info)
    sampler = SkippingSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                              seed=seed, drop_last=True)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                        drop_last=True, generator=gen, persistent_workers=False, collate_fn=collate)
    return loader, sampler


class SkippingSampler(DistributedSampler):
    """A ``DistributedSampler`` that can drop its first ``skip`` indices (mid-epoch resume)."""

    skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # only for the epoch being resumed
        return iter(indices[skip:])


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum floats over processes (for loss/accuracy logging and the NaN check)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()
