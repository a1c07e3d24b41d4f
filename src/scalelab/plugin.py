"""The base every plug-in (task, model family, method) derives from.

A plug-in declares its settings as a nested pydantic ``Config``: every field has a default
and a description, unknown keys are rejected, and the validated config is what enters a
run's identity hash. Work happens in the plug-in's own methods, never in ``__init__``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class Identity:
    """Mixed into a settings model whose values enter a run's resolved config and id (a
    plug-in's config, the study's ``train`` section)."""

    #: Settings added after stores existed, with their defaults: left out of a run's resolved
    #: config (and so of its id) while at the default, so upgrading scalelab never turns a
    #: finished study into new runs.
    later_settings: ClassVar[dict[str, object]] = {}

    def identity(self) -> dict[str, object]:
        """The settings as they enter a run's resolved config and id."""
        later = self.later_settings
        return {k: v for k, v in self.model_dump(mode="json").items()
                if not (k in later and v == later[k])}


class PluginConfig(Identity, BaseModel):
    """Settings of one plug-in; strict so that a typo is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Plugin:
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig | None = None):
        self.config = config if config is not None else self.Config()


def instantiate(registry, section: dict) -> Plugin:
    """The plug-in named by a resolved config section (``{"name": ..., **settings}``)."""
    settings = dict(section)
    cls = registry.get(settings.pop("name"))
    return cls(cls.Config.model_validate(settings))
