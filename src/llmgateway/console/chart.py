"""The overview's chart of the last 24 hours as server-rendered SVG: a bar per hour, its
successful requests stacked on its failures. No script, no style attribute (the console's CSP
allows neither inline): the colours come from `console.css` through class names."""

from __future__ import annotations

import time
from collections.abc import Sequence

from markupsafe import Markup, escape

from llmgateway.store.overview import HourUsage

WIDTH = 480
HEIGHT = 120
AXIS = 16
"""Pixels under the bars for the hour labels."""


def hourly_chart(hours: Sequence[HourUsage]) -> Markup:
    """An SVG bar chart of `hours` (oldest first): `ok` bars (requests that did not fail) on
    `failed` bars, scaled to the busiest hour; every sixth hour labelled (UTC), each bar with a
    `<title>` giving its counts."""
    if not hours:
        return Markup("")
    peak = max(max(h.requests for h in hours), 1)
    slot = WIDTH / len(hours)
    bar = max(slot - 2, 1)
    plot = HEIGHT - AXIS
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-label="Requests and failures per hour, last 24 hours" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, hour in enumerate(hours):
        x = i * slot + 1
        failed_h = plot * hour.failures / peak
        ok_h = plot * (hour.requests - hour.failures) / peak
        label = time.strftime("%H:00", time.gmtime(hour.hour))
        title = escape(f"{label} UTC: {hour.requests} requests, {hour.failures} failed")
        parts.append(f"<g><title>{title}</title>")
        parts.append(_rect("ok", x, plot - failed_h - ok_h, bar, ok_h))
        parts.append(_rect("failed", x, plot - failed_h, bar, failed_h))
        parts.append("</g>")
        if i % 6 == 0:
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 3}">{label}</text>')
    parts.append(f'<line x1="0" y1="{plot}" x2="{WIDTH}" y2="{plot}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (numbers and escaped titles only)


def _rect(kind: str, x: float, y: float, width: float, height: float) -> str:
    if height <= 0:
        return ""
    return (
        f'<rect class="{kind}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}"/>'
    )
