"""Execute a study's missing runs with an executor, storing each result as it arrives.

Plan, claim (mark running), record, write checkpoints and report: once, here, for every
executor. Only the primary process touches the output directory.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import store as stores
from ..errors import ScalelabError
from ..files import write_atomically
from ..outdir import OutDir
from ..output import Output
from ..records import COMPLETED, FINISHED, PRUNED, RunResult, RunSpec, run_id
from ..registry import executors
from ..spec import Study
from ..store import KEPT, LOST, Store, shard_writing, token
from ..tracking._base import Tracking
from ._base import Executor, Group
from .searches import rung_plan, waves
from .shard import parse_shard, select_shard


@dataclass
class StudyExecution:
    """What one ``scalelab run`` did."""

    study: Study
    out_dir: Path
    selected: list[RunSpec]                   # this invocation's runs (after --shard)
    already_done: int                          # of those, finished before this invocation
    trained: Counter = field(default_factory=Counter)  # status -> runs trained now
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    primary: bool = True  # False on the non-zero ranks of a torchrun job: they write nothing
    elsewhere: int = 0    # runs left to another runner training them into the same store

    @property
    def ok(self) -> bool:
        return not self.failed


def plan(
    study: Study, store_statuses: dict[str, str], shard: str | None
) -> tuple[list[RunSpec], list[RunSpec]]:
    """(selected runs, those still to train) for this invocation."""
    runs = study.runs
    if shard:
        runs = select_shard(runs, *parse_shard(shard))
    todo = [r for r in runs if store_statuses.get(r.run_id) not in FINISHED]
    return runs, todo


def make_executor(backend: str, device: str, workers: int | None, checkpoint: bool,
                  address: str | None = None) -> Executor:
    """The named executor (``auto``: torchrun inside a torchrun job, else local)."""
    if backend == "auto":
        backend = "torchrun" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "local"
    if backend not in executors:
        raise ScalelabError(f"--backend: unknown executor {backend!r} (allowed: auto, "
                            f"{', '.join(executors.names())})")
    return executors.get(backend)(device, workers, checkpoint, address)


def store_meta(store: Store, study: Study) -> None:
    """What the analysis needs to know about the study's axes."""
    labels = study.axis_labels()
    store.set_meta(study=study.name, source=study.source,
                   axes={label: path for path, label in labels.items()},
                   grid={labels[path]: values for path, values in study.axes.items()},
                   nuisance=study.nuisance_labels(),
                   analysis=study.spec.analysis.model_dump(mode="json"),
                   methods=study.method_declarations(),
                   run_ids=[r.run_id for r in study.runs], quick=study.quick,
                   design=study.design_summary())


def execute_study(study: Study, out_dir: Path, workers: int | None = None, device: str = "auto",
                  shard: str | None = None, output: Output | None = None,
                  backend: str = "auto", shard_store: bool = False,
                  address: str | None = None, trackers: Sequence[str] = ()) -> StudyExecution:
    """Train what ``out_dir`` does not hold yet; every result is stored as it arrives. With
    ``shard_store``, a ``shard`` writes its own store file in ``out_dir`` (for job arrays on
    filesystems where SQLite's locking is unsafe); readers see all of them as one."""
    output = output or Output()
    out_dir = Path(out_dir)
    if shard_store and not shard:
        raise ScalelabError("--shard-store: only with --shard i/k (each shard its own file)")
    own_file = parse_shard(shard) if shard_store else None
    if shard_store and study.spec.nuisance_search.method == "halving":
        raise ScalelabError("--shard-store: a halving search keeps its rungs in the one shared "
                            "store; run the shards without --shard-store")
    if shard and study.ranges:
        raise ScalelabError("--shard: a tpe search proposes each trial from the ones before "
                            "it, so its runs cannot be sliced ahead; run it without --shard")
    # Everything that can be refused is refused here, before anything is written.
    executor = make_executor(backend, device, workers, study.spec.save_checkpoints, address)
    executor.check(study)
    with executor, contextlib.ExitStack() as held:
        tracking = Tracking(study, output, trackers) if executor.primary else None
        store = None
        if executor.primary:
            if own_file:  # `scalelab merge` waits for this runner (and it for a merge)
                out_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(shard_writing(out_dir))
            store = Store.open(out_dir, create=True, shard=own_file)
        try:
            return _execute(study, out_dir, shard, output, executor, store, tracking,
                            own_file is not None)
        finally:
            if store is not None:
                try:
                    store.release()  # runs claimed and not stored read as interrupted now
                finally:
                    store.close()


