"""Server-rendered SVG bar charts: no JavaScript, no build step, readable on a phone.

A chart is a `viewBox`-scaled `<svg>` with a `<title>` and `<desc>` for screen readers; the
pages print the same numbers in a table beside it. Colours are presentation attributes,
so the charts need no stylesheet (the admin CSP allows none inline), and `direction="ltr"`
keeps the axes where they are on a right-to-left page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 28, 46

BLUE, GREEN, RED, AMBER, ORANGE, GREY = (
    "#2f6fb0",
    "#2e8540",
    "#c0392b",
    "#c98a00",
    "#d35400",
    "#7f8c8d",
)


@dataclass(frozen=True, slots=True)
class Series:
    """One row of bars: its name in the legend, its values and its colour (or one per bar)."""

    name: str
    values: Sequence[float]
    colour: str | Sequence[str] = BLUE


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^n that is at least `value` (an axis top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _number(value: float, suffix: str) -> str:
    text = f"{value:.0f}" if float(value).is_integer() or suffix == "%" else f"{value:.1f}"
    return text + suffix


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    description: str = "",
    maximum: float | None = None,
    suffix: str = "",
    chart_id: str = "chart",
) -> str:
    """Grouped vertical bars, one group per label, one bar per series."""
    count = len(labels)
    if any(len(s.values) != count for s in series):
        raise ValueError("every series needs one value per label")
    top = (
        maximum
        if maximum is not None
        else nice_ceiling(max((v for s in series for v in s.values), default=0))
    )
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = plot_w / max(count, 1)
    bar_w = max(1.0, (group_w * 0.8) / max(len(series), 1))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" direction="ltr" class="chart" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" font-family="sans-serif" '
        f'font-size="11">',
        f'<title id="{chart_id}-title">{escape(title)}</title>',
        f'<desc id="{chart_id}-desc">{escape(description or title)}</desc>',
    ]
    for step in range(5):
        value = top * step / 4
        y = TOP + plot_h - plot_h * step / 4
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" '
            f'stroke="#d0d7de" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" fill="#444">'
            f"{escape(_number(value, suffix))}</text>"
        )
    for index, label in enumerate(labels):
        group_x = LEFT + group_w * index + group_w * 0.1
        for position, s in enumerate(series):
            value = s.values[index]
            height = 0.0 if top <= 0 else plot_h * min(value, top) / top
            x = group_x + bar_w * position
            y = TOP + plot_h - height
            colour = s.colour if isinstance(s.colour, str) else s.colour[index]
            out.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" '
                f'height="{height:.1f}" fill="{colour}" data-value="{value:g}">'
                f"<title>{escape(s.name)}, {escape(label)}: {escape(_number(value, suffix))}"
                f"</title></rect>"
            )
        out.append(
            f'<text x="{LEFT + group_w * (index + 0.5):.1f}" y="{HEIGHT - BOTTOM + 14}" '
            f'text-anchor="middle" fill="#444">{escape(label)}</text>'
        )
    legend_x = LEFT
    for s in series:
        if isinstance(s.colour, str):
            out.append(
                f'<rect x="{legend_x}" y="8" width="10" height="10" fill="{s.colour}"/>'
                f'<text x="{legend_x + 14}" y="17" fill="#222">{escape(s.name)}</text>'
            )
            legend_x += 24 + 7 * len(s.name)
    out.append(
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" '
        f'stroke="#555" stroke-width="1"/>'
    )
    out.append("</svg>")
    return "".join(out)
