"""Run every benchmark in this folder and write BENCHMARKS.md with the machine and figures.

Usage: python benchmarks/run_all.py [--only NAME ...]. Each script runs in its own process;
its last output line is its JSON result. With --only, the other rows of an existing
BENCHMARKS.md are kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["overhead", "batched", "padding", "time_to_accuracy", "fit", "report", "next_refusal",
         "isoflop", "tuning", "selection", "ttt", "rescore", "lm", "cluster", "vision"]


def scripts() -> list[Path]:
    found = {p.stem: p for p in HERE.glob("*.py") if not p.stem.startswith("_")
             and p.stem != "run_all"}
    return [found[n] for n in ORDER if n in found] + sorted(
        p for n, p in found.items() if n not in ORDER)


def goal_met(value: float, goal: str) -> str:
    match = re.match(r"\s*(>=|<=|>|<)\s*([0-9.]+)", goal)
    if not match:
        return "—"
    op, bound = match.group(1), float(match.group(2))
    ok = {">=": value >= bound, "<=": value <= bound, ">": value > bound, "<": value < bound}[op]
    return "yes" if ok else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="benchmark names (default: all)")
    args = parser.parse_args()
    rows, machine = [], {}
    for script in scripts():
        if args.only and script.stem not in args.only:
            continue
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        print(proc.stdout[-2000:], proc.stderr[-2000:] if proc.returncode else "", flush=True)
        lines = proc.stdout.strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            rows.append((script.name, "failed", "", "", f"exit {proc.returncode}", ""))
            continue
        machine = result.pop("machine", machine)
        extra = {k: v for k, v in result.items() if k not in ("metric", "value", "goal")}
        rows.append((script.name, result["metric"], result["value"], result["goal"],
                     goal_met(result["value"], result["goal"]), json.dumps(extra)))
    target = HERE.parent / "BENCHMARKS.md"
    lines = {row[0]: "| " + " | ".join(str(c) for c in row) + " |" for row in rows}
    if args.only and target.exists():  # keep the rows of the benchmarks not rerun
        for line in target.read_text().splitlines():
            name = line.split("|")[1].strip() if line.startswith("| ") else ""
            if name.endswith(".py") and name not in lines:
                lines[name] = line
    order = [p.name for p in scripts()]
    text = ["# Benchmarks", "",
            f"Written by `python benchmarks/run_all.py` on {datetime.date.today()}.", "",
            "Machine: " + ", ".join(f"{k} = {v}" for k, v in machine.items()), "",
            "| script | metric | value | goal | met | details |", "|---|---|---|---|---|---|"]
    text += [lines[name] for name in order if name in lines]
    target.write_text("\n".join(text) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
