"""Faults in the inputs of the newer commands (parts 3, 5 and 6 of the hardening issue):
`next --append` edits the right file whole; damaged caches and environments; one line for
every mistake in `fit --csv`, `next`, `--set`, `compare --metric`, `coordcheck --widths`;
`--dry-run` streams."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import scalelab
from scalelab.registry import models
from scalelab.store import Store

STUDY_TEXT = """\
name: s   # the name
task: {name: mnist1d, num_train: 200, num_val: 100, num_test: 200, pool_size: 400}
model: {name: mlp, depth: 1}
train: {optimizer: adam, lr: 0.01, batch_size: 50, max_steps: 20, eval_every: 10}
grid:
  - {width: [4, 8]}   # first grid
seeds: [0]
"""


#: What the analysis phase says it is doing (stderr, never an error).
PROGRESS = ("analysing:", "writing ", "compute-optimal approaches:", "hyperparameter laws:")


def errors(result) -> list[str]:
    """Stderr's lines other than the analysis phase's progress lines."""
    return [line for line in result.stderr.splitlines()
            if line.strip() and not line.startswith(PROGRESS)]


# ----------------------------------------------------------------- 3. next --append


def test_concurrent_appends_each_keep_their_entries(tmp_path):
    """Three processes appending at once: every entry of every process is in the file."""
    path = tmp_path / "s.yaml"
    path.write_text(STUDY_TEXT)
    go = tmp_path / "go"
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from scalelab.proposal import append_to_study
        path, go, i = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
        while not go.exists():
            time.sleep(0.001)
        for j in range(4):
            assert append_to_study(path, [{"width": [100 + 10 * i + j]}]) == 1
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), str(go), str(i)],
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    import time
    time.sleep(4)  # every process imported and waiting
    go.touch()
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    grids = yaml.safe_load(path.read_text())["grid"]
    widths = sorted(g["width"][0] for g in grids[1:])
    assert widths == sorted(100 + 10 * i + j for i in range(3) for j in range(4))
    assert "# first grid" in path.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_append_through_a_link_edits_the_real_study_and_keeps_its_mode(tmp_path):
    from scalelab.proposal import append_to_study

    real = tmp_path / "project" / "study.yaml"
    real.parent.mkdir()
    real.write_text(STUDY_TEXT)
    real.chmod(0o640)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    assert append_to_study(link, [{"width": [32]}]) == 1
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert yaml.safe_load(real.read_text())["grid"][-1] == {"width": [32]}
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    # an append through the link waits for whoever holds the real file
    import fcntl
    import time

    script = ("import sys\nfrom pathlib import Path\nfrom scalelab.proposal import "
              "append_to_study\nappend_to_study(Path(sys.argv[1]), [{'width': [64]}])\n")
    with open(real, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        proc = subprocess.Popen([sys.executable, "-c", script, str(link)])
        time.sleep(6)
        assert proc.poll() is None and "64" not in real.read_text()  # still waiting
    assert proc.wait(timeout=60) == 0
    assert yaml.safe_load(real.read_text())["grid"][-1] == {"width": [64]}
    assert link.is_symlink() and stat.S_IMODE(real.stat().st_mode) == 0o640


def test_append_keeps_a_four_space_layout_line_for_line(tmp_path):
    from scalelab.proposal import append_to_study

    text = textwrap.dedent("""\
        # my study
        name: s   # the name
        task:
            name: mnist1d
            num_train: 200
            num_val: 100
            num_test: 200
            pool_size: 400
        model: {name: mlp, depth: 1}
        train:
            optimizer: adam
            lr: 0.01          # tuned by hand
            batch_size: 50
            max_steps: 20
            eval_every: 10
        grid:
            width: [4, 8]     # widths
            num_train:
                - 100
                - 200
        seeds:
            - 0
        """)
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert append_to_study(path, [{"width": [32], "num_train": [150]}]) == 1
    new = path.read_text()
    before, after = text.splitlines(), new.splitlines()
    added = "  - {width: [32], num_train: [150]}"
    assert after[after.index(added) + 1] == "seeds:"  # a line of its own after the grid's last
    after.remove(added)
    # the grid's first line becomes the list's first item; nothing else changes
    assert [(a, b) for a, b in zip(before, after, strict=True) if a != b] == [
        ("    width: [4, 8]     # widths", "  - width: [4, 8]     # widths")]
    assert yaml.safe_load(new)["grid"] == [{"width": [4, 8], "num_train": [100, 200]},
                                           {"width": [32], "num_train": [150]}]


def test_recorded_study_of_an_old_store_is_found_from_the_store_not_the_current_folder(
        tmp_path, monkeypatch):
    from scalelab.errors import ScalelabError
    from scalelab.proposal import recorded_study

    # a name no folder above the test's holds (a walk upward reaches / otherwise)
    name = "study-of-the-old-store-test.yaml"
    project, other = tmp_path / "project", tmp_path / "other"
    (project / "runs" / "s").mkdir(parents=True)
    other.mkdir()
    (project / name).write_text(STUDY_TEXT)
    (other / name).write_text(STUDY_TEXT)
    monkeypatch.chdir(other)
    assert recorded_study(project / "runs" / "s", name) == project / name
    assert recorded_study(project / "runs" / "s", str(project / name)) == project / name
    with pytest.raises(ScalelabError, match="pass --study FILE"):
        recorded_study(tmp_path / "elsewhere", name)


# A small study of the known-law model family of test_next: the joint law is fitted on it.
LAW_STUDY = """\
# A synthetic Chinchilla study: the test model trains to a known law.
name: law_study
task: {name: mnist1d, num_val: 200, num_test: 500, pool_size: 6000}
model: {name: _law}
train: {optimizer: sgd, lr: 0.1, batch_size: 50, epochs: 1, eval_every: 1000}

