"""A tpe search through the real runner: trials in rounds, stored as ordinary runs, resumed
from the store, and refused where it cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scalelab import api
from scalelab.records import run_id
from scalelab.spec import load_study, validate_study

from ..conftest import TINY

pytest.importorskip("optuna")


def study(tmp_path: Path, **changes) -> Path:
    spec = {**TINY, "name": "tpe", "grid": {"width": [4, 8], "lr": {"log_range": [1e-3, 0.3]}},
            "nuisance": ["lr"], "nuisance_search": {"method": "tpe", "trials": 3, "startup": 2},
            **changes}
    path = tmp_path / "tpe.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.mark.slow
def test_trials_are_stored_runs_and_a_rerun_trains_nothing(tmp_path):
    path, out = study(tmp_path), tmp_path / "out"
    first = api.run(path, out=out)
    assert sum(first.trained.values()) == 12          # 2 shapes x 3 trials x 2 seeds
    records = api.records(out)
    by_shape = {w: sorted({r["lr"] for r in records if r["width"] == w}) for w in (4, 8)}
    assert all(len(v) == 3 and all(1e-3 <= lr <= 0.3 for lr in v) for v in by_shape.values())
    # a trial's run is an ordinary run: its id is the hash of its config, as in a grid
    r = records[0]
    grid = validate_study({**TINY, "grid": {"width": [r["width"]], "lr": [r["lr"]]},
                           "seeds": [r["seed"]]}, "g.yaml")
    assert grid.runs[0].run_id == r["run_id"] == run_id(grid.runs[0].config)
    again = api.run(path, out=out)
    assert sum(again.trained.values()) == 0
    assert sorted(x["run_id"] for x in api.records(out)) == sorted(x["run_id"] for x in records)
    assert api.planned_runs(out) and len(api.planned_runs(out)) == 12


@pytest.mark.parametrize("change, field, words", [
    ({"nuisance_search": "grid"}, "grid.train.lr", "set `nuisance_search: {method: tpe"),
    ({"grid": {"width": [4, 8], "lr": [0.01, 0.1]}}, "nuisance_search.method",
     "give a nuisance axis as {log_range"),
    ({"nuisance": []}, "grid.lr", "every range a nuisance axis"),
    ({"grid": {"width": [4, 8], "lr": {"log_range": [0, 0.3]}}}, "grid", "positive ends"),
])
def test_bad_tpe_settings_are_refused_in_one_line(tmp_path, run_cli, change, field, words):
    result = run_cli("run", study(tmp_path, **change), "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert field in result.stderr and words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_tpe_study_loads_with_its_range_held_at_the_middle(tmp_path):
    loaded = load_study(study(tmp_path))
    assert loaded.ranges["train.lr"].bounds == (1e-3, 0.3)
    assert [r.config["train"]["lr"] for r in loaded.runs] == \
        pytest.approx([(0.3 * 0.001) ** 0.5] * 4)
