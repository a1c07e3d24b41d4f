"""Image tasks read their real file formats (written here, small) and refuse missing,
corrupt, truncated or unsafe files in one line."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from scalelab.errors import ScalelabError
from scalelab.plugin import instantiate
from scalelab.registry import tasks
from scalelab.tasks.cifar import CIFAR10
from scalelab.tasks.mnist import FILES, write_idx

RNG = np.random.default_rng(0)


def load(name, path, **settings):
    return instantiate(tasks, {"name": name, "path": str(path), **settings}).load()


def idx_set(folder, n_train=30, n_test=10, gz=True):
    arrays = {"train_images": RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": RNG.integers(0, 10, n_train, dtype=np.uint8),
              "test_images": RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": RNG.integers(0, 10, n_test, dtype=np.uint8)}
    folder.mkdir(exist_ok=True)
    for key, array in arrays.items():
        write_idx(folder / (FILES[key] + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files_with_validation_from_the_tail_and_nested_prefixes(tmp_path, gz):
    arrays = idx_set(tmp_path, gz=gz)
    data = load("mnist", tmp_path, num_val=5)
    small = load("fashion_mnist", tmp_path, num_val=5, num_train=10)
    assert data.x_train.shape == (25, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.y_val.tolist() == arrays["train_labels"][25:].tolist()
    assert data.y_test.tolist() == arrays["test_labels"].tolist()
    assert torch.equal(small.x_train, data.x_train[:10])  # the same normalisation, a prefix
    # pixels: standardised with the training pool's statistics
    raw = arrays["train_images"][:25].astype(np.float64) / 255
    expected = (arrays["train_images"][0] / 255 - raw.mean()) / raw.std()
    assert data.x_train[0, 0].numpy() == pytest.approx(expected, abs=1e-5)
    assert small.class_names[0] == "T-shirt/top"


def test_a_truncated_or_foreign_idx_file_is_refused_in_one_line(tmp_path):
    idx_set(tmp_path, gz=False)
    path = tmp_path / FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ScalelabError, match=r"train-images-idx3-ubyte: truncated or padded IDX"):
        load("mnist", tmp_path, num_val=5)
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ScalelabError, match="bad magic number"):
        load("mnist", tmp_path, num_val=5)
    (tmp_path / FILES["test_labels"]).unlink()
    path.unlink()
    with pytest.raises(ScalelabError) as error:
        load("mnist", tmp_path / "nowhere", num_val=5)
    assert "is not a folder" in str(error.value) and "\n" not in str(error.value)


def test_missing_mnist_files_name_what_is_expected_and_where_to_get_them(tmp_path):
    with pytest.raises(ScalelabError) as error:
        load("mnist", tmp_path)
    message = str(error.value)
    assert "t10k-labels-idx1-ubyte" in message and "yann.lecun.com" in message
    with pytest.raises(ScalelabError, match="synthetic: N"):
        instantiate(tasks, {"name": "cifar10"}).load()


def cifar_images(n):
    return RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), RNG.integers(0, 10, n)


def test_cifar10_python_batches_binary_records_and_pt_files_read_the_same_images(tmp_path):
    parts = [cifar_images(8) for _ in range(5)]
    test = cifar_images(6)
    names = [f"class-{i}" for i in range(10)]
    py = tmp_path / "py" / "cifar-10-batches-py"
    py.mkdir(parents=True)
    for i, (x, y) in enumerate(parts, start=1):
        CIFAR10.write_python_batch(py / f"data_batch_{i}", x, y, "labels")
    CIFAR10.write_python_batch(py / "test_batch", *test, "labels")
    with (py / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names]}, f, protocol=2)
    binary = tmp_path / "bin"  # the format's files directly in path
    binary.mkdir()
    for name, (x, y) in [*((f"data_batch_{i}.bin", p) for i, p in enumerate(parts, start=1)),
                         ("test_batch.bin", test)]:
        records = np.concatenate([y[:, None].astype(np.uint8),
                                  x.transpose(0, 3, 1, 2).reshape(len(x), -1)], 1)
        records.tofile(binary / name)
    pt = tmp_path / "pt"
    pt.mkdir()
    for name, (x, y) in (("train.pt", (np.concatenate([p[0] for p in parts]),
                                       np.concatenate([p[1] for p in parts]))),
                         ("test.pt", test)):
        torch.save({"images": torch.from_numpy(x), "labels": torch.from_numpy(y),
                    "classes": names}, pt / name)
    loaded = [load("cifar10", tmp_path / f, num_val=4) for f in ("py", "bin", "pt")]
    for data in loaded:
        assert data.x_train.shape == (36, 3, 32, 32) and data.x_test.shape == (6, 3, 32, 32)
        assert torch.equal(data.x_train, loaded[0].x_train)
        assert torch.equal(data.y_test, torch.from_numpy(test[1]))
    assert loaded[0].class_names == names and loaded[2].class_names == names
    assert loaded[1].class_names == [str(i) for i in range(10)]  # no meta file beside them
    # channel order: pixel (row 0, col 0) of image 0, red channel, before normalisation
    red = parts[0][0][0, 0, 0, 0]
    x = np.concatenate([p[0] for p in parts])[:36, ..., 0] / 255
    assert loaded[0].x_train[0, 0, 0, 0].item() == pytest.approx(
        (red / 255 - x.mean()) / x.std(), abs=1e-5)


def test_cifar100_binary_takes_the_fine_label(tmp_path):
    x, _ = cifar_images(12)
    coarse, fine = RNG.integers(0, 20, 12), RNG.integers(0, 100, 12)
    records = np.concatenate([coarse[:, None], fine[:, None],
                              x.transpose(0, 3, 1, 2).reshape(12, -1)], 1).astype(np.uint8)
    records.tofile(tmp_path / "train.bin")
    records[:4].tofile(tmp_path / "test.bin")
    data = load("cifar100", tmp_path, num_val=2)
    assert data.y_train.tolist() == fine[:10].tolist() and data.num_classes == 100


def test_a_pickle_that_names_code_is_refused_not_run(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x, y = cifar_images(4)
    for i in range(1, 6):
        CIFAR10.write_python_batch(folder / f"data_batch_{i}", x, y, "labels")

    class Exploit:
        def __reduce__(self):
            return (print, ("owned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(ScalelabError, match=r"test_batch: not a readable CIFAR python batch "
                                            r"\(refused to load builtins.print"):
        load("cifar10", tmp_path, num_val=2)


def test_truncated_cifar_files_are_refused_in_one_line(tmp_path):
    x, y = cifar_images(4)
    for i in range(1, 6):
        CIFAR10.write_python_batch(tmp_path / f"data_batch_{i}", x, y, "labels")
    CIFAR10.write_python_batch(tmp_path / "test_batch", x, y, "labels")
    raw = (tmp_path / "data_batch_3").read_bytes()
    (tmp_path / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ScalelabError, match="data_batch_3: not a readable CIFAR python batch"):
        load("cifar10", tmp_path, num_val=2)
    binary = tmp_path / "b"
    binary.mkdir()
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (binary / name).write_bytes(bytes(3073 * 2 + 10))
    with pytest.raises(ScalelabError, match="truncated CIFAR binary file"):
        load("cifar10", binary, num_val=2)
    pt = tmp_path / "p"
    pt.mkdir()
    (pt / "train.pt").write_bytes(b"garbage")
    (pt / "test.pt").write_bytes(b"garbage")
    with pytest.raises(ScalelabError, match="train.pt: not a readable airbench-style .pt"):
        load("cifar10", pt, num_val=2)


def test_a_study_on_a_missing_folder_is_refused_when_validated(tmp_path):
    from scalelab.spec import validate_study

    raw = {"name": "s", "task": {"name": "cifar10", "path": str(tmp_path / "none")},
           "model": {"name": "airbench"}, "train": {"max_steps": 1}, "seeds": 1}
    with pytest.raises(ScalelabError, match="is not a folder"):
        validate_study(raw, "s.yaml")


def test_gzip_detection_follows_the_name(tmp_path):
    idx_set(tmp_path, gz=True)
    with gzip.open(tmp_path / (FILES["train_labels"] + ".gz")) as f:
        assert f.read(4) == b"\x00\x00\x08\x01"


def image_folder(root, classes=("cat", "dog", "<b>eel"), per_class=6):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, count in (("train", per_class), ("val", 2)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20 + 4 * c, 30, 3), dtype=np.uint8)
                suffix = ".png" if i % 2 else ".jpg"
                Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}")
    return root


def test_an_image_folder_streams_nested_per_class_subsets_with_names(tmp_path):
    root = image_folder(tmp_path)
    task = instantiate(tasks, {"name": "imagefolder", "path": str(root), "num_val": 2,
                               "num_train": 3, "image_size": 16, "resize": 18, "workers": 0})
    data = task.load()
    assert data.class_names == ["<b>eel", "cat", "dog"]  # sorted folder names, as data
    assert len(data.train) == 9 and len(data.val) == 6 and len(data.test) == 6
    more = instantiate(tasks, {"name": "imagefolder", "path": str(root), "num_val": 2,
                               "num_train": 4, "workers": 0}).load()
    assert set(data.train) < set(more.train)  # nested
    assert not {f for f, _ in more.train} & {f for f, _ in more.val}
    x, y, rows = next(iter(data.loader("test", 4)))
    assert x.shape == (4, 3, 16, 16) and rows.tolist() == [0, 1, 2, 3]
    train_view = data.dataset("train", train_view=True)
    torch.manual_seed(0)
    a = train_view[0][0]
    torch.manual_seed(1)
    b = train_view[0][0]
    assert a.shape == (3, 16, 16) and not torch.equal(a, b)  # random crops differ
    assert task.shape() == ((3, 16, 16), 3, 9)


def test_a_broken_image_folder_is_refused_in_one_line(tmp_path):
    root = image_folder(tmp_path)
    with pytest.raises(ScalelabError, match="needs train/ and val/ folders"):
        load("imagefolder", root / "train")
    with pytest.raises(ScalelabError, match="exceeds the 4 training images of class '<b>eel'"):
        load("imagefolder", root, num_val=2, num_train=5)
    bad = root / "train" / "cat" / "000.jpg"
    bad.write_bytes(b"not a jpeg")
    data = load("imagefolder", root, num_val=2, workers=0, image_size=16, resize=16)
    row = [f for f, _ in data.train].index(str(bad))
    with pytest.raises(ScalelabError, match="000.jpg: not a readable image"):
        data.dataset("train")[row]


@pytest.mark.slow
def test_a_run_on_an_image_folder_trains_and_scores_each_class_by_name(tmp_path):
    from scalelab.spec import validate_study
    from scalelab.train import train_run

    root = image_folder(tmp_path, per_class=10)
    raw = {"name": "f", "task": {"name": "imagefolder", "path": str(root), "num_val": 2,
                                  "image_size": 16, "resize": 18, "workers": 1},
           "model": {"name": "resnet", "depth": 18, "width": 4, "stem": "cifar"},
           "method": {"name": "ast", "target_rate": 0.5},
           "train": {"optimizer": "sgd", "lr": 0.05, "batch_size": 8, "epochs": 2,
                     "eval_every": 2}, "seeds": 1}
    result = train_run(validate_study(raw, "f.yaml").runs[0].config)
    assert result.status == "completed", result.error
    m = result.metrics
    assert m["class_names"] == ["<b>eel", "cat", "dog"] and len(m["test_acc_by_class"]) == 3
    assert m["steps"] == 6 and m["samples_trained"] < 6 * 8  # AST trained on part of each batch
    assert [s for s, n, _ in result.curves if n == "val_loss"] == [2, 4, 6]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["airbench94", "ast_imagenet"])
def test_the_vision_studies_quick_blocks_run_on_generated_data(tmp_path, monkeypatch, name):
    import io

    import scalelab.api
    from scalelab.output import Output

    from ..golden import ROOT

    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path / "cache"))
    result = scalelab.api.run(ROOT / "studies" / f"{name}.yaml", out=tmp_path / "out",
                              quick=True, device="cpu",
                              output=Output(stdout=io.StringIO(), stderr=io.StringIO()))
    records = scalelab.api.records(tmp_path / "out")
    assert {r["status"] for r in records} == {"completed"} and len(records) >= 3
    assert np.mean([r["test_acc"] for r in records]) > 0.5  # learned the generated classes
    assert all(r["class_names"] for r in records)
    assert result.trained == {"completed": len(records)}
    if name == "airbench94":  # trained on every image, as the reference: the report says so
        scalelab.api.report(tmp_path / "out", n_resamples=50)
        report = (tmp_path / "out" / "report.md").read_text()
        assert "trained without a validation split" in report
        assert all(r["time_to_result_s"] > 0 and "val_loss" not in r for r in records)
        from scalelab.store import Store

        with Store.open(tmp_path / "out") as store:
            rows = store.evaluations()
        assert rows and all("val_acc" not in r for r in rows)
        by_run = {r["run_id"]: r for r in records}
        for row in rows:  # the run's span, with this setting's (TTA) test scoring instead
            run = by_run[row["run_id"]]
            assert row["time_to_result_s"] == pytest.approx(
                run["time_to_result_s"] - run["test_eval_time_s"] + row["eval_time_s"])
