"""Execute a study: plan, train with an executor (``local``, ``torchrun``), store results."""

from ._base import Executor, Group
from .shard import parse_shard, select_shard
from .study import StudyRun, execute_study, plan

__all__ = ["Executor", "Group", "StudyRun", "execute_study", "parse_shard", "plan",
           "select_shard"]
