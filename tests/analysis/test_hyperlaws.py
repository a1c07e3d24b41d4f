"""Hyperparameter laws (analysis.hyperlaws): a planted lr_opt = k·N^-0.5 recovered within its
interval, edge optima flagged as bounds, `scalelab next` proposing the predicted lr, and the
ledger grading it once the proposed runs exist.

The end-to-end test uses a test model family, ``_tuned_law``, whose validation loss is a known
function of N, D and the learning rate it trained with: a Chinchilla law plus a parabola in
log lr with its minimum at lr_opt(N) = N^-0.5. The lr is read off training itself: a one-number
parameter whose gradient is always 1, so after t plain SGD steps it is -lr·t.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import optimize
from torch import nn

import scalelab
from scalelab.analysis.hyperlaws import HyperLaw, hyper_laws, shape_optimum, study_hyper_laws
from scalelab.analysis.ledger import grade, grade_setting, scorecard, setting_rows
from scalelab.analysis.nuisance import interpolated_optima
from scalelab.models import ModelFamily
from scalelab.plugin import PluginConfig
from scalelab.registry import models
from scalelab.store import Store, StudyMeta

LRS = [0.001 * 2.0 ** i for i in range(7)]          # 0.001 ... 0.064
SIZES = [1e4, 3e4, 1e5, 3e5, 1e6]                    # optima 0.03 ... 0.003: inside the grid
K, P, CURVATURE = 3.0, -0.5, 0.05


def planted(rng, sizes=SIZES, lrs=LRS, seeds=4, noise=0.01, k=K, p=P, **extra) -> list[dict]:
    """Runs whose validation loss is a parabola in log lr with its minimum at k·N^p, plus noise."""
    out = []
    for width, n in enumerate(sizes):
        best = k * n ** p
        for lr in lrs:
            for seed in range(seeds):
                loss = 2 + n ** -0.3 + CURVATURE * math.log(lr / best) ** 2
                out.append({"status": "completed", "width": width, "lr": lr, "seed": seed,
                            "n_params": n, "train_flops": 6e5 * n, **extra,
                            "val_loss": loss + rng.normal(0, noise)})
    return out


def test_the_shared_interpolation_is_the_parabola_through_the_best_and_its_neighbours():
    rng = np.random.default_rng(0)
    values = [0.001, 0.003, 0.01, 0.03, 0.1]
    losses = rng.normal(size=(200, 5))
    i, optima, edge = interpolated_optima(values, losses)
    x = np.log(values)
    for row, j, opt, e in zip(losses, i, optima, edge):
        assert e == (j in (0, 4))
        a, b, _ = np.polyfit(x[j - 1:j + 2], row[j - 1:j + 2], 2) if not e else (0, 0, 0)
        expected = math.exp(np.clip(-b / (2 * a), x[j - 1], x[j + 1])) if a > 0 else values[j]
        assert opt == pytest.approx(expected, rel=1e-9)
    # a diverged neighbour: the grid value itself
    _, opt, _ = interpolated_optima(values, np.array([3.0, np.inf, 1.0, 2.0, 3.0]))
    assert opt == 0.01


def test_the_law_recovers_a_planted_lr_exponent_within_its_interval():
    rng = np.random.default_rng(1)
    (law,) = hyper_laws(planted(rng), ["width"], ["lr"], n_resamples=1000)
    n_law, c_law = law.laws["N"], law.laws["C"]
    assert n_law.p_interval[0] <= P <= n_law.p_interval[1]
    assert n_law.p == pytest.approx(P, abs=0.05) and n_law.k == pytest.approx(K, rel=0.5)
    assert c_law.p == pytest.approx(n_law.p)  # C ∝ N here: the same exponent
    assert law.chosen == "N" and not law.diagnostics
    assert all(not o.at_edge and o.seeds == 4 for o in law.optima)
    # interpolated, not the best grid point: closer to the planted optimum than the grid is
    errors = [(abs(math.log(o.optimum / (K * o.n ** P))), abs(math.log(o.best / (K * o.n ** P))))
              for o in law.optima]
    assert sum(e for e, _ in errors) < 0.5 * sum(g for _, g in errors)
    new = 1e7  # 10x past the largest size
    predicted = law.predict(new, 6e5 * new)
    assert predicted["law"] == "N" and predicted["against"] == "n_params"
    assert predicted["interval"][0] <= K * new ** P <= predicted["interval"][1]
    assert predicted["optimum_interval"][0] <= predicted["interval"][0]
    assert predicted["reach"] == pytest.approx(10.0)
    json.dumps(law.to_dict())  # JSON-ready


def test_the_intervals_cover_the_planted_exponent_and_a_new_shapes_optimum():
    """Two seeds give the seed bootstrap three distinct resamples: too narrow alone; the
    union with the regression's Student-t interval is what makes 95% mean 95%."""
    hits = np.zeros(3)
    n = 3e6  # a new shape 3x past the largest, tuned over a bracket as `next` proposes
    for t in range(40):
        rng = np.random.default_rng(100 + t)
        (law,) = hyper_laws(planted(rng, seeds=2), ["width"], ["lr"], n_resamples=400, seed=t)
        fit, truth = law.laws["N"], K * n ** P
        found = shape_optimum(planted(rng, sizes=[n], lrs=[truth / 2, truth, truth * 2],
                                      seeds=2), {}, "lr", ["lr"]).optimum
        low, high = law.predict(n, 6e5 * n)["optimum_interval"]
        hits += [fit.p_interval[0] <= P <= fit.p_interval[1],
                 fit.p_seed_interval[0] <= P <= fit.p_seed_interval[1], low <= found <= high]
    assert hits[0] >= 34 and hits[2] >= 34  # 38 expected of 40
    assert hits[1] < hits[0]


