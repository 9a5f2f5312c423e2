# -*- test-case-name: tests.test_ui -*-
"""
Charts drawn on the server as SVG: stacked bars over time, and timelines.
No script and no chart library: the page is complete as it arrives, and
each bar carries its figures (a C{<title>} the browser shows on hover, and
C{data-*} attributes).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional, Sequence

from twisted.web.template import Tag, tags

from bridgeproxy.ui.html import text, utc

SVG = "http://www.w3.org/2000/svg"
WIDTH, HEIGHT = 720, 220
#: Timelines span the page's width: drawn wider, so that their text stays small.
TIMELINE_WIDTH = 1300
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 24


def _svg(name: str, **attributes: Any) -> Tag:
    return Tag(name, attributes={k: str(v) for k, v in attributes.items()})


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least C{value} (1 for 0)."""
    if value <= 0:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop ends at 10


def bucket_label(start: float, bucket: int) -> str:
    """A bucket's start as an axis label: C{HH:00} for hours (C{MM-DD} at midnight), C{MM-DD} for days."""
    t = time.gmtime(start)
    if bucket < 86400 and (t.tm_hour or bucket < 3600):
        return time.strftime("%H:%M", t)
    return time.strftime("%m-%d", t)


def _axis_time(t: float, span: float) -> str:
    """A time on a timeline's axis, as precise as its span needs (milliseconds under a minute)."""
    if span < 60:
        return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}"
    return time.strftime("%m-%d %H:%M:%S" if span < 86400 else "%m-%d %H:%M", time.gmtime(t))


def bar_chart(series: Sequence[dict[str, Any]], stacks: Sequence[tuple[str, str]], bucket: int, *,
              title: str, formatter: Callable[[Any], str] = str, name: str = "") -> Tag:
    """
    Stacked bars, one per bucket of C{series}.

    @param stacks: the keys of each entry drawn, bottom up, as C{(key, label)};
        each key is also the CSS class of its bars.
    @param formatter: shows a value (the axis and the hover text).
    @param name: the chart's name, its C{data-chart} attribute.
    """
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    totals = [sum(entry.get(key, 0) or 0 for key, _ in stacks) for entry in series]
    top = nice_ceiling(max(totals, default=0))
    children: list[Any] = [_svg("title")(text(title))]
    for i in range(5):
        y = TOP + plot_h - plot_h * i / 4
        children.append(_svg("line", x1=LEFT, x2=WIDTH - RIGHT, y1=f"{y:.1f}", y2=f"{y:.1f}", **{"class": "grid"}))
        children.append(_svg("text", x=LEFT - 6, y=f"{y + 4:.1f}", **{"class": "axis", "text-anchor": "end"})(
            text(formatter(top * i / 4))))
    n = max(len(series), 1)
    slot = plot_w / n
    gap = min(2.0, slot * 0.2)
    label_every = max(1, math.ceil(n / 12))
    for index, entry in enumerate(series):
        x = LEFT + index * slot
        figures = ", ".join(f"{label} {formatter(entry.get(key, 0) or 0)}" for key, label in stacks)
        group = _svg("g", **{"class": "bucket", "data-start": str(int(entry["start"])),
                             **{f"data-{key.replace('_', '-')}": str(entry.get(key, 0) or 0) for key, _ in stacks}})
        group(_svg("title")(text(f"{utc(entry['start'], with_seconds=False)} UTC: {figures}")))
        y = TOP + plot_h
        for key, _ in stacks:
            value = entry.get(key, 0) or 0
            if not value:
                continue
            h = plot_h * value / top
            y -= h
            group(_svg("rect", x=f"{x + gap / 2:.2f}", y=f"{y:.2f}", width=f"{max(slot - gap, 0.5):.2f}",
                       height=f"{h:.2f}", **{"class": key}))
        # The whole slot answers the hover, even above a short bar.
        group(_svg("rect", x=f"{x:.2f}", y=str(TOP), width=f"{slot:.2f}", height=str(plot_h),
                   **{"fill": "transparent"}))
        children.append(group)
        if index % label_every == 0:
            children.append(_svg("text", x=f"{x + slot / 2:.1f}", y=str(HEIGHT - 6),
                                 **{"class": "axis", "text-anchor": "middle"})(
                text(bucket_label(entry["start"], bucket))))
    if not any(totals):
        children.append(_svg("text", x=str(LEFT + plot_w / 2), y=str(TOP + plot_h / 2),
                             **{"class": "empty", "text-anchor": "middle"})("Nothing in this range"))
    svg = _svg("svg", xmlns=SVG, viewBox=f"0 0 {WIDTH} {HEIGHT}", role="img",
               **{"class": "chart", "aria-label": text(title), "data-chart": name})(children)
    legend = tags.div([tags.span(tags.span(class_=f"swatch {key}"), text(label)) for key, label in stacks],
                      class_="legend")
    return tags.figure(tags.figcaption(text(title)), svg, legend, class_="chart")


