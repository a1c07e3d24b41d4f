"""The torchrun executor: every rank trains each run together (DDP), one run after another;
rank 0 plans and is the only process that writes results.

    torchrun --standalone --nproc_per_node=8 -m scalelab run studies/lm_scaling_gpu.yaml --device cuda

Chosen automatically inside a torchrun job (``--backend auto``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from ..devices import available_cores, resolve_device
from ..errors import ScalelabError
from ..records import RunResult, RunSpec
from ..registry import executors, tasks
from ..spec import Study
from ._base import Executor, Group, train_group_of


@executors.register("torchrun")
class TorchrunExecutor(Executor):
    """Each run across every process of a ``torchrun`` job (language models, DDP)."""

    stacks = False

    def __init__(self, device: str, workers: int | None, checkpoint: bool,
                 address: str | None = None):
        super().__init__(device, workers, checkpoint, address)
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            raise ScalelabError("--backend torchrun: not inside a torchrun job (start it with "
                                "`torchrun --nproc_per_node=N -m scalelab run ...`)")
        dev = resolve_device(device)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
        elif dev.type != "cpu":
            raise ScalelabError(f"torchrun: --device {dev} is not supported (use cuda or cpu)")
        self.dev = dev

    def check(self, study: Study) -> None:
        if study.spec.nuisance_search.method != "grid":
            raise ScalelabError(f"{study.source}: nuisance_search: "
                                f"{study.spec.nuisance_search.method} is not supported "
                                "under torchrun yet (its ranks would have to agree on every "
                                "rung); use the grid, or plain `scalelab run`")
        not_lm = sorted({r.config["task"]["name"] for r in study.runs
                         if tasks.get(r.config["task"]["name"]).data_kind != "language"})
        if not_lm:
            raise ScalelabError(f"torchrun: distributed training supports language-model tasks "
                                f"(text); task {', '.join(not_lm)} trains with plain `scalelab run`")

    def __enter__(self) -> TorchrunExecutor:
        if self.dev.type == "cuda":
            torch.cuda.set_device(self.dev)
        torch.set_num_threads(max(1, available_cores() // self.local_size))
        dist.init_process_group("nccl" if self.dev.type == "cuda" else "gloo")
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                # Tear down together: a rank that destroys the group while its peer is still
                # storing results can abort at exit (gloo's threads outlive it).
                dist.barrier()
        finally:
            dist.destroy_process_group()

    @property
    def primary(self) -> bool:
        return dist.get_rank() == 0

    def agree(self, todo: list[RunSpec]) -> list[RunSpec]:
        # The other ranks planned without the store (every selected run): rank 0's list is a
        # subset of theirs.
        message = [[r.run_id for r in todo]]
        dist.broadcast_object_list(message, src=0)
        by_id = {r.run_id: r for r in todo}
        return [by_id[i] for i in message[0]]

    def describe(self, groups: int) -> str:
        return f"on {dist.get_world_size()} processes ({self.dev.type})"

    def execute(self, groups: Sequence[Group], claim: Callable[[Group], Group | None]
                ) -> Iterator[tuple[RunSpec, RunResult]]:
        for group in groups:
            decision = [claim(group) is not None]  # rank 0's claim decides for every rank
            dist.broadcast_object_list(decision, src=0)
            if decision[0]:
                yield group.runs[0], train_group_of(group, str(self.dev), self.checkpoint)[0]
