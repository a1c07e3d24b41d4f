"""A halving search through the real runner: stacked survivors as if trained alone, a kill
mid-search resumed with nothing trained twice, two runners sharing one directory, and what
the bad settings are refused with."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from scalelab import api
from scalelab.analysis.nuisance import best_over_nuisance
from scalelab.store import Store

from ..conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
LRS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]


def study(tmp_path: Path, name: str = "halving", **changes) -> Path:
    spec = {**TINY, "name": name, "grid": {"width": [4, 8], "lr": LRS}, "nuisance": ["lr"],
            "nuisance_search": "halving",
            "train": {**TINY["train"], "max_steps": 90, "eval_every": 10}, **changes}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fates(out: Path) -> dict[tuple, tuple]:
    """(width, lr, seed) -> (status, pruned rung, test loss) of every stored run."""
    return {(r["width"], r["lr"], r["seed"]): (r["status"], r.get("pruned_rung"),
                                               r.get("test_loss"))
            for r in api.records(out)}


def winners(out: Path) -> dict:
    _, found = best_over_nuisance(api.records(out), ["width"], ["lr"])
    return {w.point["width"]: w.nuisance["lr"] for w in found}


@pytest.mark.slow
def test_stacked_survivors_match_runs_trained_alone_and_the_grids(tmp_path):
    stacked, alone, grid = tmp_path / "stacked", tmp_path / "alone", tmp_path / "grid"
    api.run(study(tmp_path), out=stacked)
    api.run(study(tmp_path, nuisance_search="grid", stack_runs="off"), out=alone)
    api.run(study(tmp_path, nuisance_search="grid"), out=grid)
    a, b, g = fates(stacked), fates(alone), fates(grid)
    survivors = [k for k, v in a.items() if v[0] == "completed"]
    pruned = [k for k, v in a.items() if v[0] == "pruned"]
    assert 2 <= len(survivors) < len(pruned)
    for k in survivors:   # as if trained alone, or in the grid's full stacked group (the
        # pruned rows dropped from the group change only batched kernels' summation order)
        assert a[k][2] == pytest.approx(b[k][2], rel=1e-4)
        assert a[k][2] == pytest.approx(g[k][2], rel=1e-4)
    with Store.open(stacked) as store:
        rungs, decisions = store.rung_records()
    assert {r["step"] for r in rungs} == {10, 30}
    # every pruned run stopped at the rung its setting was pruned at, its curve with it
    cut = {(d["shape"], d["setting"]): d["rung"] for d in decisions if not d["promoted"]}
    for r in api.records(stacked):
        if r["status"] == "pruned":
            assert r["pruned_rung"] == cut[(f'{{"width": {r["width"]}}}',
                                           f'{{"lr": {r["lr"]}}}')]
            assert r["steps"] == {1: 10, 2: 30}[r["pruned_rung"]]
    # all of a shape's settings reached each rung together: 6 at the first, 2 at the second
    assert sorted({(d["rung"], d["cohort"]) for d in decisions}) == [(1, 6), (2, 2)]


def _runner(path: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "_runner.py"), "run",
                             str(path), "--out", str(out), "--workers", "1", "--no-report"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _finished(out: Path) -> dict[str, float]:
    path = out / "results.sqlite"
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(path, timeout=30) as db:
            return dict(db.execute("SELECT run_id, finished_at FROM runs WHERE status IN "
                                   "('completed', 'pruned', 'diverged')"))
    except sqlite3.OperationalError:  # tables not made yet
        return {}


@pytest.mark.slow
def test_a_search_killed_mid_way_resumes_with_the_same_winners_and_nothing_retrained(
        tmp_path):
    path = study(tmp_path, stack_runs="off", train={**TINY["train"], "max_steps": 300,
                                                   "eval_every": 10})
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    api.run(path, out=whole, workers=1)
    process = _runner(path, killed)
    deadline = time.time() + 120
    while len(_finished(killed)) < 6 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = _finished(killed)
    assert 6 <= len(before) < 24, "the kill should land mid-search"
    api.run(path, out=killed, workers=1)
    after = _finished(killed)
    assert len(after) == 24
    assert {k: after[k] for k in before} == before       # nothing finished was trained again
    assert {k: v[:2] for k, v in fates(killed).items()} == \
        {k: v[:2] for k, v in fates(whole).items()}
    assert winners(killed) == winners(whole)


@pytest.mark.slow
def test_two_runners_on_one_directory_decide_each_setting_once(tmp_path):
    path = study(tmp_path, stack_runs="off", seeds=[0, 1, 2])
    out = tmp_path / "shared"
    first = _runner(path, out)
    time.sleep(1.0)
    second = _runner(path, out)
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
    records = api.records(out)
    assert len(records) == 36 and all(r["status"] in ("completed", "pruned") for r in records)
    with Store.open(out) as store:
        rungs, decisions = store.rung_records()
    keys = [(d["shape"], d["setting"], d["rung"]) for d in decisions]
    assert len(keys) == len(set(keys))
    decided = {k: d["promoted"] for k, d in zip(keys, decisions)}
    for r in records:
        shape, setting = f'{{"width": {r["width"]}}}', f'{{"lr": {r["lr"]}}}'
        if r["status"] == "pruned":   # pruned where its setting was, promoted before
            assert decided[(shape, setting, r["pruned_rung"])] == 0
            assert all(decided[(shape, setting, k)] for k in range(1, r["pruned_rung"]))
        else:                         # trained to the end: promoted at every rung it reached
            reached = [x["rung"] for x in rungs if x["run_id"] == r["run_id"]]
            assert all(decided[(shape, setting, k)] for k in reached)
    # each run reported each rung it reached once (no run trained twice)
    assert len({(x["run_id"], x["rung"]) for x in rungs}) == len(rungs)


def test_halving_needs_nuisance_axes(tmp_path, run_cli):
    path = study(tmp_path, nuisance=[])
    result = run_cli("run", path, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "nuisance_search.method" in result.stderr
    assert "list them under `nuisance:`" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_law_seeded_search_starts_larger_shapes_near_the_law_and_resumes(tmp_path):
    path = study(tmp_path, grid={"width": [4, 8, 16, 32], "lr": LRS},
                 nuisance_search={"method": "halving", "start": "law", "window": 3})
    out = tmp_path / "law"
    first = api.run(path, out=out)
    records = api.records(out)
    assert len(records) == 48 and sum(first.trained.values()) == 48
    unstarted = [r for r in records if r["status"] == "pruned" and r["pruned_rung"] == 0]
    # widths 4 and 8 search the whole grid; 16 and 32 start 3 of the 6 values (more only
    # where a winner sat on the window's edge), the rest stored as never started
    assert {r["width"] for r in unstarted} <= {16, 32} and len(unstarted) >= 2 * 2
    assert all(r["steps"] == 0 and r["train_flops"] == 0 for r in unstarted)
    for width in (16, 32):
        started = {r["lr"] for r in records if r["width"] == width
                   and not (r["status"] == "pruned" and r["pruned_rung"] == 0)}
        assert 3 <= len(started) < 6
        ordered = [lr for lr in LRS if lr in started]        # a contiguous window
        assert ordered == LRS[LRS.index(ordered[0]):LRS.index(ordered[0]) + len(ordered)]
    # the search's analysis counts them, and never as searched
    search = api.search(out)
    fates = [f.fate for s in search.shapes for f in s.settings]
    assert fates.count("not started") == len(unstarted) // 2   # two seeds per setting
    assert sum(api.run(path, out=out).trained.values()) == 0  # a rerun trains nothing