grid:
    width: [2, 4, 8, 16, 32]  # N = 40 x width
    num_train: [250, 500, 1000, 2000]
seeds: 2
analysis: {forms: [power_offset]}
"""


@pytest.fixture(scope="module")
def law_run(tmp_path_factory):
    """projA/study.yaml, run from projA as `study.yaml` (a relative path) into projA/out."""
    from .test_next import LawFamily

    mp = pytest.MonkeyPatch()
    mp.setitem(models._entries, "_law", LawFamily)
    root = tmp_path_factory.mktemp("law")
    project = root / "projA"
    project.mkdir()
    (project / "study.yaml").write_text(LAW_STUDY)
    mp.chdir(project)
    assert scalelab.run("study.yaml", out="out", workers=1, device="cpu").ok
    mp.undo()
    mp.setitem(models._entries, "_law", LawFamily)
    yield project
    mp.undo()


def _k(out) -> float:
    rows = [r for r in scalelab.api.records(out) if r["status"] == "completed"]
    return float(np.median([r["train_flops"] / (r["n_params"] * r["num_train"]) for r in rows]))


def test_next_append_from_another_folder_edits_the_study_that_was_run(law_run, tmp_path,
                                                                       monkeypatch, run_cli):
    project = law_run
    out = project / "out"
    with Store.open(out) as store:
        assert store.meta()["source"] == str(project / "study.yaml")  # absolute
    other = tmp_path / "projB"
    other.mkdir()
    (other / "study.yaml").write_text(LAW_STUDY)  # another project's study of the same name
    monkeypatch.chdir(other)
    before = (project / "study.yaml").read_text()
    result = run_cli("next", out, "--budget", _k(out) * 2000 * 2000, "--append",
                     "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    assert (other / "study.yaml").read_text() == LAW_STUDY
    after = (project / "study.yaml").read_text()
    assert after != before and str(project / "study.yaml") in result.stderr
    assert len(yaml.safe_load(after)["grid"]) > 1


def test_next_refuses_a_budget_far_below_the_studied_runs_asking_for_a_larger_one(
        law_run, run_cli):
    out = law_run / "out"
    before = (law_run / "study.yaml").read_text()
    result = run_cli("next", out, "--budget", _k(out) * 0.5 * 0.5, "--bootstrap", "50",
                     "--append", "--study", law_run / "study.yaml")
    assert result.exit_code == 2 and len(errors(result)) == 1, result.output
    line = errors(result)[0]
    assert "below the smallest size or data studied" in line
    assert "choose a larger --budget" in line and "smaller --budget" not in line
    assert "the studied runs spend" in line
    assert (law_run / "study.yaml").read_text() == before


# ------------------------------------------------------ 5. damaged caches and environments


def _cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "mnist1d").glob("*.npz"))


def test_a_cached_dataset_cut_in_half_is_generated_again_once(tmp_path, tiny_study,
                                                              monkeypatch, run_cli):
    from scalelab.tasks import mnist1d

    cache = tmp_path / "cache"
    monkeypatch.setenv("SCALELAB_CACHE", str(cache))
    mnist1d._split.cache_clear()
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    study = tiny_study(tmp_path)
    first = run_cli("run", study, "--out", tmp_path / "a", "--workers", "1", "--no-report")
    assert first.exit_code == 0, first.output
    files = _cache_files(cache)
    assert len(files) == 2
    whole = {f: f.read_bytes() for f in files}
    damaged = files[0]
    damaged.write_bytes(whole[damaged][: len(whole[damaged]) // 2])  # power loss
    mnist1d._split.cache_clear()
    second = run_cli("run", study, "--out", tmp_path / "b", "--workers", "1", "--no-report")
    assert second.exit_code == 0, second.output
    warnings = [line for line in errors(second) if "damaged" in line]
    assert len(warnings) == 1 and str(damaged) in warnings[0], second.stderr
    assert "generating it again" in warnings[0]
    assert damaged.read_bytes() == whole[damaged]  # the same data, whole again
    mnist1d._split.cache_clear()
    third = run_cli("run", study, "--out", tmp_path / "c", "--workers", "1", "--no-report")
    assert third.exit_code == 0 and "damaged" not in third.stderr
    mnist1d._split.cache_clear()
    assert all(any(Path(s).parent == f.parent and s.endswith(".tmp") for s in synced)
               for f in files)  # each cached file was flushed to the disk before its rename


def test_a_synthetic_image_set_with_a_cut_file_is_generated_again_once(tmp_path, monkeypatch,
                                                                       capsys):
    from scalelab.plugin import instantiate
    from scalelab.registry import tasks
    from scalelab.tasks import _images

    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path / "cache"))
    config = {"name": "mnist", "synthetic": 20, "num_val": 20}
    first = instantiate(tasks, config).load()
    folder, = (tmp_path / "cache" / "synthetic").iterdir()
    victim = next(p for p in sorted(folder.iterdir()) if p.name.startswith("train-images"))
    victim.write_bytes(victim.read_bytes()[:200])
    monkeypatch.setattr(_images, "_read_cache", {})  # a new process
    monkeypatch.setattr(_images, "_sound", set())
    capsys.readouterr()
    again = instantiate(tasks, config).load()
    assert bool((again.x_train == first.x_train).all())
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "damaged" in lines[0] and victim.name in lines[0], lines
    assert [p.name for p in (tmp_path / "cache" / "synthetic").iterdir()] == [folder.name]


def test_a_cache_that_is_a_file_is_one_line_and_nothing_is_written(tmp_path, tiny_study,
                                                                   monkeypatch, run_cli):
    from scalelab.tasks import mnist1d

    target = tmp_path / "cache"
    target.write_text("not a folder")
    monkeypatch.setenv("SCALELAB_CACHE", str(target))
    mnist1d._split.cache_clear()
    result = run_cli("run", tiny_study(tmp_path), "--out", tmp_path / "out", "--workers", "1")
    assert result.exit_code == 2 and len(errors(result)) == 1, result.output
    assert errors(result)[0].startswith(f"error: {tiny_study(tmp_path)}: SCALELAB_CACHE: "
                                        f"{target} is a file, not a folder")
    assert not (tmp_path / "out").exists() and target.read_text() == "not a folder"


@contextlib.contextmanager
def unwritable(folder: Path):
    """``folder`` made unwritable for this process: read-only permissions, or for root (who
    writes anywhere) the immutable attribute."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root where chattr +i is not available")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_unwritable_cache_folder_is_one_line_and_nothing_is_written(tmp_path, tiny_study,
                                                                       monkeypatch, run_cli):
    from scalelab.tasks import mnist1d

    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("SCALELAB_CACHE", str(cache))
    mnist1d._split.cache_clear()
    study = tiny_study(tmp_path)
    with unwritable(cache):
        assert not os.access(cache, os.W_OK)
        result = run_cli("run", study, "--out", tmp_path / "out", "--workers", "1")
    assert result.exit_code == 2 and len(errors(result)) == 1, result.output
    assert errors(result)[0].startswith(f"error: {study}: SCALELAB_CACHE: {cache} cannot be "
                                        "written to")
    assert not (tmp_path / "out").exists() and list(cache.iterdir()) == []