def test_optima_at_the_grids_edge_are_flagged_as_bounds_and_left_out():
    rng = np.random.default_rng(3)
    runs = planted(rng, sizes=[*SIZES, 1e8])  # 1e8: optimum 3e-4, below the grid's 0.001
    (law,) = hyper_laws(runs, ["width"], ["lr"], n_resamples=200)
    edge = [o for o in law.optima if o.at_edge]
    assert [o.n for o in edge] == [1e8] and edge[0].best == min(LRS)
    assert law.laws["N"].points == 5 and law.laws["N"].p_interval[0] <= P
    (note,) = law.diagnostics
    assert note.code == "hyper_edge" and note.severity == "warning"
    assert note.message == (
        "At width=5 the best lr is the smallest value of its grid (0.001): the real optimum "
        "lies beyond it, so this shape gives a bound, not an estimate, and is left out of the "
        "lr law; add smaller lr values for it.")
    # two interior optima are no law
    (few,) = hyper_laws([r for r in runs if r["n_params"] in (1e4, 3e4, 1e8)], ["width"],
                        ["lr"], n_resamples=50)
    assert not few.laws and few.predict(1e9, 1e15) is None
    assert {d.code for d in few.diagnostics} == {"hyper_edge", "hyper_too_few"}
    assert "no law for the best lr" in few.sentence()


def test_two_tuned_axes_each_follow_their_own_law_through_the_best_setting():
    rng = np.random.default_rng(4)
    runs = []
    for r in planted(rng, seeds=3, noise=0.005):
        for batch in (32, 64, 128, 256, 512):
            best_batch = 0.09 * r["train_flops"] ** 0.3  # 77 ... 306 at C = 6e9 ... 6e11
            runs.append({**r, "batch": batch,
                         "val_loss": r["val_loss"] + 0.03 * math.log(batch / best_batch) ** 2})
    laws = {law.axis: law for law in hyper_laws(runs, ["width"], ["lr", "batch"],
                                                n_resamples=300)}
    assert laws["lr"].laws["N"].p_interval[0] <= P <= laws["lr"].laws["N"].p_interval[1]
    c = laws["batch"].laws["C"]
    assert c.p_interval[0] <= 0.3 <= c.p_interval[1] and c.against == "train_flops"
    assert all(o.fixed.keys() == {"batch"} for o in laws["lr"].optima)


