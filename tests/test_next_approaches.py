"""`scalelab next` takes N* and D* from the approach the study's agreement verdict recommends
(and says which), falls back to the joint law's optimum when there are no answers (and says
so), and proposes each run's lr from its hyperparameter law (`--hyper`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import scalelab
from scalelab import proposal
from scalelab.registry import models
from scalelab.store import Store

from .analysis.test_hyperlaws import STUDY, TunedLawFamily

# Four widths x two data sizes x four lrs, one seed; the joint law on the samples seen.
SMALL = (STUDY.replace("[2, 4, 8, 16, 32]", "[2, 4, 8, 16]")
         .replace("[0.0125, 0.025, 0.05, 0.1, 0.2]", "[0.025, 0.05, 0.1, 0.2]")
         .replace("seeds: 2", "seeds: 1")
         .replace("forms: [power_offset]}", "forms: [power_offset], data: samples_seen}"))


@pytest.fixture(scope="module")
def tuned_study(tmp_path_factory):
    """The study trained (32 runs of a model that trains to a known law: about 20 s)."""
    mp = pytest.MonkeyPatch()
    mp.setitem(models._entries, "_tuned_law", TunedLawFamily)
    folder = tmp_path_factory.mktemp("tuned")
    path, out = folder / "tuned.yaml", folder / "out"
    path.write_text(SMALL)
    assert scalelab.run(path, out=out, workers=1, device="cpu").ok
    done = [r for r in scalelab.api.records(out) if r["status"] == "completed"]
    k = float(np.median([r["train_flops"] / (r["n_params"] * r["samples_seen"]) for r in done]))
    yield out, k * 4000 * 4000
    mp.undo()


@pytest.mark.slow
def test_next_names_the_recommended_approach_and_the_predicted_lr(tuned_study, run_cli,
                                                                  monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # the proposals' headers on one line each, unwrapped
    out, budget = tuned_study
    result = run_cli("next", out, "--budget", budget, "--bootstrap", "100", "--format", "json")
    assert result.exit_code == 0, result.output
    proposed = json.loads(result.stdout)
    recommended = proposed["agreement"]["recommended"]
    assert recommended.startswith("Approach ") and proposed["approach"] == recommended
    assert proposed["approach_why"] == proposed["agreement"]["why"]
    first = proposed["proposals"][0]
    assert first["flops"] == pytest.approx(budget, rel=0.02)
    assert len(first["grid"]["lr"]) == 3  # the predicted lr and one grid step either side
    text = run_cli("next", out, "--budget", budget, "--bootstrap", "100")
    assert f"N_opt and D_opt from {recommended}: " in text.stderr
    assert "tuning: lr: " in text.stderr
    assert "predicted lr" in text.stdout and "lr proposed" in text.stdout
    predicted = run_cli("next", out, "--budget", budget, "--bootstrap", "100", "--hyper",
                        "predicted", "--format", "json")
    assert len(json.loads(predicted.stdout)["proposals"][0]["grid"]["lr"]) == 1
    bad = run_cli("next", out, "--budget", budget, "--hyper", "guess")
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    with Store.open(out) as store:
        assert store.predictions()[0]["optimum_from"] == recommended


@pytest.mark.slow
def test_without_answers_next_uses_the_joint_law_and_says_so(tuned_study, monkeypatch,
                                                             run_cli):
    out, budget = tuned_study
    monkeypatch.setattr(proposal, "study_answers",
                        lambda *args: "Compute-optimal approaches are left out: a test.")
    result = scalelab.next(out, budget, n_resamples=100)
    assert result.approach == proposal.JOINT_LAW and result.agreement is None
    assert result.approach_why == "as before the approaches: Compute-optimal approaches are " \
                                  "left out: a test"
    text = run_cli("next", out, "--budget", budget, "--bootstrap", "100")
    assert f"N_opt and D_opt from {proposal.JOINT_LAW}: as before the approaches" in text.stderr
