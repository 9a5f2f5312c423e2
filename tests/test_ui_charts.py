"""
How the dashboard shows figures and draws its charts (ui/html.py,
ui/charts.py), one piece at a time: numbers, costs, times, badges and
links as a reader sees them, the scale of a bar chart, the labels of its
axis, and where a timeline puts its bars.
"""

from __future__ import annotations

import calendar

import pytest
from twisted.web.template import flattenString, tags

from bridgeproxy.ui import charts, html
from tests.dashboards import Document

MIDNIGHT = float(calendar.timegm((2026, 11, 24, 0, 0, 0)))


def render(tag) -> Document:
    out = []
    flattenString(None, tag).addCallback(out.append)
    return Document(out[0])


# -- figures ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [
    (None, "—"), (0, "0"), (999, "999"), (1000, "1.0k"), (-1500, "-1.5k"), (999_949, "999.9k"), (1_000_000, "1.0M"),
    (2_345_678_901, "2.3G"), (1e9, "1.0G"), (1.5, "1.5"), (2.0, "2"),
])
def test_short_counts(value, shown):
    assert html.short(value) == shown


@pytest.mark.parametrize("micros, shown", [
    (None, "—"), (0, "0.0000"), (1, "0.0000"), (50, "0.0001"), (12_345_678, "12.3457"), (999_999_999, "1,000.0000"), (999_949_999, "999.9500"),
    (1_000_000_000, "1,000.00"), (1_234_567_890_123, "1,234,567.89"),
])
def test_costs(micros, shown):
    assert html.cost(micros) == shown


def test_counts_percents_and_times():
    assert (html.count(None), html.count(1234567), html.count(5.9)) == ("—", "1,234,567", "5")
    assert (html.percent(1, 0), html.percent(1, 3), html.percent(0, 5)) == ("—", "33.3%", "0.0%")
    assert html.utc(None) == "—"
    assert html.utc(MIDNIGHT + 3661) == "2026-11-24 01:01:01"
    assert html.utc(MIDNIGHT + 3661, False) == "2026-11-24 01:01"


def test_text_is_always_writable():
    """None is empty, numbers are text, a lone surrogate becomes U+FFFD and a pair its character."""
    assert (html.text(None), html.text(5), html.text("é")) == ("", "5", "é")
    assert html.text("a\udcffb") == "a\ufffdb"
    assert html.text("\ud83d\ude00") == "\U0001f600"


def test_urls_leave_out_unset_arguments():
    assert html.url("/ui/x") == "/ui/x"
    assert html.url("/ui/x", a=None, b="", c="1 2", d=0) == "/ui/x?c=1+2&d=0"
    assert html.url("/ui/x", q="a&b=c", r="\udcff") == "/ui/x?q=a%26b%3Dc&r=%EF%BF%BD"


@pytest.mark.parametrize("status, upstream, label, kind", [
    ("ok", None, "ok", "ok"), ("ok", 399, "ok", "ok"), ("ok", 400, "ok · upstream 400", "bad"),
    ("refused", 500, "refused", "refused"), ("timeout", None, "timeout", "bad"), (None, None, "?", "bad"),
])
def test_status_badges(status, upstream, label, kind):
    span = render(html.status_badge(status, upstream)).all("span")[0]
    assert (span.text(), span.attrs["class"]) == (label, f"status {kind}")


def test_tables_align_numbers_right_and_keep_cells_given_whole():
    doc = render(html.table(["a", "b"], [["x", "1"], [tags.td("kept", class_="own"), "2"]], numeric=(1,), id="t"))
    assert [(th.text(), th.attrs.get("class")) for th in doc.all("th")] == [("a", None), ("b", "num")]
    assert [(td.text(), td.attrs.get("class")) for td in doc.all("td")] == [
        ("x", None), ("1", "num"), ("kept", "own"), ("2", "num")]
    assert doc.all("table")[0].attrs == {"id": "t"}


def test_a_post_button_carries_its_fields_and_token():
    doc = render(html.post_button("/ui/x", "Go", "tok", {"k": "v"}))
    form = doc.all("form")[0]
    assert form.attrs == {"method": "post", "action": "/ui/x", "class": "inline"}
    assert [(i.attrs["name"], i.attrs["value"]) for i in doc.all("input")] == [("csrf", "tok"), ("k", "v")]
    assert doc.all("button")[0].attrs == {"type": "submit"}
    assert render(html.post_button("/ui/x", "Go", "t", kind="danger")).all("button")[0].attrs["class"] == "danger"


