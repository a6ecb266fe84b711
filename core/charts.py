"""Server-side SVG line charts: series in, an inline ``<svg>`` with axes, ticks and a legend out.

No JavaScript chart library and no CDN: pages poll an htmx fragment that re-renders the chart. Every
label is escaped. Points whose x or y is missing or not finite are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[float | None, float | None]]
    dashed: bool = False


@dataclass(frozen=True)
class Chart:
    title: str
    series: Sequence[Series]
    x_label: str = ""
    y_label: str = ""
    y_range: tuple[float, float] | None = None  # fixed y axis (e.g. 0..1 for accuracies)
    x_range: tuple[float, float] | None = None
    diagonal: bool = False  # draw y = x (calibration plots)
    markers: bool = False  # a dot per point
    extra: dict[str, str] = field(default_factory=dict)


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


def clean_points(points: Sequence[tuple[float | None, float | None]]) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points if _finite(x) and _finite(y)]  # type: ignore[arg-type]


def _ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round-numbered ticks inside ``[low, high]``, about ``count`` of them: a step of 1, 2 or 5 times a power of
    ten (whole numbers only when ``integer``, e.g. for steps and iterations)."""
    if high <= low:
        return [low]
    rough = (high - low) / count
    power = 10.0 ** math.floor(math.log10(rough))
    error = rough / power
    step = power * (10 if error >= math.sqrt(50) else 5 if error >= math.sqrt(10) else 2 if error >= math.sqrt(2)
                    else 1)
    if integer:
        step = max(1.0, round(step))
    digits = max(0, -math.floor(math.log10(step)) + 1)
    first = math.ceil(low / step - 1e-9)
    ticks = [round(k * step, digits) for k in range(first, math.floor(high / step + 1e-9) + 1)]
    return ticks or [low]


def _fh(template: str, *args: object) -> SafeString:
    """``format_html`` with floats written to one decimal (coordinates)."""
    return format_html(template, *(f"{a:.1f}" if isinstance(a, float) else a for a in args))


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def line_chart_svg(chart: Chart, *, width: int = 520, height: int = 260) -> SafeString:
    """An accessible inline SVG line chart of ``chart``'s series (empty series draw nothing)."""
    left, right, top, bottom = 52, 12, 24, 40
    legend_height = 18 * ((len(chart.series) + 2) // 3)
    plot_w, plot_h = width - left - right, height - top - bottom
    cleaned = [clean_points(s.points) for s in chart.series]
    xs = [x for pts in cleaned for x, _ in pts]
    ys = [y for pts in cleaned for _, y in pts]
    x0, x1 = chart.x_range or ((min(xs), max(xs)) if xs else (0.0, 1.0))
    y0, y1 = chart.y_range or ((min(ys), max(ys)) if ys else (0.0, 1.0))
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        pad = abs(y0) * 0.1 or 0.5
        y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts: list[str] = [
        _fh('<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {} {}" width="{}" '
                    'height="{}" role="img" aria-label="{}">', width, height + legend_height, width,
                    height + legend_height, chart.title),
        _fh("<title>{}</title>", chart.title),
        _fh('<text x="{}" y="14" class="chart-title" font-size="12" font-weight="bold">{}</text>', left,
                    chart.title),
        _fh('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#555" class="axis"/>', left, top + plot_h,
                    left + plot_w, top + plot_h),
        _fh('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#555" class="axis"/>', left, top, left,
                    top + plot_h),
    ]
    for tick in _ticks(y0, y1):
        y = sy(tick)
        parts.append(_fh('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#e5e7eb"/>', left, y,
                                 left + plot_w, y))
        parts.append(_fh('<text x="{}" y="{}" font-size="10" text-anchor="end">{}</text>', left - 4,
                                 y + 3, _fmt(tick)))
    whole_x = chart.x_range is None and bool(xs) and all(x.is_integer() for x in xs)
    for tick in _ticks(x0, x1, integer=whole_x):
        x = sx(tick)
        parts.append(_fh('<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>', x,
                                 top + plot_h + 14, _fmt(tick)))
    if chart.x_label:
        parts.append(_fh('<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text>',
                                 left + plot_w / 2, top + plot_h + 30, chart.x_label))
    if chart.y_label:
        parts.append(_fh('<text x="12" y="{}" font-size="11" text-anchor="middle" '
                                 'transform="rotate(-90 12 {})">{}</text>', top + plot_h / 2,
                                 top + plot_h / 2, chart.y_label))
    if chart.diagonal:
        lo, hi = max(x0, y0), min(x1, y1)
        if hi > lo:
            parts.append(_fh('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#9ca3af" '
                                     'stroke-dasharray="4 3" class="diagonal"/>', sx(lo), sy(lo), sx(hi), sy(hi)))
    for index, (series, points) in enumerate(zip(chart.series, cleaned, strict=True)):
        color = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        dash = ' stroke-dasharray="5 3"' if series.dashed else ""
        if points:
            parts.append(_fh('<polyline class="series" data-series="{}" data-points="{}" points="{}" '
                                     'fill="none" stroke="{}" stroke-width="1.8"{}/>', series.label, len(points),
                                     coords, color, mark_safe(dash)))  # noqa: S308 - a constant
            if chart.markers or len(points) == 1:
                for x, y in points:
                    parts.append(_fh('<circle cx="{}" cy="{}" r="2.5" fill="{}"/>', sx(x), sy(y),
                                             color))
        column, row = index % 3, index // 3
        lx, ly = left + column * (plot_w // 3), height + 4 + row * 18
        parts.append(_fh('<rect x="{}" y="{}" width="10" height="10" fill="{}"/>', lx, ly, color))
        parts.append(_fh('<text x="{}" y="{}" font-size="11" class="legend">{}</text>', lx + 14, ly + 9,
                                 series.label))
    parts.append("</svg>")
    return mark_safe("".join(str(p) for p in parts))  # noqa: S308 - every part above is escaped


def chart_context(chart: Chart, **size: int) -> dict[str, object]:
    """What ``templates/components/chart.html`` renders."""
    has_data = any(clean_points(s.points) for s in chart.series)
    return {"title": escape(chart.title), "svg": line_chart_svg(chart, **size), "has_data": has_data}
