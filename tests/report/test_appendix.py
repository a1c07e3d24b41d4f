"""The report reads like a paper's appendix: provenance at the top, every ± defined, one
precision per column, relative errors in percent, aligned columns, readable log ticks, every
grid axis told apart in the figures, and captions that say which fit a figure draws."""

import re
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.figure import Figure

from scalelab.report import plots, write_report
from scalelab.report.provenance import command
from scalelab.report.report import _html, _markdown
from scalelab.report.tables import MeanStd, Percent, format_table

from .conftest import PROVENANCE, make_fixture_store

# ----------------------------------------------------------------------------- table cells


def test_a_column_within_a_decade_shares_one_decimal_place():
    cells, _ = format_table([[1.2552], [0.7127], [1.0]], 1)
    assert [c[0] for c in cells] == ["1.2552", "0.7127", "1.0000"]


def test_a_column_over_decades_keeps_four_significant_digits_each():
    cells, _ = format_table([[1.469e-9], [3.172], [20100.0], [0.13237]], 1)
    assert [c[0] for c in cells] == ["1.469e-09", "3.172", "2.010e+04", "0.1324"]


def test_mean_std_shares_its_means_decimal_place_and_whole_numbers_get_separators():
    cells, numeric = format_table([[MeanStd(3.33, 0.014), 1920, MeanStd(0.4302, 0.00035)],
                                   [MeanStd(4.651, 0.0531), 480, MeanStd(0.42, None)]], 3)
    assert cells == [["3.330 ± 0.014", "1,920", "0.4302 ± 0.0003"],
                     ["4.651 ± 0.053", "480", "0.4200"]]
    assert numeric == [True, True, True]


def test_relative_errors_are_percentages_and_words_are_not_numbers():
    cells, numeric = format_table([["power", 0.03657, Percent(0.035137)],
                                   ["broken_power", None, Percent(None)]], 3)
    assert cells == [["power", "0.03657", "3.51%"], ["broken_power", "—", "—"]]
    assert numeric == [False, True, True]


def test_headers_align_with_their_columns_in_markdown_and_html(tmp_path):
    blocks = [("table", ["setting", "loss"], [["a", 1.25], ["b", 0.75]], "A caption.")]
    md = _markdown(blocks, tmp_path)
    assert "*A caption.*" in md and "|:---|---:|" in md
    page = _html(blocks, "t")
    assert '<th class="t">setting</th><th>loss</th>' in page
    assert '<td class="t">a</td><td>1.2500</td>' in page
    assert "<caption>A caption.</caption>" in page


# ----------------------------------------------------------------------------- figures


def _labels(ax, which="x") -> list[str]:
    axis = getattr(ax, f"{which}axis")
    lo, hi = sorted(getattr(ax, f"get_{which}lim")())
    formatter = axis.get_major_formatter()
    return [formatter(t) for t in axis.get_majorticklocs() if lo <= t <= hi]


def test_data_axes_read_10k_20k_40k_at_the_grids_values():
    fig = Figure()
    ax = fig.subplots()
    ax.plot([10_000, 20_000, 40_000], [1.2, 1.0, 0.9])
    plots.log_axis(ax, "x", plots.axis_kind("num_train"), [10_000, 20_000, 40_000])
    assert _labels(ax) == ["10k", "20k", "40k"]


def test_log_axes_tick_at_1_2_5_times_powers_of_ten():
    fig = Figure()
    ax = fig.subplots()
    ax.plot([1_000, 150_000], [1, 2])
    plots.log_axis(ax, "x", "count")
    assert _labels(ax) == ["1k", "2k", "5k", "10k", "20k", "50k", "100k"]
    ax = Figure().subplots()
    ax.plot([1e9, 3e10], [1, 2])
    plots.log_axis(ax, "x", "flops")
    assert _labels(ax)[:3] == ["$10^{9}$", "$2\\times10^{9}$", "$5\\times10^{9}$"]


def test_a_loss_axis_under_a_decade_gets_round_ticks():
    fig = Figure()
    ax = fig.subplots()
    ax.plot([1, 2, 3], [0.71, 0.95, 1.26])
    plots.log_axis(ax, "y", plots.axis_kind("test_loss"))
    labels = _labels(ax, "y")
    assert len(labels) >= 3 and "1" in labels
    assert all(re.fullmatch(r"\d(\.\d)?", t) for t in labels), labels


def test_formatters_for_known_values():
    assert [plots.si(v) for v in (500, 1e3, 2e4, 4e4, 2.5e6, 1.2e9, 3e12)] == \
        ["500", "1k", "20k", "40k", "2.5M", "1.2B", "3T"]
    assert [plots.plain(v) for v in (0.75, 1.0, 1.5, 20.0, 2000.0)] == \
        ["0.75", "1", "1.5", "20", "2k"]
    assert plots.power_of_ten(1e7) == "$10^{7}$" and plots.power_of_ten(5e7) == "$5\\times10^{7}$"


def test_two_varying_axes_give_every_combination_its_own_look():
    keys = [(w, d) for w in (16, 64, 256) for d in (10_000, 40_000)]
    look, legend = plots.styles(keys, ["width", "num_train"])
    drawn = {(s["color"], s["marker"]) for s in look.values()}
    assert len(drawn) == len(keys)  # no two curves alike
    for w in (16, 64, 256):  # lightness by data size, the same hue per width
        light, dark = look[(w, 10_000)]["color"], look[(w, 40_000)]["color"]
        assert sum(light) > sum(dark) and np.argmin(light) == np.argmin(dark)
    assert [h.get_label() for h in legend] == ["width = 16", "width = 64", "width = 256",
                                               "num_train = 10,000", "num_train = 40,000"]


