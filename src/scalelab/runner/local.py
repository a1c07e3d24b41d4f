"""The local executor: trainings in worker processes on this machine."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import torch

from ..devices import available_cores, resolve_device, share
from ..errors import ScalelabError
from ..records import FAILED, RunResult, RunSpec, run_id
from ..registry import executors
from ..spec import Study
from ._base import Executor, Group, train_group_of


def device_memory(dev: torch.device) -> int:
    """Bytes of memory a run on ``dev`` can use at most: the GPU's, or this machine's RAM."""
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): do not refuse
        return 2**62


@executors.register("local")
class LocalExecutor(Executor):
    """Worker processes on this machine (or this process for one worker): one per core on
    the CPU, one per GPU on CUDA.

    Each worker gets an equal share of the cores as torch threads. Workers are spawned (not
    forked: torch's thread pools do not survive a fork) and exit when the parent dies, so a
    killed runner leaves no orphans behind. A worker that dies takes its group's runs with it;
    they are retried one group at a time, so the one that kills its worker is found and stored
    as failed while the others finish.
    """

    def __init__(self, device: str, workers: int | None, checkpoint: bool,
                 address: str | None = None):
        super().__init__(device, workers, checkpoint, address)
        dev = resolve_device(device)  # a bad --device is refused before anything is written
        self.devices = [str(dev)]
        if dev.type == "cuda" and dev.index is None:
            self.devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        self.max_workers = workers or (len(self.devices) if dev.type != "cpu" else available_cores())
        self.dev = dev
        self.threads = torch.get_num_threads()  # for training in this process (one worker)

    def share(self, runners: int) -> None:
        torch.set_num_threads(max(1, self.threads // runners))

    def check(self, study: Study) -> None:
        """Refuse sizes this machine could never hold (weights, gradients and two optimizer
        moments alone), priced from the config on the meta device before anything is
        allocated or written."""
        from ..train.stacking import parameter_count

        available = device_memory(self.dev)
        seen = set()
        for run in study.runs:
            key = run_id({"task": run.config["task"], "model": run.config["model"]})
            if key in seen:
                continue
            seen.add(key)
            try:
                count = parameter_count(run.config)
            except Exception as exc:
                if "overflow" not in str(exc):
                    continue  # a model that cannot be built fails as a run, with its traceback
                count = None  # a tensor too large for even its size to be computed
            if count is None or 16 * count > available:
                sizes = ", ".join(f"{k}={v}" for k, v in run.config["model"].items()
                                  if k != "name" and isinstance(v, int))
                need = ("more parameters than can be counted" if count is None else
                        f"{count:,} parameters: {16 * count / 2**30:,.1f} GiB to train "
                        "(weights, gradients, two optimizer moments)")
                raise ScalelabError(
                    f"{study.source}: model: {run.config['model']['name']} ({sizes}) has "
                    f"{need}, more than the {available / 2**30:,.1f} GiB of {self.dev}; "
                    "choose smaller sizes")

    def describe(self, groups: int) -> str:
        n = min(self.max_workers, groups)
        return f"on {self.dev} with {n} worker{'s' if n > 1 else ''}"

    def execute(
        self, groups: Sequence[Group], claim: Callable[[Group], Group | None]
    ) -> Iterator[tuple[RunSpec, RunResult]]:
        self.workers = max(1, min(self.max_workers, len(groups)))
        if self.workers == 1:
            for group in groups:
                group = claim(group)
                if group is not None:
                    yield from zip(group.runs, train_group_of(group, self.devices[0],
                                                              self.checkpoint))
            return
        pending = deque(enumerate(groups))
        in_flight: dict[Future, tuple[int, Group]] = {}
        suspects: deque = deque()  # groups in flight when a worker died: retried one at a time
        pool = self._pool(self.workers)
        try:
            while pending or in_flight or suspects:
                alone = bool(suspects)  # in_flight is empty whenever suspects are queued
                queue, limit = (suspects, 1) if alone else (pending, self.workers)
                while queue and len(in_flight) < limit:
                    index, group = queue.popleft()
                    group = claim(group)
                    if group is None:
                        continue
                    device = self.devices[index % len(self.devices)]
                    future = pool.submit(train_group_of, group, device, self.checkpoint)
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
                        results = [RunResult(FAILED, error=message) for _ in group.runs]
                    yield from zip(group.runs, results)
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
        # More workers than GPUs: some card trains two runs at once, and its energy counter
        # would count both (workers are spread over the cards round-robin).
        shared_gpu = self.dev.type == "cuda" and workers > len(self.devices)
        return ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                   initializer=_init_worker,
                                   initargs=(threads, os.getpid(), workers > 1, shared_gpu))


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes: otherwise the interpreter's exit waits for
    every run in flight to finish training. (The pool keeps its processes in a private
    attribute; without it the workers still exit when this process is gone.)"""
    for process in list(getattr(pool, "_processes", {}).values()):
        if process.is_alive():
            process.terminate()


def _init_worker(threads: int, parent: int, shared: bool, shared_gpu: bool = False) -> None:
    torch.set_num_threads(threads)
    # Other workers train beside it: CPU counters would mix runs, and GPU counters where
    # they share a card.
    share(cpu=shared, gpu=shared_gpu)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
