"""What a study's output directory holds, and where: the one place its paths are spelled.

::

    OUT/
      results.sqlite                    the results store (store.py)
      results.shard-I-of-K.sqlite       shard stores (``run --shard I/K --shard-store``)
      .scalelab-runners/                each runner's lock file, the shard runners' lock
      checkpoints/RUN_ID.pt             a run's weights (``save_checkpoints: true``)
      report.md, report.html            the study report
      scaling_law.json                  the analysis behind it, for machines
      comparison_table.txt              the comparisons as a table
      figures/                          the report's figures
      coordcheck.json, coordcheck.png   ``scalelab coordcheck``'s numbers and figure
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The results store's file name in an output directory.
FILENAME = "results.sqlite"
#: Shard stores (``--shard i/k --shard-store``): one file per shard, read with the main one.
SHARD_GLOB = "results.shard-*-of-*.sqlite"
#: Beside the store: each runner's lock file, and the lock shard runners share against merge.
RUNNERS_DIR = ".scalelab-runners"


def shard_filename(index: int, count: int) -> str:
    """The file name of shard ``index`` of ``count``'s own store."""
    return f"results.shard-{index}-of-{count}.sqlite"


@dataclass(frozen=True)
class OutDir:
    """The paths of one study output directory (nothing is created or read here)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def store(self) -> Path:
        return self.root / FILENAME

    def shard_store(self, index: int, count: int) -> Path:
        return self.root / shard_filename(index, count)

    def shard_stores(self) -> list[Path]:
        """The shard store files present, in order."""
        return sorted(self.root.glob(SHARD_GLOB))

    @property
    def runners(self) -> Path:
        return self.root / RUNNERS_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, run_id: str) -> Path:
        """Where run ``run_id``'s weights are saved (and re-scored from)."""
        return self.checkpoints / f"{run_id}.pt"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def scaling_law(self) -> Path:
        return self.root / "scaling_law.json"

    @property
    def comparison_table(self) -> Path:
        return self.root / "comparison_table.txt"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def coordcheck(self) -> Path:
        """The coordinate check's files, without suffix (``.json``, ``.png``, ``.svg``)."""
        return self.root / "coordcheck"
