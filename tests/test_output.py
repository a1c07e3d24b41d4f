"""User text is data: never parsed as rich markup, never breaking a Markdown table; tables fit
the console's width and leave out the settings that do not apply."""

import io

import pytest

from scalelab.output import PIPE_WIDTH, Output, fmt_value
from scalelab.report.report import _markdown


def test_bracketed_user_text_prints_literally_in_tables_and_messages():
    out, err = io.StringIO(), io.StringIO()
    output = Output("text", stdout=out, stderr=err)
    output.table("runs [/red] of [bold]x", ["label", "n"],
                 [["2000 [width=16]", 1], ["[/x] folder", 2]])
    output.info("wrote [red]not red[/red] and [/x]")
    output.warn("grid value [/x]")
    output.error("bad key [/red]")
    printed = out.getvalue() + err.getvalue()
    for text in ("runs [/red] of [bold]x", "2000 [width=16]", "[/x] folder",
                 "wrote [red]not red[/red] and [/x]", "warning: grid value [/x]",
                 "error: bad key [/red]"):
        assert text in printed


def test_empty_tables_print_nothing():
    out = io.StringIO()
    Output("text", stdout=out).table("settings", ["setting", "default"], [])
    assert out.getvalue() == ""


def test_pipes_in_markdown_table_cells_are_escaped(tmp_path):
    md = _markdown([("table", ["point", "value"], [["a|b", 1.5], ["c", "x | y"]])], tmp_path)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    # every row has the same number of unescaped separators as the header
    count = [len(line.replace("\\|", "")) - len(line.replace("\\|", "").replace("|", ""))
             for line in rows]
    assert len(set(count)) == 1 and "a\\|b" in md and "x \\| y" in md


def _printed(columns, rows, width: int, monkeypatch, title="t") -> str:
    monkeypatch.setenv("COLUMNS", str(width))
    out = io.StringIO()
    Output("text", stdout=out).table(title, columns, rows)
    return out.getvalue()


def test_a_column_that_is_none_in_every_row_is_left_out(monkeypatch):
    printed = _printed(["run_id", "width", "patch_size", "loss"],
                       [["a1", 16, None, 0.5], ["b2", 32, None, 0.25]], 100, monkeypatch)
    header = next(line for line in printed.splitlines() if "run_id" in line)
    assert "width" in header and "loss" in header and "patch_size" not in printed
    # a column with some values keeps its empty cells as "—" (the setting does not apply)
    printed = _printed(["run_id", "patch_size"], [["a1", None], ["b2", 8]], 100, monkeypatch)
    assert "patch_size" in printed and "—" in printed
    # ... and a column asked for stays even when empty (the first one always does)
    out = io.StringIO()
    Output("text", stdout=out).table("t", ["setting", "default"], [[None, None]],
                                     keep=["default"])
    assert "setting" in out.getvalue() and "default" in out.getvalue()


# The laws the quickstart's run prints: 163 columns wide as rich lays them out unconstrained.
LAWS = (["law", "form", "parameters", "points", "verdict"], [
    ["test_loss vs n_params [num_train=10000]", "power_offset",
     "E = 0.6988, A = 178.4, alpha = 0.8655", 15, "use with care"],
    ["test_loss vs n_params & num_train, form chinchilla", "chinchilla",
     "E = 0.1305, A = 26.81, B = 5.056e+04, alpha = 0.5018, beta = 1.271", 45,
     "use with care"]])
# A status table of a list-of-grids study: 15 columns, too many for 100 even wrapped.
BEST = (["run_id", "depth", "width", "stem", "method", "target_rate", "model", "patch_size",
         "heads", "seed", "n_params", "val_loss", "test_loss", "test_acc", "wall_time"],
        [["ae15761b42c7", 18, 8, "cifar", "ast", 0.3, None, None, None, 0, 176012, 1.209,
          1.196, 0.8438, 42.93],
         ["d0d693c98936", 2, 32, None, "curriculum", 0.3, "vit", 8, 2, 1, 1176012, 1.271,
          1.27, 0.625, 16.8]])


@pytest.mark.parametrize("width", [100, 80, 60])
@pytest.mark.parametrize("table", [LAWS, BEST], ids=["laws", "status"])
def test_a_wide_table_fits_the_width_and_keeps_every_number(monkeypatch, table, width):
    columns, rows = table
    printed = _printed(columns, rows, width, monkeypatch,
                       title="laws fitted by the analysis (power_offset: L = E + A·x^(−α); "
                             "chinchilla: L = E + A/N^α + B/D^β; intervals and backtests in "
                             "the report)")
    lines = printed.splitlines()
    assert max(map(len, lines)) <= width
    words = set(printed.replace("│", " ").replace("┃", " ").split())
    for row in rows:  # each number whole on one line (not broken, not cut to "…")
        for value in row:
            if isinstance(value, int | float):
                assert fmt_value(value) in words or f"{fmt_value(value)}," in words, value
    assert "…" not in printed
    if table is BEST:
        assert printed.count("ae15761b42c7") == printed.count("(continued)") + 1 > 1


def test_laws_wrap_between_parameters_and_a_table_that_fits_is_unchanged(monkeypatch):
    printed = _printed(*LAWS, 100, monkeypatch)
    assert "E = 0.6988, A = 178.4," in printed and "alpha = 0.8655" in printed
    assert "(continued)" not in printed  # wrapped in place, not split
    wide = _printed(*LAWS, 200, monkeypatch)
    assert "│ E = 0.1305, A = 26.81, B = 5.056e+04, alpha = 0.5018, beta = 1.271 │" in wide
    assert max(map(len, wide.splitlines())) == 163


def test_off_a_terminal_tables_are_120_columns_unless_columns_says(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    Output("text", stdout=out).table("laws", *LAWS)
    assert PIPE_WIDTH == 120 and max(map(len, out.getvalue().splitlines())) <= 120
    assert max(map(len, _printed(*LAWS, 100, monkeypatch).splitlines())) <= 100


def test_a_list_of_grids_dry_run_leaves_out_the_settings_a_run_lacks(tmp_path, tiny_study,
                                                                     run_cli, monkeypatch):
    """ResNets and ViTs in one study: the ResNet runs had printed ``patch_size=None``."""
    monkeypatch.setenv("COLUMNS", "100")
    study = tiny_study(tmp_path, grid=[{"width": [4, 8]},
                                       {"model.depth": [2], "width": [16], "train.lr": [0.02]}])
    result = run_cli("run", study, "--dry-run", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "None" not in result.stdout
    assert max(map(len, result.stdout.splitlines())) <= 100
    rows = [line.split("│")[1:-1] for line in result.stdout.splitlines()
            if line.startswith("│")]
    assert [[c.strip() for c in row[2:]] for row in rows] == [
        ["4", "—", "—", "0"], ["4", "—", "—", "1"], ["8", "—", "—", "0"], ["8", "—", "—", "1"],
        ["16", "2", "0.02", "0"], ["16", "2", "0.02", "1"]]
