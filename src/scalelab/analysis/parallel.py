"""Independent pieces of one analysis (a fit with its bootstrap, a figure) on every core this
process may use: forked worker processes and this one each take the next piece not yet
taken, the largest first, until none is left.

A piece computes the same numbers in a worker as here (the same code on the same data; a
worker starts as a copy of this process). Where forking is not safe or not possible (not
Linux, a daemonic process) or there is one core, the pieces run one after another here. The
pieces of a worker that dies, or whose results do not pickle, are redone here, so a piece's
own exception is the only error a caller sees.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def can_fork() -> bool:
    # macOS's system libraries are not fork-safe; a daemonic process may have no children.
    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon


def run_all(tasks: Sequence[Callable[[], T]], weights: Sequence[float] | None = None,
            workers: int | None = None) -> list[T]:
    """Each task's result, in order: on ``workers`` processes (default: the usable cores, at
    most one per task), each taking the next task not yet taken (the largest by ``weights``,
    a task's expected cost, first) until none is left."""
    count = min(len(tasks), usable_cores() if workers is None else max(1, workers))
    if count <= 1 or not can_fork():
        return [task() for task in tasks]
    order = sorted(range(len(tasks)), key=lambda i: -weights[i]) if weights is not None \
        else list(range(len(tasks)))
    context = multiprocessing.get_context("fork")
    taken = context.Value("i", 0)  # how many of ``order`` some process has taken
    children = []
    for _ in range(count - 1):
        reader, writer = context.Pipe(duplex=False)
        child = context.Process(target=_work, args=(tasks, order, taken, writer), daemon=True)
        child.start()
        writer.close()
        children.append((child, reader))
    outcomes = dict(_take(tasks, order, taken))
    for child, reader in children:
        try:
            outcomes.update(reader.recv() or {})
        except (EOFError, OSError):
            pass  # the worker died: what it took is redone below
        finally:
            reader.close()
            child.join()
    results = []
    for i, task in enumerate(tasks):
        ok, value = outcomes[i] if i in outcomes else _outcome(task)
        if not ok:
            raise value
        results.append(value)
    return results


def _take(tasks, order: list[int], taken) -> list[tuple[int, tuple[bool, Any]]]:
    """Run the next task not yet taken until none is left: (task index, outcome) of each."""
    done = []
    while True:
        with taken.get_lock():
            position = taken.value
            taken.value += 1
        if position >= len(order):
            return done
        done.append((order[position], _outcome(tasks[order[position]])))


def _outcome(task: Callable[[], T]) -> tuple[bool, Any]:
    try:
        return True, task()
    except Exception as exc:  # handed to the caller, in the task's place
        return False, exc


def _work(tasks, order: list[int], taken, writer) -> None:
    """A worker: tasks taken one at a time, their outcomes sent back together (None when
    they cannot be pickled: the parent redoes them)."""
    try:
        done = dict(_take(tasks, order, taken))
        try:
            writer.send(done)
        except Exception:
            writer.send(None)
        writer.close()
    except BaseException:  # interrupted: the parent redoes its tasks or stops itself
        os._exit(1)
