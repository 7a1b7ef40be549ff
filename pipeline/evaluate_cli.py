"""``hearken evaluate``: the command-line face of ``pipeline.evaluation`` (typed options, library calls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from pipeline.errors import HearkenError

EXIT_INTERRUPTED = 130


def evaluate(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Model folder to evaluate.")],
    data: Annotated[
        str,
        typer.Argument(
            metavar="DATA",
            help="banking77-test, cfpb-aegis, clinc150-test, or a JSONL file with text and label.",
        ),
    ],
    field: Annotated[
        Literal["intent", "product"] | None,
        typer.Option("--field", help="Which result field a JSONL file's labels are for."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder for the report (default ./evaluation/VERSION-DATA)."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Shared data sets folder (default $HEARKEN_DATA_DIR).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Messages per pipeline call.", min=1)] = 32,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Evaluate a model folder on a labelled data set, through the same pipeline as the service.

    DATA is a named public set read in place from the data directory — banking77-test (intent),
    cfpb-aegis (product; CFPB categories mapped onto the policy labels, unmappable rows reported
    apart), clinc150-test (intent, in-scope only; needs a model with a CLINC150 intent head) —
    or a JSONL file with one {"text", "label"} object per line (optional "id") and --field.

    Writes metrics.json (accuracy, macro-F1, per-class precision/recall/F1/support, ECE over
    15 bins, model version, data name and sha256), per_class.md, confusion.png, reliability.png
    and predictions.jsonl (ids and labels only) into --output; prints the headline numbers as
    JSON on stdout. A message with no predicted label counts as wrong and is reported.

    Exit codes: 0 done; 2 wrong usage; 4 model folder missing or unusable; 6 data missing or
    malformed, or a data set this model cannot be scored on; 130 interrupted; 1 a bug.
    """
    from pipeline.evaluation import (
        NAMED_SETS,
        default_output_dir,
        load_evaluation_set,
        write_report,
    )
    from pipeline.evaluation import evaluate as run_evaluation
    from pipeline.triage import Pipeline

    if data in NAMED_SETS and field is not None and field != NAMED_SETS[data]:
        raise typer.BadParameter(
            f"{data} is labelled with {NAMED_SETS[data]}s; drop --field", param_hint="--field"
        )
    if data not in NAMED_SETS and field is None:
        raise typer.BadParameter(
            f"{data!r} is not a named set ({', '.join(sorted(NAMED_SETS))}), so it is read as JSONL, "
            "which needs --field intent or --field product",
            param_hint="--field",
        )
    try:
        dataset = load_evaluation_set(data, field, data_dir)
        pipeline = Pipeline.from_folder(model)
        report = run_evaluation(
            pipeline, dataset, field or NAMED_SETS[data], batch_size=batch_size, progress=progress
        )
        folder = output if output is not None else default_output_dir(report)
        paths = write_report(report, folder)
    except HearkenError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from error
    except KeyboardInterrupt as interrupt:
        typer.echo("interrupted; nothing was written. Fix: run the same command again", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from interrupt
    summary = {**report.summary(), "output": str(folder), "files": sorted(p.name for p in paths.values())}
    typer.echo(json.dumps(summary, indent=2))