class Written:
    def __init__(self, finished=0, disconnected=False):
        self.finished = finished
        self._disconnected = disconnected
        self.calls = []

    def setResponseCode(self, code):
        self.calls.append(code)

    def write(self, data):
        self.calls.append(data)


def test_a_page_is_not_written_to_a_request_that_is_gone():
    for gone in (Written(finished=1), Written(disconnected=True)):
        html.write_page(gone, 200, b"x")
        assert gone.calls == []


# -- bar charts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, top", [
    (-3, 1), (0, 1), (0.03, 0.05), (1, 1), (1.5, 2), (2, 2), (2.2, 2.5), (2.5, 2.5), (3, 5), (5, 5), (7, 10),
    (10, 10), (11, 20), (4_100_000, 5_000_000),
])
def test_the_scale_is_a_round_number(value, top):
    assert charts.nice_ceiling(value) == pytest.approx(top)


def test_axis_labels_of_buckets():
    """Hours as HH:MM, midnight as its date; days as their date; buckets under an hour always as a time."""
    assert charts.bucket_label(MIDNIGHT + 5 * 3600, 3600) == "05:00"
    assert charts.bucket_label(MIDNIGHT, 3600) == "11-24"
    assert charts.bucket_label(MIDNIGHT + 3600, 86400) == "11-24"
    assert charts.bucket_label(MIDNIGHT, 600) == "00:00"


def bars(series, stacks=(("a", "a"), ("b", "b")), bucket=3600):
    return render(charts.bar_chart(series, list(stacks), bucket, title="T", name="n"))


def test_bars_stack_to_scale():
    """Two buckets: 3 + 1 and 0 + 0 on a scale of 5 (the plot is 186 units high)."""
    doc = bars([{"start": MIDNIGHT, "a": 3, "b": 1}, {"start": MIDNIGHT + 3600, "a": 0, "b": None}])
    groups = doc.all("g", class_="bucket")
    assert [(g.attrs["data-a"], g.attrs["data-b"]) for g in groups] == [("3", "1"), ("0", "0")]
    a, b = (doc.all("rect", class_=k)[0].attrs for k in ("a", "b"))
    assert (a["y"], a["height"], b["y"], b["height"]) == ("84.40", "111.60", "47.20", "37.20")
    assert (a["x"], a["width"]) == ("57.00", "326.00")
    assert [t.text() for t in doc.all("text", class_="axis")][:5] == ["0.0", "1.25", "2.5", "3.75", "5.0"]
    assert doc.all("rect", class_="b") and len(doc.all("rect", class_="a")) == 1
    hover = [r.attrs for r in doc.all("rect") if r.attrs.get("fill") == "transparent"]
    assert [(h["x"], h["y"], h["width"], h["height"]) for h in hover] == [
        ("56.00", "10", "328.00", "186"), ("384.00", "10", "328.00", "186")]
    assert groups[0].all("title")[0].text() == "2026-11-24 00:00 UTC: a 3, b 1"
    assert doc.all("text", class_="empty") == []
    assert [s.text() for s in doc.all("span")] == ["a", "", "b", ""]


def test_many_buckets_are_labelled_every_so_often():
    series = [{"start": MIDNIGHT + i * 3600, "a": 1} for i in range(25)]
    labels = [t.text() for t in bars(series, (("a", "a"),)).all("text", class_="axis")[5:]]
    assert labels == ["11-24", "03:00", "06:00", "09:00", "12:00", "15:00", "18:00", "21:00", "11-25"]
    assert [t.text() for t in bars(series[:12], (("a", "a"),)).all("text", class_="axis")[5:]][:2] == [
        "11-24", "01:00"]


def test_an_empty_chart_says_so():
    doc = bars([{"start": MIDNIGHT, "a": 0}])
    assert doc.all("text", class_="empty")[0].text() == "Nothing in this range"
    assert render(charts.bar_chart([], [("a", "a")], 3600, title="T")).all("text", class_="empty")


# -- timelines -------------------------------------------------------------------------------------------


def spans_of(doc):
    return [(r.attrs["x"], r.attrs["y"], r.attrs["width"]) for r in doc.all("rect")]


def test_overlapping_spans_take_rows_and_others_share_them():
    doc = render(charts.timeline([{"from": 0, "to": 50, "class": "a"}, {"from": 10, "to": 20},
                                  {"from": 60, "to": 100, "tip": "t"}], 0, 100, title="T"))
    assert spans_of(doc) == [("56.00", "12.0", "618.00"), ("179.60", "26.0", "123.60"), ("797.60", "12.0", "494.40")]
    assert doc.all("svg")[0].attrs["viewbox"] == "0 0 1300 68"
    assert [r.attrs["class"] for r in doc.all("rect")] == ["span a", "span ", "span "]
    assert doc.all("rect")[2].all("title")[0].text() == "t"


