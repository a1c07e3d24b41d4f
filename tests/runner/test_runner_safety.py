"""The runner is safe by default: a worker that dies fails only its own runs, runs whose
runner is gone read as interrupted and are retried, an unguarded script is refused, and the
API raises when runs failed."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import scalelab
from scalelab.api import RunsFailed
from scalelab.records import RunSpec
from scalelab.runner import Group, local
from scalelab.spec import load_study
from scalelab.store import Store


@pytest.mark.slow
def test_a_worker_that_dies_fails_only_its_own_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # spawned workers inherit it
    import _crashing_task

    monkeypatch.setattr(local, "train_group_of", _crashing_task.train_group_of)
    runs = [RunSpec(f"r{w}", {}, {"width": w, "seed": 0}) for w in (4, 8, 16, 32)]
    executor = local.LocalExecutor("cpu", 2, checkpoint=False)
    groups = [Group((r,), stacked=False) for r in runs]
    results = {spec.run_id: r for spec, r in executor.execute(groups, lambda group: group)}
    assert set(results) == {"r4", "r8", "r16", "r32"}
    assert results["r8"].status == "failed" and "worker process died" in results["r8"].error
    assert all(results[k].status == "completed" for k in ("r4", "r16", "r32"))


def test_runs_whose_runner_is_gone_read_as_interrupted_and_are_retried(tmp_path, tiny_study):
    path = tiny_study(tmp_path)
    study = load_study(path)
    # A runner that claims the first run and dies without a word (as kill -9 leaves it).
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""\
        import os
        from scalelab.spec import load_study
        from scalelab.store import Store
        Store.open({str(tmp_path / "out")!r}, create=True).claim(load_study({str(path)!r}).runs[:1])
        os._exit(0)
        """)], check=True)
    with Store.open(tmp_path / "out", create=True) as store:
        store.claim(study.runs[1:2])
        statuses = store.statuses()
    assert statuses[study.runs[0].run_id] == "interrupted"
    assert statuses[study.runs[1].run_id] == "running"  # this process: still alive
    result = scalelab.run(study, out=tmp_path / "out", workers=1)
    assert result.trained["completed"] == len(study.runs)
    assert set(scalelab.api.records(tmp_path / "out")[i]["status"]
               for i in range(len(study.runs))) == {"completed"}


@pytest.mark.slow
def test_the_readme_snippet_without_a_guard_is_refused_before_anything_is_written(
        tmp_path, tiny_study):
    study = tiny_study(tmp_path)
    script = tmp_path / "snippet.py"
    script.write_text(textwrap.dedent(f"""\
        import scalelab

        result = scalelab.run({str(study)!r}, out={str(tmp_path / 'out')!r}, workers=2)
        df = scalelab.load(result.out_dir)
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "line 3: scalelab.run is called at module level" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_guarded_script_trains_with_workers(tmp_path, tiny_study):
    study = tiny_study(tmp_path)
    script = tmp_path / "guarded.py"
    script.write_text(textwrap.dedent(f"""\
        import json
        import scalelab

        if __name__ == "__main__":
            result = scalelab.run({str(study)!r}, out={str(tmp_path / 'out')!r}, workers=2)
            print(json.dumps(dict(result.trained)))
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"completed": 4}


def test_the_api_raises_when_runs_fail(tmp_path, tiny_study, exploding_model):
    path = tiny_study(tmp_path, grid={"model.name": ["mlp", "_explodes"]}, seeds=[0],
                      model={"name": "mlp"})
    with pytest.raises(RunsFailed, match="1 of 2 runs failed.*boom at build") as caught:
        scalelab.run(path, out=tmp_path / "out", workers=1)
    assert caught.value.exit_code == 1 and len(caught.value.result.failed) == 1
    result = scalelab.run(path, out=tmp_path / "out", workers=1, check=False)
    assert len(result.failed) == 1 and result.trained["failed"] == 1


@pytest.mark.slow
def test_two_runners_on_one_directory_share_the_work_and_train_nothing_twice(tmp_path,
                                                                             tiny_study):
    study = tiny_study(tmp_path, grid={"width": [4, 8, 16]}, seeds=[0, 1, 2, 3],
                       stack_runs="off",
                       train={"optimizer": "adam", "lr": 0.01, "batch_size": 50,
                              "max_steps": 400, "eval_every": 100})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "scalelab", "run", str(study), "--out", str(out),
               "--workers", "1", "--no-report", "--format", "json"]
    runners = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outputs = [r.communicate(timeout=300) for r in runners]
    assert [r.returncode for r in runners] == [0, 0], [e for _, e in outputs]
    reports = [json.loads(stdout) for stdout, _ in outputs]
    trained = [sum(r["trained"].values()) for r in reports]
    assert sum(trained) == 12 and min(trained) > 0, trained  # shared, and nothing twice
    for report, count in zip(reports, trained):  # every run accounted for by each runner
        assert count + report["already_done"] + report["elsewhere"] == 12, report
    records = scalelab.api.records(out)
    assert len(records) == 12 and {r["status"] for r in records} == {"completed"}
    assert len({r["pid"] for r in records}) >= 2  # trained in both runners' processes
    assert scalelab.api.claims(out) == []  # every claim ended with its result
