"""``hearken retriage``: the command-line face of ``pipeline.backlog`` (typed options, one library call)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from pipeline.errors import HearkenError

EXIT_REJECTS = 7
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C


def retriage(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="Backlog: .jsonl, .csv or .parquet.")],
    output_path: Annotated[Path, typer.Argument(metavar="OUTPUT", help="Results (JSONL unless told).")],
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="Model folder (default: $HEARKEN_MODEL or the default)."),
    ] = None,
    input_format: Annotated[
        Literal["jsonl", "csv", "parquet"] | None,
        typer.Option(help="Input format (default: from the extension)."),
    ] = None,
    output_format: Annotated[
        Literal["jsonl", "csv", "parquet"] | None,
        typer.Option(help="Output format (default: .parquet/.csv from the extension, else jsonl)."),
    ] = None,
    rejects: Annotated[
        Path | None, typer.Option(help="Rejected rows with line and reason (default OUTPUT.rejects.jsonl).")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(help="Report base name: writes BASE.md and BASE.html (default OUTPUT.report)."),
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Do not write the report.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run of the same command.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Rows per pipeline call and per commit.", min=1)] = 256,
    workers: Annotated[
        int, typer.Option(help="Local engine: inference threads sharing the pipeline.", min=1)
    ] = 1,
    engine: Annotated[
        Literal["local", "ray"], typer.Option(help="local: this machine; ray: Ray Data actors.")
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join, e.g. auto or ray://head:10001 (default: local Ray)."),
    ] = None,
    ray_actors: Annotated[
        int | None,
        typer.Option(help="Ray actors, one pipeline each (default: CPUs / CPUs per actor).", min=1),
    ] = None,
    ray_cpus_per_actor: Annotated[
        float, typer.Option(help="CPUs (torch threads) per Ray actor.", min=0.1)
    ] = 1.0,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Re-route a backlog file through the same pipeline as the service.

    INPUT is JSONL, CSV or Parquet with the columns `id` and `text`, optionally `subject`, and
    optionally the current route (`previous_tier`/`tier`/`route_tier`, `previous_queue`/`queue`/
    `route_queue`, `previous_product`/`product`/`product_label`; in JSONL also a previous result's
    `route.tier`, `route.queue`, `product.label`), used for the report's table of moves.

    OUTPUT gets one v1 result per routed row, in input order: JSONL by default, Parquet or CSV
    from the extension or --output-format (CSV holds nested fields as JSON strings). Rows that
    cannot be routed go to the rejects file with their line number and reason. A Markdown and an
    HTML report (counts per tier, queue and product, human-review share, moves) go beside OUTPUT.

    After a crash or kill, run the same command with --resume: it continues from the last
    committed batch (OUTPUT.checkpoint.json) with no lost and no duplicated rows.

    Exit codes: 0 done; 7 done, but some rows were rejected (see the rejects file);
    2 wrong usage; 4 model folder unusable; 6 input missing or unreadable, or a resume that
    does not match the checkpoint; 130 interrupted (resume it); 1 a bug.
    """
    from pipeline.backlog import RetriageOptions, run_retriage

    try:
        summary = run_retriage(
            RetriageOptions(
                input=input_path,
                output=output_path,
                input_format=input_format,
                output_format=output_format,
                model=model,
                rejects=rejects,
                report=report,
                write_report=not no_report,
                resume=resume,
                batch_size=batch_size,
                workers=workers,
                engine=engine,
                ray_address=ray_address,
                ray_actors=ray_actors,
                ray_cpus_per_actor=ray_cpus_per_actor,
                progress=progress,
            )
        )
    except HearkenError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from error
    except KeyboardInterrupt as interrupt:
        typer.echo(
            "interrupted; every committed batch is kept. Fix: run the same command with --resume", err=True
        )
        raise typer.Exit(EXIT_INTERRUPTED) from interrupt
    typer.echo(summary.describe(), err=True)
    if summary.rejected:
        raise typer.Exit(EXIT_REJECTS)
