"""Report generation on a fixture store (no training), and the analysis commands."""

import base64
import json
import re

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from scalelab.cli import app
from scalelab.report import write_report
from scalelab.store import Store

cli = CliRunner()


@pytest.mark.slow
def test_report_files_are_complete_and_self_contained(fixture_store):
    report = write_report(fixture_store, n_resamples=60)
    html = report.html.read_text()
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert "http:" not in without_data and "https:" not in without_data
    assert all(v == "" for v in re.findall(r'(?:src|href)="([^"]*)"', without_data))
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) >= 4
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    md = report.markdown.read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (fixture_store / link).is_file()
    assert "Backtest" in md and "CI low" in md and "p (Holm)" in md
    assert "Per-shape optimum" in md
    law = json.loads(report.scaling_law.read_text())
    joint = next(f for f in law["fits"] if f["form"] == "chinchilla")
    assert joint["params"]["alpha"] == pytest.approx(0.5, rel=0.15)
    assert set(joint["intervals"]) == {"E", "A", "B", "alpha", "beta"}
    assert joint["backtest"]["rmsle"] < 0.05 and joint["allocation"]
    assert "tta" in report.comparison_table.read_text()
    assert all(w["nuisance"] == {"lr": 0.1} and w["at_edge"] == ["lr"] for w in law["winners"])
    assert any("edge of its grid" in n for n in law["notes"])
    assert all(p.exists() for p in report.figures)


