"""`scalelab next`: from a known law to the next runs, the extrapolation ledger, `--append`.

A test model family, ``_law``, trains to exactly the test loss of a known Chinchilla law
L(N, D) = E + A/N^α + B/D^β (times a 0.3% scatter of its own per run): its N parameters are a
(width × 40) matrix whose matmul the FLOP counter counts, and its constant logits are set,
once it sees the data, so that the test set's cross-entropy is L. Every other part (runner,
store, fit, bootstrap, proposal, ledger, report) is the real one.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from scipy import optimize
from torch import nn

import scalelab
from scalelab.models import ModelFamily
from scalelab.plugin import PluginConfig
from scalelab.registry import models
from scalelab.store import Store

E, A, B, ALPHA, BETA, SCATTER = 2.4, 12.0, 12.0, 0.5, 0.5, 0.003


def law(n, d):
    return E + A / n ** ALPHA + B / d ** BETA


class LawModule(nn.Module):
    def __init__(self, width: int, features: int, classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, features) / features ** 0.5)
        self.register_buffer("logits", torch.zeros(classes))

    def forward(self, x):
        h = x.flatten(1) @ self.weight.T  # counted compute: 2·N FLOPs per example
        return self.logits.expand(len(x), -1) + 0 * h.sum(1, keepdim=True)


class LawFamily(ModelFamily):
    """Trains to the test loss of a known law (see the module docstring)."""

    width_setting = None

    class Config(PluginConfig):
        width: int = 8

    def build(self, input_shape, num_classes):
        return LawModule(self.config.width, math.prod(input_shape), num_classes)

    def initialize(self, model, data):
        n, d = model.weight.numel(), len(data.y_train)
        run = torch.Generator().manual_seed(torch.initial_seed() * 10**8 + n * 10**4 + d)
        target = law(n, d) * math.exp(SCATTER * float(torch.randn((), generator=run)))
        share = torch.bincount(data.y_test, minlength=data.num_classes).double() / len(data.y_test)
        c = data.num_classes

        def excess(s):  # cross-entropy of logits (s, 0, ..., 0) on the test labels, minus target
            return math.log(math.exp(s) + c - 1) - float(share[0]) * s - target

        model.logits[0] = optimize.brentq(excess, 0.0, 100.0)


@pytest.fixture
def law_family(monkeypatch):
    monkeypatch.setitem(models._entries, "_law", LawFamily)


STUDY = """\
# A synthetic Chinchilla study: the test model trains to a known law.
name: law_study
task: {name: mnist1d, num_val: 200, num_test: 500, pool_size: 6000}
model: {name: _law}
train: {optimizer: sgd, lr: 0.1, batch_size: 50, epochs: 1, eval_every: 1000}

grid:                       # six sizes x four data sizes
  width: [2, 4, 8, 16, 32, 64]  # N = 40 x width
  num_train: [250, 500, 1000, 2000]
seeds: 3
analysis: {forms: [power_offset]}
"""


def analytic_optimum(budget: float, k: float) -> tuple[float, float]:
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    n = g * (budget / k) ** (BETA / (ALPHA + BETA))
    return n, budget / k / n


@pytest.fixture
def law_study(tmp_path, law_family):
    path = tmp_path / "law.yaml"
    path.write_text(STUDY)
    out = tmp_path / "out"
    assert scalelab.run(path, out=out, workers=1, device="cpu").ok
    return path, out


@pytest.mark.slow
def test_next_proposes_the_analytic_optimum_and_the_ledger_grades_it(law_study, run_cli):
    path, out = law_study
    k = _k(out)
    budget = k * 4000 * 4000  # optimum at N = D = 4000 (G = 1): past the largest N and D
    n_opt, d_opt = analytic_optimum(budget, k)
    result = scalelab.next(out, budget, n_resamples=200)
    assert result.fit.fit.verdict[0] != "not a law"
    assert result.n_opt == pytest.approx(n_opt, rel=0.1)
    assert result.n_opt_ci[0] <= n_opt <= result.n_opt_ci[1]
    assert result.d_opt_ci[0] <= d_opt <= result.d_opt_ci[1]
    first, *more = result.proposals
    assert first.kind == "compute-optimal" and first.point["width"] % 2 == 0
    assert first.n == 40 * first.point["width"]
    assert first.n == pytest.approx(n_opt, rel=0.1) and first.d == pytest.approx(d_opt, rel=0.1)
    assert first.flops == pytest.approx(budget, rel=0.02)
    assert first.interval[0] < law(first.n, first.d) < first.interval[1]
    assert 1 <= len(more) <= 2 and all(p.flops <= budget * 1.001 for p in more)
    assert all(0 < p.shrinks <= 1 for p in result.proposals)
    with Store.open(out) as store:
        ledger = store.predictions()
    assert [p["run_ids"] for p in ledger] == [p.run_ids for p in result.proposals]
    assert ledger[0]["fitted_on"]["y"] and ledger[0]["law"]["form"] == "chinchilla"
    # --append, run, and the report grades every prediction against its runs
    before = path.read_text()
    appended = run_cli("next", out, "--budget", budget, "--append", "--bootstrap", "200")
    assert appended.exit_code == 0, appended.output
    text = path.read_text()
    assert text.startswith(before.split("grid:")[0])  # comments and order kept
    assert "# six sizes x four data sizes" in text and "# N = 40 x width" in text
    spec = yaml.safe_load(text)
    assert isinstance(spec["grid"], list) and len(spec["grid"]) == 1 + len(result.proposals)
    assert spec["grid"][1] == {"width": [first.point["width"]], "num_train": [int(first.d)]}
    again = run_cli("next", out, "--budget", budget, "--append", "--bootstrap", "200")
    assert "already holds these grid entries" in again.stderr and path.read_text() == text
    rerun = scalelab.run(path, out=out, workers=1, device="cpu")
    assert rerun.ok and sum(rerun.trained.values()) == 3 * len(result.proposals)
    report = run_cli("report", out, "--bootstrap", "50")
    assert report.exit_code == 0, report.output
    graded = json.loads((out / "scaling_law.json").read_text())["ledger"]
    assert len(graded) == 3 * len(result.proposals)  # three next calls, all kept
    assert all(g["status"] == "measured" and g["held"] for g in graded)
    assert "Extrapolation ledger" in (out / "report.md").read_text()
    assert f"{len(graded)} of {len(graded)} measured prediction(s) fell inside their 95% " \
           "interval" in (out / "report.md").read_text()
    # the ledger survives the study being run again
    scalelab.run(path, out=out, workers=1, device="cpu")
    with Store.open(out) as store:
        assert len(store.predictions()) == len(graded)


def _k(out) -> float:
    rows = [r for r in scalelab.api.records(out) if r["status"] == "completed"]
    return float(np.median([r["train_flops"] / (r["n_params"] * r["num_train"]) for r in rows]))


def _no_bootstrap(monkeypatch):
    """A refusal is decided on the joint law's first look: drawing a bootstrap fails."""
    from scalelab.analysis import study_analysis

    def bootstrap(*args, **kwargs):
        raise AssertionError("next drew bootstrap resamples before refusing")

    monkeypatch.setattr(study_analysis, "bootstrap", bootstrap)


