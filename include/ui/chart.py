"""Segment Details' chart as SVG text, drawn on the server: nothing loaded from the internet,
no script in the page to draw it, and the same picture for every browser.

One point per published run (restores included), oldest left, evenly spaced: the x axis is
the runs' order, labelled with their dates, so a day of test refreshes does not squash a
month of nightly ones into a corner. Three lines: Connector Users (source), Netmera Users
(matched) and Reachable users (a push-permitted device). Each point has a `<title>`: the
browser shows it as a tooltip when the SVG is inline (the page inlines it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from xml.sax.saxutils import escape, quoteattr

WIDTH, HEIGHT = 1000, 300
LEFT, RIGHT, TOP, BOTTOM = (
    64,
    48,
    40,
    44,
)  # room for the y labels, the last date, the legend, the dates
SERIES = (  # field, label, colour
    ("connector_users", "Connector Users", "#64748b"),
    ("netmera_users", "Netmera Users", "#2563eb"),
    ("reachable", "Reachable", "#16a34a"),
)
MAX_DATE_LABELS = 8
PUBLISHED = "published"


def published_runs(runs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The published runs among `runs` (any order), oldest first."""
    done = [r for r in runs if r.get("status") == PUBLISHED and _when(r) is not None]
    return sorted(done, key=lambda r: _when(r) or datetime.min)


def runs_chart(
    runs: Iterable[Mapping[str, Any]],
    zone: tzinfo = UTC,
    title: str = "Users per published run",
) -> str:
    """The chart of `runs` (the store's run rows: status, finished_at or started_at, version
    and the three counts) as a standalone SVG document, its times in `zone` (the page's
    viewer's), which it names."""
    points = [{**run, WHEN: _local(run, zone)} for run in published_runs(runs)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label={quoteattr(title)} '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    if not points:
        parts.append(
            f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#64748b">'
            "No published refresh yet: the chart starts with the first one.</text></svg>"
        )
        return "".join(parts)
    top = nice_ceiling(max((_count(r, f) or 0) for r in points for f, _, _ in SERIES))
    parts += _y_axis(top)
    parts += _x_axis(points)
    parts += _legend()
    parts.append(
        f'<text x="{WIDTH - RIGHT}" y="22" text-anchor="end" fill="#64748b" data-role="zone">'
        f"Times in {escape(str(getattr(zone, 'key', zone)))}</text>"
    )
    for field, label, colour in SERIES:
        parts += _line(points, field, label, colour, top)
    parts.append("</svg>")
    return "".join(parts)


def nice_ceiling(value: float) -> int:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value` (at least 4, so
    that four gridlines fall on whole users)."""
    if value <= 4:
        return 4
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return int(step * power)
    return int(10 * power)  # pragma: no cover - the loop always returns


def _when(run: Mapping[str, Any]) -> datetime | None:
    return run.get("finished_at") or run.get("started_at")


WHEN = "_local_time"  # a point's time in the chart's zone


def _local(run: Mapping[str, Any], zone: tzinfo) -> datetime:
    when = _when(run)
    assert when is not None  # published_runs keeps dated runs only
    if when.tzinfo is None:  # SQLite keeps no zone; the store writes UTC
        when = when.replace(tzinfo=UTC)
    return when.astimezone(zone)


def _count(run: Mapping[str, Any], field: str) -> int | None:
    value = run.get(field)
    return int(value) if value is not None else None


def _x(index: int, count: int) -> float:
    inner = WIDTH - LEFT - RIGHT
    if count == 1:
        return LEFT + inner / 2
    return LEFT + inner * index / (count - 1)


def _y(value: float, top: int) -> float:
    inner = HEIGHT - TOP - BOTTOM
    return TOP + inner * (1 - value / top)


def _y_axis(top: int) -> list[str]:
    parts = []
    for i in range(5):
        value = top * i / 4
        y = _y(value, top)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            f'stroke="{"#94a3b8" if i == 0 else "#e2e8f0"}" stroke-width="1"/>'
            f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end" fill="#475569">'
            f"{value:,.0f}</text>"
        )
    return parts


def _x_axis(points: list[Mapping[str, Any]]) -> list[str]:
    count = len(points)
    every = max(1, math.ceil(count / MAX_DATE_LABELS))
    parts = []
    for i, run in enumerate(points):
        if i % every and i != count - 1:
            continue
        when = run[WHEN]
        x = _x(i, count)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle" fill="#475569">'
            f"{when:%b %d}</text>"
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 32}" text-anchor="middle" fill="#94a3b8"'
            f' font-size="10">{when:%H:%M}</text>'
        )
    return parts


def _legend() -> list[str]:
    parts, x = [], LEFT
    for _, label, colour in SERIES:
        parts.append(
            f'<rect x="{x}" y="12" width="12" height="12" rx="2" fill="{colour}"/>'
            f'<text x="{x + 18}" y="22" fill="#1e293b">{escape(label)}</text>'
        )
        x += 30 + 7 * len(label)
    return parts


def _line(
    points: list[Mapping[str, Any]], field: str, label: str, colour: str, top: int
) -> list[str]:
    count = len(points)
    placed = [
        (i, run, value) for i, run in enumerate(points) if (value := _count(run, field)) is not None
    ]
    if not placed:
        return []
    path = " ".join(
        f"{'M' if n == 0 else 'L'}{_x(i, count):.1f},{_y(v, top):.1f}"
        for n, (i, _, v) in enumerate(placed)
    )
    parts = [
        f'<g class="series" data-series="{field}">',
        f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>',
    ]
    for i, run, value in placed:
        when = run[WHEN]
        version = run.get("version")
        tip = f"{label}: {value:,} (v{version}, {when:%Y-%m-%d %H:%M})"
        parts.append(
            f'<circle cx="{_x(i, count):.1f}" cy="{_y(value, top):.1f}" r="4" fill="{colour}" '
            f'stroke="#ffffff" stroke-width="1.5"><title>{escape(tip)}</title></circle>'
        )
    parts.append("</g>")
    return parts
