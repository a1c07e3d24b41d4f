"""Weights & Biases: one W&B run per scalelab run (config, summary metrics, learning curves by
step as ``curve/NAME``, status and run id as tags), the report as a run of its own; ``mode: offline`` writes
to ``dir`` for a later ``wandb sync``. ``pip install 'scalelab[wandb]'``."""

from __future__ import annotations

from collections import defaultdict
from typing import Literal

from pydantic import Field

from ..plugin import PluginConfig
from ..registry import trackers
from ._base import Tracker, numeric_metrics


@trackers.register("wandb")
class WandbTracker(Tracker):
    """Weights & Biases (online, or offline files to sync later)."""

    extra = module = "wandb"

    class Config(PluginConfig):
        project: str | None = Field(None, description="W&B project [default: the study's name]")
        entity: str | None = Field(None, description="W&B entity (team or user)")
        mode: Literal["online", "offline", "disabled"] = Field(
            "offline", description="offline writes files for `wandb sync` (no account needed)")
        dir: str | None = Field(None, description="where W&B writes its files [default: wandb's]")

    def start(self, study) -> None:
        self.wandb = self.require("wandb")
        self.project = self.config.project or study.name

    def _init(self, name: str, **kwargs):
        c = self.config
        return self.wandb.init(project=self.project, entity=c.entity, mode=c.mode, dir=c.dir,
                               name=name, reinit="finish_previous",
                               settings=self.wandb.Settings(silent=True, console="off"), **kwargs)

    def log_run(self, run, result) -> None:
        wb = self._init(run.run_id, config=run.config,
                        tags=[f"status:{result.status}", f"run_id:{run.run_id}"])
        by_step: dict[int, dict[str, float]] = defaultdict(dict)
        for step, name, value in result.curves:
            by_step[int(step)][f"curve/{name}"] = value
        for step in sorted(by_step):
            wb.log(by_step[step], step=step)
        wb.summary.update(numeric_metrics(result.metrics) | {"status": result.status})
        wb.finish(exit_code=0 if result.status != "failed" else 1)

    def log_report(self, study, files) -> None:
        wb = self._init(f"{study.name} report", tags=["report"])
        artifact = self.wandb.Artifact(f"{study.name}-report", type="report")
        for path in files:
            artifact.add_file(str(path))
        wb.log_artifact(artifact)
        wb.finish()
