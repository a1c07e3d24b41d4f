"""Data sources. Importing this package registers the built-in tasks."""

from . import cifar, digits, embeddings, imagefolder, mnist, mnist1d, text  # noqa: F401  (registration)
from ._base import Task, TaskData

__all__ = ["Task", "TaskData"]
