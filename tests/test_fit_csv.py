"""`scalelab fit --csv FILE` on one's own runs (Approaches 2 and 3 and their agreement), its
one-line refusals, and `scalelab fit OUT_DIR` printing a stored IsoFLOP study's agreement."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import scalelab
from scalelab.cli import app

from .conftest import TINY

# Chinchilla's published law (Hoffmann et al. 2022): N* ∝ C^(β/(α+β))
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
TRUE_A = BETA / (ALPHA + BETA)
BUDGETS = (1e17, 3e17, 1e18, 3e18, 1e19)


def law(n, d):
    return E + A / n ** ALPHA + B / d ** BETA


def write_runs(path, budget_column: bool = True, jitter: float = 0.0, noise: float = 0.002):
    """Five IsoFLOP budgets x seven sizes 4x either side of the optimum, C = 6·N·D; ``jitter``
    moves each run's data by up to that fraction (its C then only near its budget)."""
    rng = np.random.default_rng(0)
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    lines = ["N,tokens," + ("C," if budget_column else "") + "loss,seed"]
    for c in BUDGETS:
        for f in np.geomspace(0.25, 4, 7):
            n = g * (c / 6) ** TRUE_A * f
            d = c / (6 * n) * (1 + jitter * rng.uniform(-1, 1))
            loss = law(n, d) * np.exp(noise * rng.standard_normal())
            lines.append(f"{n:.6g},{d:.6g}," + (f"{c:g}," if budget_column else "")
                         + f"{loss:.6g},0")
    path.write_text("\n".join(lines) + "\n")
    return path


#: Wide enough that each approach's row is one line (tables wrap to fit 120 columns off a
#: terminal, and this one is wider).
WIDE = {"COLUMNS": "200"}


def table_row(text: str, name: str) -> list[tuple[float, float, float]]:
    """The (value, low, high) cells of the agreement table's row for approach ``name``."""
    line = next(line for line in text.splitlines() if name in line)
    return [tuple(map(float, m)) for m in re.findall(
        r"([-+\d.e]+) \[([-+\d.e]+), ([-+\d.e]+)\]", line)]


def test_a_csv_of_isoflop_runs_round_trips_through_the_cli_and_the_api(tmp_path):
    path = write_runs(tmp_path / "runs.csv")
    result = CliRunner().invoke(app, ["fit", "--csv", str(path), "--resamples", "100",
                                      "--target", "1e21"], env=WIDE)
    assert result.exit_code == 0, result.output
    for name in ("Approach 2 (IsoFLOP parabolas)", "Approach 3 (L(N, D), variable projection)"):
        (a, lo, hi), _, _ = table_row(result.stdout, name)
        assert lo <= TRUE_A <= hi and a == pytest.approx(TRUE_A, abs=0.02), (name, a, lo, hi)
    assert "N* at 1e+21" in result.stdout
    assert "agreement: agree — " in result.output
    assert re.search(r"recommended: Approach \d \(", result.output)
    assert "note: Approach 1 is left out" in result.output  # the notes say what is missing
    answer = scalelab.api.fit_csv(path, target=1e21, n_resamples=100)
    assert answer.agreement.verdict == "agree" and answer.approach2 is not None
    for e in answer.agreement.estimates:
        assert e.a_interval[0] <= TRUE_A <= e.a_interval[1], e.name
    assert answer.recommended.name == answer.agreement.recommended
    as_json = CliRunner().invoke(app, ["fit", "--csv", str(path), "--resamples", "100",
                                       "--format", "json"])
    entry, = json.loads(as_json.stdout)
    assert entry["title"] == "compute-optimal approaches"
    assert entry["compute_optimal"]["agreement"]["verdict"] == "agree"
    assert entry["compute_optimal"]["target"] == pytest.approx(10 * BUDGETS[-1])


def test_without_a_budget_column_k_gives_each_run_its_budget(tmp_path):
    path = write_runs(tmp_path / "runs.csv", budget_column=False, jitter=0.003)
    plain = scalelab.api.fit_csv(path, n_resamples=50)
    assert plain.approach2 is None
    assert any("--flops-per-param-token" in n for n in plain.notes)
    grouped = scalelab.api.fit_csv(path, flops_per_param_token=6, n_resamples=50)
    assert len(grouped.approach2.profiles) == len(BUDGETS)  # C within 1%: one budget
    assert grouped.approach2.a_interval[0] <= TRUE_A <= grouped.approach2.a_interval[1]
    assert grouped.k == pytest.approx(6, rel=0.01)
    result = CliRunner().invoke(app, ["fit", "--csv", str(path), "--resamples", "50",
                                      "--flops-per-param-token", "6"], env=WIDE)
    assert result.exit_code == 0 and "Approach 2 (IsoFLOP parabolas)" in result.stdout
    # a run whose k·N·D matches no other run's is left out of Approach 2, and said so
    with path.open("a") as f:
        f.write("1e8,1e9,3.0,0\n")
    lone = scalelab.api.fit_csv(path, flops_per_param_token=6, n_resamples=50)
    assert len(lone.approach2.profiles) == len(BUDGETS)
    assert any(n.startswith("1 run(s) share their C = 6·N·D") for n in lone.notes)


GOOD = "N,D,loss\n" + "".join(f"{n},{d},{law(float(n), float(d)):.4f}\n" for n, d in
                              (("1e6", "1e9"), ("2e6", "5e8"), ("4e6", "2.5e8"),
                               ("8e6", "1.25e8"), ("1e7", "1e8")))

