"""Bad input gets one line, exit code 2, and nothing written (part of the hardening issue)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from scalelab import cli


def run_main(monkeypatch, capsys, *args):
    """Run the `scalelab` entry point as a user would; (exit code, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["scalelab", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    return exited.value.code, [line for line in capsys.readouterr().err.splitlines() if line]


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=.inf", "train.lr: Input should be a finite number"),
    ("train.lr=.nan", "train.lr: Input should be a finite number"),
    ("seeds=[1.0e+20]", "seeds.0: "),
    ("seeds=[-1]", "seeds.0: Input should be greater than or equal to 0"),
    ("name=" + "a" * 300, "name: String should have at most 100 characters"),
])
def test_values_that_would_fail_later_are_refused_up_front(tmp_path, tiny_study, monkeypatch,
                                                           capsys, override, message):
    study = tiny_study(tmp_path)
    code, err = run_main(monkeypatch, capsys, "run", study, "--out", tmp_path / "out",
                         "--set", override)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, tiny_study, monkeypatch,
                                                        capsys):
    study = tiny_study(tmp_path)
    text = study.read_text().replace("  lr: 0.01\n", "  lr: 0.01\n  lr: 0.02\n")
    assert text.count("lr:") == 2
    study.write_text(text)
    code, err = run_main(monkeypatch, capsys, "run", study, "--out", tmp_path / "out")
    line = yaml.safe_load(text)["train"]  # plain YAML keeps the last value silently
    assert line["lr"] == 0.02
    assert code == 2 and len(err) == 1
    assert "lr: duplicate key 'lr' (lines" in err[0] and "keep one" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shard", ["5/3", "abc", "1/0", "-1/3"])
