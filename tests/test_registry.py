import pytest
import torch

from scalelab.errors import ScalelabError
from scalelab.plugin import instantiate
from scalelab.registry import FAMILIES, Registry, evaluators, methods, models, tasks
from scalelab.spec import validate_study
from scalelab.train import train_group, train_run
from scalelab.train.stacking import group_key

from .conftest import TINY


def test_register_get_and_wildcards():
    reg = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        """First widget.

        Longer text."""

    reg.register("beta")(object)
    assert reg.get("alpha") is Alpha
    assert reg.names("a*") == ["alpha"]
    assert ("alpha", "First widget.") in reg.describe()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(object)
    with pytest.raises(ScalelabError, match=r"unknown widget 'gamma' \(registered: alpha, beta\)"):
        reg.get("gamma")


def test_every_plugin_has_a_description_and_defaults():
    for family in FAMILIES.values():
        for name, description in family.describe():
            assert description, f"{family.kind} {name} needs a docstring"
            family.get(name).Config()  # every setting has a default


SMALL_TASKS = {"mnist1d": {"num_train": 100, "num_val": 50, "num_test": 60, "pool_size": 200},
               "digits": {"num_train": 100},
               **{name: {"synthetic": 12, "num_val": 20}
                  for name in ("mnist", "fashion_mnist", "cifar10", "cifar100")},
               "imagefolder": {"synthetic": 12, "num_val": 2, "image_size": 32, "resize": 36,
                               "workers": 0}}


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """A small embeddings folder: .npy train/test features and labels (validation from train)."""
    import numpy as np

    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("test", 120)):
        np.save(root / f"{split}_features.npy", rng.normal(size=(n, 16)).astype(np.float32))
        np.save(root / f"{split}_labels.npy", rng.integers(0, 5, n))
    return root


def settings(task_name: str, features, **extra) -> dict:
    out = {"name": task_name, **SMALL_TASKS.get(task_name, {}), **extra}
    if task_name == "embeddings":
        out |= {"path": str(features), "num_val": 100}
    return out


PAIRS = [(t, m) for t in tasks.names() for m in models.names()
         if tasks.get(t).data_kind in models.get(m).data_kinds]
CLASSIFICATION = [t for t in tasks.names() if tasks.get(t).data_kind == "classification"
                  and tasks.get(t).in_memory]


def test_every_task_has_a_model_and_every_model_a_task():
    assert {t for t, _ in PAIRS} == set(tasks.names())
    assert {m for _, m in PAIRS} == set(models.names())


@pytest.mark.parametrize(("task_name", "model_name"), PAIRS)
def test_every_model_builds_and_runs_on_every_task_it_learns(task_name, model_name, features):
    data = instantiate(tasks, settings(task_name, features)).load()
    if model_name == "cnn" and len(data.input_shape) < 2:
        pytest.skip("feature vectors have no spatial axis for a CNN")
    try:
        model = instantiate(models, {"name": model_name}).build(data.input_shape,
                                                                 data.num_classes)
    except ValueError as exc:  # an image family refuses what is not an image, in words
        assert f"{model_name} needs images" in str(exc)
        return
    if not tasks.get(task_name).in_memory:  # streamed: a batch from its loader
        logits = model(next(iter(data.loader("train", 5)))[0])
        assert logits.shape == (5, data.num_classes)
    elif data.input_shape:
        logits = model(data.x_train[:5])
        assert logits.shape == (5, data.num_classes)
    else:  # token streams: a batch of windows, one prediction per position
        logits = model(data.train[:40].view(5, 8))
        assert logits.shape == (5, 8, data.num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("task_name", CLASSIFICATION)
def test_test_set_does_not_depend_on_training_size(task_name, features):
    small = instantiate(tasks, settings(task_name, features, num_train=50)).load()
    large = instantiate(tasks, settings(task_name, features, num_train=100)).load()
    assert torch.equal(small.x_test, large.x_test) and torch.equal(small.x_val, large.x_val)
    assert len(small.y_train) == 50 and len(large.y_train) == 100
    assert torch.equal(large.x_train[:50], small.x_train)  # nested training sets
    train_rows = {tuple(r.tolist()) for r in large.x_train.flatten(1)}
    assert not train_rows & {tuple(r.tolist()) for r in large.x_test.flatten(1)}
    assert not train_rows & {tuple(r.tolist()) for r in large.x_val.flatten(1)}


def test_mnist1d_generation_is_cached_and_deterministic(tmp_path, monkeypatch):
    from scalelab.tasks import mnist1d

    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path))
    mnist1d._split.cache_clear()
    first = mnist1d._split(120, 5)
    assert list((tmp_path / "mnist1d").glob("*.npz"))
    mnist1d._split.cache_clear()
    second = mnist1d._split(120, 5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].shape == (120, 1, 40)