def test_report_on_a_full_disk_leaves_no_temporary(tmp_path, tiny_study, monkeypatch, capsys,
                                                   run_cli):
    from matplotlib.figure import Figure

    out = tmp_path / "out"
    assert scalelab.run(tiny_study(tmp_path), out=out, workers=1, device="cpu").ok
    capsys.readouterr()
    assert run_cli("report", out, "--bootstrap", "20").exit_code == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def full(self, target, *args, **kwargs):
        (target.write if hasattr(target, "write") else Path(target).write_bytes)(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full)
    for _ in range(3):  # each retry on a full disk
        result = run_cli("report", out, "--bootstrap", "20")
        assert result.exit_code == 2 and len(errors(result)) == 1, result.output
        assert "No space left on device" in errors(result)[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    monkeypatch.undo()

    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while the markdown is written
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and \
                ".report.md." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = run_cli("report", out, "--bootstrap", "20")
    assert result.exit_code == 2 and len(errors(result)) == 1, result.output
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------- 6. one line for every mistake


def _law_csv(cells: dict[tuple[int, str], str] | None = None, header: str = "n_params,test_loss"
             ) -> str:
    rows = [[str(n), f"{2 + 10 / n ** 0.5 + 0.001 * s:.5f}"] for n in (100, 200, 400, 800, 1600)
            for s in range(2)]
    for (i, column), value in (cells or {}).items():
        rows[i][0 if column == "n_params" else 1] = value
    return header + "\n" + "\n".join(",".join(r) for r in rows) + "\n"


CSV_CASES = {
    "nan": (_law_csv({(3, "test_loss"): "nan"}).encode(),
            "line 5: test_loss: nan is not a finite number"),
    "negative": (_law_csv({(2, "n_params"): "-200"}).encode(),
                 "line 4: n_params: -200 is not positive"),
    "text": (_law_csv({(6, "n_params"): "lots"}).encode(),
             "line 8: n_params: 'lots' is not a number"),
    "not utf-8": (_law_csv().encode().replace(b"\n400,", b"\n4\xff0,"),
                  "line 6: not UTF-8 text (byte 0xff)"),
    "too many fields": (_law_csv({(1, "test_loss"): "2.1,7"}).encode(),
                        "line 3: 3 fields, but the header names 2 columns"),
    "too few fields": (_law_csv().encode().replace(b"\n200,", b"\n", 1),
                       "line 4: 1 fields, but the header names 2 columns"),
    "nul byte": (_law_csv().encode().replace(b"\n800,", b"\n8\x0000,", 1),
                 "line 8: a NUL byte"),
    "huge field": (_law_csv({(4, "test_loss"): "9" * 200_000}).encode(),
                   "line 6: not readable as CSV: a field longer than 131,072 characters"),
    "duplicated column": (_law_csv(header="n_params,n_params").encode(),
                          "line 1: column 'n_params' is named 2 times (columns 1, 2)"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_fit_csv_mistakes_are_one_line(tmp_path, run_cli, case):
    data, message = CSV_CASES[case]
    path = tmp_path / "results.csv"
    path.write_bytes(data)
    result = run_cli("fit", "--csv", path, "--bootstrap", "10")
    assert result.exit_code == 2 and len(errors(result)) == 1, result.output
    assert errors(result)[0].startswith(f"error: {path}: ") and message in errors(result)[0], \
        errors(result)


def test_fit_csv_reads_a_byte_order_mark_as_none(tmp_path, run_cli):
    plain, marked = tmp_path / "plain.csv", tmp_path / "marked.csv"
    plain.write_text(_law_csv())
    marked.write_bytes(b"\xef\xbb\xbf" + _law_csv().encode())
    a = run_cli("fit", "--csv", plain, "--bootstrap", "10", "--format", "json")
    b = run_cli("fit", "--csv", marked, "--bootstrap", "10", "--format", "json")
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    assert json.loads(a.stdout)[0]["params"] == json.loads(b.stdout)[0]["params"]


def test_compare_on_a_text_metric_is_one_line(tmp_path, run_cli):
    path = tmp_path / "methods.csv"
    path.write_text("method,seed,test_acc,note\n" + "".join(
        f"{m},{s},{0.8 + 0.01 * s + (0.02 if m == 'new' else 0):.3f},run {s}\n"
        for m in ("full", "new") for s in range(3)))
    result = run_cli("compare", "--csv", path, "--metric", "note", "--by", "method",
                     "--baseline", "full")
    assert result.exit_code == 2 and len(errors(result)) == 1, result.output
    assert f"{path}: line 2: note: 'run 0' is not a number" in errors(result)[0]
    assert run_cli("compare", "--csv", path, "--metric", "test_acc", "--by", "method",
                   "--baseline", "full").exit_code == 0


@pytest.mark.parametrize(("override", "field"), [
    ("grid.width=[true]", "grid.model.width[0]: expected a number, got true"),
    ("grid.width=[4, false]", "grid.model.width[1]: expected a number, got false"),
    ("train.lr=true", "train.lr: expected a number, got true"),
    ("seeds=[true]", "seeds.0: expected a number, got true"),
])
def test_a_boolean_where_a_number_is_expected_is_one_line(tmp_path, tiny_study, run_cli,
                                                          override, field):
    study = tiny_study(tmp_path)
    result = run_cli("run", study, "--out", tmp_path / "out", "--set", override, "--dry-run")
    assert result.exit_code == 2 and len(errors(result)) == 1, result.output
    assert errors(result)[0] == f"error: {study}: {field} (a yes/no value, which would be " \
                                f"read as {1 if 'true' in field else 0})"


@pytest.mark.parametrize(("widths", "message"), [
    ("0,4,8", "--widths: 0 is not a width; give whole numbers of at least 1"),
    ("-4,4,8", "--widths: -4 is not a width"),
    ("8,8,16", "--widths: 8 is given 2 times; give each width once"),
    ("4,8,1000000000000", "--widths: 1000000000000: the mlp model needs"),
    ("4,8,x", "--widths: expected comma-separated whole numbers"),
])
def test_coordcheck_width_mistakes_are_one_line(tmp_path, tiny_study, run_cli, widths,
                                                message):
    out = tmp_path / "out"
    result = run_cli("coordcheck", tiny_study(tmp_path), f"--widths={widths}", "--out", out,
                     "--steps", "2", "--seeds", "1")
    assert result.exit_code == 2 and len(errors(result)) == 1, result.output
    assert errors(result)[0].startswith(f"error: {message}"), errors(result)
    assert not out.exists()


def _peak_rss_mb(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    """Peak resident memory (MB) of ``python -m scalelab ARGS`` in a process of its own."""
    code = ("import resource, runpy, sys\n"
            "sys.argv = ['scalelab', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('scalelab', run_name='__main__')\n"
            "finally:\n"
            "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600)
    return int(done.stderr.strip().splitlines()[-1]) / 1024, done


@pytest.mark.slow
def test_a_dry_run_of_a_hundred_thousand_cells_streams(tmp_path, tiny_study):
    (tmp_path / "small").mkdir()
    small = tiny_study(tmp_path / "small")
    big = tiny_study(tmp_path, name="big", max_runs=100_000, seeds=[0],
                     grid={"width": list(range(1, 101)),
                           "train.lr": [round(i * 1e-5, 5) for i in range(1, 1001)]})
    base, _ = _peak_rss_mb(["run", str(small), "--dry-run", "--out", str(tmp_path / "o")])
    peak, done = _peak_rss_mb(["run", str(big), "--dry-run", "--out", str(tmp_path / "o")])
    assert done.returncode == 0, done.stderr[-2000:]
    # 10^5 resolved configs held at once take hundreds of MB; streamed, a few dozen at most
    assert peak - base < 80, (base, peak)
    assert "100000 runs, the first 500 shown" in done.stdout
    assert "... and 99,500 more runs; by state: 100,000 new" in done.stderr
    assert not (tmp_path / "o").exists()
