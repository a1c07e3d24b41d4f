"""Optional experiment tracking (MLflow, Weights & Biases), fed from the driver: each run
logged once as its result is stored, the report attached at the end. Importing this
package registers the trackers; their libraries load only when one is used."""

from . import mlflow, wandb  # noqa: F401  (registration)
from ._base import Tracker, attach_report, trackers_for

__all__ = ["Tracker", "attach_report", "trackers_for"]
