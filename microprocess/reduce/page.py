"""The report's HTML page: the summary, the histogram as an inline SVG bar chart, the first
failures and links to the files. Plain string building, every value escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any


def _label(value: Any) -> str:
    return escape(str(value))


def histogram_svg(bins: Sequence[Mapping[str, Any]], field: str, *, width: int = 560, height: int = 280) -> str:
    """A bar per bin (`{"from", "to", "count"}`), as one `<svg>` element; each bar carries
    `data-from`, `data-to` and `data-count`."""
    left, bottom, top_margin, right = 48, 52, 24, 16
    plot_w, plot_h = width - left - right, height - bottom - top_margin
    top = max((int(b["count"]) for b in bins), default=0) or 1
    slot = plot_w / max(len(bins), 1)
    bar_w = slot * 0.85
    base = top_margin + plot_h
    parts = [
        f'<svg id="histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Histogram of {_label(field)}">',
        f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="#333"/>',
        f'<text x="{left - 6}" y="{top_margin + 4}" text-anchor="end" font-size="11">{top}</text>',
        f'<text x="{left - 6}" y="{base}" text-anchor="end" font-size="11">0</text>',
    ]
    for i, b in enumerate(bins):
        count = int(b["count"])
        bar_h = plot_h * count / top
        x = left + i * slot + (slot - bar_w) / 2
        y = base - bar_h
        span = f"{b['from']}..{b['to']}"
        parts.append(
            f'<rect class="bar" data-from="{_label(b["from"])}" data-to="{_label(b["to"])}" data-count="{count}" '
            f'x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{bar_h:.1f}" fill="#4575b4">'
            f"<title>{_label(span)}: {count}</title></rect>"
        )
        mid = f"{x + bar_w / 2:.1f}"
        parts.append(f'<text x="{mid}" y="{y - 4:.1f}" text-anchor="middle" font-size="10">{count}</text>')
        parts.append(f'<text x="{mid}" y="{base + 14}" text-anchor="middle" font-size="10">{_label(b["from"])}</text>')
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="12">{_label(field)}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def facts_table(rows: Sequence[tuple[str, Any]], table_id: str) -> str:
    """A two-column table (heading, value) with the id `table_id`, every value escaped."""
    body = "\n".join(f"<tr><th>{_label(k)}</th><td>{_label(v)}</td></tr>" for k, v in rows)
    return f'<table id="{table_id}">\n{body}\n</table>'


def render_report_page(summary: Mapping[str, Any], links: Mapping[str, str]) -> str:
    """The whole page for a run's published summary (see `summary.publishable_summary`).

    `links` maps a label (e.g. `report.csv`) to a URL shown in the page.
    """
    title = f"{summary['job']} - run {summary['run_id']}: {summary['status']}"
    durations, throughput = summary["durations"], summary["throughput"]
    facts = [
        ("Status", summary["status"]),
        ("Expected tasks", summary["expected"]),
        ("Succeeded", summary["succeeded"]),
        ("Failed", f"{summary['failed']} ({summary['failed_pct']}%, tolerated {summary['tolerated_failure_pct']}%)"),
        ("Rows in report", summary["rows"]),
        ("Started", durations["started_at"]),
        ("Finished", summary.get("finished_at")),
        ("Run duration", f"{durations['total_s']} s"),
        ("Tasks done after", f"{durations['tasks_s']} s"),
        ("Throughput", f"{throughput['tasks_per_s']} tasks/s"),
        ("Retried tasks", summary["attempts"]["retried_tasks"]),
    ]
    if summary.get("error"):
        facts.append(("Error", summary["error"]))
    histogram = summary.get("histogram")
    chart = ""
    if histogram:
        stats = [("Values", histogram["count"]), ("Without a value", histogram["skipped"])]
        stats += [("Mean", histogram["mean"]), ("Min / max", f"{histogram['min']} / {histogram['max']}")]
        chart = (
            f"<h2>Distribution of {_label(histogram['field'])}</h2>\n"
            f"{histogram_svg(histogram['bins'], histogram['field'])}\n{facts_table(stats, 'histogram-stats')}"
        )
    return report_page(
        title=title,
        facts=facts,
        chart=chart,
        failures=summary["failures"],
        failure_count=summary["failure_count"],
        failure_columns=(("Task", "task_id"), ("Item", "item_id"), ("Attempts", "attempts"), ("Error", "error")),
        links=links,
    )


def report_page(
    *,
    title: str,
    facts: Sequence[tuple[str, Any]],
    chart: str,
    failures: Sequence[Mapping[str, Any]],
    failure_count: int,
    failure_columns: Sequence[tuple[str, str]],
    links: Mapping[str, str],
) -> str:
    """A run's report page: the title, the `facts` table, the `chart` section (HTML, already
    escaped; may be empty), the first `failures` (of `failure_count`) with `failure_columns`
    (heading, key), and the `links` (label -> URL). Every value is escaped here. The platform's
    reduce and a service's reduce (`microprocess.service.report`) write their pages with it."""
    headings = "".join(f"<th>{_label(heading)}</th>" for heading, _ in failure_columns)
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{_label(f.get(key) or '')}</td>" for _, key in failure_columns) + "</tr>"
        for f in failures
    )
    more = failure_count - len(failures)
    more_note = f"<p>{more} more failures are listed in failures.csv.</p>" if more > 0 else ""
    link_items = "\n".join(f'<li><a href="{escape(url)}">{_label(label)}</a></li>' for label, url in links.items())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_label(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #f4f4f4; }}
</style>
</head>
<body>
<h1>{_label(title)}</h1>
<h2>Summary</h2>
{facts_table(facts, "summary")}
{chart}
<h2>Failures ({failure_count})</h2>
<table id="failures">
<tr>{headings}</tr>
{rows}
</table>
{more_note}
<h2>Files</h2>
<ul>
{link_items}
</ul>
</body>
</html>
"""
