import pytest
import torch

import scalelab  # noqa: F401  (registers the built-ins)
from scalelab.errors import ScalelabError
from scalelab.plugin import instantiate
from scalelab.registry import FAMILIES, Registry, models, tasks


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
               "digits": {"num_train": 100}}


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
CLASSIFICATION = [t for t in tasks.names() if tasks.get(t).data_kind == "classification"]


def test_every_task_has_a_model_and_every_model_a_task():
    assert {t for t, _ in PAIRS} == set(tasks.names())
    assert {m for _, m in PAIRS} == set(models.names())


@pytest.mark.parametrize(("task_name", "model_name"), PAIRS)
def test_every_model_builds_and_runs_on_every_task_it_learns(task_name, model_name, features):
    data = instantiate(tasks, settings(task_name, features)).load()
    if model_name == "cnn" and len(data.input_shape) < 2:
        pytest.skip("feature vectors have no spatial axis for a CNN")
    model = instantiate(models, {"name": model_name}).build(data.input_shape, data.num_classes)
    if data.input_shape:
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
