"""Stored numbers of real runs from every bundled study, to hold the training code to them.

Each file in ``tests/data/golden/`` is one *recording*: the numbers every case gave on one
platform (CPU model, torch's dispatch capability such as AVX2 or AVX512, torch version and
thread count), written by ``python -m tests.golden --write`` on that platform.
``test_golden.py`` trains the same runs with the current code and compares like with like:
bit for bit against the recording of the platform it runs on; where this platform has no
recording, exactly against any recording it matches, else within the stated cross-platform
tolerance (a few last digits differ between CPUs, and training amplifies them). Rewrite a
recording only for a change that is meant to move numbers, or to add a platform, and say so
in the commit. ``unrecorded-platform.json`` was written before platforms were recorded, on the
machine of the earlier sessions (the one CI ran on then).

Each case is a few real runs of a bundled study (its resolved configs, unchanged), trained
the way the runner trains them: alone on the single-run loop, as a stacked group (of one, or
of seed- or width-mates), or as a language model; evaluation cases re-score the trained
model under the study's evaluation settings.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
#: Wall-clock measurements: never equal twice.
TIMING = {"wall_time", "total_time", "tokens_per_second", "test_eval_time_s", "time_to_result_s",
          "eval_time_s"}


def platform() -> dict:
    """What the last digits of a CPU run depend on."""
    import torch

    from scalelab.devices import cpu_name

    return {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def recording_path(where: dict) -> Path:
    slug = "-".join(str(where[k]) for k in ("cpu", "cpu_capability", "torch", "threads"))
    return GOLDEN / ("".join(c if c.isalnum() or c in ".+" else "-" for c in slug) + ".json")


def recordings() -> list[dict]:
    """Every recording: {"platform": dict or None, "cases": {case: {run_id: entry}}}."""
    return [json.loads(p.read_text()) for p in sorted(GOLDEN.glob("*.json"))]


def _pick(study, **point):
    return [r for r in study.runs if all(r.point.get(k) == v for k, v in point.items())]


def cases():
    """name -> (study file, runs, how they train, evaluation settings)."""
    from scalelab.runner.stacks import without_mates
    from scalelab.spec import load_study

    quick = load_study(ROOT / "studies" / "quickstart.yaml")
    selection = load_study(ROOT / "studies" / "selection.yaml")
    tta = load_study(ROOT / "studies" / "tta_weights.yaml")
    ttt = load_study(ROOT / "studies" / "ttt_scaling.yaml")
    lm = load_study(ROOT / "studies" / "lm_scaling.yaml")
    small = dict(width=16, num_train=10000)
    out = {
        "quickstart/single": (_pick(quick, seed=0, **small), "single", []),
        "quickstart/group_of_one": (_pick(quick, seed=0, **small), "stacked", []),
        "quickstart/seed_group": (_pick(quick, **small), "stacked", []),
        "quickstart/padded_group": (
            [r for r in quick.runs if r.point["seed"] == 0 and r.point["num_train"] == 10000
             and r.point["width"] in (16, 32)], "stacked", []),
        "tta_weights/cnn_group": (_pick(tta, seed=0) + _pick(tta, seed=1), "stacked",
                                  tta.evaluations),
        "ttt_scaling/mlp": (_pick(ttt, width=8, num_train=500, seed=0), "stacked",
                            ttt.evaluations[:2] + ttt.evaluations[-1:]),
        "lm_scaling/gpt": (_pick(lm, d_model=32, n_layers=1), "single", []),
    }
    alone = without_mates(selection.runs, selection.spec.stack_pad)
    for run in selection.runs:  # every method and baseline at rate 0.2, default scoring
        p = run.point
        if p["seed"] == 0 and p["target_rate"] in (0.2, None) and p["scoring"] is None:
            name = p["method"] + (f"_matched_to_{p['matched_to']}" if p["matched_to"] else "")
            mode = "single" if run.run_id in alone else "stacked"
            out.setdefault(f"selection/{name}", ([run], mode, []))
    # Per-epoch InfoBatch (its own budget and epoch order) is in no bundled study: the
    # selection study's settings with that method.
    raw = yaml.safe_load((ROOT / "studies" / "selection.yaml").read_text())
    raw.update(name="infobatch", grid={"method.name": ["infobatch"]}, baselines=[], seeds=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "infobatch.yaml"
        path.write_text(yaml.safe_dump(raw))
        out["selection/infobatch"] = (load_study(path).runs, "single", [])
    return out


def train(runs, mode, checkpoint_dir: Path | None):
    """Results of ``runs`` trained as the runner trains them: ``single`` each alone on the
    single-run loop, ``stacked`` all as one stacked group (of one or more)."""
    from scalelab.runner._base import Group, train_group_of

    keep = checkpoint_dir is not None
    if mode == "single":
        results = [train_group_of(Group((r,), stacked=False), "cpu", keep)[0] for r in runs]
    else:
        results = train_group_of(Group(tuple(runs), stacked=True), "cpu", keep)
    for run, result in zip(runs, results):
        if keep:
            (checkpoint_dir / f"{run.run_id}.pt").write_bytes(result.checkpoint)
    return results


def rescore(run, settings, checkpoint_dir: Path) -> dict:
    from scalelab.evaluation.rescore import score_checkpoint

    scores = score_checkpoint(run.config, checkpoint_dir / f"{run.run_id}.pt", settings, "cpu")
    return {i: {k: v for k, v in m.items() if k not in TIMING} for i, m in scores.items()}


def produce(name: str) -> dict:
    """The numbers one case gives with the code as it is now."""
    runs, mode, settings = cases()[name]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = Path(tmp) if settings else None
        results = train(runs, mode, checkpoints)
        out = {}
        for run, result in zip(runs, results):
            assert result.error is None, result.error
            entry = {"status": result.status,
                     "metrics": {k: v for k, v in result.metrics.items() if k not in TIMING},
                     "curves": [list(row) for row in result.curves]}
            if settings:
                entry["evaluations"] = rescore(run, settings, checkpoints)
            out[run.run_id] = entry
    return json.loads(json.dumps(out))  # as stored: tuples become lists


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.golden --write   (writes this platform's recording)")
    where = platform()
    recorded = {name: produce(name) for name in cases()}
    path = recording_path(where)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"platform": where, "cases": recorded}, indent=1,
                               sort_keys=True) + "\n")
    print(f"wrote {path}: {len(recorded)} cases")
