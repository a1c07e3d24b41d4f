"""μP (maximal-update parametrization) for mlp and gpt: identical to standard at the base
width, the per-layer learning rates of the paper's table, stacked runs that train as alone,
run ids unchanged for standard studies, and the coordinate check that tells the two apart."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from scalelab.errors import StudyError
from scalelab.models import mup
from scalelab.models.mup import lr_multipliers
from scalelab.plugin import instantiate
from scalelab.registry import models
from scalelab.spec import TrainConfig, validate_study
from scalelab.train import train_group, train_run
from scalelab.train.coordcheck import coordinate_check
from scalelab.train.optim import make_optimizer
from scalelab.train.stacking import group_key

from ..conftest import TINY


def mlp(width, parametrization="mup", base_width=16, depth=2):
    torch.manual_seed(0)
    return instantiate(models, {"name": "mlp", "width": width, "depth": depth,
                                "parametrization": parametrization,
                                "base_width": base_width}).build((40,), 10)


def trained_logits(model, steps=3, optimizer="adam", weight_decay=0.0):
    x, y = torch.randn(32, 40, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 10
    opt = make_optimizer(model, TrainConfig(optimizer=optimizer, lr=0.01, max_steps=1,
                                            weight_decay=weight_decay))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model(x)


@pytest.mark.parametrize("optimizer, weight_decay", [("adam", 0.0), ("sgd", 0.0),
                                                     ("adamw", 0.1), ("sgd", 0.1)])
def test_mup_at_its_base_width_is_the_standard_parametrization(optimizer, weight_decay):
    standard = trained_logits(mlp(16, "standard"), optimizer=optimizer,
                              weight_decay=weight_decay)
    assert torch.equal(trained_logits(mlp(16, "mup"), optimizer=optimizer,
                                      weight_decay=weight_decay), standard)


def test_learning_rates_follow_the_mup_table():
    model = mlp(64)  # m = 64 / 16 = 4
    adam = lr_multipliers(model, "adam")
    sgd = lr_multipliers(model, "sgd")
    # input layer, hidden matrix, readout, readout bias (Sequential indices 1, 3, 6)
    assert (adam["1.weight"], adam["3.weight"], adam["6.weight"], adam["6.bias"]) == (1, 0.25, 1, 1)
    assert (sgd["1.weight"], sgd["3.weight"], sgd["6.weight"], sgd["6.bias"]) == (4, 1, 4, 1)
    assert adam["3.bias"] == 1 and sgd["3.bias"] == 4
    groups = make_optimizer(model, TrainConfig(lr=0.02, max_steps=1)).param_groups
    by_param = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert by_param[id(model[3].weight)] == pytest.approx(0.005)
    assert by_param[id(model[1].weight)] == pytest.approx(0.02)
    # the readout starts width-independent (var 1/base fan-in) and sees its input / m
    assert model[5].factor.item() == 0.25
    assert model[6].weight.std().item() == pytest.approx(1 / math.sqrt(3 * 16), rel=0.1)


# microsoft/mup's optimizers (mup/optim.py at 1981497), for a model at width_mult m:
#   MuAdam (line 38: decoupled_wd=False by default), lines 69-79: a matrix-like parameter (two
#     width dimensions: the hidden matrix) gets lr / m and, as decay is not decoupled,
#     weight_decay * m; vector-like ones (input weights, biases, the readout weight) and
#     fixed ones keep lr and weight_decay.
#   MuAdamW (lines 83-89) is MuAdam with impl=AdamW and the same default decoupled_wd=False:
#     the same lr and weight_decay per group (torch's AdamW multiplies them, so lr * wd, the
#     decay per step, is width-independent).
#   MuSGD (line 91: decoupled_wd=False), lines 123-139: vector-like (one width dimension:
#     input weights, hidden biases, the readout weight) lr * m and weight_decay / m;
#     matrix-like lr / r and weight_decay * r with r = fan-in mult / fan-out mult = 1 for a
#     width x width matrix; fixed (the output bias) unchanged.
LR, WD, M = 0.02, 0.1, 4  # mlp(64) with base_width 16
MUP_PACKAGE = {  # parameter (Sequential index) -> (lr, weight_decay)
    "adam": {"1.weight": (LR, WD), "1.bias": (LR, WD), "3.weight": (LR / M, WD * M),
             "3.bias": (LR, WD), "6.weight": (LR, WD), "6.bias": (LR, WD)},
    "sgd": {"1.weight": (LR * M, WD / M), "1.bias": (LR * M, WD / M), "3.weight": (LR, WD),
            "3.bias": (LR * M, WD / M), "6.weight": (LR * M, WD / M), "6.bias": (LR, WD)},
}
MUP_PACKAGE["adamw"] = MUP_PACKAGE["adam"]


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_learning_rate_and_weight_decay_per_group_are_the_mup_packages(optimizer):
    model = mlp(64)
    groups = make_optimizer(model, TrainConfig(optimizer=optimizer, lr=LR, weight_decay=WD,
                                               max_steps=1)).param_groups
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    got = {name: by_param[id(p)] for name, p in model.named_parameters()}
    assert got.keys() == MUP_PACKAGE[optimizer].keys()
    for name, expected in MUP_PACKAGE[optimizer].items():
        assert got[name] == pytest.approx(expected), name
        assert got[name][0] * got[name][1] == pytest.approx(LR * WD)  # width-independent


def test_mup_biases_start_at_the_base_widths_scale():
    # microsoft/mup's set_base_shapes (mup/shape.py:189-194) rescales a freshly initialised
    # model: a hidden nn.Linear's bias by sqrt(fan-in mult) (mup/layer.py:82-83) and
    # MuReadout's weight and bias by sqrt(width mult) (mup/layer.py:49-51), so torch's default
    # bias init U(+-1/sqrt(fan_in)) keeps the base width's scale U(+-1/sqrt(base fan_in)).
    wide, standard = mlp(256), mlp(256, "standard")  # m = 16, base_width 16
    bound = 1 / math.sqrt(16)
    assert wide[3].bias.abs().max().item() <= bound
    assert wide[3].bias.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.2)
    assert standard[3].bias.std().item() == pytest.approx(1 / math.sqrt(3 * 256), rel=0.2)
    assert 1 / math.sqrt(256) < wide[6].bias.abs().max().item() <= bound  # readout bias
    assert torch.equal(wide[1].bias, standard[1].bias)  # fan-in = the input: no width
    assert torch.equal(mlp(16)[3].bias, mlp(16, "standard")[3].bias)  # base width: as standard


def test_gpt_mup_scales_hidden_init_attention_and_readout():
    def gpt(parametrization, d_model=128):
        torch.manual_seed(0)
        return instantiate(models, {"name": "gpt", "d_model": d_model, "n_heads": 4,
                                    "context_length": 16, "parametrization": parametrization,
                                    "base_width": 32}).build((16,), 50)

    standard, mup = gpt("standard"), gpt("mup")
    m = 128 / 32
    assert mup.blocks[0].attn.qkv.weight.std().item() == pytest.approx(
        standard.blocks[0].attn.qkv.weight.std().item() / math.sqrt(m), rel=0.05)
    assert mup.blocks[0].attn.scale == pytest.approx(math.sqrt(8) / 32)
    assert mup.readout_scale.factor.item() == 1 / m
    rates = lr_multipliers(mup, "adamw")
    assert rates["blocks.0.mlp.fc.weight"] == 1 / m and rates["wte.weight"] == 1
    idx = torch.randint(0, 50, (2, 16))
    assert torch.equal(gpt("mup", 32)(idx), gpt("standard", 32)(idx))  # base width: the same


def spec(**changes):
    out = {**TINY, "model": {"name": "mlp", "depth": 2, "base_width": 8}, **changes}
    out["train"] = {**TINY["train"], "max_steps": 40, **changes.get("train", {})}
    return out


@pytest.mark.parametrize("optimizer, weight_decay", [("adam", 0.0), ("sgd", 0.0),
                                                     ("adamw", 0.1)])
def test_mup_runs_stack_across_widths_and_train_as_alone(optimizer, weight_decay):
    runs = validate_study(spec(grid={"width": [8, 16, 32], "lr": [0.01, 0.03],
                                     "parametrization": ["mup"]}, seeds=[0],
                               train={"optimizer": optimizer, "weight_decay": weight_decay}),
                          "t.yaml").runs
    configs = [r.config for r in runs]
    assert len({group_key(c, pad=True) for c in configs}) == 1  # stacked where standard is
    together = train_group(configs)
    for config, stacked in zip(configs, together):
        alone = train_run(config)
        assert stacked.status == alone.status == "completed"
        for key in ("test_loss", "val_loss", "final_test_loss"):
            assert stacked.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-4), key


def test_standard_runs_keep_their_ids_and_mup_runs_get_new_ones():
    plain = validate_study(spec(model={"name": "mlp", "depth": 2}), "t.yaml").runs
    with_base = validate_study(spec(), "t.yaml").runs  # base_width is moot without μP
    assert [r.run_id for r in plain] == [r.run_id for r in with_base]
    assert "parametrization" not in plain[0].config["model"]
    mup = validate_study(spec(grid={"width": [4, 8], "parametrization": ["mup"]}), "t.yaml").runs
    assert mup[0].config["model"]["base_width"] == 8
    assert not {r.run_id for r in mup} & {r.run_id for r in plain}


def test_mup_with_muon_is_refused_with_the_field():
    with pytest.raises(StudyError, match="model.parametrization.*sgd, adam and adamw"):
        validate_study(spec(model={"name": "mlp", "parametrization": "mup"},
                            train={"optimizer": "muon"}), "t.yaml")


def test_coordinate_check_separates_the_two_parametrizations():
    study = validate_study(spec(model={"name": "mlp", "depth": 2, "base_width": 16},
                                grid={"width": [16, 64, 256]}, train={"lr": 0.01}), "t.yaml")
    check = coordinate_check(study, steps=5, seeds=2)
    assert check.layers == ["layer 1", "layer 2", "logits"]
    assert check.passed and check.separates
    assert all(abs(s) <= 0.2 for s in check.slopes["mup"].values())
    assert check.slopes["standard"]["logits"] > 0.4  # Adam's update adds up over the width
    assert len(check.sizes["mup"][0][0]) == 4  # changes after updates 1-4 of 5 steps
    # at the base width both parametrizations are the same network
    assert check.sizes["mup"][0].tolist() == check.sizes["standard"][0].tolist()


def test_coordcheck_command_writes_the_figure_and_exits_by_verdict(tmp_path, run_cli,
                                                                   monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec(model={"name": "mlp", "depth": 2, "base_width": 16},
                                        grid={"width": [16, 64, 256]}, train={"lr": 0.01})))
    result = run_cli("coordcheck", path, "--out", tmp_path / "cc", "--seeds", "2",
                     "--format", "json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["passed"] and (tmp_path / "cc" / "coordcheck.png").stat().st_size > 1000
    assert json.loads((tmp_path / "cc" / "coordcheck.json").read_text())["widths"] == [16, 64, 256]
    # a broken μP (hidden matrices at the full Adam rate) is caught
    monkeypatch.setitem(mup.LR_POWER["adam"], "hidden", 0)
    broken = run_cli("coordcheck", path, "--out", tmp_path / "cc", "--seeds", "2")
    assert broken.exit_code == 1
    assert "FAIL: some μP layers' updates change size with width" in broken.stderr
    bad = run_cli("coordcheck", path, "--widths", "8,x")
    assert bad.exit_code == 2 and "--widths: expected comma-separated whole numbers" in bad.stderr
