"""User text is data: never parsed as rich markup, never breaking a Markdown table."""

import io

from scalelab.output import Output
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
