"""Re-score a finished study's checkpoints under its evaluation settings; trains nothing.

Every (run, setting) is one row of the store's ``evaluations`` table, written in its own
transaction, so an interrupted re-scoring keeps what it finished and a rerun does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..devices import resolve_device
from ..errors import ScalelabError
from ..outdir import OutDir
from ..output import Output
from ..plugin import instantiate
from ..records import COMPLETED, setting_label
from ..registry import evaluators, tasks
from ..spec import Study, load_study
from ..store import Store, Stores
from ..train import load_checkpoint
from ._base import Forwards


@dataclass
class EvaluationRun:
    out_dir: Path
    settings: list[tuple[str, dict]]
    models: int
    scored: int = 0                 # (run, setting) pairs evaluated now
    already_done: int = 0
    rows: list[dict] = field(default_factory=list)
    tune: dict[str, list[str]] = field(default_factory=dict)  # eval id -> settings tuned per shape
    shape_axes: list[str] = field(default_factory=list)       # the study's scientific axes


def score_checkpoint(config: dict, checkpoint: Path, settings: list[tuple[str, dict]],
                     device: str = "cpu", data=None) -> dict[str, dict]:
    """One trained run's checkpoint scored under each (eval id, setting): eval id -> metrics.
    The settings share the model's forward passes (a TTA weight sweep makes each view's
    forward once); each setting's ``eval_time_s`` is still what it takes alone."""
    if data is None:
        data = instantiate(tasks, config["task"]).load().to(device)
    model = load_checkpoint(config, checkpoint, device)
    batch = config["train"]["eval_batch_size"]
    forwards = Forwards()
    return {eval_id: instantiate(evaluators, setting).evaluate(model, data, batch, forwards)
            for eval_id, setting in settings}


def evaluate_study(out_dir: str | Path, study: str | Path | Study | None = None,
                   device: str = "auto", output: Output | None = None) -> EvaluationRun:
    """Score every completed run's checkpoint under every evaluation setting of the study
    (its own file, as recorded at ``scalelab run``, unless ``study`` is given)."""
    output = output or Output()
    out = Path(out_dir)
    dev = resolve_device(device)
    with Store.open(out) as store:
        if isinstance(store, Stores):
            store.require_merged()
        meta = store.study_meta()
        if not isinstance(study, Study):
            source = study or meta.source
            if not source or not Path(source).exists():
                raise ScalelabError(f"{out}: its study file {source!r} is gone; pass --study FILE")
            study = load_study(source, quick=meta.quick)  # as it was run (--quick too)
        settings = study.evaluations
        if not settings:
            raise ScalelabError(f"{study.source}: evaluations: the study declares no evaluation "
                                "settings (add e.g. `evaluations: [{name: tta, level: 2}]`)")
        runs = [r for r in store.records() if r["status"] == COMPLETED]
        missing = [r["run_id"] for r in runs
                   if not OutDir(out).checkpoint(r["run_id"]).exists()]
        if missing:
            remedy = (f"`scalelab run {study.source} --out {out}` trains them again (same "
                      "numbers, checkpoints back)" if study.spec.save_checkpoints else
                      "train with `save_checkpoints: true`")
            raise ScalelabError(
                f"{out}: {len(missing)} of {len(runs)} completed runs have no checkpoint (e.g. "
                f"{OutDir(out).checkpoint(missing[0]).relative_to(out)}); {remedy}")
        tune = study.evaluation_tune
        store.set_meta(evaluations=[{"eval_id": i, "config": c, "tune": tune.get(i, [])}
                                    for i, c in settings])
        done = {(r["run_id"], r["eval_id"]) for r in store.evaluations()}
        result = EvaluationRun(out, settings, len(runs), tune=tune, shape_axes=meta.shape_axes)
        completed = {r["run_id"] for r in runs}
        by_record = {r["run_id"]: r for r in runs}
        by_run = {i: c for i, c in store.configs().items() if i in completed}
        data_cache: dict[str, object] = {}
        todo_count = sum((run_id, i) not in done for run_id in by_run for i, _ in settings)
        if todo_count:
            output.info(f"evaluating: {todo_count} scores to make ({len(by_run)} checkpoints "
                        f"x {len(settings)} settings; each model's forward passes shared by "
                        "its settings) …")
        with output.progress(len(runs) * len(settings), "evaluate") as progress:
            for run_id, config in by_run.items():
                todo = [(i, c) for i, c in settings if (run_id, i) not in done]
                result.already_done += len(settings) - len(todo)
                if not todo:
                    continue
                key = repr(sorted(config["task"].items()))
                if key not in data_cache:
                    data_cache[key] = instantiate(tasks, config["task"]).load().to(dev)
                scores = score_checkpoint(config, OutDir(out).checkpoint(run_id), todo,
                                          str(dev), data_cache[key])
                run = by_record[run_id]
                for eval_id, setting in todo:
                    metrics = scores[eval_id]
                    if run.get("time_to_result_s") is not None and "eval_time_s" in metrics:
                        # the run's timed span, scored this way instead of by its plain
                        # test scoring (airbench's time includes its TTA evaluation)
                        metrics["time_to_result_s"] = (run["time_to_result_s"]
                                                       - run["test_eval_time_s"]
                                                       + metrics["eval_time_s"])
                    store.write_evaluation(run_id, eval_id, setting, metrics)
                    result.scored += 1
                    progress.advance("completed", f"{run_id} {setting_label(setting)} "
                                                  f"test_acc={metrics['test_acc']:.4f}")
        result.rows = store.evaluations()
    return result
