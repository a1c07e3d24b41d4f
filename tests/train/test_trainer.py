import math

import pytest
import torch
from torch import nn

from scalelab.spec import TrainConfig, validate_study
from scalelab.train import COMPLETED, DIVERGED, FAILED, load_checkpoint, train_run
from scalelab.train.optim import lr_factor, make_optimizer, set_lr

from ..conftest import TINY


def config(**train):
    study = validate_study({**TINY, "grid": {}, "model": {**TINY["model"], "width": 4},
                            "train": {**TINY["train"], **train}}, "t.yaml")
    return study.runs[0].config


def test_same_config_and_seed_is_bitwise_identical():
    a, b = train_run(config()), train_run(config())
    assert a.status == b.status == COMPLETED
    assert a.curves == b.curves
    for key in ("test_loss", "val_loss", "train_loss", "test_acc"):
        assert a.metrics[key] == b.metrics[key]
    c = train_run({**config(), "seed": 7})
    assert c.metrics["test_loss"] != a.metrics["test_loss"]


def test_recorded_fields_and_provenance():
    result = train_run(config())
    m = result.metrics
    for split in ("train", "val", "test"):
        for kind in ("loss", "acc"):
            assert math.isfinite(m[f"{split}_{kind}"]) and math.isfinite(m[f"final_{split}_{kind}"])
    assert m["steps"] == 40 and m["samples_seen"] == 40 * 50 and m["epochs_seen"] == 10
    assert m["n_params"] == 40 * 4 + 4 + 4 * 10 + 10
    assert m["train_flops"] == m["flops_per_step"] * 40
    assert m["wall_time"] > 0
    assert result.provenance["torch_version"] == torch.__version__
    assert result.provenance["device"] == "cpu"
    # what the last digits depend on: the kernels torch dispatches to, and the CPU
    assert result.provenance["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert result.provenance["cpu"]
    names = {name for _, name, _ in result.curves}
    assert names == {"train_loss", "val_loss", "val_acc", "lr"}
    assert [s for s, n, _ in result.curves if n == "val_loss"] == [10, 20, 30, 40]


def test_flops_match_a_hand_count_for_an_mlp():
    cfg = config()
    cfg["model"]["width"] = 8
    m = train_run(cfg).metrics
    batch, hidden, head = 50, 40 * 8, 8 * 10
    forward = 2 * batch * (hidden + head)
    backward = 2 * batch * (hidden + head) + 2 * batch * head  # weight grads + one input grad
    assert m["flops_per_step"] == forward + backward


def test_absurd_learning_rate_diverges_with_its_step():
    result = train_run(config(lr=1e12, optimizer="sgd", momentum=0.0))
    assert result.status == DIVERGED
    assert 1 <= result.metrics["diverged_step"] <= 40
    assert "test_loss" not in result.metrics


def test_early_stopping_restores_the_best_weights():
    result = train_run(config(lr=0.05, max_steps=400, eval_every=5,
                              early_stopping={"patience": 3}, schedule="constant"))
    m = result.metrics
    val_curve = {s: v for s, n, v in result.curves if n == "val_loss"}
    assert m["stopped_early"] and m["steps"] < 400
    assert m["best_step"] == min(val_curve, key=val_curve.get)
    assert m["val_loss"] == pytest.approx(min(val_curve.values()), rel=1e-6)
    assert m["final_val_loss"] == pytest.approx(val_curve[m["steps"]], rel=1e-6)


def test_epoch_budget_and_batch_capped_at_dataset():
    result = train_run(config(max_steps=None, epochs=2, batch_size=1000))
    assert result.metrics["batch_size"] == 200 and result.metrics["steps"] == 2


def test_schedules():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, schedule="cosine", final_lr_ratio=0.1)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(99, 100, cfg) == pytest.approx(0.1)
    linear = cfg.model_copy(update={"schedule": "linear", "final_lr_ratio": 0.0})
    assert lr_factor(10 + 89 // 2, 100, linear) == pytest.approx(1 - 44 / 89)
    assert lr_factor(50, 100, cfg.model_copy(update={"schedule": "constant"})) == 1.0


def test_optimizers():
    model = nn.Linear(3, 2)
    sgd = make_optimizer(model, TrainConfig(max_steps=1, optimizer="sgd", nesterov=True))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    adamw = make_optimizer(model, TrainConfig(max_steps=1, optimizer="adamw", weight_decay=0.1))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.1
    assert [g["base_lr"] for g in adamw.param_groups] == [1e-3]


def test_muon_takes_hidden_matrices_and_adamw_the_rest():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 10))
    optimizer = make_optimizer(model, TrainConfig(max_steps=1, optimizer="muon", lr=1e-3,
                                                  muon_lr=0.05))
    adamw, muon = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert [p for g in muon.param_groups for p in g["params"]] == [model[1].weight]
    adamw_params = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert adamw_params == {id(model[0].weight), id(model[1].bias), id(model[3].weight),
                            id(model[3].bias)}
    assert [g["base_lr"] for g in optimizer.param_groups] == [1e-3, 0.05]
    set_lr(optimizer, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [5e-4, 0.025]
    before = model[1].weight.detach().clone()
    model[3](model[1](model[0](torch.tensor([1, 2])))).sum().backward()
    optimizer.step()
    assert not torch.equal(before, model[1].weight)


def test_a_raising_run_is_failed_with_its_traceback(exploding_model):
    cfg = {**config(), "model": {"name": "_explodes"}}
    result = train_run(cfg)
    assert result.status == FAILED
    assert "RuntimeError: boom at build" in result.error and "Traceback" in result.error


def test_checkpoint_round_trip(tmp_path):
    cfg = config()
    result = train_run(cfg, checkpoint=True)
    (tmp_path / "run.pt").write_bytes(result.checkpoint)
    model = load_checkpoint(cfg, tmp_path / "run.pt")
    from scalelab.plugin import instantiate
    from scalelab.registry import tasks
    from scalelab.train.scoring import evaluate

    data = instantiate(tasks, cfg["task"]).load()
    loss, acc = evaluate(model, data.x_test, data.y_test, 4096)
    assert loss == pytest.approx(result.metrics["test_loss"], rel=1e-6)
    assert acc == result.metrics["test_acc"]