def test_a_study_splits_its_laws_by_its_other_axes():
    rng = np.random.default_rng(5)
    runs = planted(rng, parametrization="sp") + planted(rng, p=-0.25, k=0.3,
                                                        parametrization="mup")
    meta = StudyMeta(axes={"width": "model.width", "parametrization": "model.parametrization",
                           "lr": "train.lr"},
                     grid={"width": [0, 1, 2, 3, 4], "parametrization": ["sp", "mup"],
                           "lr": LRS}, nuisance=["lr"])
    laws = {law.group["parametrization"]: law for law in study_hyper_laws(runs, meta,
                                                                          n_resamples=200)}
    assert laws["sp"].laws["N"].p == pytest.approx(-0.5, abs=0.05)
    assert laws["mup"].laws["N"].p == pytest.approx(-0.25, abs=0.05)
    assert laws["sp"].sentence().startswith("parametrization=sp: the best lr ≈ ")


def _prediction(law: HyperLaw, n: float, proposed: list[float]) -> dict:
    return {**law.predict(n, 6e5 * n), "proposed": proposed}


def test_the_ledger_grades_a_predicted_lr_against_the_optimum_the_runs_found():
    rng = np.random.default_rng(6)
    (law,) = hyper_laws(planted(rng, noise=0.002), ["width"], ["lr"], n_resamples=500)
    n = 3e6
    truth = K * n ** P
    bracket = [truth / 2, truth, truth * 2]
    runs = [{**r, "run_id": f"r{i}"} for i, r in enumerate(
        planted(rng, sizes=[n], lrs=bracket, noise=0.002))]  # as many seeds as the study
    # the law's prediction as `next` stores it, with an interval that holds by construction
    # (how often the law's own intervals hold is the coverage test's business)
    hyper = {"lr": {**_prediction(law, n, bracket), "optimum_interval": [truth / 1.3,
                                                                         truth * 1.3]}}
    prediction = {"run_ids": [r["run_id"] for r in runs], "metric": "val_loss",
                  "interval": [0, 10], "level": 0.95, "hyper": hyper}
    meta = StudyMeta(axes={"width": "model.width", "lr": "train.lr"}, nuisance=["lr"])
    (graded,) = grade([prediction], runs, meta)
    setting = graded["hyper"]["lr"]
    assert setting["tuned"] and setting["held"] and not setting["found_at_edge"]
    assert setting["found"] == pytest.approx(truth, rel=0.1)
    assert setting["loss"] == graded["measured"]
    assert setting_rows([graded])[0]["status"] == "measured"
    assert scorecard(setting_rows([graded]), "tuned-setting prediction(s)").startswith(
        "1 of 1 measured tuned-setting prediction(s) fell inside their 95% interval")
    # an interval the optimum found lies outside: a miss
    wrong = {**hyper["lr"], "optimum_interval": [truth / 20, truth / 10]}
    assert grade_setting(wrong, runs, ["lr"], 2.0)["held"] is False
    # a bracket below the real optimum: found at its top edge, a bound (the optimum is above)
    low = [truth / 8, truth / 4, truth / 2]
    below = planted(rng, sizes=[n], lrs=low, noise=0.002)
    far = grade_setting({**wrong, "proposed": low}, below, ["lr"], 2.0)
    assert far["found_at_edge"] and far["found"] == truth / 2
    assert far["held"] is False  # the bound truth/2 already lies above the interval's top
    undecided = grade_setting({**hyper["lr"], "proposed": low}, below, ["lr"], 2.0)
    assert undecided["found_at_edge"] and undecided["held"] is None  # truth/2 inside: no verdict
    rows = setting_rows([{**graded, "hyper": {"lr": undecided}}, graded])
    assert [r["status"] for r in rows] == ["bound", "measured"]
    assert scorecard(rows, "tuned-setting prediction(s)").endswith(
        "; 1 found at the edge of the values proposed, a bound that neither holds nor misses")
    # one value proposed: recorded with the run's loss, never graded
    alone = grade_setting({**hyper["lr"], "proposed": [truth]}, runs[:4], ["lr"], 2.0)
    assert not alone["tuned"] and alone["held"] is None and alone["found"] is None
    assert alone["loss"] == 2.0 and setting_rows([{**graded, "hyper": {"lr": alone}}]) == []
    pending = grade([prediction], [], meta)[0]["hyper"]["lr"]
    assert pending["held"] is None and pending["loss"] is None


