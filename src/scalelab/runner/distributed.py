"""``scalelab run`` under ``torchrun``: every rank trains each run together (DDP), rank 0
plans the runs and writes the results and the report.

    torchrun --standalone --nproc_per_node=8 -m scalelab run studies/lm_scaling_gpu.yaml --device cuda
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import ScalelabError
from ..output import Output
from ..registry import tasks
from ..spec import Study
from ..store import Store
from ..train import train_run
from .local import available_cores


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def execute_distributed(study: Study, out_dir: Path, device: torch.device, shard: str | None,
                        output: Output):
    """Train the study's missing runs one after another, each across every rank."""
    from . import StudyRun, plan, record, store_meta  # the package imports this module

    not_lm = sorted({r.config["task"]["name"] for r in study.runs
                     if tasks.get(r.config["task"]["name"]).data_kind != "language"})
    if not_lm:
        raise ScalelabError(f"torchrun: distributed training supports language-model tasks "
                            f"(text); task {', '.join(not_lm)} trains with plain `scalelab run`")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ScalelabError(f"torchrun: --device {device} is not supported (use cuda or cpu)")
    torch.set_num_threads(max(1, available_cores() // local_size))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        rank = dist.get_rank()
        store = Store.open(out_dir, create=True) if rank == 0 else None
        plan_msg: list = [None]
        if store is not None:
            store_meta(store, study)
            selected, todo = plan(study, store.statuses(), shard)
            plan_msg = [([r.run_id for r in selected], [r.run_id for r in todo])]
            output.info(f"training {len(todo)} of {len(selected)} runs on {dist.get_world_size()}"
                        f" processes ({device.type}) -> {out_dir}")
        dist.broadcast_object_list(plan_msg, src=0)
        selected_ids, todo_ids = plan_msg[0]
        by_id = {r.run_id: r for r in study.runs}
        result = StudyRun(study, Path(out_dir), [by_id[i] for i in selected_ids],
                          len(selected_ids) - len(todo_ids), primary=rank == 0)
        checkpoints = Path(out_dir) / "checkpoints" if study.spec.save_checkpoints else None
        for run_id in todo_ids:
            run = by_id[run_id]
            if store is not None:
                store.mark_running([run])
            run_result = train_run(run.config, str(device),
                                   checkpoints / f"{run_id}.pt" if checkpoints else None)
            if store is not None:
                store.write_result(run, run_result)
                record(result, run, run_result)
                output.info(f"{result.trained.total()}/{len(todo_ids)} {run_result.status} "
                            f"{run_id} " + " ".join(f"{k}={v}" for k, v in run.point.items()))
        if store is not None:
            store.close()
        # Tear down together: a rank that destroys the group while its peer is still storing
        # results can abort at exit (gloo's threads outlive it: "terminate called ...").
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()