def test_the_command_line_is_the_clis_or_says_python():
    assert command(["/venv/bin/scalelab", "report", "out dir"]) == "scalelab report 'out dir'"
    assert command(["/x/scalelab/__main__.py", "report", "o"]) == "scalelab report o"
    assert command(["/venv/bin/pytest", "-q"]).startswith("Python: pytest -q")


# ----------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return write_report(make_fixture_store(tmp_path_factory.mktemp("r") / "study"),
                        n_resamples=20, workers=1)


class _Tables(HTMLParser):
    """Each table's caption, header cells (with their class) and body text."""

    def __init__(self):
        super().__init__()
        self.tables, self._in = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"caption": "", "th": [], "body": ""})
        elif tag in ("caption", "th", "tbody"):
            self._in = tag
            if tag == "th":
                self.tables[-1]["th"].append([dict(attrs).get("class"), ""])

    def handle_endtag(self, tag):
        if tag in ("caption", "th", "tbody"):
            self._in = None

    def handle_data(self, data):
        if self._in == "caption":
            self.tables[-1]["caption"] += data
        elif self._in == "th":
            self.tables[-1]["th"][-1][1] += data
        elif self._in == "tbody":
            self.tables[-1]["body"] += data


def _tables(report):
    parser = _Tables()
    parser.feed(report.html.read_text())
    return parser.tables


@pytest.mark.slow
def test_the_provenance_block_comes_first_and_carries_the_runs_platform(report):
    md = report.markdown.read_text()
    head = md.split("## Verdicts")[0]
    assert "## Provenance" in head
    assert re.search(r"Written \d{4}-\d\d-\d\d \d\d:\d\d UTC by `[^`]+` \(scalelab ", head)
    assert "Runs: 144 completed, trained " in head and "by scalelab 0.1.0." in head
    row = next(line for line in head.splitlines() if PROVENANCE["torch_version"] in line)
    for key in ("device", "cpu", "cpu_capability", "torch_version", "torch_threads"):
        assert str(PROVENANCE[key]) in row
    page = report.html.read_text()
    assert page.index("Provenance") < page.index("Verdicts")
    (platforms,) = [t for t in _tables(report) if PROVENANCE["torch_version"] in t["body"]]
    assert [h for _, h in platforms["th"]][:4] == ["device", "CPU", "CPU capability", "torch"]


@pytest.mark.slow
def test_every_table_that_shows_a_plus_minus_defines_it(report):
    tables = _tables(report)
    with_pm = [t for t in tables if "±" in t["body"]]
    assert len(with_pm) >= 1
    for t in with_pm:
        assert "± is the sample standard deviation over" in t["caption"], t["caption"]
        n = re.search(r"n = the (\w+) column", t["caption"]).group(1)
        assert n in [h for _, h in t["th"]]
    md = report.markdown.read_text().splitlines()
    for i, line in enumerate(md):
        if line.startswith("|") and "±" in line:
            caption = next(md[j] for j in range(i, -1, -1) if md[j].startswith("*"))
            assert "± is the sample standard deviation" in caption


@pytest.mark.slow
def test_numbers_line_up_and_headers_follow_their_columns(report):
    md = report.markdown.read_text()
    results = md.split("## Results")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in results.splitlines() if line.startswith("| 8 |")]
    assert rows and all(re.fullmatch(r"\d\.\d{3} ± 0\.\d{3}", r[4]) for r in rows)
    assert all(re.fullmatch(r"0\.\d{4} ± 0\.\d{4}", r[5]) for r in rows)
    for t in _tables(report):
        if t["th"] and t["th"][0][1] in ("parameter", "point", "fit", "status"):
            assert t["th"][0][0] == "t"  # a column of words: its header left-aligned
    results_table = next(t for t in _tables(report) if t["th"][0][1] == "width")
    assert [c for c, h in results_table["th"] if h == "test_loss"] == [None]  # right


@pytest.mark.slow
def test_relative_errors_read_as_the_text_quotes_them(report):
    md = report.markdown.read_text()
    quoted = re.findall(r"mean \|relative error\| (\d+\.\d\d%)", md)
    tabled = re.findall(r"\| power \| [0-9.]+ \| (\d+\.\d\d%) \|", md)
    assert quoted and set(tabled) <= set(quoted) and tabled


@pytest.mark.slow
def test_figure_captions_say_which_fit_is_drawn(report):
    md = report.markdown.read_text()
    captions = re.findall(r"^\*Figure: (.*)\*$", md, re.M)
    laws = [c for c in captions if c.startswith("test_loss vs")]
    assert laws and all("the full fit (on all" in c for c in laws)
    assert any("the backtest fit's predictions for them" in c for c in laws)
    others = [c for c in captions if c not in laws and "vs" in c.split(":")[0]]
    assert others and all("no law is drawn" in c for c in others)
    curves = next(c for c in captions if c.startswith("validation loss during training"))
    assert "colour: width; lightness and marker: num_train (lighter: smaller); line style " \
           "and hollow markers: name" in curves
    assert "at its best lr" in curves


@pytest.mark.slow
def test_the_optimum_notation_is_explained_where_it_is_printed(report):
    md = report.markdown.read_text()
    assert "Row i is what the diagnostics call N_opt[i] and D_opt[i]." in md
    sections = md.split("\n## ")
    for section in sections:
        if "N_opt[" in section.replace("N_opt[i]", ""):
            assert "N_opt[i] and D_opt[i]: the compute-optimal parameters and data at budget " \
                   "i" in section or "Row i is what the diagnostics call N_opt[i]" in section
