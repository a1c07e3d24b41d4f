"""The shape of the code: data flows one way, reading results loads no training stack, the
training code has one loop of readable functions, and plug-ins (third-party ones included)
register in one registry."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from scalelab.cli import app
from scalelab.registry import executors

SRC = Path(__file__).resolve().parent.parent / "src" / "scalelab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, inside_functions: bool = False) -> set[str]:
    """scalelab modules a file imports when it is imported (with ``inside_functions``, also
    those its functions import when they run)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if inside_functions else tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("scalelab")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("scalelab"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {m: {t for t in _top_level_imports(p) if t in files and t != m}
            for m, p in files.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycles_between_modules():
    """Every import walked: module level, inside functions and under TYPE_CHECKING."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {m: {t for t in _top_level_imports(p, inside_functions=True) if t in files and t != m}
             for m, p in files.items()}
    # A package's __init__ re-exporting its submodules is not a cycle of the code's logic.
    edges = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    assert not _cycles(edges)


def test_training_flows_one_way():
    """train.dispatch (the entries) -> the strategies -> train.common -> the loop and its leaves,
    counting imports inside functions (no cycle held apart by a function-local import); the
    runners and evaluators ask scalelab.devices and the package, never train.dispatch."""
    files = {_module_name(p): p for p in (SRC / "train").glob("*.py") if p.name != "__init__.py"}
    edges = {m: {t for t in _top_level_imports(p, inside_functions=True) if t in files and t != m}
             for m, p in files.items()}
    assert not _cycles(edges)
    layers = [{"dispatch", "coordcheck"}, {"single", "streamed", "lm", "stacked"}, {"common"}]

    def level(module: str) -> int:  # the loop and the other leaves: below every layer
        name = module.rpartition(".")[2]
        return next((i for i, names in enumerate(layers) if name in names), len(layers))

    # Nothing imports a layer above it, nor a strategy another (but the streamed one extends
    # the in-memory one).
    upward = [(m, t) for m, targets in edges.items() for t in targets
              if level(t) < level(m) or (level(t) == level(m) < len(layers) and (m, t) != (
                  "scalelab.train.streamed", "scalelab.train.single"))]
    assert not upward
    outside = [p for p in SRC.rglob("*.py") if p.parent.name in ("runner", "evaluation")]
    for path in outside:
        assert "scalelab.train.dispatch" not in _top_level_imports(path, inside_functions=True), path


def test_results_layer_never_imports_training_or_torch():
    downstream = [m for m in _graph() if m in ("scalelab.store", "scalelab.records")
                  or m.startswith(("scalelab.analysis", "scalelab.report"))]
    for module in downstream:
        for target in _graph()[module]:
            assert not target.startswith(("scalelab.train", "scalelab.runner")), (module, target)
    code = textwrap.dedent("""
        import sys
        import scalelab.store, scalelab.records, scalelab.analysis.stats, scalelab.analysis
        import scalelab.analysis.study_analysis, scalelab.report, scalelab.api, scalelab.cli
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(
            ("scalelab.train", "scalelab.tasks", "scalelab.models", "scalelab.methods")))
        print(loaded)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


def test_the_report_renders_and_never_tunes():
    """Evaluations are tuned per shape in the analysis step; report/ only renders them."""
    for path in (SRC / "report").glob("*.py"):
        assert "tune_per_shape" not in path.read_text(), path


def test_executors_are_a_registered_family():
    assert executors.names() == ["local", "ray", "torchrun"]
    result = CliRunner().invoke(app, ["list", "executor"])
    assert result.exit_code == 0 and "torchrun" in result.output


def test_an_unknown_backend_is_refused_before_anything_is_written(tmp_path, tiny_study):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(tiny_study(tmp_path)), "--out", str(out),
                                      "--backend", "slurm"])
    assert result.exit_code == 2
    assert "--backend: unknown executor 'slurm' (allowed: auto, local, ray, torchrun)" in result.output
    assert not out.exists()


def test_torchrun_outside_a_job_is_refused(tmp_path, tiny_study):
    result = CliRunner().invoke(app, ["run", str(tiny_study(tmp_path)), "--out",
                                      str(tmp_path / "out"), "--backend", "torchrun"])
    assert result.exit_code == 2 and "not inside a torchrun job" in result.output


def test_a_third_party_plugin_registers_through_its_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "myplugin").mkdir(parents=True)
    (site / "myplugin" / "__init__.py").write_text(textwrap.dedent('''
        from scalelab.methods import Method
        from scalelab.registry import methods

        @methods.register("doubled_loss")
        class DoubledLoss(Method):
            """Twice the plain loss (a third-party method)."""

            def training_loss(self, model, x, y):
                return 2 * super().training_loss(model, x, y)
        '''))
    info = site / "myplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[scalelab.plugins]\nmyplugin = myplugin\n")
    code = ("from scalelab.registry import methods; "
            "print(methods.names('doubled*'), methods.describe('doubled*')[0][1])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(site), "PATH": ""}, check=True)
    assert done.stdout.strip() == "['doubled_loss'] Twice the plain loss (a third-party method)."


def test_no_function_anywhere_is_over_80_lines():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(SRC)}:{node.name} ({lines} lines)")
    assert not long
