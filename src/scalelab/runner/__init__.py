"""Execute a study: plan, train with an executor (``local``, ``torchrun``), store results."""

from ._base import Executor, Group
from .execute import StudyExecution, execute_study, plan
from .shard import parse_shard, select_shard

__all__ = ["Executor", "Group", "StudyExecution", "execute_study", "parse_shard", "plan",
           "select_shard"]