def test_a_bracket_next_proposed_for_one_shape_moves_no_other_shapes_edge():
    from scalelab.analysis.nuisance import best_over_nuisance, transfer

    rng = np.random.default_rng(7)
    runs = planted(rng, sizes=[1e4, 1e8], seeds=2)  # 1e8: best lr at the grid's bottom
    runs += planted(rng, sizes=[3e8], lrs=[1e-4, 2e-4, 4e-4], seeds=2)  # a proposed bracket
    for r in runs:
        r["width"] = int(r["n_params"])
    grid = {"lr": sorted({r["lr"] for r in runs})}  # the union the store records
    _, winners = best_over_nuisance(runs, ["width"], ["lr"], grid)
    assert {w.point["width"]: w.at_edge for w in winners} == {10**4: [], 10**8: ["lr"],
                                                               3 * 10**8: []}
    (moved,) = transfer(runs, ["width"], ["lr"], "width", grid)
    rows = {r["width"]: r for r in moved.rows}
    assert rows[10**8]["at_edge"] and rows[10**8]["best"] == min(LRS)
    assert not rows[10**4]["at_edge"]
    assert rows[10**4]["optimum"] == pytest.approx(K * 1e4 ** P, rel=0.2)  # interpolated


def test_a_shape_whose_every_setting_diverged_has_no_optimum():
    runs = [{"status": "diverged", "lr": lr, "seed": 0, "val_loss": None} for lr in LRS]
    assert shape_optimum(runs, {}, "lr", ["lr"]) is None


# --- end to end: `scalelab next` proposes the predicted lr and the ledger grades it ---------

E, A, B, ALPHA, BETA, SCATTER, PENALTY, NOISE = 2.4, 12.0, 12.0, 0.5, 0.5, 0.003, 0.05, 0.001


def tuned_law(n: float, d: float, lr: float) -> float:
    """The planted validation loss: Chinchilla's law plus a parabola in log lr at N^-0.5."""
    return E + A / n ** ALPHA + B / d ** BETA + PENALTY * math.log(lr * n ** 0.5) ** 2


class _UnitGradient(torch.autograd.Function):
    """The logits unchanged; the probe's gradient always 1 (plain SGD moves it by -lr)."""

    @staticmethod
    def forward(ctx, logits, probe):
        return logits.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, torch.ones(1, dtype=grad.dtype, device=grad.device)


class TunedLawModule(nn.Module):
    def __init__(self, width: int, features: int, classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, features) / features ** 0.5)
        self.probe = nn.Parameter(torch.zeros(1))
        self.register_buffer("logits", torch.zeros(classes))
        self.register_buffer("steps", torch.zeros(()))
        self.data: tuple | None = None

    def forward(self, x):
        h = x.flatten(1) @ self.weight.T  # counted compute: 2·width·features FLOPs per example
        out = self.logits.expand(len(x), -1) + 0 * h.sum(1, keepdim=True)
        if self.training:
            self.steps += 1
            return _UnitGradient.apply(out, self.probe)
        if self.steps > 0 and self.data is not None:
            self._set_logits(float(-self.probe) / float(self.steps))
        return self.logits.expand(len(x), -1) + 0 * h.sum(1, keepdim=True)

    def _set_logits(self, lr: float):
        share, classes, d, seed = self.data
        n = sum(p.numel() for p in self.parameters())
        run = torch.Generator().manual_seed(seed * 10**8 + n * 10**4 + d)
        lr_run = torch.Generator().manual_seed(seed * 10**8 + n * 10**4 + d + round(lr * 1e7))
        target = (tuned_law(n, d, lr) * math.exp(SCATTER * float(torch.randn((), generator=run)))
                  + NOISE * float(torch.randn((), generator=lr_run)))

        def excess(s):  # cross-entropy of logits (s, 0, ..., 0) on the validation labels
            return math.log(math.exp(s) + classes - 1) - share * s - target

        self.logits[0] = optimize.brentq(excess, 0.0, 100.0)


