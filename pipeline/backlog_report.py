"""What a re-triage did, for the people who decide whether to apply it.

Operations teams read this before they move thousands of open tickets: how many land in each
tier, queue and product, how many a person must look at, and — when the backlog carries its
current route — what moves where, with example ids they can open and check. The tally is small
(bounded by the number of labels, not of rows), so it lives in the run's checkpoint and a
resumed run reports on the whole backlog, not just on the part after the crash.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline.backlog_io import RoutedRow

MAX_EXAMPLES = 3
NONE_LABEL = "(none)"
_CHART_TOP = 12
DIMENSIONS = ("tier", "queue", "product")


class Move(BaseModel):
    """Rows whose route changed (or not) from one label to another in one dimension."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="The label the input carried.")
    target: str = Field(description="The label the pipeline gave now.")
    count: int = Field(default=0, description="How many rows made this move.")
    examples: list[str] = Field(
        default_factory=list, description=f"Up to {MAX_EXAMPLES} ids, first seen first."
    )


class RouteTally(BaseModel):
    """Counts over all routed rows; ``update`` is called once per committed batch, in input order."""

    model_config = ConfigDict(extra="forbid")

    routed: int = Field(default=0, description="Rows that got a result.")
    rejected: int = Field(default=0, description="Rows written to the rejects file.")
    human_review: int = Field(default=0, description="Results with route.needs_human_review set.")
    tiers: dict[str, int] = Field(default_factory=dict, description="Results per route.tier.")
    queues: dict[str, int] = Field(default_factory=dict, description="Results per route.queue.")
    products: dict[str, int] = Field(default_factory=dict, description="Results per product.label.")
    moves: dict[str, dict[str, Move]] = Field(
        default_factory=dict,
        description="Per dimension the input carried (tier, queue, product): moves keyed 'from → to'.",
    )

    def update(self, rows: list[RoutedRow]) -> None:
        """Add one batch of routed rows."""
        for row in rows:
            if row.result_json is None:
                self.rejected += 1
                continue
            self.routed += 1
            self.human_review += row.needs_human_review
            now = {"tier": row.tier, "queue": row.queue, "product": row.product}
            for dimension, counts in self.counts_by_dimension.items():
                label = now[dimension] or NONE_LABEL
                counts[label] = counts.get(label, 0) + 1
            for dimension, before in row.previous.items():
                source, target = before or NONE_LABEL, now[dimension] or NONE_LABEL
                moves = self.moves.setdefault(dimension, {})
                move = moves.setdefault(f"{source} → {target}", Move(source=source, target=target))
                move.count += 1
                if len(move.examples) < MAX_EXAMPLES and row.id is not None:
                    move.examples.append(row.id)

    @property
    def counts_by_dimension(self) -> dict[str, dict[str, int]]:
        """Rows per label for each of ``DIMENSIONS``, in that order.

        The tally's own dicts, not copies: ``update`` counts into them and the reports and the
        chart read them, so all three walk the dimensions in one order.
        """
        return {"tier": self.tiers, "queue": self.queues, "product": self.products}

    @property
    def human_review_share(self) -> float:
        return self.human_review / self.routed if self.routed else 0.0


class ReportContext(BaseModel):
    """Where the numbers came from, printed at the top of the report."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str
    rejects: str | None = Field(default=None, description="The rejects file, when rows were rejected.")
    model_version: str
    engine: str
    seconds: float = Field(description="Wall time of the run (all resumed parts together).")


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "–"


def _sorted_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _sorted_moves(moves: dict[str, Move]) -> list[Move]:
    """Changes first (largest first), then unchanged rows."""
    return sorted(moves.values(), key=lambda m: (m.source == m.target, -m.count, m.source, m.target))


def _unchanged(move: Move) -> str:
    return " (unchanged)" if move.source == move.target else ""


def _md(text: str) -> str:
    return text.replace("|", "\\|")


@dataclass(frozen=True)
class MoveTable:
    """One dimension's moves as the reports show them: in report order, with the rows that changed."""

    dimension: str
    moves: list[Move]
    changed: int
    compared: int


def _tabulate_moves(tally: RouteTally) -> list[MoveTable]:
    """A table for each dimension the input carried (none when it carried no route).

    Counted once here so that the Markdown and the HTML report can never disagree on a number.
    """
    tables = []
    for dimension in DIMENSIONS:
        moves = tally.moves.get(dimension)
        if not moves:
            continue
        tables.append(
            MoveTable(
                dimension=dimension,
                moves=_sorted_moves(moves),
                changed=sum(m.count for m in moves.values() if m.source != m.target),
                compared=sum(m.count for m in moves.values()),
            )
        )
    return tables


