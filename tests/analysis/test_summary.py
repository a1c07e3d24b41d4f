"""The end-of-run summary: the study's analysis columns, and the analysis's own laws."""

import numpy as np
import pytest

from scalelab.analysis import summarize
from scalelab.analysis.study_analysis import fit_rows
from scalelab.analysis.summary import format_params, law_rows, settings_label


def test_summarize_groups_by_parameters_and_other_axes():
    records = [
        {"status": "completed", "n_params": n, "width": w, "num_train": d, "seed": s,
         "test_loss": 10.0 * n**-0.5 * (1 + 0.01 * s) / d}
        for n, w in ((100, 4), (400, 8), (1600, 16)) for d in (1, 2) for s in (0, 1)
        if not (n == 1600 and d == 1)
    ] + [{"status": "diverged", "n_params": 100, "width": 4, "num_train": 1, "seed": 2}]
    summary = summarize(records, {"width": "model.width", "num_train": "task.num_train"})
    assert summary.sizes == [100, 400, 1600] and summary.size == "n_params"
    assert summary.row_labels == ["width=4", "width=8", "width=16"]
    assert summary.column_labels == ["num_train=1", "num_train=2"]
    mean, std, runs = summary.cells[(100, "num_train=1")]
    assert runs == 2 and mean == pytest.approx(10 * 100**-0.5 * 1.005)
    assert (1600, "num_train=1") not in summary.cells
    assert not hasattr(summary, "fits")  # it fits nothing: the laws are the analysis's


def test_summarize_reads_the_study_metric_and_size_columns():
    """An LM study analyses test_ppl against non-embedding parameters: so does its summary."""
    records = [{"status": "completed", "n_params": 1000 + n, "n_params_nonembed": n,
                "d_model": w, "test_loss": 1.0, "test_ppl": 10.0 + s, "seed": s}
               for n, w in ((64, 8), (256, 16)) for s in (0, 1)]
    records.append({"status": "completed", "n_params": 9, "d_model": 4, "test_loss": 1.0})
    summary = summarize(records, {"d_model": "model.d_model"}, "test_ppl", "n_params_nonembed")
    assert summary.metric == "test_ppl" and summary.size == "n_params_nonembed"
    assert summary.sizes == [64, 256]  # keyed by the analysis's size; a run without it left out
    assert summary.cells[(64, "test_ppl")] == (10.5, pytest.approx(0.7071, rel=1e-3), 2)
    row = summary.to_dict()["rows"][0]
    assert row["n_params_nonembed"] == 64 and row["test_ppl"]["mean"] == 10.5


def test_law_rows_are_the_analysis_fits_in_their_chosen_form():
    """The printed law is the fit the analysis made (its form, its parameters, its verdict),
    and a stored scaling_law.json's fits print alike."""
    rng = np.random.default_rng(0)
    rows = [{"n_params": n, "test_loss": 0.5 + 30 * n ** -0.4 * np.exp(rng.normal(0, 0.01))}
            for n in np.geomspace(1e3, 1e6, 8) for _ in range(2)]
    entry = fit_rows(rows, ["n_params"], "test_loss", n_resamples=20, form="power_offset")
    (law,) = law_rows([entry.to_dict()])
    assert law["title"] == "test_loss vs n_params, form power_offset"
    assert law["form"] == "power_offset" and law["formula"] == "L = E + A·x^(−α)"
    assert law["params"] == entry.fit.params and law["points"] == 16
    assert law["verdict"] == entry.fit.verdict[0]
    assert format_params({"E": 0.51234, "alpha": 0.4}) == "E = 0.5123, alpha = 0.4"


def test_a_list_of_grids_labels_each_run_by_the_settings_it_has():
    """ResNets and ViTs in one study: a grid point carries every grid's axes, None where its
    own grid lacks one; the labels leave those out (they had read ``patch_size=None``)."""
    axes = {"depth": "model.depth", "width": "model.width", "stem": "model.stem",
            "model": "model.name", "patch_size": "model.patch_size",
            "method": "method.name", "target_rate": "method.target_rate"}
    resnet = {"depth": 18, "width": 8, "stem": "cifar", "model": None, "patch_size": None,
              "n_params": 176012}
    vit = {"depth": 2, "width": 32, "stem": None, "model": "vit", "patch_size": 8,
           "n_params": 32356}
    records = [{"status": "completed", "test_loss": 1.0 + s, "seed": s, **arch,
                "method": method, "target_rate": rate}
               for arch in (resnet, vit) for method, rate in (("ast", 0.3), ("full", None))
               for s in (0, 1)]
    summary = summarize(records, axes)
    assert summary.row_labels == ["depth=2, width=32, patch_size=8", "depth=18, width=8"]
    assert summary.column_labels == [
        "stem=cifar, method=ast, target_rate=0.3", "stem=cifar, method=full",
        "model=vit, method=ast, target_rate=0.3", "model=vit, method=full"]
    assert settings_label({"lr": 1e-05, "x": 0.1 + 0.2, "n": None, "s": "a"}) == \
        "lr=1e-05, x=0.30000000000000004, s=a"