class TunedLawFamily(ModelFamily):
    """Trains to the validation loss of ``tuned_law`` at the lr it trained with."""

    class Config(PluginConfig):
        width: int = 8

    def build(self, input_shape, num_classes):
        return TunedLawModule(self.config.width, math.prod(input_shape), num_classes)

    def initialize(self, model, data):
        share = float((data.y_val == 0).double().mean())
        model.data = (share, data.num_classes, len(data.y_train), torch.initial_seed())


STUDY = """\
name: tuned_law
task: {name: mnist1d, num_val: 200, num_test: 200, pool_size: 6000}
model: {name: _tuned_law}
train: {optimizer: sgd, momentum: 0, schedule: constant, lr: 0.1, batch_size: 50, epochs: 1,
        eval_every: 1000}
grid:
  width: [2, 4, 8, 16, 32]       # N = 40 x width + 1: best lr 0.11 ... 0.028
  num_train: [250, 1000]
  lr: [0.0125, 0.025, 0.05, 0.1, 0.2]
nuisance: [lr]
seeds: 2
analysis: {metric: val_loss, forms: [power_offset]}
"""


@pytest.mark.slow
def test_next_proposes_the_predicted_lr_and_the_ledger_grades_it(tmp_path, monkeypatch):
    monkeypatch.setitem(models._entries, "_tuned_law", TunedLawFamily)
    path, out = tmp_path / "tuned.yaml", tmp_path / "out"
    path.write_text(STUDY)
    assert scalelab.run(path, out=out, workers=1, device="cpu").ok
    done = [r for r in scalelab.api.records(out) if r["status"] == "completed"]
    r = done[0]
    assert r["val_loss"] == pytest.approx(tuned_law(r["n_params"], r["num_train"], r["lr"]),
                                          rel=0.02)
    k = float(np.median([r["train_flops"] / (r["n_params"] * r["num_train"]) for r in done]))
    result = scalelab.next(out, k * 4000 * 4000, n_resamples=200, append=True)
    law = result.tuning.laws["lr"]
    assert law.laws["N"].p_interval[0] <= -0.5 <= law.laws["N"].p_interval[1]
    assert result.tuning.mode == "bracket" and "lr: " in result.tuning.notes[0]
    assert "each run gets the predicted value and one grid step either side" in \
        result.tuning.notes[0]
    for p in result.proposals:
        predicted = p.hyper["lr"]
        assert predicted["value"] == pytest.approx(p.n ** -0.5, rel=0.15)
        assert p.grid["lr"] == predicted["proposed"] and len(p.grid["lr"]) == 3
        assert p.grid["lr"][1] == pytest.approx(predicted["value"], rel=5e-3)  # 3 digits
        assert p.grid["lr"][2] / p.grid["lr"][1] == pytest.approx(2.0, rel=0.01)
        assert len(p.run_ids) == 3 * result.seeds
    with Store.open(out) as store:
        stored = store.predictions()
    assert stored[0]["hyper"]["lr"]["law"] == "N" and stored[0]["hyper"]["lr"]["proposed"]
    json.dumps(result.to_dict())
    assert scalelab.run(path, out=out, workers=1, device="cpu").ok
    with Store.open(out) as store:
        graded = grade(store.predictions(), store.records(), store.study_meta())
    for g in graded:
        setting = g["hyper"]["lr"]
        assert g["status"] == "measured" and setting["tuned"] and not setting["found_at_edge"]
        assert setting["found"] == pytest.approx(g["n"] ** -0.5, rel=0.05)
        assert setting["value"] == pytest.approx(g["n"] ** -0.5, rel=0.05)
    # calibrated 95% intervals miss now and then: most, not all, must hold
    assert sum(g["hyper"]["lr"]["held"] for g in graded) >= len(graded) - 1
    # the predicted value alone, when asked: one lr per run, recorded not graded
    from scalelab.proposal import propose

    alone = propose(out, k * 4000 * 4000, n_resamples=100, extra=0, hyper="predicted")
    (first,) = alone.proposals
    assert first.grid["lr"] == [first.hyper["lr"]["proposed"][0]] and len(first.run_ids) == 2
    whole = propose(out, k * 4000 * 4000, n_resamples=100, extra=0, hyper="grid")
    assert len(whole.proposals[0].grid["lr"]) > 3 and not whole.tuning.laws
