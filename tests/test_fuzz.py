"""Fuzzing study files: whatever a study file holds, `scalelab run --dry-run` either accepts
it or refuses it in one line with exit code 2 — never a traceback, never a write."""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scalelab import cli

from .conftest import TINY

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**25, 10**25),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["[/red]", "[bold]x", "mnist1d", "mlp", "adam", "ast", "auto", "off",
                     "../../etc", "a" * 300, "1e-3", "width", "train.lr"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=8)
#: Where mutations land: every key of the tiny study, nested ones by dotted path.
PATHS = ["name", "task", "task.name", "task.num_train", "task.pool_size", "model",
         "model.name", "model.width", "model.depth", "train", "train.lr", "train.optimizer",
         "train.batch_size", "train.max_steps", "train.epochs", "train.eval_every",
         "train.early_stopping", "grid", "grid.width", "grid.train.lr", "seeds", "method",
         "nuisance", "baselines", "evaluations", "analysis", "analysis.forms", "stack_runs",
         "max_runs", "quick", "unknown_key"]


def mutate(study: dict, path: str, value, delete: bool) -> dict:
    out = yaml.safe_load(yaml.safe_dump(study))
    *parents, leaf = path.split(".") if not path.startswith("grid.") else ["grid", path[5:]]
    node = out
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if delete:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return out


def dry_run(text: bytes) -> tuple[int, list[str], list[str]]:
    """(exit code, stderr lines, files written besides the study) of a dry run."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = root / "s.yaml"
        study.write_bytes(text)
        err = io.StringIO()
        argv = sys.argv
        sys.argv = ["scalelab", "run", str(study), "--dry-run", "--out", str(root / "out")]
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    cli.main()
                    code = 0
                except SystemExit as exited:
                    code = exited.code
        finally:
            sys.argv = argv
        written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p != study)
    return code, [line for line in err.getvalue().splitlines() if line.strip()], written


def check(code: int, err: list[str], written: list[str]) -> None:
    assert written == []
    assert not any("Traceback" in line for line in err), err
    if code == 0:
        return
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("error: "), err


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), VALUES, st.booleans()),
                          min_size=1, max_size=3))
def test_mutated_study_files_are_valid_or_refused_in_one_line(mutations):
    study = dict(TINY)
    for path, value, delete in mutations:
        study = mutate(study, path, value, delete)
    try:
        text = yaml.safe_dump(study, allow_unicode=True).encode()
    except (yaml.YAMLError, RecursionError):
        pytest.skip("not representable as YAML")
    check(*dry_run(text))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_in_one_line(data):
    check(*dry_run(data))
