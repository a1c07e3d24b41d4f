"""Executor base class: where a study's groups of runs train.

An executor only trains: given groups, it claims each just before starting it (another
runner may have taken some of its runs meanwhile) and yields each run's :class:`RunResult`
(checkpoint bytes included) as it finishes. Planning, claims, the store, checkpoints on disk
and progress are ``runner.execute``'s, once for every executor, so a worker needs no access to
the output directory. A new backend is one module with a registered subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ScalelabError
from ..plugin import PluginConfig
from ..records import RunResult, RunSpec, run_id
from ..spec import Study


@dataclass(frozen=True)
class Group:
    """Runs that train together, or one run. ``stacked``: on the stacked path (a group of
    one included); False: alone on the single-run loop. ``search``: the halving search its
    runs take part in (:class:`scalelab.search.RungPlan`), if any."""

    runs: tuple[RunSpec, ...]
    stacked: bool
    search: Any = None

    def only(self, runs: list[RunSpec]) -> Group | None:
        """This group cut down to ``runs`` (None when that leaves nothing)."""
        ids = {r.run_id for r in runs}
        kept = tuple(r for r in self.runs if r.run_id in ids)
        return replace(self, runs=kept) if kept else None

    @property
    def id(self) -> str | None:
        """Stored with each member of a group of two or more."""
        if len(self.runs) < 2:
            return None
        return run_id({"members": sorted(r.run_id for r in self.runs)})


def train_group_of(group: Group, device: str, checkpoint: bool) -> list[RunResult]:
    """Train one group where this function is called (any process, any machine); one result
    per run, in order."""
    from ..train import Hooks, train_group, train_run

    hooks = Hooks(rungs=group.search.gate([r.run_id for r in group.runs])) \
        if group.search is not None else None
    if not group.stacked:
        return [train_run(group.runs[0].config, device, checkpoint, hooks)]
    return train_group([r.config for r in group.runs], device, checkpoint, group.id, hooks)


class Executor(ABC):
    """Trains groups of runs somewhere and yields every run's result."""

    #: Whether groups of several runs may be formed (stacked training).
    stacks: ClassVar[bool] = True
    #: Settings of the executor (none yet: it takes the command line's device and workers).
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    #: Whether ``--address`` (a cluster to connect to) means anything to this executor.
    takes_address: ClassVar[bool] = False

    def __init__(self, device: str, workers: int | None, checkpoint: bool,
                 address: str | None = None):
        if address is not None and not self.takes_address:
            raise ScalelabError("--address: only for a cluster backend (--backend ray)")
        self.device, self.workers, self.checkpoint = device, workers, checkpoint
        self.address = address

    @property
    def primary(self) -> bool:
        """Whether this process plans, writes the store and reports (every executor but the
        non-zero ranks of a distributed job)."""
        return True

    def check(self, study: Study) -> None:  # noqa: B027  (a do-nothing default)
        """Refuse, before anything is written, a study this executor cannot train."""

    def share(self, runners: int) -> None:  # noqa: B027  (a do-nothing default)
        """Told before each group how many runners (this one included) are training into
        the same store now, so one that trains on this machine's cores takes only its share:
        two runners each spinning every core's thread pool ran 10x slower than one."""

    def board(self, store_path: Path) -> Any:
        """Where its trainings record a halving search's rungs: the store itself, which
        workers on this machine open (a cluster executor hands them a proxy instead)."""
        from ..search import StoreBoard

        return StoreBoard(store_path)

    def agree(self, todo: list[RunSpec]) -> list[RunSpec]:
        """The runs to train, as the primary process planned them."""
        return todo

    @abstractmethod
    def describe(self, groups: int) -> str:
        """Where the training happens, for the line printed before it starts."""

    @abstractmethod
    def execute(self, groups: Sequence[Group], claim: Callable[[Group], Group | None]
                ) -> Iterator[tuple[RunSpec, RunResult]]:
        """Train every group, calling ``claim`` just before starting it and training only
        the runs it returns (None: none; another runner has them), and yield each run's
        result as it arrives."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:  # noqa: B027  (a do-nothing default)
        """Release what the executor holds (processes, a process group)."""
