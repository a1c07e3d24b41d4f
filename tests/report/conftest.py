"""A study store with a known law, written without training (the report's fixture)."""

from pathlib import Path

import numpy as np
import pytest

from scalelab.spec import RunSpec
from scalelab.store import Store
from scalelab.train import RunResult

#: What every fixture run records as its provenance (as devices.provenance would).
PROVENANCE = {"scalelab_version": "0.1.0", "torch_version": "2.99.1+fixture", "device": "cpu",
              "cpu": "Fixture CPU", "cpu_capability": "AVX2", "torch_threads": 2}


def make_fixture_store(out: Path) -> Path:
    """A study of widths x data sizes x two methods x lr (nuisance) x 3 seeds, known law."""
    rng = np.random.default_rng(0)
    with Store.open(out, create=True) as store:
        store.set_meta(study="fixture",
                       axes={"width": "model.width", "num_train": "task.num_train",
                             "name": "method.name", "lr": "train.lr"},
                       grid={"width": [8, 16, 32, 64], "num_train": [500, 1000, 2000],
                             "name": ["standard", "tta"], "lr": [0.01, 0.1]},
                       nuisance=["lr"])
        for width in (8, 16, 32, 64):
            n_params = 60 * width
            for d in (500, 1000, 2000):
                for method in ("standard", "tta"):
                    for lr in (0.01, 0.1):
                        for seed in range(3):
                            law = 1.2 + 30 * n_params**-0.5 + 25 * d**-0.4
                            noise = np.exp(rng.normal(0, 0.01))
                            val = law * noise + (0.0 if lr == 0.1 else 0.5)
                            acc = 0.8 - 0.1 * law + (0.01 if method == "tta" else 0) + rng.normal(0, 0.003)
                            point = {"width": width, "num_train": d, "name": method, "lr": lr,
                                     "seed": seed}
                            config = {"model": {"width": width}, "task": {"num_train": d},
                                      "method": {"name": method}, "train": {"lr": lr}, "seed": seed}
                            spec = RunSpec(f"{len(store.statuses()):012x}", config, point)
                            store.write_result(spec, RunResult(
                                "completed",
                                {"n_params": n_params, "val_loss": val, "test_loss": law * noise,
                                 "test_acc": acc, "train_flops": 6.0 * n_params * d,
                                 "wall_time": 1.0, "samples_seen": d, "epochs_seen": 1.0},
                                [(s, "val_loss", val + 1 / s) for s in (10, 20, 30)],
                                provenance=PROVENANCE))
    return out


@pytest.fixture
def fixture_store(tmp_path):
    return make_fixture_store(tmp_path / "study")
