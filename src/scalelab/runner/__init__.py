"""Execute a study's missing runs and store every result as it arrives."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..output import Output
from ..spec import RunSpec, Study
from ..store import FINISHED, Store
from ..train.trainer import resolve_device
from .distributed import execute_distributed, launched_by_torchrun
from .grouping import plan_groups, without_mates
from .local import LocalExecutor, available_cores
from .shard import parse_shard, select_shard

__all__ = ["StudyRun", "execute_study", "parse_shard", "plan", "select_shard"]


@dataclass
class StudyRun:
    """What one ``scalelab run`` did."""

    study: Study
    out_dir: Path
    selected: list[RunSpec]                   # this invocation's runs (after --shard)
    already_done: int                          # of those, finished before this invocation
    trained: Counter = field(default_factory=Counter)  # status -> runs trained now
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    primary: bool = True  # False on the non-zero ranks of a torchrun job: they write nothing

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


def store_meta(store: Store, study: Study) -> None:
    """What the analysis needs to know about the study's axes."""
    labels = study.axis_labels()
    store.set_meta(study=study.name, source=study.source,
                   axes={label: path for path, label in labels.items()},
                   grid={labels[path]: values for path, values in study.axes.items()},
                      nuisance=study.nuisance_labels(),
                   analysis=study.spec.analysis.model_dump(mode="json"),
                   run_ids=[r.run_id for r in study.runs])


def record(result: StudyRun, run: RunSpec, run_result) -> None:
    """Count one finished run and keep the last line of its error."""
    result.trained[run_result.status] += 1
    if run_result.error:
        result.failed.append((run, run_result.error.strip().splitlines()[-1]))


def execute_study(
    study: Study,
    out_dir: Path,
    workers: int | None = None,
    device: str = "auto",
    shard: str | None = None,
    output: Output | None = None,
) -> StudyRun:
    output = output or Output()
    dev = resolve_device(device)  # before anything is written: a bad --device writes nothing
    if launched_by_torchrun():
        return execute_distributed(study, Path(out_dir), dev, shard, output)
    with Store.open(out_dir, create=True) as store:
        store_meta(store, study)
        selected, todo = plan(study, store.statuses(), shard)
        result = StudyRun(study, Path(out_dir), selected, len(selected) - len(todo))
        if not todo:
            return result
        devices = [str(dev)]
        if dev.type == "cuda" and dev.index is None:
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        if workers is None:
            workers = len(devices) if dev.type != "cpu" else available_cores()
        spec = study.spec
        groups = plan_groups(todo, spec.batch_runs, spec.batch_memory_mb, spec.batch_min_runs,
                             spec.batch_pad)
        workers = min(workers, len(groups))
        checkpoints = Path(out_dir) / "checkpoints" if spec.save_checkpoints else None
        executor = LocalExecutor(workers, devices, checkpoints,
                                 without_mates(study.runs, spec.batch_pad))
        batched = f" as {len(groups)} batched groups" if len(groups) < len(todo) else ""
        output.info(f"training {len(todo)} of {len(selected)} runs{batched} on {dev} with "
                    f"{workers} worker{'s' if workers > 1 else ''} -> {out_dir}")
        with output.progress(len(todo), study.name) as progress:
            for run, run_result in executor.execute(groups, lambda r: store.mark_running([r])):
                store.write_result(run, run_result)
                record(result, run, run_result)
                progress.advance(run_result.status, _label(run, run_result))
    return result


def _label(run: RunSpec, result) -> str:
    point = " ".join(f"{k}={v}" for k, v in run.point.items())
    loss = result.metrics.get("test_loss")
    return f"{run.run_id} {point}" + (f" test_loss={loss:.4f}" if loss is not None else "")
