"""Successive halving (scalelab.search): the rule, the rungs, decisions made once in the
store, and the loop pruning on a planted loss landscape whose best setting is known."""

from __future__ import annotations

import math

import pytest
import torch

from scalelab.analysis.nuisance import best_over_nuisance
from scalelab.records import COMPLETED, PRUNED, RunResult
from scalelab.search import RungPlan, StoreBoard, fit_seed_law, promote, rung_steps, widen, window
from scalelab.spec import TrainConfig
from scalelab.store import Store
from scalelab.train.loop import Batch, Hooks, Strategy, train_loop


def test_rungs_are_eta_apart_on_the_evaluation_cadence():
    assert rung_steps(900, 10, 3, 2) == {100: 1, 300: 2}
    assert rung_steps(1000, 50, 3, 2) == {100: 1, 350: 2}   # 111 -> 100, 333 -> 350
    assert rung_steps(270, 10, 3, 3) == {10: 1, 30: 2, 90: 3}
    assert rung_steps(40, 10, 3, 2) == {10: 1}              # 4 and 13 both round to 10
    assert rung_steps(20, 10, 2, 1) == {10: 1}
    assert rung_steps(10, 10, 3, 2) == {}                   # no step before the end


def test_the_best_floor_n_over_eta_go_on_and_the_first_arrival_always_does():
    assert promote({"a": [1.0]}, "a", 3) == (True, 1, 1)
    assert promote({"a": [1.0], "b": [2.0]}, "b", 3) == (False, 2, 2)
    assert promote({"a": [1.0], "b": [0.5]}, "b", 3) == (True, 1, 2)
    scores = {k: [v] for k, v in zip("abcdefg", [7, 6, 5, 4, 3, 2, 1])}
    kept = [k for k in scores if promote(scores, k, 3)[0]]
    assert kept == ["f", "g"]                               # floor(7/3) = 2
    assert promote({"a": [math.inf], "b": [math.inf]}, "a", 2) == (True, 1, 2)  # ties: name


def test_settings_a_law_left_unstarted_count_as_the_rungs_losers():
    three = {"a": [1.0], "b": [1.1], "c": [1.2]}
    assert [promote(three, k, 3)[0] for k in "abc"] == [True, False, False]
    # the shape's 7 settings, 4 never started: keep floor(7/3) = 2 of the 3 that ran
    assert [promote(three, k, 3, unstarted=4)[0] for k in "abc"] == [True, True, False]
    assert promote(three, "c", 3, unstarted=4) == (False, 3, 3)


def test_seeds_that_cannot_tell_two_settings_apart_do_not_decide_between_them():
    # 1.05 ± 0.05 (sd over 3 seeds) against 1.06 ± 0.02: a gap of 0.01, standard error of the
    # difference sqrt(0.05^2/3 + 0.02^2/3) = 0.031: both go on; plain ASHA keeps one
    close = {"lo": [1.0, 1.05, 1.1], "hi": [1.04, 1.06, 1.08]}
    assert promote(close, "hi", 3) == (True, 2, 2)
    assert promote(close, "hi", 3, margin=0) == (False, 2, 2)
    # a gap of 0.2 is 6 standard errors: pruned
    far = {"lo": [1.0, 1.05, 1.1], "hi": [1.24, 1.26, 1.28]}
    assert promote(far, "hi", 3) == (False, 2, 2)
    # one seed each: no spread is known, the plain rule decides
    assert promote({"lo": [1.0], "hi": [1.0001]}, "hi", 3) == (False, 2, 2)
    # the standard error is scipy's sem, squared and summed
    from scipy import stats
    spread = math.hypot(stats.sem(close["lo"]), stats.sem(close["hi"]))
    assert promote(close, "hi", 3, margin=0.01 / spread * 0.99)[0] is False
    assert promote(close, "hi", 3, margin=0.01 / spread * 1.01)[0] is True


