"""Training: one loop (``loop``) with strategies for one model (``single``), language models
(``lm``, across ranks with ``ddp``) and stacked groups (``stacked``); which runs may stack
(``stacking``); optimizers, schedules, compute accounting and evaluation."""

from ..records import COMPLETED, DIVERGED, FAILED, RunResult
from .loop import Callback, Hooks
from .run import load_checkpoint, train_run
from .stacked import train_group

__all__ = ["COMPLETED", "DIVERGED", "FAILED", "Callback", "Hooks", "RunResult",
           "load_checkpoint", "train_group", "train_run"]
