"""The report's HTML page: the platform's page (`microprocess.service.report.report_page`: head,
summary, failures, files, every value escaped) with this service's chart of scores by band (inline SVG).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from microprocess.service.report import report_page

_BAND_COLOURS = {"A": "#1a9850", "B": "#91cf60", "C": "#fee08b", "D": "#fc8d59", "E": "#d73027"}


def band_histogram_svg(bands: Mapping[str, int], *, width: int = 520, height: int = 260) -> str:
    """A bar chart of the number of companies per band, as an inline `<svg>` element."""
    margin_left, margin_bottom, margin_top = 48, 36, 24
    plot_w = width - margin_left - 16
    plot_h = height - margin_bottom - margin_top
    top = max(bands.values(), default=0) or 1
    slot = plot_w / max(len(bands), 1)
    bar_w = slot * 0.7
    parts = [
        f'<svg id="score-histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Companies per credit band">',
        f'<line x1="{margin_left}" y1="{margin_top + plot_h}" x2="{width - 16}" y2="{margin_top + plot_h}" '
        'stroke="#333"/>',
        f'<text x="{margin_left - 8}" y="{margin_top + 4}" text-anchor="end" font-size="11">{top}</text>',
        f'<text x="{margin_left - 8}" y="{margin_top + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    for i, (band, count) in enumerate(bands.items()):
        bar_h = plot_h * count / top
        x = margin_left + i * slot + (slot - bar_w) / 2
        y = margin_top + plot_h - bar_h
        colour = _BAND_COLOURS.get(band, "#4575b4")
        parts.append(
            f'<rect class="bar" data-band="{escape(band)}" data-count="{count}" x="{x:.1f}" y="{y:.1f}" '
            f'width="{bar_w:.1f}" height="{bar_h:.1f}" fill="{colour}"><title>{escape(band)}: {count}</title></rect>'
        )
        parts.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle" font-size="11">{count}</text>'
        )
        parts.append(
            f'<text x="{x + bar_w / 2:.1f}" y="{margin_top + plot_h + 16}" text-anchor="middle" '
            f'font-size="12">{escape(band)}</text>'
        )
    parts.append(
        f'<text x="{margin_left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" font-size="12">'
        "credit band</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)


def render_report_page(summary: Mapping[str, Any], links: Mapping[str, str]) -> str:
    """The whole report page for a run's `summary` (see `microservice.reduce.build_summary`): the
    platform's page (`microprocess.service.report.report_page`) with this service's facts and its
    chart of scores by band.

    `links` maps a label (e.g. `report.csv`) to a URL to show in the page.
    """
    title = f"{summary['job']} — run {summary['run_id']}: {summary['status']}"
    facts = [
        ("Status", summary["status"]),
        ("Expected tasks", summary["expected"]),
        ("Rows in report", summary["tasks"]),
        ("Succeeded", summary["succeeded"]),
        ("Failed", f"{summary['failed']} ({summary['failed_pct']}%, tolerated {summary['tolerated_failure_pct']}%)"),
        ("Started", summary["started_at"]),
        ("Finished", summary["finished_at"]),
        ("Duration", f"{summary['duration_s']} s"),
        ("Mean score", summary["score"]["mean"]),
        ("Lowest / highest score", f"{summary['score']['min']} / {summary['score']['max']}"),
    ]
    bands = "\n".join(f"<tr><td>{escape(band)}</td><td>{count}</td></tr>" for band, count in summary["bands"].items())
    chart = (
        f"<h2>Scores by band</h2>\n{band_histogram_svg(summary['bands'])}\n"
        f'<table id="bands">\n<tr><th>Band</th><th>Companies</th></tr>\n{bands}\n</table>'
    )
    return report_page(
        title=title,
        facts=facts,
        chart=chart,
        failures=summary["failures"],
        failure_count=summary["failure_count"],
        failure_columns=(("Task", "task_id"), ("Company", "company_id"), ("Attempts", "attempts"), ("Error", "error")),
        links=links,
    )
