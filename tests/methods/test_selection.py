"""Sample selection: the controller, real savings, unbiased reweighting, fair baselines."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import scalelab
from scalelab.errors import StudyError
from scalelab.methods.selection.rules import (
    InfoBatch,
    InfoBatchPerBatch,
    PIController,
    Random,
    SelectiveBackpropPerBatch,
)
from scalelab.plugin import instantiate
from scalelab.registry import methods
from scalelab.spec import load_study, validate_study
from scalelab.store import Store
from scalelab.train import COMPLETED, train_run

from ..conftest import TINY


def controller(target=0.2, **kw):
    settings = dict(kp=2.0, ki=0.2, ema=0.9, theta_init=1.0, theta_min=0.0, theta_max=10.0,
                    integral_limit=50.0) | kw
    return PIController(target, **settings)


@pytest.mark.parametrize("target", [0.1, 0.2, 0.4])
def test_controller_converges_to_the_target_on_a_drifting_score_stream(target):
    rng = np.random.default_rng(0)
    pi, rates = controller(target), []
    for t in range(2000):
        scores = rng.gamma(1 + 2 * t / 2000, 1.0, 100)  # the distribution drifts
        scores /= scores.mean()
        rates.append(float((scores > pi.theta).mean()))
        pi.update(rates[-1])
    assert abs(np.mean(rates[1000:]) - target) < 0.005
    metrics = pi.metrics(rates)
    assert metrics["settling_step"] is not None and metrics["settling_step"] < 1000
    assert abs(metrics["steady_state_error"]) < 0.005


def test_controller_does_not_wind_up_at_a_bound():
    pi = controller(0.2)
    for _ in range(500):  # nothing can pass: the threshold drops to its floor and stays there
        pi.update(0.0)
    assert pi.theta == 0.0
    assert abs(pi.integral) < 10  # stopped integrating once saturated, far from the 50 clamp
    rng = np.random.default_rng(1)
    rates = []
    for _ in range(300):  # scores come back: it recovers quickly instead of unwinding
        scores = rng.exponential(1.0, 100)
        rates.append(float((scores > pi.theta).mean()))
        pi.update(rates[-1])
    assert abs(np.mean(rates[150:]) - 0.2) < 0.02


def test_selected_subset_gradient_equals_masked_full_batch_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    method = instantiate(methods, {"name": "random", "target_rate": 0.3})
    method.begin(20, 10, 20, seed=0)
    out = method.step_loss(model, x, y, torch.arange(20), step=1)
    out.loss.backward()
    subset = [p.grad.clone() for p in model.parameters()]
    assert out.trained == 6 and out.scored == 0
    method.begin(20, 10, 20, seed=0)  # same generator: the same rows
    keep, _, _ = method.choose(model, x, y, torch.arange(20), 1)
    mask = torch.zeros(20)
    mask[keep] = 1
    model.zero_grad()
    losses = F.cross_entropy(model(x), y, reduction="none")
    ((losses * mask).sum() / mask.sum()).backward()
    for a, p in zip(subset, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-6, atol=1e-7)


def test_per_batch_infobatch_rescaling_keeps_the_expected_loss_unbiased():
    n, batch = 200, 50
    method = InfoBatchPerBatch(InfoBatchPerBatch.Config(target_rate=0.4, max_prune=0.8, anneal=0.0))
    method.begin(n, total_steps=1000, batch=batch, seed=0)
    last = torch.rand(n)
    method.last_loss = last.clone()
    index = torch.arange(batch)
    losses = last[:batch] + 0.1  # this step's per-sample losses
    x, y = torch.zeros(batch, 1), torch.zeros(batch, dtype=torch.long)
    estimates, kept = [], []
    for _ in range(4000):
        keep, weights, trace = method.choose(None, x, y, index, step=1)
        estimates.append(float((losses[keep] * weights).sum() / batch))
        kept.append(len(keep))
    assert trace["prune_ratio"] > 0.5 and np.mean(kept) < batch  # it really prunes
    assert np.mean(estimates) == pytest.approx(float(losses.mean()), rel=2e-3)


def test_per_batch_infobatch_trains_everything_in_the_final_anneal_fraction():
    method = InfoBatchPerBatch(InfoBatchPerBatch.Config(target_rate=0.2, anneal=0.25))
    method.begin(100, total_steps=100, batch=10, seed=0)
    method.last_loss = torch.rand(100)
    keep, weights, _ = method.choose(None, torch.zeros(10, 1), torch.zeros(10, dtype=torch.long),
                                     torch.arange(10), step=80)
    assert len(keep) == 10 and weights is None


# A 40 -> 8 -> 10 MLP: forward 2*(40*8 + 8*10) = 800 FLOPs per sample; training adds the
# backward: weight gradients of both layers (2*320 + 2*80) and the input gradient of the
# second layer only (2*80; the first layer's input needs none): 1,760 per sample.
FWD, TRAIN = 800, 1760


def selection_config(method, steps=20, batch=50):
    spec = {**TINY, "model": {"name": "mlp", "depth": 1, "width": 8}, "grid": {},
            "method": method,
            "train": {**TINY["train"], "batch_size": batch, "max_steps": steps, "eval_every": 10}}
    return validate_study(spec).runs[0].config


@pytest.mark.parametrize(("method", "scored", "trained"), [
    ({"name": "random", "target_rate": 0.2}, 0, 10),
    ({"name": "topk_loss", "target_rate": 0.2}, 50, 10),
])
def test_flops_accounting_matches_a_hand_count(method, scored, trained):
    result = train_run(selection_config(method))
    m = result.metrics
    assert result.status == COMPLETED, result.error
    assert m["flops_per_step"] == 50 * TRAIN
    assert m["scoring_flops"] == 20 * scored * FWD
    assert m["selected_train_flops"] == 20 * trained * TRAIN
    assert m["train_flops"] == m["scoring_flops"] + m["selected_train_flops"]
    assert m["flops_saving"] == pytest.approx(1 - m["train_flops"] / (20 * 50 * TRAIN))
    assert m["nominal_saving"] == pytest.approx(0.8)


def test_compute_matched_full_run_takes_the_matched_share_of_steps():
    result = train_run(selection_config({"name": "full", "match_rate": 0.2,
                                         "match_scoring": True}, steps=100))
    assert result.metrics["steps"] == round(100 * (0.2 + FWD / TRAIN))
    lrs = [v for _, name, v in result.curves if name == "lr"]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # the cosine schedule ends at its own end


def test_ast_holds_its_target_rate_in_a_real_run():
    result = train_run(selection_config({"name": "ast", "target_rate": 0.2}, steps=300))
    m = result.metrics
    assert abs(m["activation_rate_2nd_half"] - 0.2) < 0.02
    assert {"theta", "ema_rate", "error", "batch_rate"} <= {n for _, n, _ in result.curves}
    assert m["settling_step"] is not None and m["overshoot"] >= 0


def test_selection_methods_are_not_stacked_and_matched_baselines_are_not_either():
    from scalelab.train.stacking import group_key

    assert group_key(selection_config({"name": "ast"})) is None
    assert group_key(selection_config({"name": "full", "match_rate": 0.2,
                                       "match_scoring": True})) is None
    assert group_key(selection_config({"name": "full"})) is not None


def test_full_needs_a_rate_to_match_a_scoring_method():
    with pytest.raises(ValueError, match="match_scoring needs match_rate"):
        methods.get("full").Config(match_scoring=True)


# ------------------------------------------------------------------ studies and reports

SELECTION = {
    **TINY, "name": "sel", "grid": [
        {"method.name": ["ast", "random"], "method.target_rate": [0.2, 0.4]},
        {"method.name": ["ast"], "method.target_rate": [0.2], "method.scoring": ["loss"]},
    ],
    "method": "ast", "baselines": ["full", "matched_full", "random"], "seeds": [0, 1, 2],
    "train": {**TINY["train"], "max_steps": 30},
}


def test_baselines_expand_once_per_selection_cell():
    study = validate_study(SELECTION, "sel.yaml")
    points = [r.point for r in study.runs]
    assert len({r.run_id for r in study.runs}) == len(study.runs)
    cells = {(p["method"], p["target_rate"], p["scoring"], p["matched_to"]) for p in points
             if p["method"] != "full"}
    assert cells == {("ast", 0.2, None, None), ("ast", 0.4, None, None), ("random", 0.2, None, None),
                     ("random", 0.4, None, None), ("ast", 0.2, "loss", None)}
    matched = {(p["target_rate"], p["matched_to"]) for p in points if p["method"] == "full"}
    assert matched == {(None, None), (0.2, "scoring"), (0.4, "scoring"), (0.2, "non-scoring"),
                       (0.4, "non-scoring")}
    assert len(study.runs) == 3 * (5 + 5)  # 5 cells and 5 baselines, 3 seeds each


def test_methods_with_the_same_matched_budget_share_one_compute_matched_run():
    both = {**SELECTION, "grid": [{"method.name": ["ast", "topk_loss", "random"],
                                   "method.target_rate": [0.2]}]}
    study = validate_study(both, "sel.yaml")
    matched = [r for r in study.runs if r.config["method"].get("match_rate") is not None]
    # ast and topk_loss both score: one run per seed; random does not: another
    assert len(matched) == 2 * 3
    assert {r.point["matched_to"] for r in matched} == {"scoring", "non-scoring"}


def test_a_bad_axis_in_a_list_of_grids_names_its_grid(tmp_path):
    bad = {**SELECTION, "grid": [SELECTION["grid"][0], {"method.scoring": ["loss", "magic"]}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(StudyError, match=r"s.yaml: grid\[1\].method.scoring\[1\]: Input should be 'loss'"):
        load_study(path)


@pytest.mark.slow
def test_selection_study_report_compares_each_cell_with_its_baselines(tmp_path):
    path = tmp_path / "sel.yaml"
    path.write_text(yaml.safe_dump(SELECTION))
    result = scalelab.run(path, out=tmp_path / "out", device="cpu")
    assert result.ok and sum(result.trained.values()) == 30
    report = scalelab.api.report(tmp_path / "out", n_resamples=50)
    text = report.markdown.read_text()
    assert "## Sample selection" in text and "Δ vs full, compute-matched [CI]" in text
    cell = next(c for c in report.analysis.selection.cells
                if (c.method, c.rate, c.scoring) == ("ast", 0.4, "loss+intensity"))
    assert set(cell.comparisons) == {"equal_compute", "equal_steps", "random"}
    assert cell.comparisons["equal_compute"].n_candidate == 3
    assert 0 < cell.compute_fraction < 1 and len(cell.class_diffs) == 10
    assert (tmp_path / "out" / "figures" / "selection_pareto.png").exists()
    assert "ast@0.4" in (tmp_path / "out" / "comparison_table.txt").read_text()
    # the traces AST declares are drawn; random declares none
    figures = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    assert "selection_traces_ast.png" in figures
    assert not any("traces_random" in name for name in figures)
    declared = json.loads(Store.open(tmp_path / "out").meta()["methods"])
    assert declared["ast"]["traces"]["theta"] == ["threshold θ", None]
    assert {name: d["role"] for name, d in declared.items()} == \
        {"ast": None, "full": "full", "random": "random"}


def test_random_selection_is_reproducible():
    a = Random(Random.Config(target_rate=0.25))
    b = Random(Random.Config(target_rate=0.25))
    a.begin(100, 10, 20, seed=3)
    b.begin(100, 10, 20, seed=3)
    x, y = torch.zeros(20, 1), torch.zeros(20, dtype=torch.long)
    assert torch.equal(a.choose(None, x, y, None, 1)[0], b.choose(None, x, y, None, 1)[0])


def test_selective_backprop_selects_by_loss_percentile_to_the_power_beta():
    method = SelectiveBackpropPerBatch(SelectiveBackpropPerBatch.Config(target_rate=0.25))  # beta 3
    method.begin(n_train=10_000, total_steps=100, batch=100, seed=0)
    assert method.beta == pytest.approx(3.0)

    class Model(nn.Module):  # the loss of a sample rises with its x: logits (x, 0) for label 1
        def forward(self, x):
            return torch.stack([x[:, 0], torch.zeros(len(x))], 1)

    model = Model()

    generator = torch.Generator().manual_seed(1)
    chosen, offered = torch.zeros(10), torch.zeros(10)
    rates = []
    for step in range(200):
        x = torch.rand(100, 1, generator=generator)
        keep, weights, trace = method.choose(model, x, torch.ones(100, dtype=torch.long),
                                             torch.arange(100), step)
        assert weights is None and 0 <= trace["mean_chance"] <= 1
        rates.append(len(keep) / 100)
        if step >= 20:  # once the history is full, the percentile of x is about x itself
            bins = (x[:, 0] * 10).long().clamp(max=9)
            offered += torch.bincount(bins, minlength=10)
            chosen += torch.bincount(bins[keep], minlength=10)
    assert np.mean(rates[20:]) == pytest.approx(0.25, abs=0.02)  # 1 / (beta + 1)
    centres = (torch.arange(10) + 0.5) / 10
    expected = ((centres + 0.05) ** 4 - (centres - 0.05) ** 4) / (4 * 0.1)  # mean of F^3 per bin
    assert torch.allclose(chosen / offered, expected, atol=0.04)


# ------------------------------------------------------ InfoBatch as published (per epoch)


def test_per_epoch_infobatch_keeps_the_epoch_loss_unbiased():
    method = InfoBatch(InfoBatch.Config(prune_ratio=0.5, anneal=0.0))
    method.begin(n_train=200, total_steps=200, batch=10, seed=0)  # 10 nominal epochs
    losses = torch.rand(200, generator=torch.Generator().manual_seed(0)) * 2
    method.score = losses.clone()
    totals = []
    for epoch in range(1, 400):
        order = method.epoch_order(torch.randperm(200), epoch % 5 + 1)
        assert len(set(order.tolist())) == len(order) < 200
        totals.append(float((losses[order] * method.weight[order]).sum()))
    assert np.mean(totals) == pytest.approx(float(losses.sum()), rel=0.01)
    low = losses < losses.mean()
    assert set(method.weight[low].unique().tolist()) <= {1.0, 2.0}
    assert set(method.weight[~low].unique().tolist()) == {1.0}


def test_per_epoch_infobatch_takes_fewer_steps_over_the_same_epochs():
    spec = {**TINY, "model": {"name": "mlp", "depth": 1, "width": 8}, "grid": {},
            "method": {"name": "infobatch", "prune_ratio": 0.5, "anneal": 0.25},
            "train": {**{k: v for k, v in TINY["train"].items() if k != "max_steps"},
                      "batch_size": 20, "epochs": 8, "eval_every": 5, "schedule": "cosine"}}
    result = train_run(validate_study(spec).runs[0].config)
    assert result.status == COMPLETED, result.error
    m = result.metrics
    nominal = 8 * (200 // 20)
    assert m["nominal_steps"] == nominal and m["steps"] < nominal
    assert 0.5 < m["epoch_keep_rate"] < 1.0
    lrs = [v for _, name, v in result.curves if name == "lr"]
    assert lrs[-1] < 0.05 * max(lrs)  # the schedule follows epochs: it ends near zero
    assert m["train_flops"] == m["flops_per_step"] * m["steps"]


def test_per_epoch_infobatch_needs_an_epoch_budget():
    spec = {**TINY, "model": {"name": "mlp", "depth": 1, "width": 8}, "grid": {},
            "method": "infobatch"}
    with pytest.raises(StudyError, match="budget is a number of epochs: set train.epochs"):
        validate_study(spec, "ib.yaml")


def test_curriculum_slides_from_the_easiest_rows_to_the_hardest():
    from scalelab.methods.selection.rules import Curriculum

    method = Curriculum(Curriculum.Config(target_rate=0.25))
    method.begin(n_train=40, total_steps=100, batch=2, seed=0)  # 5 epochs of 20 steps
    assert method.epochs == 5
    first = method.epoch_order(torch.randperm(40), 0)
    assert len(first) == 10
    method.score = torch.arange(40, dtype=torch.float32).flip(0)  # row 39 is the easiest
    easiest = method.epoch_order(torch.randperm(40), 1)
    hardest = method.epoch_order(torch.randperm(40), 4)
    assert sorted(easiest.tolist()) == list(range(30, 40))
    assert sorted(hardest.tolist()) == list(range(0, 10))
    middle = method.epoch_order(torch.randperm(40), 2)
    assert sorted(middle.tolist()) == list(range(20, 30))