def _execute(study: Study, out_dir: Path, shard: str | None, output: Output,
             executor: Executor, store: Store | None, tracking: Tracking | None,
             shard_store: bool = False) -> StudyExecution:
    statuses: dict[str, str] = {}
    finished: dict[str, float | None] = {}
    others: set[str] = set()  # runs another live runner is training into this store
    if store is not None:
        store.register()
        store_meta(store, study)
        store.observe()  # what this machine sees of the other runners' heartbeats
        # A shard with its own file plans from every store of the directory: runs already
        # merged into the main store are done.
        with (Store.open(out_dir) if shard_store else contextlib.nullcontext(store)) as view:
            statuses, finished = view.statuses(), view.finished_at()
            others = {c["run_id"] for c in view.claims() if c["token"] != token()}
    selected, todo = plan(study, statuses, shard)
    retrain: dict[str, float | None] = {}
    if store is not None and study.spec.save_checkpoints:
        retrain = _lost_checkpoints(selected, statuses, finished, out_dir, output)
        again = {r.run_id for r in todo} | set(retrain)
        todo = [r for r in selected if r.run_id in again]
    elsewhere = [r for r in todo if r.run_id in others]
    todo = executor.agree([r for r in todo if r.run_id not in others])
    result = StudyExecution(study, out_dir, selected, len(selected) - len(todo) - len(elsewhere),
                      primary=executor.primary, elsewhere=len(elsewhere))
    if not todo:
        return result
    from .stacks import training_groups  # the training stack loads only to train

    if store is None:  # a secondary rank: it trains, the primary claims and records
        groups = training_groups(todo, study) if executor.stacks else \
            [Group((r,), stacked=False) for r in todo]
        for _ in executor.execute(groups, lambda group: group):
            pass
        return result
    search = rung_plan(study, executor.board(store.path))
    trials = study.spec.nuisance_search.trials if study.ranges else 1  # tpe: a round each
    with Heartbeat(store.path) as beating, \
            output.progress(len(todo) * trials, study.name) as progress:
        training = _Training(result, executor, store, tracking, output, out_dir, retrain,
                             beating, progress)
        announced = False
        for what, wave, unstarted in waves(study, todo, store, output, _size_counter(),
                                           training.skipped):
            if not wave:
                continue
            groups = training_groups(wave, study) if executor.stacks else \
                [Group((r,), stacked=False) for r in wave]
            stacked = sum(len(g.runs) > 1 for g in groups)
            grouped = f" as {len(groups)} group{'s' * (len(groups) != 1)} ({stacked} stacked)" \
                if stacked else ""
            if not announced:
                output.info(f"training {len(wave)} of {len(selected) * trials} runs{grouped} "
                            f"{executor.describe(len(groups))} -> {out_dir}"
                            + (f"; {len(elsewhere)} more are being trained by another runner"
                               if elsewhere else "") + _search_words(study, len(todo)))
                announced = True
            else:
                output.info(f"{what}: {len(wave)} runs{grouped}")
            rungs = replace(search, unstarted=unstarted) if search else None
            training.train([replace(g, search=rungs) for g in groups])
    return result


def _search_words(study: Study, todo: int) -> str:
    search = study.spec.nuisance_search
    if search.method == "tpe":
        return (f" (tpe over {', '.join(study.nuisance_labels())}: {search.trials} trials per "
                "shape in rounds, each proposed from the shape's results so far)")
    if search.method != "halving":
        return ""
    return (f" (successive halving over {', '.join(study.nuisance_labels())}: eta "
            f"{search.eta}, {search.rungs} rung{'s' * (search.rungs != 1)}"
            + (f"; law-seeded, in waves of model size, {todo} runs in all"
               if search.start == "law" else "") + ")")


def _size_counter():
    """Parameters of a run's model, counted on the meta device once per model config."""
    from ..train.stacking import parameter_count

    sizes: dict[str, int] = {}

    def size_of(run: RunSpec) -> int:
        key = run_id(run.config["model"] | {"task": run.config["task"]})
        if key not in sizes:
            sizes[key] = parameter_count(run.config)
        return sizes[key]
    return size_of


