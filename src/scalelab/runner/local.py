"""Run trainings in worker processes on this machine (or in this process for one worker)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import torch

from ..spec import RunSpec
from ..train import FAILED, RunResult, train_run
from ..train.batched import train_group
from .grouping import group_id


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class LocalExecutor:
    """Trains groups of runs with ``workers`` processes, yielding each result as it finishes.

    Each worker gets an equal share of the cores as torch threads. Workers are spawned (not
    forked: torch's thread pools do not survive a fork) and exit when the parent dies, so a
    killed runner leaves no orphans behind.
    """

    def __init__(self, workers: int, devices: Sequence[str], checkpoint_dir: Path | None = None):
        self.workers = max(1, workers)
        self.devices = list(devices)
        self.checkpoint_dir = checkpoint_dir

    def execute(
        self, groups: Sequence[Sequence[RunSpec]], on_start: Callable[[RunSpec], None]
    ) -> Iterator[tuple[RunSpec, RunResult]]:
        """Train each group (one run, or runs trained together) and yield every run's result."""
        if self.workers == 1:
            for group in groups:
                for run in group:
                    on_start(run)
                yield from zip(group, run_task(group, self.devices[0], self.checkpoint_dir))
            return
        pending = deque(enumerate(groups))
        in_flight: dict[Future, Sequence[RunSpec]] = {}
        pool = self._pool()
        try:
            while pending or in_flight:
                while pending and len(in_flight) < self.workers:
                    index, group = pending.popleft()
                    for run in group:
                        on_start(run)
                    device = self.devices[index % len(self.devices)]
                    in_flight[pool.submit(run_task, group, device, self.checkpoint_dir)] = group
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    group = in_flight.pop(future)
                    try:
                        results = future.result()
                    except BrokenProcessPool as exc:
                        broken = True
                        message = (f"a worker process died ({exc}); this run or one running "
                                   "beside it crashed the process")
                        results = [RunResult(FAILED, error=message) for _ in group]
                    yield from zip(group, results)
                if broken:
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _pool(self) -> ProcessPoolExecutor:
        threads = max(1, available_cores() // self.workers)
        return ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads, os.getpid()))


def run_task(group: Sequence[RunSpec], device: str, checkpoint_dir: Path | None) -> list[RunResult]:
    """Train one group: a single run alone, several runs as one stacked model."""
    paths = [checkpoint_dir / f"{r.run_id}.pt" if checkpoint_dir else None for r in group]
    if len(group) == 1:
        return [train_run(group[0].config, device, paths[0])]
    return train_group([r.config for r in group], device, paths, group_id(group))


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
