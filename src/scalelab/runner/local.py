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
from ..train.batched import group_key, train_group
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

    def __init__(self, workers: int, devices: Sequence[str], checkpoint_dir: Path | None = None,
                 single_loop: frozenset[str] = frozenset()):
        self.workers = max(1, workers)
        self.devices = list(devices)
        self.checkpoint_dir = checkpoint_dir
        self.single_loop = single_loop  # run ids that train on the single-run loop when alone

    def execute(
        self, groups: Sequence[Sequence[RunSpec]], on_start: Callable[[RunSpec], None]
    ) -> Iterator[tuple[RunSpec, RunResult]]:
        """Train each group (one run, or runs trained together) and yield every run's result."""
        if self.workers == 1:
            for group in groups:
                for run in group:
                    on_start(run)
                yield from zip(group, run_task(group, self.devices[0], self.checkpoint_dir,
                                               self.single_loop))
            return
        pending = deque(enumerate(groups))
        in_flight: dict[Future, tuple[int, Sequence[RunSpec]]] = {}
        suspects: deque = deque()  # groups in flight when a worker died: retried one at a time
        pool = self._pool(self.workers)
        try:
            while pending or in_flight or suspects:
                alone = bool(suspects)  # in_flight is empty whenever suspects are queued
                queue, limit = (suspects, 1) if alone else (pending, self.workers)
                while queue and len(in_flight) < limit:
                    index, group = queue.popleft()
                    for run in group:
                        on_start(run)
                    device = self.devices[index % len(self.devices)]
                    future = pool.submit(run_task, group, device, self.checkpoint_dir,
                                         self.single_loop)
                    in_flight[future] = (index, group)
                if not in_flight:
                    continue
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    index, group = in_flight.pop(future)
                    try:
                        results = future.result()
                    except BrokenProcessPool:
                        broken = True
                        if not alone:  # which of the groups in flight killed it is unknown
                            suspects.append((index, group))
                            continue
                        message = ("the worker process died while training this run alone (a "
                                   "crash of the process itself: out of memory, a segfault or "
                                   "an exit from native code)")
                        results = [RunResult(FAILED, error=message) for _ in group]
                    yield from zip(group, results)
                if broken:
                    suspects.extend(in_flight.values())  # lost with the pool; retried alone
                    in_flight.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool(self.workers)
        finally:
            if in_flight:  # interrupted (Ctrl-C, SIGTERM, an error here): stop the workers now
                _terminate_workers(pool)
            pool.shutdown(wait=False, cancel_futures=True)

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        threads = max(1, available_cores() // self.workers)
        return ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads, os.getpid()))


def run_task(group: Sequence[RunSpec], device: str, checkpoint_dir: Path | None,
             single_loop: frozenset[str] = frozenset()) -> list[RunResult]:
    """Train one group as one stacked model.

    A run alone takes the single-run loop (the fastest for one run) only when it is in
    ``single_loop``: no other run of its study could ever share its group. A run that has
    potential group-mates trains on the stacked path even alone (a group of one), so its
    numbers do not depend on which of them shared its group: batching, ``batch_runs: off``,
    ``--shard`` and resuming all give the same result (bitwise for MLPs on the CPU)."""
    paths = [checkpoint_dir / f"{r.run_id}.pt" if checkpoint_dir else None for r in group]
    if len(group) == 1 and (group[0].run_id in single_loop or group_key(group[0].config) is None):
        return [train_run(group[0].config, device, paths[0])]
    return train_group([r.config for r in group], device, paths, group_id(group))


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes: otherwise the interpreter's exit waits for
    every run in flight to finish training. (The pool keeps its processes in a private
    attribute; without it the workers still exit when this process is gone.)"""
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.is_alive():
            process.terminate()


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
