"""The server-side SVG chart helper: escaped labels, one polyline per series with its points."""

from __future__ import annotations

import math
import re

from django.template.loader import render_to_string

from core.charts import Chart, Series, chart_context, line_chart_svg


def test_labels_are_escaped_and_point_counts_match():
    chart = Chart(
        title='Loss <script>alert("x")</script>',
        series=[Series("train & <b>loss</b>", [(1, 0.9), (2, 0.7), (3, 0.5)]),
                Series("val", [(1, 0.8), (2, None), (3, math.nan), (4, 0.4)])],
        x_label="step <i>", y_label="loss",
    )
    svg = str(line_chart_svg(chart))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "<b>" not in svg and "train &amp; &lt;b&gt;loss&lt;/b&gt;" in svg and "step &lt;i&gt;" in svg
    polylines = re.findall(r'<polyline[^>]*data-points="(\d+)"[^>]*points="([^"]+)"', svg)
    assert [int(n) for n, _ in polylines] == [3, 2]  # missing and NaN points are skipped
    assert [len(points.split()) for _, points in polylines] == [3, 2]
    assert svg.count('class="legend"') == 2 and svg.startswith("<svg") and svg.endswith("</svg>")


def test_empty_and_flat_series_and_calibration_diagonal():
    assert "<polyline" not in str(line_chart_svg(Chart(title="Nothing", series=[Series("a", [])])))
    flat = str(line_chart_svg(Chart(title="Flat", series=[Series("a", [(0, 1.0), (1, 1.0)])])))
    assert "nan" not in flat.lower() and flat.count("<polyline") == 1
    calibration = str(line_chart_svg(Chart(title="Cal", series=[Series("m", [(0.2, 0.3)])], diagonal=True,
                                           x_range=(0, 1), y_range=(0, 1))))
    assert 'class="diagonal"' in calibration and calibration.count("<circle") == 1


def test_component_template_renders_the_svg_or_says_there_is_no_data():
    html = render_to_string("components/chart.html", {"chart": chart_context(
        Chart(title="A & B", series=[Series("s", [(0, 1), (1, 2)])]))})
    assert "<svg" in html and "A &amp; B" in html
    empty = render_to_string("components/chart.html", {"chart": chart_context(Chart(title="E", series=[]))})
    assert "<svg" not in empty and "no points yet" in empty


def tick_labels(svg: str, anchor: str) -> list[str]:
    return re.findall(rf'<text x="[^"]+" y="[^"]+" font-size="10" text-anchor="{anchor}">([^<]+)</text>', svg)


def test_ticks_are_round_numbers_and_whole_steps_for_whole_x():
    iterations = Chart(title="Reward", series=[Series("r", [(i, 0.429 + 0.019 * (i - 1)) for i in range(1, 13)])])
    svg = str(line_chart_svg(iterations))
    assert tick_labels(svg, "middle") == ["2", "4", "6", "8", "10", "12"]  # no "3.75" iteration
    assert tick_labels(svg, "end") == ["0.45", "0.5", "0.55", "0.6"]  # inside 0.429..0.638
    two = str(line_chart_svg(Chart(title="Two", series=[Series("r", [(1, 0.5), (2, 0.6)])])))
    assert tick_labels(two, "middle") == ["1", "2"]
    fractional = str(line_chart_svg(Chart(title="Epochs", series=[Series("r", [(0.5, 1), (1.5, 2)])])))
    assert tick_labels(fractional, "middle") == ["0.6", "0.8", "1", "1.2", "1.4"]
    accuracy = str(line_chart_svg(Chart(title="Acc", series=[Series("a", [(1, 0.7)])], y_range=(0, 1))))
    assert tick_labels(accuracy, "end") == ["0", "0.2", "0.4", "0.6", "0.8", "1"]
