"""Model families. Importing this package registers the built-in families."""

from . import airbench, cnn, gpt, mlp, resnet, vit  # noqa: F401  (registration)
from ._base import ModelFamily, buffers_kept, count_parameters, non_embedding_parameters

__all__ = ["ModelFamily", "buffers_kept", "count_parameters", "non_embedding_parameters"]
