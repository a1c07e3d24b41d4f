"""Every bundled study's runs give the numbers recorded before the training loops were merged."""

from __future__ import annotations

import json

import pytest

from . import golden

RECORDED = json.loads(golden.GOLDEN.read_text())


def test_every_bundled_study_has_a_case():
    studies = {p.stem for p in (golden.ROOT / "studies").glob("*.yaml")}
    covered = {name.split("/")[0] for name in RECORDED}
    # lm_scaling_gpu is lm_scaling at GPU size: the same language-model path, too big for CI.
    assert studies - covered == {"lm_scaling_gpu"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_same_numbers_as_recorded(name):
    now = golden.produce(name)
    assert now.keys() == RECORDED[name].keys()
    for run_id, recorded in RECORDED[name].items():
        got = now[run_id]
        assert got["status"] == recorded["status"]
        assert got["metrics"] == recorded["metrics"], run_id
        assert got["curves"] == recorded["curves"], run_id
        assert got.get("evaluations") == recorded.get("evaluations"), run_id
