"""MLflow: one MLflow run per scalelab run (params = its resolved config, metrics, learning
curves with their steps as ``curve/NAME``, status, the run id as a tag), in an experiment named after the
study; the report goes to a run of its own. Without a URI, MLflow's recommended local store
(``sqlite:///mlflow.db`` in the working directory). ``pip install 'scalelab[mlflow]'``."""

from __future__ import annotations

import os
import time

from pydantic import Field

from ..plugin import PluginConfig
from ..registry import trackers
from ._base import Tracker, flat_config, numeric_metrics

#: MLflow's limits: values per batch call, characters of a parameter value.
BATCH, PARAM_CHARS = 100, 6000


@trackers.register("mlflow")
class MLflowTracker(Tracker):
    """MLflow tracking server (or a local SQLite store)."""

    extra = module = "mlflow"

    class Config(PluginConfig):
        tracking_uri: str | None = Field(
            None, description="server or store URI [default: $MLFLOW_TRACKING_URI, else "
                              "sqlite:///mlflow.db]")
        experiment: str | None = Field(None, description="experiment name [default: the study's]")

    def start(self, study) -> None:
        mlflow = self.require("mlflow")
        uri = (self.config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
               or "sqlite:///mlflow.db")
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        name = self.config.experiment or study.name
        found = self.client.get_experiment_by_name(name)
        self.experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.entities = mlflow.entities

    def log_run(self, run, result) -> None:
        e, now = self.entities, int(time.time() * 1000)
        tags = {"scalelab.run_id": run.run_id, "scalelab.status": result.status,
                **{f"scalelab.point.{k}": str(v) for k, v in run.point.items()}}
        created = self.client.create_run(self.experiment, run_name=run.run_id, tags=tags)
        rid = created.info.run_id
        params = [e.Param(k, str(v)[:PARAM_CHARS]) for k, v in flat_config(run.config).items()]
        metrics = [e.Metric(k, v, now, 0) for k, v in numeric_metrics(result.metrics).items()]
        metrics += [e.Metric(f"curve/{name}", float(value), now, int(step))
                    for step, name, value in result.curves if value == value]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(rid, params=params[i:i + BATCH])
        for i in range(0, len(metrics), BATCH * 10):
            self.client.log_batch(rid, metrics=metrics[i:i + BATCH * 10])
        self.client.set_terminated(rid, status="FINISHED" if result.status != "failed" else "FAILED")

    def log_report(self, study, files) -> None:
        created = self.client.create_run(self.experiment, run_name=f"{study.name} report",
                                         tags={"scalelab.report": "true"})
        for path in files:
            self.client.log_artifact(created.info.run_id, str(path))
        self.client.set_terminated(created.info.run_id, status="FINISHED")
