"""The Ray executor: one Ray task per group on a Ray cluster (``--backend ray --address
auto|ray://HOST:PORT``), or on a Ray started here when no address is given.

Results, curves and checkpoint bytes come back to the driver, which alone writes the store,
so workers need no shared filesystem. A task lost with its worker or node is retried by Ray
(``MAX_RETRIES``); a run's own exception is not (it comes back as a ``failed`` result with its
traceback, as locally). Runs are claimed in the store just before their task is submitted,
so a driver killed with ``kill -9`` and restarted trains only what is missing. Ray is
optional: ``pip install 'scalelab[ray]'``.
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..devices import available_cores, share
from ..errors import ScalelabError, first_line
from ..records import FAILED, RunResult, RunSpec
from ..registry import executors
from ..spec import Resources, Study
from ._base import Executor, Group, train_group_of

#: Attempts after the first when a task's worker process or node dies.
MAX_RETRIES = 3


def _ray():
    try:
        import ray
    except ImportError:
        raise ScalelabError("--backend ray needs Ray: pip install 'scalelab[ray]'") from None
    return ray


def _train_on_worker(group: Group, device: str, checkpoint: bool, threads: int,
                     gpus: float = 0.0) -> list[RunResult]:
    """What a Ray task runs: the group, with the task's share of cores as torch threads
    (``gpus``: the GPUs the task asked for)."""
    import torch

    torch.set_num_threads(threads)
    # Ray packs tasks onto a node's CPUs: package counters would mix them. A fraction of a
    # GPU: Ray places other tasks on the same card, whose counter would mix them; whole GPUs
    # are the task's alone (Ray sets CUDA_VISIBLE_DEVICES to them).
    share(cpu=True, gpu=0 < gpus < 1)
    return train_group_of(group, device, checkpoint)


@executors.register("ray")
class RayExecutor(Executor):
    """One Ray task per run or stacked group, on a Ray cluster (or a local Ray)."""

    takes_address = True

    def __init__(self, device: str, workers: int | None, checkpoint: bool,
                 address: str | None = None):
        super().__init__(device, workers, checkpoint, address)
        self.ray = _ray()
        self.resources = Resources()
        self.started = False

    def check(self, study: Study) -> None:
        self.resources = study.spec.resources
        if self.resources.gpus == 0 and self.device.startswith(("cuda", "mps")):
            raise ScalelabError(f"--device {self.device}: Ray tasks get GPUs from the study's "
                                "`resources: {gpus: ...}` (0 now); set it, or use --device cpu")

    def __enter__(self) -> RayExecutor:
        # Ray's own messages (a task retried after its node died, ...) go to stderr: stdout
        # carries only scalelab's tables and JSON.
        self.quiet = contextlib.redirect_stdout(sys.stderr)
        self.quiet.__enter__()
        ray = self.ray
        if not ray.is_initialized():
            local = self.address is None
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     num_cpus=(self.workers or available_cores()) if local else None)
            self.started = True
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.started:
                self.ray.shutdown()
        finally:
            self.quiet.__exit__(*exc)

    def board(self, store_path: Path) -> RayBoard:
        """A halving search's rungs go through one actor on this (the driver's) node, which
        holds the store: workers on other machines never open it."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from ..search import StoreBoard

        here = NodeAffinitySchedulingStrategy(self.ray.get_runtime_context().get_node_id(),
                                              soft=False)
        actor = self.ray.remote(StoreBoard).options(num_cpus=0, scheduling_strategy=here)
        return RayBoard(actor.remote(store_path))

    def describe(self, groups: int) -> str:
        total = self.ray.cluster_resources()
        r = self.resources
        return (f"on Ray ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs; "
                f"{r.cpus:g} CPU{'s' if r.cpus != 1 else ''}"
                + (f", {r.gpus:g} GPU" if r.gpus else "") + " per task)")

    def execute(self, groups: Sequence[Group], claim: Callable[[Group], Group | None]
                ) -> Iterator[tuple[RunSpec, RunResult]]:
        ray, r = self.ray, self.resources
        device = "cuda" if r.gpus else "cpu"
        task = ray.remote(_train_on_worker).options(
            num_cpus=r.cpus, num_gpus=r.gpus, max_retries=MAX_RETRIES, retry_exceptions=False)
        # Keep as many tasks in flight as the cluster can run at once: runs are claimed just
        # before they start, so other runners (and a restarted driver) see what is left.
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // r.cpus))
        queue, pending = deque(groups), {}
        try:
            while queue or pending:
                while queue and len(pending) < slots:
                    group = claim(queue.popleft())
                    if group is not None:
                        ref = task.remote(group, device, self.checkpoint, max(1, int(r.cpus)),
                                          r.gpus)
                        pending[ref] = group
                if not pending:
                    continue
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    group = pending.pop(ref)
                    try:
                        results = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # retries exhausted: lost again
                        first = first_line(exc)
                        message = (f"the Ray task was lost {MAX_RETRIES + 1} times (its worker "
                                   f"or node died each time): {first}")
                        results = [RunResult(FAILED, error=message) for _ in group.runs]
                    yield from zip(group.runs, results)
        finally:
            for ref in pending:  # interrupted: stop the tasks in flight
                ray.cancel(ref, force=True)


@dataclass(frozen=True)
class RayBoard:
    """A worker's handle on the driver's :class:`~scalelab.search.StoreBoard` actor."""

    actor: Any

    def record_rung(self, rung: int, step: int, entries: list, eta: int, margin: float,
                    unstarted: dict[str, int]) -> dict[str, bool]:
        import ray

        return ray.get(self.actor.record_rung.remote(rung, step, entries, eta, margin,
                                                     unstarted))