def test_a_bad_shard_is_refused_before_anything_is_written(tmp_path, tiny_study, monkeypatch,
                                                           capsys, shard):
    code, err = run_main(monkeypatch, capsys, "run", tiny_study(tmp_path), "--out",
                         tmp_path / "out", f"--shard={shard}")
    assert code == 2 and err == [f"error: --shard: expected i/k with 0 <= i < k (e.g. 0/4), "
                                 f"got {shard!r}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "0"], "Invalid value for '--workers'"),
    (["--workers", "abc"], "Invalid value for '--workers'"),
    (["--format", "xml"], "Invalid value for '--format'"),
    (["--bogus"], "No such option: --bogus"),
])
def test_option_errors_are_one_line(tmp_path, tiny_study, monkeypatch, capsys, args, message):
    code, err = run_main(monkeypatch, capsys, "run", tiny_study(tmp_path), "--out",
                         tmp_path / "out", *args)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: scalelab run: ")
    assert message in err[0] and "(see `scalelab run --help`)" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c(tmp_path, tiny_study):
    study = tiny_study(tmp_path, train={"optimizer": "adam", "lr": 0.01, "batch_size": 50,
                                        "max_steps": 200_000, "eval_every": 1000})
    proc = subprocess.Popen([sys.executable, "-m", "scalelab", "run", str(study), "--out",
                             str(tmp_path / "out")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.time() + 60
    while not (tmp_path / "out" / "results.sqlite").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # training has started
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == ["error: interrupted; finished runs are stored, rerun the same command to "
                     "train the rest"]
    assert "Traceback" not in err and "leaked semaphore" not in err


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
@pytest.mark.parametrize("command", ["status", "report", "export", "run"])
def test_a_damaged_store_is_refused_in_one_line_and_left_as_it_is(tmp_path, tiny_study,
                                                                  monkeypatch, capsys, damage,
                                                                  command):
    study = tiny_study(tmp_path)
    out = tmp_path / "out"
    code, _ = run_main(monkeypatch, capsys, "run", study, "--out", out, "--workers", 1)
    assert code == 0
    store = out / "results.sqlite"
    for extra in ("results.sqlite-wal", "results.sqlite-shm"):
        (out / extra).unlink(missing_ok=True)
    data = store.read_bytes()
    store.write_bytes({"empty": b"", "garbage": b"not a database at all " * 400,
                       "truncated": data[:len(data) // 2]}[damage])
    before = store.read_bytes()
    args = {"status": ["status", out], "report": ["report", out],
            "export": ["export", out], "run": ["run", study, "--out", out]}[command]
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and len(err) == 1, err
    assert str(store) in err[0] and ("damaged" in err[0] or "empty (0 bytes)" in err[0])
    assert "move it away" in err[0]
    assert store.read_bytes() == before


def test_a_corrupt_checkpoint_is_one_line(tmp_path):
    from scalelab.errors import ScalelabError
    from scalelab.spec import validate_study
    from scalelab.train import load_checkpoint

    from .conftest import TINY

    config = validate_study({**TINY, "grid": {}}).runs[0].config
    bad = tmp_path / "run.pt"
    bad.write_bytes(b"\x80\x04 definitely not a checkpoint")
    with pytest.raises(ScalelabError, match="run.pt: not a readable checkpoint of this run"):
        load_checkpoint(config, bad)


def _snapshot(root):
    """Every file below ``root`` (to check nothing was written)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("content", "message"), [
    (b"name: t\ntask: {name: mnist1d}\n# caf\xe9\n", "not UTF-8 text (byte 0xe9 on line 3)"),
    (b"name: t\ngrid: {width: " + b"[" * 10_000 + b"]" * 10_000 + b"}\n",
     "nested too deeply to be a study"),
    (b"\xff\xfe\x00n", "not UTF-8 text (byte 0xff on line 1)"),
])
def test_unreadable_study_files_are_one_line(tmp_path, monkeypatch, capsys, content, message):
    study = tmp_path / "s.yaml"
    study.write_bytes(content)
    before = _snapshot(tmp_path)
    code, err = run_main(monkeypatch, capsys, "run", study, "--out", tmp_path / "out")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {study}: ")
    assert message in err[0], err
    assert _snapshot(tmp_path) == before


def test_a_deeply_nested_set_value_is_one_line(tmp_path, tiny_study, monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "run", tiny_study(tmp_path), "--out",
                         tmp_path / "out", "--set", "grid.width=" + "[" * 10_000 + "]" * 10_000)
    assert code == 2 and len(err) == 1 and "nested too deeply" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_huge_grid_is_refused_fast_naming_the_limit(tmp_path, tiny_study, monkeypatch, capsys):
    study = tiny_study(tmp_path, grid={"width": list(range(1, 1001)),
                                       "train.lr": [i / 1e4 for i in range(1, 1001)]})
    started = time.perf_counter()
    code, err = run_main(monkeypatch, capsys, "run", study, "--dry-run")
    assert time.perf_counter() - started < 5
    assert code == 2 and len(err) == 1
    assert "2,000,000 runs (cells x seeds) exceed max_runs = 10,000" in err[0]
    assert "set `max_runs: 2000000`" in err[0]


def test_out_pointing_at_a_file_is_one_line(tmp_path, tiny_study, monkeypatch, capsys):
    target = tmp_path / "a_file"
    target.write_text("mine")
    code, err = run_main(monkeypatch, capsys, "run", tiny_study(tmp_path), "--out", target)
    assert code == 2 and len(err) == 1
    assert f"error: {target}: File exists; the path exists and is not a folder" in err[0]
    assert target.read_text() == "mine"


@pytest.mark.parametrize(("code_", "text"), [
    (28, "No space left on device; free some space and rerun the same command"),   # ENOSPC
    (30, "Read-only file system; choose a writable place"),                         # EROFS
])
def test_os_refusals_while_storing_are_one_line_and_keep_what_finished(
        tmp_path, tiny_study, monkeypatch, capsys, code_, text):
    from scalelab.store import Store

    calls = {"n": 0}
    original = Store.write_result

    def failing(self, run, result):  # the disk fills up (or turns read-only) after one run
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(code_, os.strerror(code_), str(self.path))
        return original(self, run, result)

    monkeypatch.setattr(Store, "write_result", failing)
    out = tmp_path / "out"
    code, err = run_main(monkeypatch, capsys, "run", tiny_study(tmp_path), "--out", out,
                         "--workers", "1")
    errors = [line for line in err if line.startswith("error: ")]  # after the progress lines
    assert code == 2 and len(errors) == 1 and errors[0] == err[-1]
    assert text in errors[0] and "results.sqlite" in errors[0]
    monkeypatch.setattr(Store, "write_result", original)
    with Store.open(out) as store:
        assert sorted(store.statuses().values()).count("completed") == 1


def test_an_unexpected_exception_is_one_line_pointing_at_its_log(tmp_path, tiny_study,
                                                                  monkeypatch, capsys):
    from scalelab import api

    def broken(*args, **kwargs):
        raise ValueError("something scalelab did not expect")

    monkeypatch.setattr(api, "dry_run", broken)
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path / "cache"))
    code, err = run_main(monkeypatch, capsys, "run", tiny_study(tmp_path), "--dry-run")
    assert code == 1 and len(err) == 1
    assert err[0].startswith("error: unexpected ValueError: something scalelab did not expect")
    logs = list((tmp_path / "cache" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err[0]
    assert "Traceback" in logs[0].read_text() and "def broken" not in err[0]


def test_a_text_task_whose_path_is_missing_is_refused_at_validation(tmp_path, monkeypatch,
                                                                     capsys):
    study = tmp_path / "lm.yaml"
    study.write_text(yaml.safe_dump({
        "name": "lm", "task": {"name": "text", "source": "files", "path": str(tmp_path / "nope")},
        "model": {"name": "gpt", "d_model": 16, "n_layers": 1, "n_heads": 2,
                  "context_length": 16},
        "train": {"max_steps": 5, "batch_size": 4}}))
    code, err = run_main(monkeypatch, capsys, "run", study, "--out", tmp_path / "out")
    assert code == 2 and len(err) == 1
    assert f"task.path: {tmp_path / 'nope'} does not exist (source files" in err[0]
    assert not (tmp_path / "out").exists()


def _features_folder(root, broken_name, writer):
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("test", 50)):
        np.save(root / f"{split}_features.npy", rng.normal(size=(n, 8)).astype(np.float32))
        np.save(root / f"{split}_labels.npy", rng.integers(0, 3, n))
    (root / "train_features.npy").unlink()
    writer(root / broken_name)


def _truncated(path):
    import numpy as np

    np.save(path, np.ones((300, 8), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:200])


def _object_array(path):
    import numpy as np

    np.save(path, np.array([{"a": 1}] * 300, dtype=object), allow_pickle=True)


def _pt_dict(path):
    import torch

    torch.save({"features": torch.ones(300, 8)}, path)


def _pt_garbage(path):
    path.write_bytes(b"this is not a torch file at all")


@pytest.mark.parametrize(("name", "writer", "message"), [
    ("train_features.npy", _truncated, "not a readable .npy array"),
    ("train_features.npy", _object_array, "not a readable .npy array (Object arrays cannot be "
                                          "loaded when allow_pickle=False)"),
    ("train_features.pt", _pt_dict, "expected a numeric array or tensor, found dict"),
    ("train_features.pt", _pt_garbage, "not a readable .pt array"),
])
def test_unreadable_feature_files_are_one_line_before_training(tmp_path, monkeypatch, capsys,
                                                               name, writer, message):
    folder = tmp_path / "features"
    folder.mkdir()
    _features_folder(folder, name, writer)
    study = tmp_path / "emb.yaml"
    study.write_text(yaml.safe_dump({
        "name": "emb", "task": {"name": "embeddings", "path": str(folder), "num_val": 50},
        "model": {"name": "mlp", "width": 8}, "train": {"max_steps": 5, "batch_size": 10}}))
    code, err = run_main(monkeypatch, capsys, "run", study, "--out", tmp_path / "out")
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0]
    assert f"{folder / name}: {message}" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("width", [10**9, 10**12])
def test_a_model_too_large_for_the_machine_is_refused_before_allocating(
        tmp_path, tiny_study, monkeypatch, capsys, width):
    code, err = run_main(monkeypatch, capsys, "run", tiny_study(tmp_path), "--out",
                         tmp_path / "out", "--set", f"grid.width=[{width}]", "--device", "cpu")
    assert code == 2 and len(err) == 1
    assert f"model: mlp (width={width}, depth=1) has " in err[0]
    assert "GiB of cpu; choose smaller sizes" in err[0]
    assert not (tmp_path / "out").exists()


def test_status_check_runs_the_full_integrity_check_on_demand(tmp_path, monkeypatch, capsys):
    from scalelab.records import RunResult, RunSpec
    from scalelab.store import Store

    out = tmp_path / "out"
    with Store.open(out, create=True) as store:
        store._db.execute("PRAGMA journal_mode=DELETE")  # one file, no write-ahead log
        for i in range(300):
            store.write_result(RunSpec(f"r{i:04d}", {"seed": i}, {"seed": i}),
                               RunResult("completed", {"test_loss": 1.0 / (i + 1)},
                                         [(s, "val_loss", 1.0) for s in range(20)]))
    code, err = run_main(monkeypatch, capsys, "status", out, "--check")
    assert code == 0 and err[0] == f"{out}: the results store passed SQLite's integrity check"
    path = out / "results.sqlite"
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    middle = (len(data) // page // 2) * page
    data[middle + 8: middle + 40] = b"\xff" * 32  # scramble cells of one b-tree page
    path.write_bytes(bytes(data))
    code, err = run_main(monkeypatch, capsys, "status", out, "--check")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {path}: the results store is damaged (")
    assert "restore it from a backup" in err[0]


def test_a_store_cut_off_while_its_write_ahead_log_was_live_is_one_line(tmp_path, monkeypatch,
                                                                        capsys):
    from scalelab.records import RunResult, RunSpec
    from scalelab.store import Store

    out = tmp_path / "out"
    store = Store.open(out, create=True)
    for i in range(300):
        store.write_result(RunSpec(f"r{i:04d}", {"seed": i}, {"seed": i}),
                           RunResult("completed", {"test_loss": 1.0, "val_loss": 1.0},
                                     [(s, "val_loss", 1.0) for s in range(20)]))
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.write_result(RunSpec("last", {"seed": 1}, {"seed": 1}),
                       RunResult("completed", {"test_loss": 1.0, "val_loss": 1.0}))
    path = out / "results.sqlite"
    assert (out / "results.sqlite-wal").stat().st_size > 0  # the log is live
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for command in ("status", "export", "report"):
        code, err = run_main(monkeypatch, capsys, command, out)
        assert code == 2 and len(err) == 1, (command, err)
        assert err[0] == (f"error: {path}: the results store is damaged (database disk image "
                          "is malformed); restore it from a backup, or move it away to start "
                          "the study over")
    store.close()
