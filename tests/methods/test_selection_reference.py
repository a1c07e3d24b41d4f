"""Selection methods held to their reference implementations: selective backprop as published
(angelajiang/SelectiveBackprop), AST's reference controller (adaptive-sparse-training's
sundew.py), and scoring passes that leave BatchNorm's statistics alone."""

import math
from collections import deque

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalelab.errors import StudyError
from scalelab.plugin import instantiate
from scalelab.registry import methods, models, tasks
from scalelab.spec import validate_study
from scalelab.train import COMPLETED, train_run
from scalelab.train.single import Examples

from ..conftest import TINY

# A 40 -> 8 -> 10 MLP on MNIST-1D (200 training rows): 800 forward FLOPs per sample, 1,760
# per trained sample (see test_selection.py's hand count).
FWD, TRAIN = 800, 1760


def epochs_config(method, epochs=4, batch=20):
    spec = {**TINY, "model": {"name": "mlp", "depth": 1, "width": 8}, "grid": {},
            "method": method,
            "train": {**{k: v for k, v in TINY["train"].items() if k != "max_steps"},
                      "batch_size": batch, "epochs": epochs, "eval_every": 5}}
    return validate_study(spec).runs[0].config


def drive(config):
    """Every step of a run through the real strategy: (epochs done before it, trained rows)."""
    data = instantiate(tasks, config["task"]).load()
    strategy = Examples(config, data, torch.device("cpu"), F.cross_entropy)
    steps = []
    for step in range(1, strategy.total_steps + 1):
        batch = strategy.draw(step)
        strategy.step(batch, step)
        steps.append((batch.epoch, batch.index.tolist()))
        if batch.last:
            break
    return strategy, steps


# ------------------------------------------------------------ selective backprop as published


def test_selective_backprop_primes_on_every_row_then_steps_on_full_selected_batches():
    strategy, steps = drive(epochs_config({"name": "selective_backprop"}, epochs=4))
    per_epoch = 200 // 20
    primed = [rows for done, rows in steps if done < 1]
    assert len(primed) == per_epoch and all(len(rows) == 20 for rows in primed)
    assert sorted(r for rows in primed for r in rows) == list(range(200))  # (a) every row
    later = [(math.floor(done), rows) for done, rows in steps if done >= 1]
    for i, (epoch, rows) in enumerate(later):
        flush = i == len(later) - 1 or later[i + 1][0] != epoch  # the epoch's last step
        assert len(rows) == 20 or (flush and 0 < len(rows) < 20)  # (b) full selected batches
    assert len(steps) < 4 * per_epoch
    assert len(later) < 3 * per_epoch / 2  # beta 3: about a quarter of the rows selected
    assert strategy.scored_samples == 3 * 200  # every candidate after priming is scored once
    assert strategy.trained_samples == sum(len(rows) for _, rows in steps)


def test_selective_backprop_counts_the_flops_it_spent_and_saves_steps():
    result = train_run(epochs_config({"name": "selective_backprop"}, epochs=4))
    assert result.status == COMPLETED, result.error
    m = result.metrics
    assert m["steps"] < m["nominal_steps"] == 40
    assert m["samples_scored"] == 3 * 200
    assert m["scoring_flops"] == m["samples_scored"] * FWD  # (d)
    assert m["selected_train_flops"] == m["samples_trained"] * TRAIN
    assert m["train_flops"] == m["scoring_flops"] + m["selected_train_flops"]
    assert m["full_batch_flops"] == 40 * 20 * TRAIN  # full data over the same four epochs
    assert 0 < m["flops_saving"] == pytest.approx(1 - m["train_flops"] / (40 * 20 * TRAIN))


