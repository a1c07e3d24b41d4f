"""The warm-up, stable, decay (WSD) schedule: its values, the evaluation at its decay's end,
its settings' validation, and run ids of studies without it left as they were."""

from __future__ import annotations

import math

import pytest
import yaml

from scalelab.errors import StudyError
from scalelab.spec import TrainConfig, load_study, validate_study
from scalelab.train import train_run
from scalelab.train.optim import lr_factor

from ..conftest import TINY


def expected(step: int, steps: int = 100, warmup: int = 10, fraction: float = 0.2,
             shape=lambda p: p, floor: float = 0.0) -> float:
    """The schedule by hand: ramp to the peak over the warm-up, hold it, then fall over the
    last fraction·steps updates to the floor, reached on the last update."""
    start = steps - round(fraction * steps)
    if step < warmup:
        return (step + 1) / warmup
    if step < start:
        return 1.0
    return 1 - (1 - floor) * shape((step - start + 1) / (steps - start))


def wsd(**settings) -> TrainConfig:
    return TrainConfig(max_steps=100, schedule="wsd", warmup_steps=10, **settings)


def test_warm_up_stable_then_linear_decay_to_zero_at_the_last_step():
    cfg = wsd()
    factors = [lr_factor(s, 100, cfg) for s in range(100)]
    assert factors == pytest.approx([expected(s) for s in range(100)])
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0       # warm-up's end
    assert all(f == 1.0 for f in factors[10:80])                        # stable at the peak
    assert factors[80] == pytest.approx(0.95)                           # decay starts at 0.8·100
    assert factors[89] == pytest.approx(0.5) and factors[99] == 0.0     # 0 on the last update


def test_the_decay_fraction_shape_and_floor_are_the_settings():
    cfg = wsd(decay_fraction=0.5, decay_shape="1-sqrt", final_lr_ratio=0.1)
    factors = [lr_factor(s, 100, cfg) for s in range(100)]
    assert factors == pytest.approx([expected(s, fraction=0.5, shape=math.sqrt, floor=0.1)
                                     for s in range(100)])
    assert factors[49] == 1.0 and factors[99] == pytest.approx(0.1)


def test_warm_up_and_decay_overlapping_take_the_lower_ramp():
    cfg = TrainConfig(max_steps=10, schedule="wsd", warmup_fraction=0.5, decay_fraction=1.0)
    factors = [lr_factor(s, 10, cfg) for s in range(10)]
    assert factors == pytest.approx([min((s + 1) / 5, 1 - (s + 1) / 10) for s in range(10)])


def test_a_run_ends_with_an_evaluation_at_its_decays_end():
    """eval_every (10) does not divide the steps (25): the last step is evaluated anyway,
    at the learning rate the decay ends on."""
    config = validate_study({**TINY, "grid": {}, "seeds": [0], "train": {
        **TINY["train"], "max_steps": 25, "schedule": "wsd"}}, "t.yaml").runs[0].config
    result = train_run(config)
    assert result.status == "completed", result.error
    evaluated = sorted({step for step, name, _ in result.curves if name == "val_loss"})
    assert evaluated == [10, 20, 25]
    lrs = {step: value for step, name, value in result.curves if name == "lr"}
    assert lrs[10] == pytest.approx(0.01) and lrs[20] == pytest.approx(0.01)
    assert lrs[25] == 0.0


def test_studies_without_wsd_keep_their_run_ids():
    """Recorded before the wsd settings existed: a linear schedule with warm-up and the
    default (cosine) study."""
    linear = validate_study({**TINY, "train": {**TINY["train"], "schedule": "linear",
                                               "warmup_steps": 5}}, "t.yaml")
    assert [r.run_id for r in linear.runs] == ["28da6fb3dee7", "d7b5c2c052d4",
                                               "de1416df8988", "5b9437288b70"]
    plain = validate_study(TINY, "t.yaml")
    assert [r.run_id for r in plain.runs] == ["9338e19acd74", "7cab7930f456",
                                              "4aa8eb89ae7f", "663a63fd3cce"]
    assert not {"decay_fraction", "decay_shape"} & set(plain.runs[0].config["train"])
    [wsd_run] = validate_study({**TINY, "grid": {}, "seeds": [0], "train": {
        **TINY["train"], "schedule": "wsd", "decay_fraction": 0.1}}, "t.yaml").runs
    assert wsd_run.config["train"]["decay_fraction"] == 0.1


@pytest.mark.parametrize("value", [0, -0.1, 1.5])
def test_a_decay_fraction_outside_zero_to_one_is_one_line_naming_file_field_and_range(
        tmp_path, value):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "schedule": "wsd",
                                                      "decay_fraction": value}}))
    with pytest.raises(StudyError) as info:
        load_study(path)
    text = str(info.value)
    assert text.startswith(f"{path}: train.decay_fraction: must be in (0, 1]"), text
    assert "\n" not in text


def test_a_bad_decay_fraction_in_the_grid_names_its_value():
    spec = {**TINY, "train": {**TINY["train"], "schedule": "wsd"},
            "grid": {"decay_fraction": [0.2, 0]}}
    with pytest.raises(StudyError, match=r"grid\.train\.decay_fraction\[1\]: must be in \(0, 1\]"):
        validate_study(spec, "t.yaml")
