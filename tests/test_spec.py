import subprocess
import sys

import pytest
import yaml

from scalelab.errors import StudyError
from scalelab.spec import apply_override, load_study, run_id

from .conftest import TINY


def write(tmp_path, spec, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False) if isinstance(spec, dict) else spec)
    return path


def with_changes(**changes):
    spec = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            spec[section][key] = value
        else:
            spec[section] = value
    return spec


BAD = [
    (with_changes(model__widht=3), "model.widht",
     "unknown key; did you mean width? (allowed: name, width, depth"),
    (with_changes(bogus=1), "bogus", "unknown key (allowed: name, description, task"),
    (with_changes(train__lr="fast"), "train.lr", "valid number"),
    (with_changes(train__max_steps=1.5), "train.max_steps", "valid integer"),
    (with_changes(grid={"width": []}), "grid", "axis 'width' is empty"),
    (with_changes(task={"name": "mnist2d"}), "task.name",
     "unknown task 'mnist2d' (registered: cifar10, cifar100, digits, embeddings, "
     "fashion_mnist, imagefolder, mnist, mnist1d, text)"),
    (with_changes(model={"name": "resnet2"}), "model.name",
     "unknown model 'resnet2' (registered: airbench, cnn, gpt, mlp, resnet, vit)"),
    (with_changes(method={"name": "magic"}), "method.name",
     "unknown method 'magic' (registered: ast, curriculum, full, infobatch, infobatch_per_batch, random, "
     "selective_backprop, selective_backprop_per_batch, standard, topk_loss)"),
    (with_changes(grid={"width": [4, -2]}), "grid.model.width[1]", "greater than or equal to 1"),
    (with_changes(grid={"colour": [1]}), "grid.colour", "no setting of that name"),
    (with_changes(grid={"depth": [1]}), "grid.depth", ""),
    (with_changes(train__epochs=2), "train", "exactly one budget"),
    (with_changes(train__optimizer="lion"), "train.optimizer", "'sgd', 'adam', 'adamw' or 'muon'"),
    (with_changes(seeds=[1, 1]), "seeds", "distinct"),
    (with_changes(nuisance=["lr"]), "nuisance[0]", "'lr' is not a grid axis (axes: width)"),
]


@pytest.mark.parametrize("spec,field,message", BAD)
def test_bad_study_names_file_field_and_allowed(tmp_path, spec, field, message):
    path = write(tmp_path, spec)
    if field == "grid.depth":  # a bare name that exists in one section resolves fine
        load_study(path)
        return
    with pytest.raises(StudyError) as info:
        load_study(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {field}: "), text
    assert message in text
    assert "\n" not in text


def test_ambiguous_bare_axis_name(tmp_path):
    spec = with_changes(model={"name": "cnn"}, grid={"depth": [1, 2]})
    load_study(write(tmp_path, spec))  # only cnn has depth among sections: fine
    spec = with_changes(grid={"num_train": [100]}, model={"name": "mlp"})
    assert load_study(write(tmp_path, spec)).axes == {"task.num_train": [100]}


def test_yaml_syntax_and_missing_file(tmp_path):
    with pytest.raises(StudyError, match=r"not valid YAML: .* at line 3"):
        load_study(write(tmp_path, "name: x\ntask: {name: mnist1d\n"))
    with pytest.raises(StudyError, match="no such study file"):
        load_study(tmp_path / "nope.yaml")
    with pytest.raises(StudyError, match="must be a YAML mapping"):
        load_study(write(tmp_path, "- 1\n- 2\n"))


def test_expansion_order_and_ids(tmp_path):
    study = load_study(write(tmp_path, with_changes(grid={"width": [4, 8], "num_train": [100, 200]})))
    points = [r.point for r in study.runs]
    assert len(points) == 2 * 2 * 2
    assert points[0] == {"width": 4, "num_train": 100, "seed": 0}
    assert points[1] == {"width": 4, "num_train": 100, "seed": 1}
    assert points[2] == {"width": 4, "num_train": 200, "seed": 0}
    assert len({r.run_id for r in study.runs}) == 8
    run = study.runs[0]
    assert run.config["model"] == {"name": "mlp", "width": 4, "depth": 1, "activation": "relu"}
    assert run.config["train"]["schedule"] == "cosine"  # defaults filled in


def test_run_id_ignores_key_order_and_spelled_out_defaults(tmp_path):
    base = load_study(write(tmp_path, with_changes()))
    explicit = with_changes(model__activation="relu", train__schedule="cosine")
    explicit["train"] = dict(reversed(list(explicit["train"].items())))
    same = load_study(write(tmp_path, explicit, "b.yaml"))
    assert [r.run_id for r in base.runs] == [r.run_id for r in same.runs]
    changed = load_study(write(tmp_path, with_changes(train__lr=0.02), "c.yaml"))
    assert not {r.run_id for r in base.runs} & {r.run_id for r in changed.runs}


def test_run_id_is_stable_across_processes():
    config = {"model": {"name": "mlp", "width": 4}, "seed": 0, "lr": 0.1}
    code = ("from scalelab.spec import run_id; "
            "print(run_id({'seed': 0, 'lr': 0.1, 'model': {'width': 4, 'name': 'mlp'}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == run_id(config)
    assert len(run_id(config)) == 12


def test_editing_a_study_only_adds_the_new_cells(tmp_path):
    old = load_study(write(tmp_path, with_changes(grid={"width": [4, 8]})))
    new = load_study(write(tmp_path, with_changes(grid={"width": [4, 8, 16]}), "b.yaml"))
    added = {r.run_id for r in new.runs} - {r.run_id for r in old.runs}
    assert {r.run_id for r in old.runs} <= {r.run_id for r in new.runs}
    assert {r.point["width"] for r in new.runs if r.run_id in added} == {16}


def test_overrides_and_quick(tmp_path):
    spec = with_changes(quick={"train": {"max_steps": 5}, "grid": {"width": [2]}, "seeds": 1})
    path = write(tmp_path, spec)
    quick = load_study(path, quick=True)
    assert [r.point for r in quick.runs] == [{"width": 2, "seed": 0}]
    assert quick.runs[0].config["train"]["max_steps"] == 5
    assert quick.runs[0].config["train"]["lr"] == 0.01  # untouched settings stay
    overridden = load_study(path, ["train.lr=1e-3", "grid.model.width=[3, 5]", "seeds=3"])
    assert {r.config["train"]["lr"] for r in overridden.runs} == {1e-3}
    assert sorted({r.point["width"] for r in overridden.runs}) == [3, 5]
    assert len(overridden.runs) == 6
    with pytest.raises(StudyError, match="--quick needs a `quick:` block"):
        load_study(write(tmp_path, with_changes(), "noquick.yaml"), quick=True)
    cleared = load_study(path, ["grid={}", "model={name: cnn, channels: 3}"])
    assert len(cleared.runs) == 2 and cleared.runs[0].config["model"]["channels"] == 3
    with pytest.raises(StudyError, match="expected key=value"):
        apply_override({}, "train.lr")


def test_nuisance_axes_by_label_or_path(tmp_path):
    spec = with_changes(grid={"width": [4, 8], "train.lr": [0.01, 0.1]}, nuisance=["lr"])
    assert load_study(write(tmp_path, spec)).nuisance_labels() == ["lr"]
    spec["nuisance"] = ["train.lr"]
    assert load_study(write(tmp_path, spec)).nuisance_labels() == ["lr"]


@pytest.mark.parametrize("train, field", [({"restore_best": True}, "train.restore_best"),
                                          ({"restore_best": False,
                                            "early_stopping": {"patience": 2}},
                                           "train.restore_best")])
def test_no_validation_split_refuses_what_needs_one(tmp_path, train, field):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "noval", "task": {"name": "cifar10", "synthetic": 4, "num_val": 0},
        "model": {"name": "airbench", "widths": [8, 8, 8]},
        "train": {"max_steps": 2, **train}}))
    with pytest.raises(StudyError) as err:
        load_study(path)
    assert err.value.field == field
    assert "num_val: 0" in err.value.message and "restore_best: false" in str(err.value)


