"""Faults a store must survive, each with real processes: nothing ever destroys a stored
result, every run is trained once whatever happens to the runners (containers sharing a
directory, a dead runner's pid alive again, hosts with skewed clocks, a runner stopped past
the staleness window, lost checkpoints, shard stores and merges), and stores that cannot or
must not be written are read and left as they are. Each test counts: runs trained twice,
completed runs left ``running``, results lost; a user's mistake is one line and exit 2.

Separate PID namespaces, hosts (UTS namespaces) and read-only mounts are made for real with
``unshare`` (skipped where it is not allowed); a clock skew between hosts cannot be made on
one kernel, so ``tests/_runner.py`` injects it (and shortens the staleness window)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scalelab
from scalelab import api
from scalelab.records import COMPLETED, FAILED, RunResult, RunSpec
from scalelab.runner import local
from scalelab.runner.shard import select_shard
from scalelab.spec import load_study
from scalelab.store import SHARD_GLOB, Store

RUNNER = Path(__file__).resolve().parents[1] / "_runner.py"
#: Runs of a few seconds each (on a loaded 2-core machine), so that runners overlap.
LONG = {"optimizer": "adam", "lr": 0.01, "batch_size": 50, "max_steps": 300, "eval_every": 100}


def _namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--uts", "--mount", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_namespaces = pytest.mark.skipif(not _namespaces_work(),
                                      reason="needs `unshare` (Linux namespaces) to be allowed")


def command(*args, pid_namespace: bool = False, hostname: str | None = None) -> list[str]:
    """``scalelab ARGS`` through tests/_runner.py, in its own PID namespace (it is pid 1
    there, as in a container) and/or on its own host name (a UTS namespace)."""
    line = [sys.executable, str(RUNNER), *map(str, args)]
    if hostname:
        line = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *line]
    if pid_namespace:  # --kill-child: killing unshare kills the runner (pid 1) with it
        line = ["unshare", "--pid", "--fork", "--kill-child", *line]
    return line


def start(*args, env: dict | None = None, **where) -> subprocess.Popen:
    return subprocess.Popen(command(*args, **where), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def finish(process: subprocess.Popen, timeout: float = 400) -> tuple[dict, str]:
    """A runner's JSON report (``--format json``) and its stderr, once it exits 0."""
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout), stderr