def test_a_span_just_after_another_needs_a_gap_to_share_its_row():
    doc = render(charts.timeline([{"from": 0, "to": 50}, {"from": 50.2, "to": 60}, {"from": 50.5, "to": 60}],
                                 0, 100, title="T"))
    assert [r.attrs["y"] for r in doc.all("rect")] == ["12.0", "26.0", "12.0"]


def test_spans_are_clamped_to_the_axis_and_never_thinner_than_two():
    doc = render(charts.timeline([{"from": -50, "to": 500}, {"from": 30, "to": 30}], 0, 100, title="T"))
    assert spans_of(doc) == [("56.00", "12.0", "1236.00"), ("426.80", "26.0", "2.00")]


def test_lanes_are_labelled_and_linked():
    doc = render(charts.timeline([{"from": 0, "to": 10, "label": "x" * 40, "id": "s1"}, {"from": 0, "to": 5}],
                                 0, 10, title="T", lanes=True, href=lambda span: span.get("id")))
    assert [t.text() for t in doc.all("text", class_="lane-label")] == ["x" * 28, ""]
    assert [a.attrs["href"] for a in doc.all("a")] == ["s1"]
    assert [(r.attrs["x"], r.attrs["y"], r.attrs["height"]) for r in doc.all("rect")] == [
        ("236.00", "12.0", "12"), ("236.00", "28.0", "12")]
    assert doc.all("text", class_="lane-label")[0].attrs["x"] == "230"


@pytest.mark.parametrize("start, end, ticks", [
    (MIDNIGHT, MIDNIGHT + 10, ["00:00:00.000", "00:00:02.500", "00:00:05.000", "00:00:07.500", "00:00:10.000"]),
    (MIDNIGHT, MIDNIGHT + 3600, ["11-24 00:00:00", "11-24 00:15:00", "11-24 00:30:00", "11-24 00:45:00",
                                 "11-24 01:00:00"]),
    (MIDNIGHT, MIDNIGHT + 4 * 86400, ["11-24 00:00", "11-25 00:00", "11-26 00:00", "11-27 00:00", "11-28 00:00"]),
    (MIDNIGHT, MIDNIGHT, ["00:00:00.000", "00:00:00.250", "00:00:00.500", "00:00:00.750", "00:00:01.000"]),
])
def test_the_axis_is_as_precise_as_the_span_needs(start, end, ticks):
    doc = render(charts.timeline([], start, end, title="T"))
    axis = doc.all("text", class_="axis")
    assert [t.text() for t in axis] == ticks
    assert [t.attrs["text-anchor"] for t in axis] == ["start", "middle", "middle", "middle", "end"]
    assert doc.all("text", class_="empty")[0].text() == "Nothing in this range"


@pytest.mark.parametrize("span, first", [(59.5, "00:00:00.000"), (60, "11-24 00:00:00"), (86399, "11-24 00:00:00"),
                                         (86400, "11-24 00:00")])
def test_the_axis_precision_changes_at_a_minute_and_a_day(span, first):
    doc = render(charts.timeline([], MIDNIGHT, MIDNIGHT + span, title="T"))
    assert doc.all("text", class_="axis")[0].text() == first


def test_an_empty_timeline_is_one_row_high_and_says_so_in_the_middle():
    doc = render(charts.timeline([], 0, 100, title="T"))
    assert doc.all("svg")[0].attrs["viewbox"] == "0 0 1300 54"
    empty = doc.all("text", class_="empty")[0]
    assert (empty.attrs["x"], empty.attrs["y"], empty.attrs["text-anchor"]) == ("674.0", "24", "middle")


def test_a_span_starting_exactly_one_gap_after_another_shares_its_row():
    """The gap is 0.4% of the axis: a span starting exactly that long after another's end shares its row."""
    doc = render(charts.timeline([{"from": 0, "to": 50}, {"from": 54, "to": 60}, {"from": 55, "to": 70}],
                                 0, 1000, title="T"))
    assert [r.attrs["y"] for r in doc.all("rect")] == ["12.0", "12.0", "26.0"]


def test_spans_without_a_tip_or_a_label():
    doc = render(charts.timeline([{"from": 0, "to": 5}], 0, 10, title="T", lanes=True))
    assert [t.text() for t in doc.all("rect")[0].all("title")] == [""]
    assert [t.text() for t in doc.all("text", class_="lane-label")] == [""]