def test_compare_json_matches_scipy_paired_t_test(fixture_store):
    result = cli.invoke(app, ["compare", str(fixture_store), "--metric", "test_acc", "--by",
                              "method", "--baseline", "standard", "--paired-by", "seed",
                              "--within", "width", "--within", "num_train", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 12
    with Store.open(fixture_store) as store:
        recs = [r for r in store.records() if r["lr"] == 0.1 and r["width"] == 8
                and r["num_train"] == 500]
    by = {(r["name"], r["seed"]): r["test_acc"] for r in recs}
    ref = stats.ttest_rel([by["tta", s] for s in range(3)], [by["standard", s] for s in range(3)])
    row = next(r for r in rows if r["candidate"] == "tta [width=8] [num_train=500]")
    assert row["p_value"] == pytest.approx(ref.pvalue, abs=1e-10)
    assert row["t_statistic"] == pytest.approx(ref.statistic, abs=1e-10)


def test_fit_command_on_a_store_and_on_a_csv(fixture_store, tmp_path):
    result = cli.invoke(app, ["fit", str(fixture_store), "--x", "params,data", "--form",
                              "chinchilla", "--by", "method", "--bootstrap", "30", "--format", "json"])
    assert result.exit_code == 0, result.output
    fits = json.loads(result.stdout)
    assert len(fits) == 2 and all(f["converged"] for f in fits)
    for f in fits:  # E, B and beta trade off over a 4x data range; the law itself is pinned
        p = f["params"]
        for n, d in ((480, 500), (3840, 2000)):
            fitted = p["E"] + p["A"] * n ** -p["alpha"] + p["B"] * d ** -p["beta"]
            assert fitted == pytest.approx(1.2 + 30 * n**-0.5 + 25 * d**-0.4, rel=0.02)
    # without --form, a stored study's joint law is the report's (chinchilla), and its data
    # axis is named as the report names it
    plain = cli.invoke(app, ["fit", str(fixture_store), "--x", "params,data", "--by", "method",
                             "--bootstrap", "30", "--format", "json"])
    assert plain.exit_code == 0, plain.output
    assert {(f["form"], tuple(f["x"])) for f in json.loads(plain.stdout)} == \
        {("chinchilla", ("n_params", "num_train"))}
    csv = tmp_path / "r.csv"
    x = np.geomspace(1e3, 1e6, 10)
    csv.write_text("size,loss\n" + "".join(f"{a},{3 * a ** -0.2}\n" for a in x))
    result = cli.invoke(app, ["fit", "--csv", str(csv), "--x", "size", "--y", "loss", "--form",
                              "power", "--bootstrap", "20", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["params"]["alpha"] == pytest.approx(0.2, rel=1e-6)
    bad = cli.invoke(app, ["fit", "--csv", str(csv), "--x", "nope"])
    assert bad.exit_code == 2 and "no column 'nope'" in bad.output
    bad = cli.invoke(app, ["fit", "--csv", str(csv), "--x", "size", "--y", "loss", "--form", "cubic"])
    assert bad.exit_code == 2 and "unknown law 'cubic'" in bad.output
    bad = cli.invoke(app, ["fit", "--csv", str(csv), "--x", "size", "--y", "loss", "--holdout", "abc"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1
    assert "holdout: expected 'largest', a fraction 0 < f < 1" in bad.output
    text = cli.invoke(app, ["fit", "--csv", str(csv), "--x", "size", "--y", "loss", "--form",
                            "power", "--bootstrap", "20"])
    assert "verdict: trustworthy" in text.output and "fitted on 8 points" in text.output


def test_joint_fit_json_carries_diagnostics_verdict_and_allocation(fixture_store):
    result = cli.invoke(app, ["fit", str(fixture_store), "--x", "params,data", "--form",
                              "chinchilla", "--bootstrap", "30", "--format", "json"])
    assert result.exit_code == 0, result.output
    for f in json.loads(result.stdout):
        assert f["verdict"] in ("trustworthy", "use with care")
        assert all({"severity", "code", "message"} == set(d) for d in f["diagnostics"])
        assert len(f["allocation"]) == 3 and "k = 6 FLOPs" in f["allocation_note"]
        assert f["bootstrap"]["resamples"] == 30


@pytest.mark.slow
def test_report_command(fixture_store):
    result = cli.invoke(app, ["report", str(fixture_store), "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    assert (fixture_store / "report.html").exists() and "wrote" in result.output


def test_a_report_built_from_fewer_runs_says_so(tmp_path, tiny_study):
    import sqlite3

    import scalelab

    out = tmp_path / "out"
    scalelab.run(tiny_study(tmp_path), out=out, device="cpu", workers=1)
    first = scalelab.api.report(out, n_resamples=20)
    assert first.replaced_runs is None
    with sqlite3.connect(out / "results.sqlite") as db:  # someone deletes a run
        db.execute("DELETE FROM runs WHERE run_id = (SELECT run_id FROM runs LIMIT 1)")
    result = CliRunner().invoke(app, ["report", str(out), "--bootstrap", "20"])
    assert result.exit_code == 0
    assert "the report is built from 3 runs, fewer than the 4 of the one it replaced" \
        in result.output
    assert "This report is built from 3 runs, fewer than the 4" in (out / "report.md").read_text()
    assert not list(out.glob(".*.tmp*")) and not list((out / "figures").glob(".*"))


def test_the_analysis_after_training_says_what_it_does_on_stderr_and_never_in_json(
        tmp_path, tiny_study, run_cli):
    study = tiny_study(tmp_path, grid={"width": [4, 8, 16]})
    out = tmp_path / "out"
    text = run_cli("run", study, "--out", out, "--workers", "1", "--device", "cpu",
                   "--bootstrap", "20")
    assert text.exit_code == 0, text.output
    lines = text.stderr.splitlines()
    analysing = next(i for i, line in enumerate(lines) if line.startswith("analysing: "))
    assert lines[analysing] == "analysing: 1 fit, 20 bootstrap resamples each …"
    writing = lines[analysing + 1]
    assert re.fullmatch(r"writing \d+ figures \(PNG and SVG\) and the report into .+ …",
                        writing), lines
    assert "analysing" not in text.stdout and "writing" not in text.stdout
    (out / "report.html").unlink()  # the report is rewritten: its phases are said again
    as_json = run_cli("run", study, "--out", out, "--device", "cpu", "--bootstrap", "20",
                      "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["report"].endswith("report.html")
    assert "analysing" not in as_json.output and "writing" not in as_json.output
    report = run_cli("report", out, "--bootstrap", "20")
    assert report.exit_code == 0 and "analysing: 1 fit, 20 bootstrap resamples each …" \
        in report.stderr and "writing " in report.stderr and not report.stdout.strip()
