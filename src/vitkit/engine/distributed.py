"""All multi-process setup in one place: torchrun env -> process group, DDP / FSDP2, samplers.

Run ``torchrun --nproc_per_node N -m vitkit.cli train ...``: one process per GPU on NCCL when
the device is CUDA (``cuda:LOCAL_RANK``), gloo on CPU. A single process is the world of size 1
and uses the same code path (same sampler, same data order).
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from vitkit.data.datasets import collate
from vitkit.engine.device import PRECISIONS, pin_memory, resolve_device, use_device
from vitkit.errors import VitkitError


@dataclass(frozen=True)
class DistInfo:
    """This process's place: rank among ``world_size``, its device, and the process groups."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    control: object = None  # a gloo group for host-side votes (None: the default group is gloo)
    owns_group: bool = False  # this run created the process group (and destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def setup(device: str = "auto") -> DistInfo:
    """Pick the device and join the process group torchrun describes (NCCL on CUDA, else gloo)."""
    if not launched_by_torchrun():
        dev = resolve_device(device)
        use_device(dev)
        return DistInfo(device=dev)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if re.fullmatch(r"\s*cuda:\d+\s*", str(device).lower()) and int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > 1:
        raise VitkitError(f"device={device} would put every process of this machine on one GPU; under torchrun "
                          "use device=cuda (each process takes cuda:LOCAL_RANK) or auto")
    dev = resolve_device(device, local_rank)
    use_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        extra = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10), **extra)
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, control, owns)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` created it (a caller's group stays)."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if not info.enabled:
        return
    if info.device.type == "cuda":
        dist.barrier(device_ids=[info.device.index])
    else:
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, parallel: str = "ddp", precision: str = "fp32",
               mixed_precision: bool = False) -> nn.Module:
    """DDP (gradients averaged across processes) or FSDP2 (parameters, gradients and optimizer
    state sharded); a single process keeps the plain model. The model is on ``info.device``."""
    if not info.enabled:
        return model
    if parallel == "fsdp":
        return shard_model(model, precision if mixed_precision else "fp32")
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The blocks FSDP shards one by one: every element of the model's module lists (the ViT's
    transformer blocks, the VT modules), outermost first; the rest belongs to the root unit."""
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                for item in child:
                    (visit if isinstance(item, (nn.ModuleList, nn.ModuleDict)) else units.append)(item)
            else:
                visit(child)

    visit(model)
    return units


def shard_model(model: nn.Module, precision: str = "fp32") -> nn.Module:
    """FSDP2: ``fully_shard`` each block, then the root (in place; the module keeps its class
    and parameter names). ``precision`` bf16/fp16: a ``MixedPrecisionPolicy`` computing in that
    dtype with fp32 gradient reduction."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = PRECISIONS[precision]
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for unit in shard_units(model):
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def unwrap(model: nn.Module) -> nn.Module:
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
                        drop_last=True, generator=gen, persistent_workers=False, collate_fn=collate,
                        pin_memory=pin_memory(info.device))
    return loader, sampler


class SkippingSampler(DistributedSampler):
    """A ``DistributedSampler`` that can drop its first ``skip`` indices (mid-epoch resume)."""

    skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # only for the epoch being resumed
        return iter(indices[skip:])


class ShardedBatches(Sampler):
    """Batches ``i = rank, rank + W, ...`` of the in-order batching a single process uses.

    Every rank sees whole batches, identical to the single-process ones, and no sample twice
    (uneven shards stay uneven: no padding), so summed counts equal a one-process evaluation.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size

    @property
    def num_batches(self) -> int:
        """Batches of the whole evaluation (over all ranks)."""
        return -(-self.n // self.batch_size)

    @property
    def rounds(self) -> int:
        """Batches of the rank that has the most (ranks step together when the model is sharded)."""
        return -(-self.num_batches // self.world_size)

    def __iter__(self):
        for b in range(self.rank, self.num_batches, self.world_size):
            yield list(range(b * self.batch_size, min(self.n, (b + 1) * self.batch_size)))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_batches, self.world_size))


def sharded_loader(dataset: Dataset, batch_size: int, info: DistInfo | None = None, workers: int = 0) -> DataLoader:
    """In-order evaluation batches; under torchrun each rank gets its share (:class:`ShardedBatches`)."""
    info = info or DistInfo()
    batches = ShardedBatches(len(dataset), batch_size, info.rank, info.world_size)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory(info.device))


def all_reduce_(tensors: list[torch.Tensor], info: DistInfo, op=None) -> list[torch.Tensor]:
    """Sum (or ``op``) device tensors over processes, in place; one collective per tensor."""
    if info.enabled:
        for t in tensors:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return tensors


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True if ``flag`` is set on any process: a host-side vote over gloo (no device sync)."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control)
    return bool(t.item())


def max_over_ranks(value: float, info: DistInfo) -> float:
    """The largest of every process's ``value``: a host-side collective over gloo (no device sync)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control)
    return float(t.item())


def gathered_copy(model: nn.Module, info: DistInfo) -> nn.Module | None:
    """A plain CPU copy of a sharded model on rank 0 (a collective: every process calls it;
    the others get None). Built on the meta device, then given the gathered weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from vitkit.registry import family_class

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return None
    with torch.device("meta"):
        plain = family_class(model.family)(model.config)
    plain.load_state_dict(full, strict=True, assign=True)
    return plain
