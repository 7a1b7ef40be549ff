"""The re-triage report: counts, human-review share, moves with examples, safe Markdown and HTML."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from pipeline.backlog_io import RoutedRow
from pipeline.backlog_report import ReportContext, RouteTally, report_paths, write_report


def _row(i: int, tier: str, queue: str, before: str | None, review: bool = False) -> RoutedRow:
    return RoutedRow(
        i, i + 2, f"id{i}", "{}", None, tier, queue, "credit_card", review, previous={"tier": before}
    )


def test_tally_survives_a_checkpoint_and_renders(tmp_path: Path) -> None:
    tally = RouteTally()
    tally.update(
        [_row(0, "tier1", "cards|fraud", "tier2", review=True), _row(1, "tier1", "cards|fraud", "tier2")]
    )
    tally = RouteTally.model_validate_json(tally.model_dump_json())  # as a resumed run reads it back
    tally.update(
        [
            _row(2, "tier1", "cards|fraud", "tier2"),
            _row(3, "tier1", "<b>x</b>", "tier2"),
            _row(4, "tier3", "loans", "tier3"),
            _row(5, "tier2", "loans", None),
            RoutedRow(6, 8, None, None, "missing id"),
        ]
    )
    assert tally.routed == 6 and tally.rejected == 1 and tally.human_review == 1
    assert tally.tiers == {"tier1": 4, "tier3": 1, "tier2": 1}
    move = tally.moves["tier"]["tier2 → tier1"]
    assert move.count == 4 and move.examples == ["id0", "id1", "id2"]
    assert tally.moves["tier"]["(none) → tier2"].count == 1

    context = ReportContext(
        input="in.jsonl", output="out.jsonl", model_version="m1", engine="local", seconds=2.0
    )
    markdown_path, html_path = write_report(tally, context, tmp_path / "report.md")
    assert (markdown_path, html_path) == report_paths(tmp_path / "report")
    markdown = markdown_path.read_text()
    assert "needs human review: **1** (16.7%)" in markdown
    assert "| cards\\|fraud | 3 | 50.0% |" in markdown
    assert "5 of 6 rows change tier (83.3%)." in markdown
    moves = markdown.split("## Moves: tier")[1]
    assert moves.index("| tier2 | tier1 | 4 | `id0`, `id1`, `id2` |") < moves.index("(unchanged)")
    html = html_path.read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", html).group(1))
    assert png.startswith(b"\x89PNG")