def timeline(spans: Sequence[dict[str, Any]], start: float, end: float, *, title: str,
             href: Optional[Callable[[dict], str]] = None, lanes: bool = False) -> Tag:
    """
    Spans on one time axis from C{start} to C{end}: each C{{"from", "to",
    "label", "class", "tip"}} is a bar (a link when C{href} gives one).
    With C{lanes}, each span gets its own row, labelled; otherwise they
    share rows, placed where they do not overlap.
    """
    end = max(end, start + 1)
    width = TIMELINE_WIDTH
    label_w = 180 if lanes else 0
    row_h = 16 if lanes else 14
    plot_w = width - LEFT - RIGHT - label_w
    x0 = LEFT + label_w

    def x(t: float) -> float:
        return x0 + plot_w * (min(max(t, start), end) - start) / (end - start)
    rows: list[float] = []
    placed: list[tuple[int, dict[str, Any]]] = []
    for span in spans:
        if lanes:
            row = len(placed)
        else:
            row = next((i for i, free in enumerate(rows) if free <= span["from"]), len(rows))
            if row == len(rows):
                rows.append(0.0)
            rows[row] = span["to"] + (end - start) * 0.004
        placed.append((row, span))
    count = max((row for row, _ in placed), default=0) + 1
    height = TOP + count * row_h + BOTTOM + 6
    children: list[Any] = [_svg("title")(text(title))]
    for i in range(5):
        t = start + (end - start) * i / 4
        gx = x0 + plot_w * i / 4
        children.append(_svg("line", x1=f"{gx:.1f}", x2=f"{gx:.1f}", y1=str(TOP), y2=str(height - BOTTOM),
                             **{"class": "grid"}))
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        children.append(_svg("text", x=f"{gx:.1f}", y=str(height - 8), **{"class": "axis", "text-anchor": anchor})(
            text(_axis_time(t, end - start))))
    for row, span in placed:
        y = TOP + row * row_h
        x1, x2 = x(span["from"]), x(span["to"])
        bar = _svg("rect", x=f"{x1:.2f}", y=f"{y + 2:.1f}", width=f"{max(x2 - x1, 2):.2f}", height=str(row_h - 4),
                   rx="2", **{"class": "span " + span.get("class", "")})(_svg("title")(text(span.get("tip", ""))))
        if lanes:
            children.append(_svg("text", x=str(LEFT + label_w - 6), y=f"{y + row_h - 5:.1f}",
                                 **{"class": "lane-label", "text-anchor": "end"})(text(span.get("label", ""))[:28]))
        target = href(span) if href is not None else None
        children.append(_svg("a", href=target)(bar) if target else bar)
    if not spans:
        children.append(_svg("text", x=str(x0 + plot_w / 2), y=str(TOP + row_h), **{
            "class": "empty", "text-anchor": "middle"})("Nothing in this range"))
    return _svg("svg", xmlns=SVG, viewBox=f"0 0 {width} {height}", role="img",
                **{"class": "chart timeline", "aria-label": text(title)})(children)


__all__ = ["bar_chart", "bucket_label", "nice_ceiling", "timeline"]