def test_a_settings_decision_is_made_once_and_followed(tmp_path):
    with Store.open(tmp_path, create=True) as store:
        rule = lambda losses, setting, shape: promote(losses, setting, 2)  # noqa: E731
        # seed 0 of two settings arrives together: the better one goes on
        assert store.record_rung(1, 10, [("r1", "S", "lo", 1.0), ("r2", "S", "hi", 2.0)],
                                 rule) == {"r1": True, "r2": False}
        # seed 1 of "hi" is better than anything, but its setting was decided: it follows
        assert store.record_rung(1, 10, [("r3", "S", "hi", 0.1)], rule) == {"r3": False}
        # a retrain of r1 after a kill reports again: nothing changes
        assert store.record_rung(1, 10, [("r1", "S", "lo", 1.0)], rule) == {"r1": True}
        rungs, decisions = store.rung_records()
    assert [(d["setting"], d["promoted"], d["rank"], d["cohort"]) for d in decisions] == \
        [("lo", 1, 1, 2), ("hi", 0, 2, 2)]
    assert sorted(r["run_id"] for r in rungs) == ["r1", "r2", "r3"]


class Planted(Strategy):
    """Runs whose validation loss is a known function of their learning rate and step:
    (log10 lr + 2)^2 + 1/step, so 0.01 is best at every step, and its neighbours are next."""

    def __init__(self, lrs, total=900):
        self.runs, self.total_steps, self.lrs_ = len(lrs), total, lrs
        self.cfg = TrainConfig.model_validate({"optimizer": "sgd", "lr": 0.1, "batch_size": 1,
                                               "max_steps": total, "eval_every": 10})
        self.step_now, self.stopped = 0, {}

    def draw(self, step):
        return Batch(torch.zeros(1), torch.zeros(1), None, step - 1, step == self.total_steps)

    def step(self, batch, step):
        self.step_now = step
        return torch.ones(self.runs), {}

    def parameters(self):
        return []

    def lrs(self, batch):
        return list(self.lrs_)

    def evaluate(self):
        return [{"val_loss": (math.log10(lr) + 2) ** 2 + 1 / self.step_now}
                for lr in self.lrs_], 1

    def snapshot(self, run):
        return {}

    def account(self, result, run, outcome):
        pass

    def finalize(self, result, run, outcome, checkpoint):
        pass

    def stop(self, run, diverged):
        self.stopped[run] = self.step_now