def run_args(study: Path, out: Path, *more) -> tuple:
    return ("run", study, "--out", out, "--workers", 1, "--no-report", "--format", "json", *more)


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Until ``condition()``, while ``process`` runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            stdout, stderr = process.communicate()
            raise AssertionError(f"exited {process.returncode} before {what}: {stderr[-3000:]}"
                                 f"{stdout[-1500:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def running_rows(path: Path) -> int:
    """Rows marked ``running`` in a store file (read with plain SQLite: any schema)."""
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
            return db.execute("SELECT count(*) FROM runs WHERE status = 'running'").fetchone()[0]
    except sqlite3.Error:
        return 0


def claimed_by(path: Path, pid: int) -> int:
    """Rows whose last claim was made by the runner with this pid (any schema)."""
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
        return db.execute("SELECT count(*) FROM runs WHERE owner LIKE ?",
                          (f"%:{pid}",)).fetchone()[0]


def statuses(out: Path) -> dict[str, str]:
    with Store.open(out) as store:
        return store.statuses()


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ------------------------------------------------------------------ 1. nothing destroys a result


def _spec(i: int) -> RunSpec:
    return RunSpec(f"{i:012x}", {"model": {"width": i}, "seed": 0}, {"width": i, "seed": 0})


@pytest.fixture
def stored(tmp_path) -> Path:
    """A store of two completed runs."""
    out = tmp_path / "out"
    with Store.open(out, create=True) as store:
        for i in (1, 2):
            store.write_result(_spec(i), RunResult(COMPLETED, {"test_loss": 1.0 / i},
                                                   [(1, "val_loss", 2.0)]))
    return out


def test_export_over_a_store_is_refused_in_one_line_and_every_run_kept(stored, tmp_path,
                                                                        run_cli):
    backup = tmp_path / "backup.sqlite"
    shutil.copyfile(stored / "results.sqlite", backup)
    data = backup.read_bytes()
    for target in (stored / "results.sqlite", backup):
        result = run_cli("export", stored, "-o", target)
        assert result.exit_code == 2
        assert one_line(result).startswith(f"error: {target}: is ")
    assert statuses(stored) == {_spec(1).run_id: COMPLETED, _spec(2).run_id: COMPLETED}
    assert backup.read_bytes() == data


def test_export_through_a_link_keeps_the_link(stored, tmp_path, run_cli):
    real, link = tmp_path / "real.csv", tmp_path / "link.csv"
    real.write_text("old\n")
    link.symlink_to(real)
    assert run_cli("export", stored, "-o", link).exit_code == 0
    assert link.is_symlink() and real.read_text().startswith("run_id,")


def test_export_to_pipes_and_devices_writes_them_and_leaves_them_be(stored, tmp_path,
                                                                      run_cli):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        assert run_cli("export", stored, "-o", fifo).exit_code == 0
        text = reader.communicate(timeout=30)[0]
    finally:
        reader.kill()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and text.startswith(b"run_id,")
    # What /dev/stdout is: a link to the process's own stdout (here a pipe).
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")
    done = subprocess.run([sys.executable, "-m", "scalelab", "export", stored, "-o", stdout],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("run_id,"), done.stderr
    assert stdout.is_symlink()
    null = tmp_path / "null"  # a device node, as /dev/null
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        return  # not allowed to make device nodes here
    assert run_cli("export", stored, "-o", null).exit_code == 0
    assert stat.S_ISCHR(os.stat(null).st_mode)


def test_export_to_a_folder_is_one_line_and_leaves_no_temporary(stored, tmp_path, run_cli):
    folder = tmp_path / "folder"
    folder.mkdir()
    result = run_cli("export", stored, "-o", folder)
    assert result.exit_code == 2 and "Is a directory" in one_line(result)
    assert list(folder.iterdir()) == []
    assert [p.name for p in tmp_path.rglob(".*") if p.is_file()] == []


def test_a_failed_retrain_of_a_run_whose_checkpoint_is_lost_keeps_its_result(
        tmp_path, tiny_study, monkeypatch):
    study = tiny_study(tmp_path, save_checkpoints=True, grid={"width": [4]})
    out = tmp_path / "out"
    scalelab.run(study, out=out, workers=1)
    before = {r["run_id"]: r["test_loss"] for r in api.records(out)}
    shutil.rmtree(out / "checkpoints")

    def fails(group, device, checkpoint):  # out of memory this time, say
        return [RunResult(FAILED, error="Traceback ...\nRuntimeError: out of memory")
                for _ in group.runs]

    monkeypatch.setattr(local, "train_group_of", fails)
    result = scalelab.run(study, out=out, workers=1, check=False)
    assert {r["run_id"]: (r["status"], r["test_loss"]) for r in api.records(out)} == {
        run_id: (COMPLETED, loss) for run_id, loss in before.items()}  # 0 results lost
    assert len(result.failed) == 2 and "completed result stored before is kept" in \
        result.failed[0][1]
    monkeypatch.undo()
    again = scalelab.run(study, out=out, workers=1)
    assert dict(again.trained) == {COMPLETED: 2}
    assert len(list((out / "checkpoints").iterdir())) == 2


def test_merge_killed_at_any_statement_loses_nothing_and_finishes_when_repeated(tmp_path):
    """``kill -9`` of `scalelab merge` after each of its SQLite statements in turn (it once
    left a 0-byte results.sqlite that every command then refused)."""
    fixture = tmp_path / "fixture"
    for shard in (0, 1):
        with Store.open(fixture, create=True, shard=(shard, 2)) as store:
            for i in (2 * shard + 1, 2 * shard + 2):
                store.write_result(_spec(i), RunResult(COMPLETED, {"test_loss": 1.0 / i},
                                                       [(1, "val_loss", 2.0)]))
    expected = {_spec(i).run_id: COMPLETED for i in range(1, 5)}
    kills = 0
    for n in range(1, 1000):
        directory = tmp_path / f"try{n}"
        shutil.copytree(fixture, directory)
        child = os.fork()
        if child == 0:  # pragma: no cover - the child, killed at its n-th statement
            try:
                _kill_at_statement(n)
                api.merge(directory)
            finally:
                os._exit(0)
        _, status = os.waitpid(child, 0)
        if not os.WIFSIGNALED(status):
            break  # merge ran to its end before its n-th statement
        kills += 1
        assert statuses(directory) == expected, n  # every result reads after the kill
        api.merge(directory)  # and the merge can be repeated
        assert statuses(directory) == expected, n
        assert not list(directory.glob(SHARD_GLOB))
    assert kills >= 10


def _kill_at_statement(n: int) -> None:
    from scalelab import store

    count = [0]

    def counted(method):
        def call(self, *args):
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return method(self, *args)
        return call

    store._Connection.execute = counted(store._Connection.execute)
    store._Connection.executemany = counted(store._Connection.executemany)


def test_a_report_of_failed_runs_replacing_one_of_completed_runs_says_so(tmp_path, tiny_study,
                                                                        run_cli):
    study = tiny_study(tmp_path, grid={"width": [4, 8, 16]})  # 6 runs
    out = tmp_path / "out"
    assert run_cli("run", study, "--out", out, "--workers", 1, "--bootstrap", 20).exit_code == 0
    with contextlib.closing(sqlite3.connect(out / "results.sqlite")) as db, db:
        db.execute("UPDATE runs SET status = 'failed', metrics = '{}', error = 'boom'")
    result = run_cli("report", out, "--bootstrap", 20)
    assert result.exit_code == 0
    assert "built from 0 runs, fewer than the 6 of the one it replaced (completed runs" in \
        result.stderr
    assert "built from 0 runs, fewer than the 6 of the report it replaced (completed runs" in \
        (out / "report.md").read_text()


# ------------------------------------------------------------------ 2. every run trained once


@pytest.mark.slow
@needs_namespaces
def test_two_runners_each_pid_1_in_its_own_pid_namespace_train_every_run_once(tmp_path,
                                                                              tiny_study):
    """Two containers sharing the output directory: both runners are pid 1 on one host."""
    study = tiny_study(tmp_path, grid={"width": [4, 8, 16]}, stack_runs="off", train=LONG)
    out = tmp_path / "out"
    runners = [start(*run_args(study, out), pid_namespace=True) for _ in range(2)]
    reports = [finish(r)[0] for r in runners]
    trained = [sum(r["trained"].values()) for r in reports]
    assert sum(trained) == 6, trained  # 0 runs trained twice
    records = api.records(out)
    assert len(records) == 6 and {r["status"] for r in records} == {COMPLETED}
    assert {r["pid"] for r in records} == {1}  # each trained them as pid 1
    assert api.claims(out) == []


def _child_of(pid: int) -> int:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(text[0])


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (OSError, IndexError):
        return True


@pytest.mark.slow
@needs_namespaces
def test_a_killed_runner_whose_pid_names_a_live_process_is_taken_over(tmp_path, tiny_study):
    """The runner was pid 1 in its container; killed, its pid 1 names a live process here
    (init), exactly as a reused pid does: its run must not stay `running` for ever."""
    study = tiny_study(tmp_path, grid={"width": [4]}, seeds=[0],
                       train={**LONG, "max_steps": 800})
    out = tmp_path / "out"
    first = start(*run_args(study, out), pid_namespace=True)
    wait_for(lambda: running_rows(out / "results.sqlite") == 1, "its claim", first)
    runner = _child_of(first.pid)
    first.kill()  # kill -9 of its unshare: the runner (pid 1 in there) is killed with it
    first.communicate()
    # `first` has exited already (killed): wait on the runner alone, which the kernel takes a
    # moment to reap after its namespace's init went (under load, more than one poll)
    deadline = time.monotonic() + 60
    while not _gone(runner):
        assert time.monotonic() < deadline, "the killed runner is still alive after 60 s"
        time.sleep(0.05)
    report, _ = finish(start(*run_args(study, out)))
    assert report["trained"] == {COMPLETED: 1} and report["elsewhere"] == 0
    assert [r["status"] for r in api.records(out)] == [COMPLETED]  # 0 left running
    assert api.claims(out) == []


@pytest.mark.slow
@needs_namespaces
def test_a_host_whose_clock_runs_an_hour_ahead_takes_over_no_live_claim(tmp_path, tiny_study):
    study = tiny_study(tmp_path, grid={"width": [4, 8, 16]}, stack_runs="off", train=LONG)
    out = tmp_path / "out"
    first = start(*run_args(study, out), hostname="host-a")
    wait_for(lambda: running_rows(out / "results.sqlite") == 1, "its claim", first)
    ahead = start(*run_args(study, out), hostname="host-b",
                  env={"SCALELAB_TEST_CLOCK_SKEW_S": "3600"})
    reports = [finish(first)[0], finish(ahead)[0]]
    trained = [sum(r["trained"].values()) for r in reports]
    assert sum(trained) == 6, trained  # 0 runs trained twice
    assert {r["status"] for r in api.records(out)} == {COMPLETED}


@pytest.mark.slow
@needs_namespaces
def test_a_runner_stopped_past_the_window_is_taken_over_and_its_late_result_dropped(
        tmp_path, tiny_study):
    """SIGSTOP: the runner is alive (its lock held) but its heartbeat stops; another host
    takes the run over after the window, and the stopped one, resumed, stores nothing."""
    study = tiny_study(tmp_path, grid={"width": [4]}, seeds=[0],
                       train={**LONG, "max_steps": 600})
    out = tmp_path / "out"
    window = {"SCALELAB_TEST_STALE_S": "2", "SCALELAB_TEST_HEARTBEAT_S": "0.2"}
    stopped = start(*run_args(study, out), hostname="host-a", env=window)
    wait_for(lambda: running_rows(out / "results.sqlite") == 1, "its claim", stopped)
    os.kill(stopped.pid, signal.SIGSTOP)
    takers = []
    try:
        for _ in range(5):  # the other host watches the counter until the window has passed
            taker = start(*run_args(study, out), hostname="host-b", env=window)
            report, _ = finish(taker)
            takers.append((taker.pid, report))
            if report["trained"]:
                break
            time.sleep(2.5)
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    late, stderr = finish(stopped)
    assert takers[-1][1]["trained"] == {COMPLETED: 1}, takers
    assert late["trained"] == {} and late["elsewhere"] == 1
    assert "was taken over by another runner" in stderr
    records = api.records(out)
    assert [r["status"] for r in records] == [COMPLETED]
    assert records[0]["pid"] == takers[-1][0]  # stored once: the taker's result stands


@pytest.mark.slow
def test_lost_checkpoints_are_retrained_once_by_two_runners_started_apart(tmp_path,
                                                                         tiny_study):
    """The second runner starts while the first trains its first run (held there by
    SIGSTOP, as a long run would hold it) and retrains the rest; the first, reaching them,
    must see they were stored again since it planned."""
    study = tiny_study(tmp_path, grid={"train.max_steps": [300, 40, 41, 42]}, seeds=[0],
                       stack_runs="off", save_checkpoints=True)
    out = tmp_path / "out"
    finish(subprocess.Popen(command(*run_args(study, out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True))
    shutil.rmtree(out / "checkpoints")
    first = start(*run_args(study, out))
    wait_for(lambda: claimed_by(out / "results.sqlite", first.pid), "its first claim", first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second, _ = finish(start(*run_args(study, out)))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    reports = [finish(first)[0], second]
    trained = [sum(r["trained"].values()) for r in reports]
    assert trained == [1, 3], reports  # 0 runs retrained twice
    assert {r["status"] for r in api.records(out)} == {COMPLETED}
    assert len(list((out / "checkpoints").iterdir())) == 4


def test_a_shard_store_runner_does_not_train_again_what_was_merged(tmp_path, tiny_study,
                                                                  run_cli):
    study = tiny_study(tmp_path)
    out = tmp_path / "out"
    index = next(i for i in range(2) if select_shard(load_study(study).runs, i, 2))
    args = run_args(study, out, "--shard", f"{index}/2", "--shard-store")
    first = run_cli(*args)
    assert first.exit_code == 0, first.stderr
    trained = sum(json.loads(first.stdout)["trained"].values())
    assert run_cli("merge", out).exit_code == 0 and not list(out.glob(SHARD_GLOB))
    again = json.loads(run_cli(*args).stdout)
    assert again["trained"] == {} and again["already_done"] == trained  # 0 trained twice


@pytest.mark.slow
def test_merge_is_refused_while_a_shard_runner_writes_and_nothing_is_lost(tmp_path, tiny_study,
                                                                         run_cli):
    study = tiny_study(tmp_path, grid={"width": [4]}, seeds=[0],
                       train={**LONG, "max_steps": 800})
    out = tmp_path / "out"
    runner = start(*run_args(study, out, "--shard", "0/1", "--shard-store"))
    wait_for(lambda: running_rows(out / "results.shard-0-of-1.sqlite") == 1, "its claim", runner)
    refused = run_cli("merge", out)
    assert refused.exit_code == 2
    assert "still writing into results.shard-0-of-1.sqlite" in one_line(refused)
    report, _ = finish(runner)
    assert report["trained"] == {COMPLETED: 1}
    assert run_cli("merge", out).exit_code == 0
    assert [r["status"] for r in api.records(out)] == [COMPLETED]  # not left running
    assert not list(out.glob(SHARD_GLOB))


# ------------------------------------------------------------------ 4. stores not to be written


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.slow
@needs_namespaces
def test_a_store_on_read_only_storage_is_read_by_every_reading_command(tmp_path, tiny_study):
    study = tiny_study(tmp_path, grid={"width": [4, 8, 16]}, seeds=[0])
    archive, elsewhere = tmp_path / "archive", tmp_path / "elsewhere"
    finish(subprocess.Popen(command(*run_args(study, archive)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True))
    elsewhere.mkdir()
    before = _files(archive)
    scalelab_ = f"{sys.executable} -m scalelab"
    commands = {
        "status": f"status {archive}",
        "fit": f"fit {archive} --x params --y test_loss --form power --bootstrap 20",
        "export": f"export {archive} -o {elsewhere / 'results.csv'}",
        "report": f"report {archive} --out {elsewhere / 'report'} --bootstrap 20",
        "run": f"run {study} --out {archive} --workers 1 --no-report",  # a mistake: one line
    }
    script = (f"mount --bind {archive} {archive} && mount -o remount,bind,ro {archive} || "
              "exit 99; " + " ".join(
                  f"{scalelab_} {line} > {elsewhere / name}.out 2> {elsewhere / name}.err; "
                  f"echo {name}=$?;" for name, line in commands.items()))
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                          text=True, timeout=600)
    codes = dict(line.split("=") for line in done.stdout.split())
    errors = {name: (elsewhere / f"{name}.err").read_text() for name in commands}
    assert codes == {"status": "0", "fit": "0", "export": "0", "report": "0", "run": "2"}, errors
    assert "completed" in (elsewhere / "status.out").read_text()
    assert len((elsewhere / "results.csv").read_text().splitlines()) == 4
    assert (elsewhere / "report" / "report.html").exists()
    refusal = [line for line in errors["run"].splitlines() if line.strip()]
    assert len(refusal) == 1 and "read-only storage" in refusal[0], errors["run"]
    assert _files(archive) == before  # not a byte written


def _store_with_version(out: Path, version: str) -> Path:
    out.mkdir()
    path = out / "results.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE trials (id TEXT PRIMARY KEY, outcome TEXT)")  # its own tables
        db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (version,))
    return path


@pytest.mark.parametrize(("version", "message"), [
    ("99", "written by a newer scalelab (store schema 99; this one reads up to"),
    ("six", "its schema version is 'six', not a whole number"),
])
def test_a_store_from_a_newer_scalelab_is_refused_untouched(tmp_path, run_cli, version,
                                                            message):
    out = tmp_path / "out"
    _store_with_version(out, version)
    before = _files(out)
    for args in (("status", out), ("export", out), ("report", out), ("merge", out)):
        result = run_cli(*args)
        assert _files(out) == before, args  # no table of this version made, nothing beside
        assert result.exit_code == 2 and message in one_line(result), args