def render_markdown(tally: RouteTally, context: ReportContext) -> str:
    """The report as Markdown (tables only, readable in a terminal and on a code host)."""
    total = tally.routed
    lines = [
        "# Re-triage report",
        "",
        f"- input: `{context.input}`",
        f"- output: `{context.output}`",
        f"- model: `{context.model_version}` · engine: {context.engine} · {context.seconds:.1f} s",
        f"- routed **{total}**, rejected **{tally.rejected}**"
        + (f" (see `{context.rejects}`)" if tally.rejected and context.rejects else ""),
        f"- needs human review: **{tally.human_review}** ({_share(tally.human_review, total)})",
    ]
    for title, counts in tally.counts_by_dimension.items():
        lines += ["", f"## Per {title}", "", f"| {title} | rows | share |", "|---|---:|---:|"]
        lines += [f"| {_md(label)} | {n} | {_share(n, total)} |" for label, n in _sorted_counts(counts)]
    for table in _tabulate_moves(tally):
        changed, compared, dimension = table.changed, table.compared, table.dimension
        lines += [
            "",
            f"## Moves: {dimension}",
            "",
            f"{changed} of {compared} rows change {dimension} ({_share(changed, compared)}).",
            "",
            "| from | to | rows | example ids |",
            "|---|---|---:|---|",
        ]
        lines += [
            f"| {_md(m.source)} | {_md(m.target)}{_unchanged(m)} | {m.count} | "
            f"{', '.join('`' + _md(e) + '`' for e in m.examples)} |"
            for m in table.moves
        ]
    if not tally.moves:
        lines += [
            "",
            "The input carried no existing route (tier, queue or product), so there is no table of moves.",
        ]
    return "\n".join(lines) + "\n"


def render_chart(tally: RouteTally) -> bytes:
    """Bar charts of rows per tier, queue and product (top labels) as a PNG, drawn with Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    panels = tally.counts_by_dimension.items()
    for axis, (title, counts) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        top = _sorted_counts(counts)[:_CHART_TOP][::-1]
        axis.barh([label[:28] for label, _ in top], [n for _, n in top], color="#4C72B0")
        axis.set_title(f"rows per {title}")
        axis.tick_params(axis="y", labelsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def render_html(tally: RouteTally, context: ReportContext) -> str:
    """The report as one self-contained HTML file (the chart is an embedded base64 PNG)."""
    esc = html.escape
    total = tally.routed
    chart = base64.b64encode(render_chart(tally)).decode("ascii")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Re-triage report</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "td.n{text-align:right}code{background:#f4f4f4}</style></head><body>",
        "<h1>Re-triage report</h1><ul>",
        f"<li>input: <code>{esc(context.input)}</code></li>",
        f"<li>output: <code>{esc(context.output)}</code></li>",
        f"<li>model: <code>{esc(context.model_version)}</code> · engine: {esc(context.engine)} · "
        f"{context.seconds:.1f} s</li>",
        f"<li>routed <b>{total}</b>, rejected <b>{tally.rejected}</b>"
        + (f" (see <code>{esc(context.rejects)}</code>)" if tally.rejected and context.rejects else "")
        + "</li>",
        f"<li>needs human review: <b>{tally.human_review}</b> ({_share(tally.human_review, total)})</li>",
        "</ul>",
        f'<img alt="rows per tier, queue and product" src="data:image/png;base64,{chart}">',
    ]
    for title, counts in tally.counts_by_dimension.items():
        parts.append(f"<h2>Per {title}</h2><table><tr><th>{title}</th><th>rows</th><th>share</th></tr>")
        parts += [
            f'<tr><td>{esc(label)}</td><td class="n">{n}</td><td class="n">{_share(n, total)}</td></tr>'
            for label, n in _sorted_counts(counts)
        ]
        parts.append("</table>")
    for table in _tabulate_moves(tally):
        changed, compared, dimension = table.changed, table.compared, table.dimension
        parts.append(
            f"<h2>Moves: {dimension}</h2><p>{changed} of {compared} rows change {dimension} "
            f"({_share(changed, compared)}).</p>"
            "<table><tr><th>from</th><th>to</th><th>rows</th><th>example ids</th></tr>"
        )
        parts += [
            f"<tr><td>{esc(m.source)}</td><td>{esc(m.target)}{_unchanged(m)}"
            f'</td><td class="n">{m.count}</td><td>{", ".join(f"<code>{esc(e)}</code>" for e in m.examples)}'
            "</td></tr>"
            for m in table.moves
        ]
        parts.append("</table>")
    if not tally.moves:
        parts.append("<p>The input carried no existing route, so there is no table of moves.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report_paths(base: Path) -> tuple[Path, Path]:
    """``BASE.md`` and ``BASE.html`` (a given ``.md``/``.html`` suffix is taken as part of the base)."""
    if base.suffix.lower() in (".md", ".html", ".htm"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".md"), base.with_name(base.name + ".html")


def write_report(tally: RouteTally, context: ReportContext, base: Path) -> tuple[Path, Path]:
    """Write the Markdown and HTML reports; return their paths."""
    markdown_path, html_path = report_paths(base)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(render_markdown(tally, context), encoding="utf-8")
    html_path.write_text(render_html(tally, context), encoding="utf-8")
    return markdown_path, html_path
