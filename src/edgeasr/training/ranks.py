"""A whole stage in several training processes (Lightning DDP), not only its ``trainer.fit``.

Lightning's ``ddp`` launcher starts the other ranks by rerunning the command (Hydra overrides
included) at the first ``fit``; a stage has work before it (pseudo-labels, teacher targets) and
after it (the report), so :func:`launch` starts them when the stage opens instead (Lightning
Fabric's launcher: the same command, ``LOCAL_RANK`` set) and joins the process group that every
later ``Trainer(strategy="ddp")`` then reuses. Every rank runs the stage's code from the top:
work before training is split with :meth:`Ranks.shard` and joined with :meth:`Ranks.gather`;
rank zero alone tracks, evaluates and writes (the others return after training). Under
``torchrun`` or SLURM, which start the ranks themselves, the same code joins their group.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning_fabric import Fabric
from lightning_fabric.strategies import DDPStrategy
from omegaconf import DictConfig

T = TypeVar("T")

# Rank zero evaluates between two trainings of a stage (distill: the baseline's report) while the
# others wait in the next one's first collective: room for that, not torch's 30 minutes.
TIMEOUT = datetime.timedelta(hours=4)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the stage's training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> "Ranks":
        """From the process group when one is joined, else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def device(self, trainer: DictConfig) -> torch.device:
        """This rank's accelerator for work outside Lightning (distill's teacher passes): its GPU under
        ``trainer.accelerator`` gpu/cuda (or auto with CUDA present), else the CPU."""
        accelerator = str(trainer.get("accelerator", "cpu"))
        if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
            local = int(os.environ.get("LOCAL_RANK", self.rank))
            return torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (every ``world_size``-th from ``rank``): disjoint, all covered."""
        return list(items[self.rank::self.world_size])

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (pickled: keep it to what must travel)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank zero's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def num_processes(trainer: DictConfig) -> int:
    """Training processes ``trainer`` asks for: ``devices`` x ``num_nodes`` under a ``ddp``
    strategy, else 1. Raises ValueError for what a stage cannot run as (named)."""
    strategy = str(trainer.get("strategy", "auto"))
    devices, nodes = trainer.get("devices", 1), int(trainer.get("num_nodes", 1) or 1)
    if strategy in ("ddp_spawn", "ddp_fork", "ddp_notebook"):
        raise ValueError(f"trainer.strategy={strategy}: a stage's ranks must rerun the stage's command (its work "
                         "before and after training too); use trainer.strategy=ddp")
    if not strategy.startswith("ddp"):
        return 1
    if isinstance(devices, int) or str(devices).isdigit():
        n = int(devices)
    elif isinstance(devices, Sequence) and not isinstance(devices, str):
        n = len(devices)
    else:
        raise ValueError(f"trainer.devices={devices!r} with strategy={strategy}: give the number of processes "
                         "per node (e.g. trainer.devices=2)")
    if n < 1 or nodes < 1:
        raise ValueError(f"trainer.devices={devices!r}, trainer.num_nodes={nodes}: both must be >= 1")
    return n * nodes


def _in_local_multirun() -> bool:
    """A Hydra multirun job whose ranks nobody else starts (no SLURM task, no torchrun rank)."""
    external = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_PROCID", "RANK"))
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN and not external


def launch(trainer: DictConfig) -> Ranks:
    """Start the stage's other ranks (or join the ranks a cluster started) and the process group.

    One process (no ``ddp`` strategy, or one device) starts nothing. Called again in a process that
    already joined (a second training in the stage), it returns the same ranks.
    """
    n = num_processes(trainer)
    if n == 1:
        return Ranks()
    if dist.is_available() and dist.is_initialized():
        return Ranks.current()
    if _in_local_multirun():
        raise ValueError("trainer.strategy=ddp inside a Hydra multirun on one machine: its ranks would rerun the "
                         "whole sweep; run each job by hand, or sweep with hydra/launcher=slurm (SLURM starts the ranks)")
    fabric = Fabric(accelerator=str(trainer.get("accelerator", "auto")), devices=trainer.devices,
                    num_nodes=int(trainer.get("num_nodes", 1) or 1), strategy=DDPStrategy(timeout=TIMEOUT))
    fabric.launch()  # the main process reruns the command for ranks 1..; each joins the group here
    return Ranks(fabric.global_rank, fabric.world_size)
