"""Which runs train together: equal stacking keys, within a memory limit per group."""

from __future__ import annotations

from collections.abc import Sequence

from ..records import RunSpec
from ..registry import models
from ..spec import Study
from ..train.stacking import estimate_bytes, group_key, padded_model_config
from ._base import Group


def training_groups(todo: Sequence[RunSpec], study: Study) -> list[Group]:
    """The study's runs still to train, as the groups an executor trains.

    A run alone takes the single-run loop (the fastest for one run) only when no other run
    of the whole study could ever share its group. A run that has potential group-mates
    trains on the stacked path even alone (a group of one), so its numbers do not depend on
    which of them shared its group: batching, ``stack_runs: off``, ``--shard`` and resuming
    all give the same result (bitwise for MLPs on the CPU)."""
    spec = study.spec
    alone = without_mates(study.runs, spec.stack_pad)
    return [Group(tuple(g), stacked=len(g) > 1 or g[0].run_id not in alone)
            for g in plan_groups(todo, spec.stack_runs, spec.stack_memory_mb,
                                 spec.stack_min_runs, spec.stack_pad)]


def plan_groups(runs: Sequence[RunSpec], mode: str = "auto", memory_mb: float = 1024,
                min_runs: int | None = None, pad: bool = False) -> list[list[RunSpec]]:
    """Runs partitioned into training groups (singletons when ``mode == "off"``).

    Groups smaller than ``min_runs`` (default: the model family's ``min_stack_group``) train
    one run at a time. ``pad`` lets runs of different widths share a group (see
    ``stack_pad`` in the README).
    """
    if mode == "off":
        return [[r] for r in runs]
    by_key: dict[str, list[RunSpec]] = {}
    singles: list[list[RunSpec]] = []
    for r in runs:
        key = group_key(r.config, pad)
        if key is None:
            singles.append([r])
        else:
            by_key.setdefault(key, []).append(r)
    groups = []
    for members in by_key.values():
        largest = {**members[0].config, "model": padded_model_config([m.config for m in members])}
        try:
            cap = max(1, int(memory_mb * 2**20 // estimate_bytes(largest)))
        except Exception:  # the model cannot even run on the meta device: each run fails alone
            groups += [[r] for r in members]
            continue
        for chunk in (members[i:i + cap] for i in range(0, len(members), cap)):
            smallest = min_runs or models.get(members[0].config["model"]["name"]).min_stack_group
            groups += [chunk] if len(chunk) >= smallest else [[r] for r in chunk]
    return groups + singles


def without_mates(runs: Sequence[RunSpec], pad: bool = False) -> frozenset[str]:
    """Ids of the runs no other run of ``runs`` (the whole study) could share a group with:
    they may train on the single-run loop without their numbers depending on scheduling."""
    keys = [group_key(r.config, pad) for r in runs]
    counts: dict[str, int] = {}
    for key in keys:
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return frozenset(r.run_id for r, key in zip(runs, keys) if key is None or counts[key] == 1)