def test_reference_batch_size_keeps_run_ids_of_studies_without_it():
    from scalelab.spec import TrainConfig

    cfg = TrainConfig.model_validate({"max_steps": 1})
    assert "reference_batch_size" not in cfg.identity()
    assert cfg.at_batch(7) is cfg
    scaled = TrainConfig.model_validate({"max_steps": 1, "lr": 0.5, "reference_batch_size": 100})
    assert scaled.at_batch(50).lr == 0.25 and scaled.identity()["reference_batch_size"] == 100


@pytest.mark.parametrize("override, expected", [
    ("train.max_step=10", "train.max_step: unknown key; did you mean max_steps? (allowed:"),
    ("seeds=three", "seeds: expected a number of seeds (e.g. 3) or a list of seeds"),
    ("grid={width: x}", "grid.width: Input should be a valid list (got 'x')"),
])
def test_messages_name_the_near_miss_and_hide_pydantic_internals(tmp_path, override, expected):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(TINY))
    with pytest.raises(StudyError) as err:
        load_study(path, overrides=[override])
    text = str(err.value)
    assert expected in text and "dict[" not in text and "more)" not in text


def test_renamed_study_keys_still_work_with_one_notice(tmp_path, tiny_study):
    """Old spellings (``batch_runs``, ``track``) load as the new ones, with one notice that
    names the file and the new key; giving both spellings is refused."""
    from scalelab.errors import RenamedSetting

    path = tiny_study(tmp_path, batch_runs="off", batch_memory_mb=64)
    with pytest.warns(RenamedSetting) as caught:
        study = load_study(path)
    assert study.spec.stack_runs == "off" and study.spec.stack_memory_mb == 64
    messages = [str(w.message) for w in caught]
    assert f"{path}: `batch_runs` is now called `stack_runs` (the old name still works)" in messages
    both = tiny_study(tmp_path, batch_runs="off", stack_runs="auto")
    with pytest.raises(StudyError, match=r"batch_runs: is the old name of `stack_runs`, which is "
                                         r"also set; keep only `stack_runs`"):
        load_study(both)


def test_cli_prints_a_renamed_key_as_one_warning_line(tmp_path, tiny_study):
    path = tiny_study(tmp_path, batch_runs="off")
    done = subprocess.run([sys.executable, "-m", "scalelab", "run", str(path), "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "batch_runs" in line]
    assert notices == [f"warning: {path}: `batch_runs` is now called `stack_runs` (the old name "
                       "still works)"]
