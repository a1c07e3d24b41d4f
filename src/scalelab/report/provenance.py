"""The report's provenance block: when and by what command it was written, from which study
file, and where (scalelab and torch versions, device, CPU capability, threads) its runs
trained, as each run's stored provenance records it."""

from __future__ import annotations

import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..analysis.study_analysis import PLATFORM, StudyAnalysis

#: The platform table's headers, in PLATFORM's order.
PLATFORM_HEADERS = {"device": "device", "cpu": "CPU", "cpu_capability": "CPU capability",
                    "torch_version": "torch", "torch_threads": "torch threads"}


def provenance_blocks(a: StudyAnalysis, records: Sequence[dict[str, Any]], meta: Any,
                      now: float | None = None, argv: Sequence[str] | None = None) -> list[tuple]:
    """A short list (written, study, runs) and the table of platforms the runs trained on."""
    blocks: list[tuple] = [("h2", "Provenance")]
    written = _utc(time.time() if now is None else now)
    blocks.append(("li", f"Written {written} by `{command(argv)}` (scalelab {__version__})."))
    source = getattr(meta, "source", None)
    quick = " with its quick block (`--quick`)" if getattr(meta, "quick", False) else ""
    blocks.append(("li", f"Study `{a.study}`" + (f" from `{source}`" if source else "")
                   + quick + "."))
    done = [r for r in records if r.get("status") == "completed"]
    if done:
        blocks.append(("li", _runs_line(done)))
    if a.platforms:
        blocks.append(("table", [*(PLATFORM_HEADERS[k] for k in PLATFORM), "runs"],
                       [[p.get(k) if p.get(k) is not None else "not recorded" for k in PLATFORM]
                        + [p["runs"]] for p in a.platforms],
                       "Where the runs trained, as each run recorded it. Their numbers agree "
                       "to the last digit only within one platform: across CPUs of another "
                       "capability (instruction set), torch build or thread count the last "
                       "digits may differ."))
    return blocks


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that is writing the report: ``scalelab …`` when it is the CLI, else
    the Python program that called the API."""
    argv = list(sys.argv if argv is None else argv) or [""]
    path = Path(argv[0])
    if path.name == "scalelab" or (path.name == "__main__.py" and path.parent.name == "scalelab"):
        return shlex.join(["scalelab", *argv[1:]])
    return "Python: " + shlex.join([path.name, *argv[1:]]) + " (scalelab.api.report)"


def _runs_line(done: Sequence[dict[str, Any]]) -> str:
    starts = [r["started_at"] for r in done if isinstance(r.get("started_at"), int | float)]
    ends = [r["finished_at"] for r in done if isinstance(r.get("finished_at"), int | float)]
    when = ""
    if starts and ends:
        first, last = _utc(min(starts)), _utc(max(ends))
        if first[:10] == last[:10]:  # the same day: its date once
            last = last[11:]
        when = f", trained {first.removesuffix(' UTC')} – {last}"
    versions = Counter(r.get("scalelab_version") for r in done)
    if set(versions) == {None}:
        return f"Runs: {len(done)} completed{when} (scalelab version not recorded)."
    by = ", ".join(f"{v or 'not recorded'} ({n} run{'s' * (n != 1)})" if len(versions) > 1
                   else str(v) for v, n in versions.most_common())
    return f"Runs: {len(done)} completed{when}, by scalelab {by}."


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))