def test_next_refuses_a_fit_that_is_not_a_law(tmp_path, law_family, monkeypatch, run_cli):
    path = tmp_path / "flat.yaml"
    path.write_text(STUDY)
    # the loss rises with N: no power law in N
    monkeypatch.setitem(globals(), "law", lambda n, d: E + 0.02 * n ** 0.3 + B / d ** BETA)
    assert scalelab.run(path, out=tmp_path / "out", workers=1, device="cpu").ok
    _no_bootstrap(monkeypatch)
    refused = run_cli("next", tmp_path / "out", "--budget", "1e9")
    assert refused.exit_code == 2
    assert "refusing to extrapolate" in refused.stderr and "not a law" in refused.stderr
    with Store.open(tmp_path / "out") as store:
        assert store.predictions() == []


def test_next_refuses_runs_whose_compute_is_not_knd_before_any_bootstrap(
        tmp_path, law_family, monkeypatch, run_cli):
    """The quickstart's refusal: runs trained for max_steps, whose counted FLOPs follow steps
    x batch, not N x D (it took a minute of bootstrapping to say so before issue 24)."""
    path = tmp_path / "steps.yaml"
    path.write_text(STUDY.replace("epochs: 1", "max_steps: 4").replace("seeds: 3", "seeds: 1")
                    .replace("[2, 4, 8, 16, 32, 64]", "[2, 4, 8, 16]"))
    assert scalelab.run(path, out=tmp_path / "out", workers=1, device="cpu").ok
    _no_bootstrap(monkeypatch)
    refused = run_cli("next", tmp_path / "out", "--budget", "1e9")
    assert refused.exit_code == 2, refused.output
    assert "no compute-optimal allocation" in refused.stderr
    assert "train each for a fixed number of passes" in refused.stderr


def test_next_without_a_data_axis_says_what_it_needs(tmp_path, tiny_study, run_cli):
    out = tmp_path / "out"
    assert scalelab.run(tiny_study(tmp_path, grid={"width": [4, 8, 16]}), out=out,
                        workers=1, device="cpu").ok
    refused = run_cli("next", out, "--budget", "1e9")
    assert refused.exit_code == 2 and "no joint law of model size and data" in refused.stderr
    bad = run_cli("next", out, "--budget", "-1")
    assert bad.exit_code == 2 and "--budget: expected a positive number of FLOPs" in bad.stderr


def test_append_keeps_a_list_grid_and_its_comments_and_never_writes_a_bad_study(tmp_path):
    from scalelab.errors import StudyError
    from scalelab.proposal import append_to_study

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s  # the name\n"
        "task: {name: mnist1d, num_train: 200, num_val: 100, num_test: 200, pool_size: 400}\n"
        "model: {name: mlp, depth: 1}\n"
        "train: {optimizer: adam, lr: 0.01, batch_size: 50, max_steps: 20, eval_every: 10}\n"
        "grid:\n"
        "  - {width: [4, 8]}   # first grid\n"
        "  # a comment between grids\n"
        "  - {width: [16], num_train: [100]}\n"
        "seeds: [0]\n")
    assert append_to_study(path, [{"width": [32], "num_train": [150]}]) == 1
    text = path.read_text()
    assert "# the name" in text and "# first grid" in text and "# a comment between grids" in text
    grids = yaml.safe_load(text)["grid"]
    assert grids[-1] == {"width": [32], "num_train": [150]} and len(grids) == 3
    before = path.read_text()
    with pytest.raises(StudyError, match="exceeds pool_size"):
        append_to_study(path, [{"width": [64], "num_train": [390]}])
    assert path.read_text() == before