def test_cnn_parameter_count_matches_hand_count():
    model = instantiate(models, {"name": "cnn", "channels": 4, "depth": 2, "kernel_size": 3,
                                 "stride": 2}).build((1, 40), 10)
    conv1 = 1 * 4 * 3 + 4
    conv2 = 4 * 4 * 3 + 4
    head = (4 * 20) * 10 + 10  # stride 2 halves 40 -> 20
    assert sum(p.numel() for p in model.parameters()) == conv1 + conv2 + head


@pytest.mark.parametrize("task_name", tasks.names())
def test_every_task_knows_its_shape_as_loading_it_says(task_name, features, tmp_path):
    if tasks.get(task_name).data_kind != "classification":
        pytest.skip("token streams are never stacked: no shape is planned for them")
    task = instantiate(tasks, settings(task_name, features))
    data = task.load()
    assert task.shape() == (data.input_shape, data.num_classes, len(data.y_train))


def method_config(name: str) -> dict:
    """The tiny study with one method at its defaults, budgeted in epochs (a per-epoch
    method needs that; here it is the same 40 steps)."""
    train = {k: v for k, v in TINY["train"].items() if k != "max_steps"} | {"epochs": 10}
    study = validate_study({**TINY, "grid": {}, "seeds": [0], "method": name, "train": train},
                           "t.yaml")
    return study.runs[0].config


@pytest.mark.parametrize("name", methods.names())
def test_every_method_trains_and_declares_what_it_records(name):
    config = method_config(name)
    result = train_run(config)
    assert result.status == "completed", result.error
    assert 0 <= result.metrics["test_acc"] <= 1 and result.metrics["train_flops"] > 0
    names = {n for _, n, _ in result.curves}
    assert set(methods.get(name).traces) <= names  # every declared trace is recorded
    assert methods.get(name).comparison_role in (None, "full", "random")


@pytest.mark.parametrize("name", methods.names())
def test_every_stackable_method_trains_alike_stacked_and_alone(name):
    config = method_config(name)
    method = instantiate(methods, config["method"])
    if not method.stackable:
        assert group_key(config) is None  # never put in a stacked group
        return
    assert group_key(config) is not None
    [stacked] = train_group([config])
    alone = train_run(config)
    for key in ("test_loss", "val_loss", "train_acc"):
        assert stacked.metrics[key] == pytest.approx(alone.metrics[key], rel=1e-4)


@pytest.fixture(scope="module")
def trained_model():
    config = method_config("standard")
    result = train_run(config, checkpoint=True)
    return config, result


@pytest.mark.parametrize("name", evaluators.names())
def test_every_evaluator_scores_a_trained_model(name, trained_model, tmp_path):
    from scalelab.evaluation.rescore import score_checkpoint

    config, result = trained_model
    (tmp_path / "m.pt").write_bytes(result.checkpoint)
    [scores] = score_checkpoint(config, tmp_path / "m.pt", [("e", {"name": name})]).values()
    for split in ("val", "test"):
        assert 0 <= scores[f"{split}_acc"] <= 1 and scores[f"{split}_loss"] > 0
    assert len(scores["test_acc_by_class"]) == 10
    if name == "plain":  # the plain forward is the trainer's own test score (re-scoring
        # averages in float32 over the whole split, the trainer sums batches: equal to ~1e-7)
        assert scores["test_acc"] == pytest.approx(result.metrics["test_acc"], rel=1e-6)
        assert scores["test_loss"] == pytest.approx(result.metrics["test_loss"], rel=1e-5)
