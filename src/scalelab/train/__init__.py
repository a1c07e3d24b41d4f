"""Training: one entry per kind of job (``run``: :func:`train_run` for one run alone,
:func:`train_group` for a stacked group) over one loop (``loop``) and its strategies: one
model on examples (``single``), on a streamed image folder (``streamed``), a language model
(``lm``, across ranks with ``ddp``) and stacked groups (``stacked``), with what they share in
``common``; which runs may stack (``stacking``); optimizers, schedules, compute accounting
and evaluation."""

from ..records import COMPLETED, DIVERGED, FAILED, RunResult
from .common import load_checkpoint
from .dispatch import train_group, train_run
from .loop import Callback, Hooks

__all__ = ["COMPLETED", "DIVERGED", "FAILED", "Callback", "Hooks", "RunResult",
           "load_checkpoint", "train_group", "train_run"]