@dataclass
class _Training:
    """Claims, trains and records groups: what every wave of an invocation shares."""

    result: StudyExecution
    executor: Executor
    store: Store
    tracking: Tracking | None
    output: Output
    out_dir: Path
    retrain: dict[str, float | None]
    beating: Heartbeat
    progress: Any

    def claim(self, group: Group) -> Group | None:
        mine = group.only(self.store.claim(group.runs, self.retrain))
        missed = len(group.runs) - (len(mine.runs) if mine else 0)
        if missed:  # another runner claimed them since the plan
            self.result.elsewhere += missed
            for _ in range(missed):
                self.progress.advance("elsewhere", "claimed by another runner")
        self.beating.add(mine.runs if mine else ())
        self.executor.share(len({c["token"] for c in self.store.claims()} | {token()}))
        return mine

    def skipped(self, run: RunSpec) -> None:
        """A run the search stored as never started."""
        self.result.trained[PRUNED] += 1
        self.progress.advance(PRUNED, f"{run.run_id} {run.label} not started")

    def train(self, groups: list[Group]) -> None:
        store, result, progress = self.store, self.result, self.progress
        for run, run_result in self.executor.execute(groups, self.claim):
            self.beating.discard(run)
            # The claim is checked again in the storing transaction; this look spares the
            # checkpoint of a run another runner has taken over meanwhile.
            stored = LOST
            if store.owns(run.run_id):
                save_checkpoint(self.out_dir, run, run_result)
                stored = store.write_result(run, run_result)
            if stored == LOST:  # this runner was stopped or cut off past the staleness window
                result.elsewhere += 1
                self.output.warn(f"run {run.run_id} ({run.label}) was taken over by another "
                                 "runner while this one was stopped or cut off; its result "
                                 "stands and this one was dropped")
                progress.advance("elsewhere", "taken over by another runner")
                continue
            if stored != KEPT:
                self.tracking.log_run(run, run_result)
            record(result, run, run_result,
                   " (the completed result stored before is kept)" if stored == KEPT else "")
            progress.advance(run_result.status, _label(run, run_result))


def _lost_checkpoints(selected: list, statuses: dict[str, str],
                      finished: dict[str, float | None], out_dir: Path,
                      output: Output) -> dict[str, float | None]:
    """Completed runs whose checkpoint is gone, each with the finish time of the row it was
    seen with (a run another runner retrained since is left alone): they train again, with
    the same config and seed, so the same numbers and the checkpoint back."""
    lost = [r for r in selected if statuses.get(r.run_id) == COMPLETED
            and not OutDir(out_dir).checkpoint(r.run_id).exists()]
    if lost:
        output.info(f"{len(lost)} completed run{'s' if len(lost) > 1 else ''} lost "
                    f"{'their checkpoints' if len(lost) > 1 else 'its checkpoint'} "
                    f"(e.g. {OutDir(out_dir).checkpoint(lost[0].run_id)}): training again")
    return {r.run_id: finished.get(r.run_id) for r in lost}


class Heartbeat:
    """Every :data:`~scalelab.store.HEARTBEAT_S` seconds, from a background thread with its
    own connection: one more beat on this runner's heartbeat counter (which keeps its claims
    alive), and a look at the other runners' counters (see :mod:`scalelab.store`)."""

    def __init__(self, path: Path):
        self.path, self.runs = path, set()
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def add(self, runs) -> None:
        with self.lock:
            self.runs |= {r.run_id for r in runs}

    def discard(self, run: RunSpec) -> None:
        with self.lock:
            self.runs.discard(run.run_id)

    def _beat(self) -> None:
        while not self.stop.wait(stores.HEARTBEAT_S):
            with self.lock:
                ids = sorted(self.runs)
            try:
                with Store(self.path) as store:
                    store.heartbeat(ids)
            except Exception:  # a missed beat only shortens the claim's life; never fatal
                pass

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def save_checkpoint(out_dir: Path, run: RunSpec, result: RunResult) -> None:
    """The weights a worker sent back, written under a temporary name and renamed (a kill
    leaves no torn file), before the run's row: a completed run always has its checkpoint."""
    if result.checkpoint is None:
        return
    write_atomically(OutDir(out_dir).checkpoint(run.run_id), result.checkpoint)
    result.checkpoint = None


def record(result: StudyExecution, run: RunSpec, run_result: RunResult, note: str = "") -> None:
    """Count one finished run and keep the last line of its error (and ``note``)."""
    result.trained[run_result.status] += 1
    if run_result.error:
        result.failed.append((run, run_result.error.strip().splitlines()[-1] + note))


def _label(run: RunSpec, result: RunResult) -> str:
    loss = result.metrics.get("test_loss")
    return f"{run.run_id} {run.label}" + (f" test_loss={loss:.4f}" if loss is not None else "")