def test_halving_keeps_the_planted_best_and_prunes_the_rest_at_the_expected_rungs(tmp_path):
    lrs = [0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    ids = [f"run{i}" for i in range(len(lrs))]
    with Store.open(tmp_path, create=True):
        pass
    plan = RungPlan(StoreBoard(tmp_path / "results.sqlite"), eta=3, rungs=2,
                    keys={i: ("shape", f"lr={lr}") for i, lr in zip(ids, lrs)})
    strategy = Planted(lrs)
    outcome = train_loop(strategy, strategy.cfg, Hooks(rungs=plan.gate(ids)))
    status = {lr: s.status for lr, s in zip(lrs, outcome.states)}
    assert status == {lr: COMPLETED if lr == 0.01 else PRUNED for lr in lrs}
    # 9 settings at step 100: the best 3 (0.003, 0.01, 0.03) go on; at step 300 the best 1
    ended = {lr: s.end_step for lr, s in zip(lrs, outcome.states)}
    assert ended == {**{lr: 100 for lr in lrs}, 0.003: 300, 0.03: 300, 0.01: None}
    assert {lr: s.metrics.get("pruned_rung") for lr, s in zip(lrs, outcome.states)} == \
        {**{lr: 1 for lr in lrs}, 0.003: 2, 0.03: 2, 0.01: None}
    assert strategy.stopped == {i: ended[lr] for i, lr in enumerate(lrs) if lr != 0.01}
    # a pruned run's curve ends at its rung
    last = max(step for step, name, _ in outcome.states[0].curves if name == "val_loss")
    assert last == 100
    assert outcome.step == 900


def test_pruned_settings_never_win_and_unstarted_values_are_not_searched():
    def run(lr, seed, status, val, **extra):
        return {"width": 8, "lr": lr, "seed": seed, "status": status, "val_loss": val, **extra}

    records = [run(0.01, 0, COMPLETED, 0.5), run(0.01, 1, COMPLETED, 0.6),
               run(0.1, 0, COMPLETED, 0.1), run(0.1, 1, PRUNED, 0.9, pruned_rung=1),
               run(1.0, 0, PRUNED, None, pruned_rung=0)]
    selected, [winner] = best_over_nuisance(records, ["width"], ["lr"])
    assert winner.nuisance == {"lr": 0.01}
    assert {r["seed"] for r in selected} == {0, 1}
    # 1.0 was never started: the searched range is 0.01-0.1, and 0.01 is its edge
    assert winner.at_edge == ["lr"]


def test_the_law_window_is_centred_on_the_prediction_and_widens_at_an_edge():
    grid = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
    assert window(grid, 0.004, 3) == [0.002, 0.005, 0.01]
    assert window(grid, 0.5, 3) == [0.02, 0.05, 0.1]
    assert widen(grid, [0.002, 0.005, 0.01], 0.01) == 0.02
    assert widen(grid, [0.002, 0.005, 0.01], 0.002) == 0.001
    assert widen(grid, [0.002, 0.005, 0.01], 0.005) is None
    assert widen(grid, [0.05, 0.1], 0.1) is None           # the grid's own edge


def test_the_seed_law_is_a_power_law_through_the_smaller_shapes_winners():
    records = []
    for n, best in ((1000, 0.04), (4000, 0.02), (16000, 0.01), (64000, 0.2)):
        for lr in (0.01, 0.02, 0.04, 0.2):
            records.append({"width": n, "lr": lr, "seed": 0, "status": COMPLETED,
                            "n_params": n, "val_loss": abs(math.log(lr / best))})
    law = fit_seed_law(records, ["width"], ["lr"], "lr", below=20000)
    assert law.points == 3
    assert law.p == pytest.approx(-0.5)                    # halves for every 4x in size
    assert law.predict(64000)["value"] == pytest.approx(0.005)
    assert fit_seed_law(records, ["width"], ["lr"], "lr", below=2000) is None
    assert RunResult(PRUNED).status == "pruned"


def test_tpe_finds_a_planted_optimum_and_proposes_the_same_from_the_same_history():
    from scalelab.search import suggest
    from scalelab.spec import ValueRange

    ranges = {"lr": ValueRange(log_range=(1e-4, 1.0))}
    history = []
    for trial in range(14):
        proposed = suggest(history, ranges, seed=trial, startup=4)
        assert suggest(history, ranges, seed=trial, startup=4) == proposed
        lr = proposed["lr"]
        assert 1e-4 <= lr <= 1.0 and float(f"{lr:.3g}") == lr
        history.append((proposed, (math.log10(lr) + 2) ** 2))
    best = min(history, key=lambda h: h[1])[0]["lr"]
    assert abs(math.log10(best) + 2) < 0.3          # within a factor 2 of 0.01
    # a diverged trial (None) is told to the sampler as failed
    assert suggest([({"lr": 0.5}, None)] + history[:3], ranges, seed=1, startup=4)


def test_without_nuisance_axes_every_completed_run_is_kept_validation_or_not():
    records = [{"width": 8, "seed": 0, "status": COMPLETED, "test_loss": 1.0},  # no val split
               {"width": 8, "seed": 1, "status": COMPLETED, "val_loss": 0.5},
               {"width": 8, "seed": 2, "status": PRUNED, "val_loss": 0.1}]
    selected, winners = best_over_nuisance(records, ["width"], [])
    assert [r["seed"] for r in selected] == [0, 1] and winners == []
