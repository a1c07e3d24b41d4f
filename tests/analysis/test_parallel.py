"""Independent pieces of an analysis on several processes: the same results, in order, as one
after another; a piece's error reaches the caller; a worker's failure costs nothing."""

import functools
import os
import sys
import time

import numpy as np
import pytest

from scalelab.analysis import parallel, study_analysis
from scalelab.analysis.parallel import run_all
from scalelab.store import StudyMeta

forking = pytest.mark.skipif(not parallel.can_fork(), reason="workers are forked on Linux only")


def _square_slowly(i: int) -> tuple[int, int]:
    time.sleep(0.1)
    return i * i, os.getpid()


@forking
def test_pieces_come_back_in_order_from_every_worker():
    results = run_all([functools.partial(_square_slowly, i) for i in range(8)],
                      weights=[i % 3 for i in range(8)], workers=2)
    assert [r for r, _ in results] == [i * i for i in range(8)]
    assert len({pid for _, pid in results}) == 2 and os.getpid() in {p for _, p in results}


def _fails_at(i: int, bad: int) -> int:
    if i == bad:
        raise ValueError(f"piece {i} cannot be done")
    return i


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pieces_own_error_reaches_the_caller(workers):
    with pytest.raises(ValueError, match="piece 2 cannot be done"):
        run_all([functools.partial(_fails_at, i, 2) for i in range(4)], workers=workers)


@forking
def test_the_pieces_of_a_worker_that_dies_are_done_here():
    parent = os.getpid()

    def piece(i: int) -> int:
        if os.getpid() != parent:
            os._exit(3)  # killed, as by the kernel's OOM killer
        time.sleep(0.02)
        return i

    assert run_all([functools.partial(piece, i) for i in range(6)], workers=2) == list(range(6))


@forking
def test_results_that_do_not_pickle_are_made_here():
    made = run_all([lambda i=i: (lambda: i) for i in range(4)], workers=2)
    assert [f() for f in made] == [0, 1, 2, 3]


def test_one_worker_or_no_fork_runs_here(monkeypatch):
    monkeypatch.setattr(parallel, "can_fork", lambda: False)
    assert {pid for _, pid in run_all([functools.partial(_square_slowly, i)
                                       for i in range(3)], workers=4)} == {os.getpid()}


def _grid_records(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    records = []
    for width in (8, 16, 32, 64, 128):
        for d in (500, 1000, 2000):
            for s in range(2):
                n = 60 * width
                loss = (1.2 + 30 * n ** -0.5 + 25 * d ** -0.4) * np.exp(rng.normal(0, 0.01))
                records.append({"run_id": f"{width}-{d}-{s}", "status": "completed",
                                "width": width, "num_train": d, "seed": s, "n_params": n,
                                "test_loss": loss, "val_loss": loss, "train_flops": 6.0 * n * d})
    return records


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks on Linux only")
def test_a_studys_fits_on_two_processes_are_the_fits_on_one(monkeypatch):
    meta = StudyMeta(study="grid", axes={"width": "model.width", "num_train": "task.num_train"},
                     grid={"width": [8, 16, 32, 64, 128], "num_train": [500, 1000, 2000]})
    monkeypatch.setattr(study_analysis, "PARALLEL_REFITS", 0)  # fork however small
    said = []
    one = study_analysis.analyze_study(_grid_records(), meta, n_resamples=40, workers=1)
    two = study_analysis.analyze_study(_grid_records(), meta, n_resamples=40, workers=2,
                                       progress=said.append)
    assert said == ["analysing: 4 fits, 40 bootstrap resamples each …"]
    assert [f.title for f in one.fits] == [f.title for f in two.fits] and len(one.fits) == 4
    for a, b in zip(one.fits, two.fits):
        assert np.array_equal(a.boot.thetas, b.boot.thetas) and a.fit.verdict == b.fit.verdict
        assert a.boot.intervals == b.boot.intervals and a.fit.params == b.fit.params
    assert one.notes == two.notes