def test_selective_backprop_probability_is_the_reference_strict_percentile_to_beta():
    method = instantiate(methods, {"name": "selective_backprop", "history": 6})
    method.begin(n_train=100, total_steps=10, batch=10, seed=0)
    assert method.beta == 3  # the reference's prob_pow default

    history = deque(maxlen=6)  # the reference's UnboundedHistogram (lib/hist.py)

    def reference(losses):
        history.extend(losses)  # appended before the percentiles (calculators.py)
        return [max(0.0, (sum(h < v for h in history) / len(history)) ** 3) for v in losses]

    for losses in ([1.0, 2.0, 3.0, 4.0], [2.0, 5.0, 2.0], [0.5, 4.0, 4.0, 7.0]):
        got = method.chance(torch.tensor(losses))
        torch.testing.assert_close(got, torch.tensor(reference(losses)), rtol=0, atol=1e-7)
    # ties are not below: a loss equal to every other in the history has chance 0
    assert method.chance(torch.tensor([3.0] * 6)).tolist() == [0.0] * 6


def test_the_per_batch_variant_steps_once_per_candidate_batch():
    result = train_run(epochs_config({"name": "selective_backprop_per_batch",
                                      "target_rate": 0.25}, epochs=2))
    assert result.status == COMPLETED, result.error
    m = result.metrics
    assert m["steps"] == 20 and m["samples_scored"] == 20 * 20  # nothing primed
    assert m["samples_trained"] < 20 * 20
    assert m["train_flops"] == m["samples_scored"] * FWD + m["samples_trained"] * TRAIN


def test_selective_backprop_needs_an_epoch_budget():
    spec = {**TINY, "model": {"name": "mlp", "depth": 1, "width": 8}, "grid": {},
            "method": "selective_backprop"}
    with pytest.raises(StudyError, match="set train.epochs"):
        validate_study(spec, "sb.yaml")


# ------------------------------------------------------------------ AST's reference controller


def reference_ast(**settings):
    method = instantiate(methods, {"name": "ast", "controller": "reference", **settings})
    method.begin(n_train=100, total_steps=10, batch=20, seed=0)
    return method


def test_reference_controller_defaults_are_the_reference_constants():
    c = reference_ast().config
    assert (c.kp, c.ki, c.ema, c.theta_init, c.theta_min, c.theta_max, c.integral_limit,
            c.scoring) == (0.005, 0.0001, 0.9, 3.0, 0.5, 10.0, 100.0, "loss+entropy")


def test_reference_controller_reproduces_hand_computed_threshold_updates():
    controller = reference_ast(target_rate=0.4).controller
    # defaults, one batch all active: ema 0.46, error 0.06, integral 0.06,
    # theta 3 + 0.005 * 0.06 + 0.0001 * 0.06
    assert controller.update(1.0) == pytest.approx(3.000306, abs=1e-12)

    controller = reference_ast(target_rate=0.4, kp=10.0, ki=1.0, theta_init=9.5).controller
    expected = [  # (rate, ema, integral after the update, theta)
        (1.0, 0.46, 0.06, 10.0),           # 9.5 + 0.6 + 0.06 = 10.16, clamped
        (1.0, 0.514, 0.054, 10.0),         # at the bound: integral decays, 0.06 * 0.9
        (0.0, 0.4626, 0.0486, 10.0),       # still saturated: 0.054 * 0.9
        (0.0, 0.41634, 0.04374, 10.0),     # 10 + 0.1634 + 0.04374, clamped
        (0.0, 0.374706, 0.039366, 9.786426),   # 10 - 0.25294 + 0.039366
        (0.0, 0.3372354, -0.0233986, 9.1353814),  # inside again: integral += -0.0627646
    ]
    for rate, ema, integral, theta in expected:
        controller.update(rate)
        assert (controller.ema, controller.integral, controller.theta) == pytest.approx(
            (ema, integral, theta), abs=1e-9)


def test_reference_significance_is_raw_loss_and_entropy_with_the_reference_fallback():
    method = reference_ast(target_rate=0.4)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1])
    p = math.exp(2) / (math.exp(2) + 2)
    q = (1 - p) / 2
    loss = -math.log(p)
    entropy = -(p * math.log(p) + 2 * q * math.log(q))
    got = method.significance(nn.Identity(), logits, y)
    torch.testing.assert_close(got, torch.tensor([0.7 * loss + 0.3 * entropy, math.log(3)]))
    # every significance below theta = 3: exactly max(2, 10% of the batch) highest are kept
    x = torch.randn(30, 3) * 0.1
    keep, _, trace = method.choose(nn.Identity(), x, torch.zeros(30, dtype=torch.long),
                                   torch.arange(30), 1)
    top = method.significance(nn.Identity(), x, torch.zeros(30, dtype=torch.long)).topk(3)
    assert trace["fallback"] == 1.0 and keep.tolist() == sorted(top.indices.tolist())