BAD_CSVS = {
    "no data column": ("N,loss\n1e6,3\n", "no data column (allowed: D, tokens, examples; "
                       "the file has 'N', 'loss')"),
    "no loss column": ("N,D\n1e6,1e9\n", "no loss column (allowed: loss, L"),
    "two size columns": ("N,params,D,loss\n1,1,1,1\n", "columns 'N' and 'params' both give "
                         "the model size; keep one (allowed: N, params)"),
    "not a number": (GOOD.replace("2e6,", "big,"), "line 3: N: 'big' is not a number"),
    "not positive": (GOOD.replace(",2.5e8,", ",-5,"), "line 4: D: -5 is not positive"),
    "empty": (GOOD.replace(",1e8,", ",,"), "line 6: D: empty; every run needs its model size"),
    "too few runs": ("".join(GOOD.splitlines(keepends=True)[:5]),
                     "4 completed run(s); the approaches need at least 5"),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_a_bad_csv_is_one_line_naming_the_file(tmp_path, run_cli, case):
    text, message = BAD_CSVS[case]
    path = tmp_path / "runs.csv"
    path.write_text(text)
    result = run_cli("fit", "--csv", path, "--target", "1e21", "--bootstrap", "10")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: ") and message in lines[0], lines


def test_unreadable_files_and_misplaced_options_are_one_line(tmp_path, run_cli):
    missing = run_cli("fit", "--csv", tmp_path / "nope.csv")
    assert missing.exit_code == 2 and "nope.csv: no such CSV file" in missing.stderr
    folder = run_cli("fit", "--csv", tmp_path, "--target", "1e21")
    assert folder.exit_code == 2 and "is a folder, not a CSV file" in folder.stderr
    path = tmp_path / "runs.csv"
    path.write_text(GOOD)
    named = run_cli("fit", "--csv", path, "--x", "N", "--y", "loss", "--target", "1e21")
    assert named.exit_code == 2 and "--target and --flops-per-param-token go with" in named.stderr
    bad_k = run_cli("fit", "--csv", path, "--flops-per-param-token", "0")
    assert bad_k.exit_code == 2 and "--flops-per-param-token: expected a positive" in bad_k.stderr
    no_loss = tmp_path / "no_loss.csv"
    no_loss.write_text(GOOD.replace("loss", "val"))
    hint = run_cli("fit", "--csv", no_loss)
    assert hint.exit_code == 2 and "give a loss column (loss or L) beside N and D" in hint.stderr
    # a named law on the same file is still today's fit
    power = run_cli("fit", "--csv", path, "--x", "N", "--y", "loss", "--form", "power",
                    "--bootstrap", "10", "--format", "json")
    assert power.exit_code == 0 and json.loads(power.stdout)[0]["form"] == "power"


@pytest.fixture(scope="module")
def isoflop_store(tmp_path_factory):
    """A tiny IsoFLOP study (2 budgets x 3 widths, trained: about 20 s)."""
    folder = tmp_path_factory.mktemp("isoflop")
    design = {"isoflop": {"budgets": [1e7, 3e7], "sizes": {"width": [4, 8, 16]},
                          "data": "train.max_steps"}}
    path = folder / "iso.yaml"
    path.write_text(yaml.safe_dump({**TINY, "grid": {}, "seeds": [0], "design": design},
                                   sort_keys=False))
    out = folder / "out"
    assert scalelab.run(path, out=out, workers=1, device="cpu").ok
    return out


@pytest.mark.slow
def test_fit_on_a_stored_isoflop_study_prints_the_agreement(isoflop_store, run_cli,
                                                             monkeypatch):
    monkeypatch.setenv("COLUMNS", WIDE["COLUMNS"])
    result = run_cli("fit", isoflop_store, "--bootstrap", "30", "--target", "1e9")
    assert result.exit_code == 0, result.output
    assert "how big a model for C = 1e+09 FLOPs" in result.stdout
    assert "Approach 2 (IsoFLOP parabolas)" in result.stdout
    assert "Approach 3 (L(N, D), variable projection)" in result.stdout
    assert re.search(r"^agreement: (agree|disagree|not compared) — ", result.stderr, re.M)
    assert "recommended: " in result.stderr
    as_json = run_cli("fit", isoflop_store, "--bootstrap", "30", "--format", "json")
    last = json.loads(as_json.stdout)[-1]
    assert last["title"] == "compute-optimal approaches"
    assert last["compute_optimal"]["approach2"]["profiles"]
    # next proposes the next IsoFLOP profile: the design's sizes at the new budget, N* from
    # the recommended approach; --append adds the budget to the design
    study = isoflop_store.parent / "iso.yaml"
    proposed = run_cli("next", isoflop_store, "--budget", "1e8", "--bootstrap", "20",
                       "--append", "--format", "json")
    assert proposed.exit_code == 0, proposed.output
    result = json.loads(proposed.stdout)
    assert result["approach"] == result["agreement"]["recommended"]
    assert sorted(p["point"]["width"] for p in result["proposals"]) == [4, 8, 16]
    assert [p["kind"] for p in result["proposals"]].count("compute-optimal") == 1
    for p in result["proposals"]:  # each cell spends the new budget, as the design counts it
        assert p["point"]["budget"] == 1e8 and abs(p["flops"] / 1e8 - 1) <= 0.02
        assert len(p["run_ids"]) == 1 and p["interval"][0] <= p["predicted"] <= p["interval"][1]
    assert result["appended"] == 1 and result["appended_to"] == "design.isoflop.budgets"
    assert yaml.safe_load(study.read_text())["design"]["isoflop"]["budgets"] == [1e7, 3e7, 1e8]
    planned = scalelab.api.dry_run(study, out=isoflop_store)
    new = sorted(r.run_id for r, state in planned if state == "new")
    assert new == sorted(p["run_ids"][0] for p in result["proposals"])
    again = run_cli("next", isoflop_store, "--budget", "1e8", "--bootstrap", "20", "--append")
    assert again.exit_code == 0 and "already has the budget 1e+08" in again.stderr
