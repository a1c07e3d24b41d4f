"""Training: the loop, optimizers and schedules, and compute accounting."""

from .trainer import COMPLETED, DIVERGED, FAILED, RunResult, load_checkpoint, train_run

__all__ = ["COMPLETED", "DIVERGED", "FAILED", "RunResult", "load_checkpoint", "train_run"]
