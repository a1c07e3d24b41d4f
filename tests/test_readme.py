"""The README's Python snippets run as written (issue: a snippet that is a fragment teaches
nothing): the analysis one in the fast tier, the API one (it trains the quickstart's quick
block) in the slow tier, from a folder holding the study it names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_the_snippets_this_file_runs():
    found = snippets()
    assert len(found) == 2
    assert "scalelab.run(" in found[0] and "fit_law(" in found[1]


def test_the_analysis_snippet_runs_as_written(capsys):
    exec(compile(snippets()[1], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "trustworthy" in printed  # the verdict of a law fitted on its own law's points


@pytest.mark.slow
def test_the_api_snippet_runs_as_written(tmp_path):
    (tmp_path / "studies").mkdir()
    shutil.copy(ROOT / "studies" / "quickstart.yaml", tmp_path / "studies")
    script = tmp_path / "example.py"
    script.write_text(snippets()[0])
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "runs" / "quickstart-quick"
    assert (out / "report.html").exists() and (out / "scaling_law.json").exists()
    assert list(out.glob("*.parquet"))
    assert "report.html" in done.stdout
