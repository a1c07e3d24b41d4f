"""Shared fixtures: a private dataset cache and a tiny study that trains in about a second."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Generated datasets go to a per-session folder (inherited by spawned workers)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SCALELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


TINY = {
    "name": "tiny",
    "task": {"name": "mnist1d", "num_train": 200, "num_val": 100, "num_test": 200,
             "pool_size": 400},
    "model": {"name": "mlp", "depth": 1},
    "train": {"optimizer": "adam", "lr": 0.01, "batch_size": 50, "max_steps": 40,
              "eval_every": 10},
    "grid": {"width": [4, 8]},
    "seeds": [0, 1],
}


@pytest.fixture
def tiny_study():
    """Write a tiny study (optionally changed) and return its path."""

    def make(tmp_path: Path, **changes) -> Path:
        spec = {**TINY, **changes}
        path = tmp_path / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        return path

    return make


@pytest.fixture
def exploding_model(monkeypatch):
    """A model family registered as ``_explodes`` for one test, whose build raises."""
    from scalelab.models import ModelFamily
    from scalelab.registry import models

    class Explodes(ModelFamily):
        """Raises when built (exercises the failed-run path)."""

        def build(self, input_shape, num_classes):
            raise RuntimeError("boom at build")

    monkeypatch.setitem(models._entries, "_explodes", Explodes)
    return Explodes


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the `scalelab` entry point in this process as a user would; returns its exit
    code, stdout and stderr."""
    import sys
    from types import SimpleNamespace

    from scalelab import cli

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["scalelab", *map(str, args)])
        with pytest.raises(SystemExit) as exited:
            cli.main()
        captured = capsys.readouterr()
        return SimpleNamespace(exit_code=exited.value.code, stdout=captured.out,
                               stderr=captured.err, output=captured.out + captured.err)

    return run
