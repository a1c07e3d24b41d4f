"""Tracker base class: where a run's resolved config, metrics, curves and status go besides
the store. The store stays the source of truth; a tracker that fails (a server down) says so
in one line and stops, and training goes on."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ScalelabError, first_line
from ..output import Output
from ..plugin import Plugin, instantiate
from ..records import RunResult, RunSpec
from ..registry import trackers
from ..spec import Study


class Tracker(Plugin, ABC):
    """Logs runs somewhere; subclasses implement :meth:`log_run` and :meth:`log_report`."""

    #: The optional extra that installs the tracker's library.
    extra: str = ""
    #: The library the tracker needs (checked before anything is written).
    module: str = ""

    def installed(self) -> None:
        """Raise a one-line error naming the extra when the tracker's library is missing."""
        self.require(self.module)

    def start(self, study: Study) -> None:  # noqa: B027  (a do-nothing default)
        """Called once before the first run is logged (connect, find the experiment)."""

    @abstractmethod
    def log_run(self, run: RunSpec, result: RunResult) -> None:
        """Log one trained run: its config, metrics, curves and status."""

    @abstractmethod
    def log_report(self, study: Study, files: Sequence[Path]) -> None:
        """Attach the study's report files."""

    def require(self, module: str):
        """The tracker's library, or a one-line error naming the extra to install."""
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError:
            raise ScalelabError(f"trackers: {self.name} needs {module}: pip install "
                                f"'scalelab[{self.extra}]'") from None

    @property
    def name(self) -> str:
        return next(n for n in trackers.names() if trackers.get(n) is type(self))


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among a run's metrics (lists, None and flags left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracking:
    """The study's trackers, each switched off (with one line) after its first failure.
    Built before anything is written: a tracker whose library is missing is refused then."""

    def __init__(self, study: Study, output: Output, extra: Sequence[str] = ()):
        self.output = output
        self.active = trackers_for(study, extra)
        for tracker in self.active:
            tracker.installed()
        for tracker in list(self.active):
            self._call(tracker, "start", study)

    def log_run(self, run: RunSpec, result: RunResult) -> None:
        for tracker in list(self.active):
            self._call(tracker, "log_run", run, result)

    def log_report(self, study: Study, files: Sequence[Path]) -> None:
        for tracker in list(self.active):
            self._call(tracker, "log_report", study, files)

    def _call(self, tracker: Tracker, method: str, *args) -> None:
        try:
            getattr(tracker, method)(*args)
        except ScalelabError:
            raise
        except Exception as exc:  # the store has every result; tracking is a copy
            self.active.remove(tracker)
            first = first_line(exc, 200)
            self.output.warn(f"trackers: {tracker.name} stopped after an error ({first}); every "
                             "result is still in the store")


def trackers_for(study: Study, extra: Sequence[str] = ()) -> list[Tracker]:
    """The trackers the study's ``trackers:`` declare, plus ``--tracker NAME`` ones (defaults)."""
    settings = dict(study.spec.trackers)
    for name in extra:
        settings.setdefault(name, {})
    return [instantiate(trackers, {"name": name, **config}) for name, config in settings.items()]


def attach_report(study: Study, files: Sequence[Path], output: Output,
                  extra: Sequence[str] = ()) -> None:
    """Log the study's report files with every tracker (failures: one line each)."""
    Tracking(study, output, extra).log_report(study, files)