def test_a_reference_controller_run_records_its_controller_and_pi_ids_are_unchanged():
    spec = {**TINY, "model": {"name": "mlp", "depth": 1, "width": 8}, "grid": {},
            "method": {"name": "ast", "controller": "reference", "target_rate": 0.4},
            "train": {**TINY["train"], "max_steps": 20}}
    result = train_run(validate_study(spec).runs[0].config)
    assert result.status == COMPLETED, result.error
    assert result.metrics["controller"] == "reference"
    default = validate_study({**spec, "method": {"name": "ast"}}).runs[0]
    explicit = validate_study({**spec, "method": {"name": "ast", "controller": "pi"}}).runs[0]
    assert default.run_id == explicit.run_id
    assert "controller" not in default.config["method"]  # as before the setting existed


# ------------------------------------------------------- scoring leaves BatchNorm alone


def _score_with(name, model, x, y):
    method = instantiate(methods, {"name": name})
    method.begin(n_train=64, total_steps=10, batch=len(y), seed=0)
    if name == "selective_backprop":  # its scoring runs when a candidate batch is gathered
        method.gather(model, x, y, torch.arange(len(y)), epoch=1, flush=False, last=False)
    else:
        method.choose(model, x, y, torch.arange(len(y)), 1)


@pytest.mark.parametrize("name", ["ast", "topk_loss", "selective_backprop",
                                  "selective_backprop_per_batch"])
def test_scoring_leaves_batchnorm_statistics_as_they_were(name):
    model = instantiate(models, {"name": "resnet", "depth": 18, "width": 4, "stem": "cifar"}
                        ).build((3, 32, 32), 10)
    model.train()
    before = {k: v.clone() for k, v in model.named_buffers()}
    assert any(k.endswith("num_batches_tracked") for k in before)
    x, y = torch.randn(16, 3, 32, 32) * 3 + 1, torch.randint(0, 10, (16,))
    _score_with(name, model, x, y)
    after = dict(model.named_buffers())
    assert all(torch.equal(before[k], after[k]) for k in before), name
    assert model.training  # still in training mode for the step that follows


def test_selection_tables_name_the_controller_of_each_cell():
    from scalelab.analysis.sample_selection import analyze_selection
    from scalelab.report.report import _selection_blocks

    base = {"status": "completed", "method.name": "ast", "method.target_rate": 0.2,
            "train_flops": 1.0}
    records = []
    for seed in (0, 1, 2):
        # stored before the setting existed: controller metrics, no name (the PI controller)
        records.append({**base, "seed": seed, "run_id": f"p{seed}", "overshoot": 0.1,
                        "test_acc": 0.8 + seed / 100})
        records.append({**base, "seed": seed, "run_id": f"r{seed}", "overshoot": 0.2,
                        "method.controller": "reference", "controller": "reference",
                        "test_acc": 0.7 + seed / 50})
    sel = analyze_selection(records, {"ast": None}, traces={"ast": {"rate": ("rate", None)}})
    assert sorted(c.label for c in sel.cells) == ["ast@0.2 (pi controller)",
                                                  "ast@0.2 (reference controller)"]
    # the analysis, not the report, picks the front and the runs whose traces are drawn
    assert [p["label"] for p in sel.front] == ["ast@0.2 (pi controller)"]
    (traces,) = sel.traces
    assert traces.labels == {"p0": "ast@0.2 (pi controller)",
                             "r0": "ast@0.2 (reference controller)"}
    blocks = []
    _selection_blocks(sel, [], blocks, lambda *args: None)
    table = next(b for b in blocks if b[0] == "table")
    column = table[1].index("controller")
    assert sorted(row[column] for row in table[2]) == ["pi", "reference"]
