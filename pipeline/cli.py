"""The ``hearken`` command. Thin: typed options, one call into the library each.

Results go to stdout, logs and progress to stderr. Exit codes are stable and documented:

| code | meaning |
|---|---|
| 0 | success |
| 1 | unexpected failure (a bug: please report it) |
| 2 | wrong usage (unknown option, missing argument) |
| 3 | the input message cannot be read (empty, binary, not UTF-8, too long) |
| 4 | the model folder is missing, incomplete, corrupted or incompatible |
| 5 | a configuration, policy or catalogue file is invalid |
| 6 | a data set or data directory is missing or malformed |
| 7 | a batch finished but some rows were rejected (see the rejects file) |
| 130 | interrupted (a re-triage continues with `--resume`) |
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import HearkenError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Hearken: read the whole customer message, find the actual ask, route it.",
    pretty_exceptions_enable=False,
)
ModelOption = Annotated[
    Path | None,
    typer.Option("--model", "-m", help="Model folder (default: $HEARKEN_MODEL or the committed default)."),
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(error: HearkenError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(error.exit_code)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress to stderr.")] = False,
) -> None:
    _setup_logging(verbose)


@app.command()
def route(
    text: Annotated[str | None, typer.Argument(help="Message text, or - to read stdin.")] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read the message from this file.")
    ] = None,
    model: ModelOption = None,
    message_id: Annotated[str | None, typer.Option("--id", help="Id to echo in the result.")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="Subject line, if any.")] = None,
    compact: Annotated[bool, typer.Option("--compact", help="One-line JSON.")] = False,
    policy: Annotated[
        Path | None,
        typer.Option("--policy", help="Routing policy YAML to try instead of the one saved with the model."),
    ] = None,
) -> None:
    """Route one message and print its v1 result as JSON."""
    from pipeline.normalise import decode_text
    from pipeline.schema import Message
    from pipeline.triage import Pipeline

    try:
        if file is not None and text is not None:
            raise typer.BadParameter("give either TEXT or --file, not both")
        if file is not None:
            try:
                body = decode_text(file.read_bytes())
            except OSError as exc:
                typer.echo(f"error: cannot read {file}: {exc.strerror}. Fix: check the path.", err=True)
                raise typer.Exit(3) from exc
        elif text == "-" or (text is None and not sys.stdin.isatty()):
            body = decode_text(sys.stdin.buffer.read())
        elif text is not None:
            body = text
        else:
            raise typer.BadParameter("give the message as TEXT, --file PATH, or - for stdin")
        pipeline = Pipeline.from_folder(model, policy=policy)
        extra = {"id": message_id} if message_id else {}
        result = pipeline.route(Message(text=body, subject=subject, **extra))
    except HearkenError as error:
        raise _fail(error) from error
    typer.echo(result.model_dump_json(indent=None if compact else 2))


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Training config YAML.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Model folder to write.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Shared data sets folder.")] = None,
) -> None:
    """Train a model folder from a config (default: pipeline/configs/default.yaml)."""
    from pipeline.training import load_train_config
    from pipeline.training import train as run_training

    try:
        train_config = load_train_config(config)
        updates = {
            k: v for k, v in {"output": output, "data_dir": str(data_dir) if data_dir else None}.items() if v
        }
        folder = run_training(train_config.model_copy(update=updates))
    except HearkenError as error:
        raise _fail(error) from error
    typer.echo(str(folder))


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(help="Model folder to calibrate (changed in place).")],
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy", help="Routing policy YAML to attach (default: the model's own or the default)."
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Shared data sets folder.")] = None,
) -> None:
    """Attach a routing policy to a model and fit its route calibration on data/routing/dev.jsonl.

    Prints the calibration (Platt parameters, review threshold, risk-coverage curve) as JSON.
    """
    from pipeline.routing_evaluation import calibrate_model

    try:
        calibration = calibrate_model(model, policy=policy, data_dir=data_dir)
    except HearkenError as error:
        raise _fail(error) from error
    typer.echo(calibration.model_dump_json(indent=2))


@app.command("fit-out-of-scope")
def fit_out_of_scope_command(
    model: Annotated[Path, typer.Argument(help="Model folder with an intent head (changed in place).")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Shared data sets folder.")] = None,
    shrinkage: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Covariance shrinkage towards a scaled identity.")
    ] = 0.1,
) -> None:
    """Fit the out-of-scope detector (``intent.out_of_scope``) on the model's intent training file.

    Prints what was fitted as JSON. `hearken train` runs it for every model with an intent head.
    """
    from pipeline.ood_fitting import fit_out_of_scope

    try:
        summary = fit_out_of_scope(model, data_dir=data_dir, shrinkage=shrinkage)
    except HearkenError as error:
        raise _fail(error) from error
    typer.echo(json.dumps(summary, indent=2))


@app.command("fit-signals")
def fit_signals_command(
    model: Annotated[Path, typer.Argument(help="Model folder (changed in place).")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Shared data sets folder.")] = None,
    training_dir: Annotated[
        Path | None, typer.Option("--training-dir", help="Team-written signal messages (*.jsonl).")
    ] = None,
    regularisation: Annotated[
        float,
        typer.Option(min=1e-4, help="Logistic regression C (chosen by cross-validation: 16 over 1 and 4)."),
    ] = 16.0,
) -> None:
    """Fit the learned signal head, which adds signals the rule lexicon has no phrase for.

    Prints what was fitted, with its cross-validation table, as JSON. Run `hearken calibrate`
    afterwards: route confidences depend on the signals found.
    """
    from pipeline.signal_head_fitting import DEFAULT_TRAINING_DIR, fit_signal_head

    try:
        summary = fit_signal_head(
            model,
            data_dir=data_dir,
            training_dir=training_dir or DEFAULT_TRAINING_DIR,
            regularisation=regularisation,
        )
    except HearkenError as error:
        raise _fail(error) from error
    typer.echo(json.dumps(summary, indent=2))


def _register_commands() -> None:
    """Commands that live with their feature (each module imports its heavy parts lazily)."""
    from pipeline.backlog_cli import retriage
    from pipeline.evaluate_cli import evaluate
    from pipeline.service.cli import serve

    app.command()(retriage)
    app.command()(serve)
    app.command()(evaluate)


_register_commands()

if __name__ == "__main__":
    app()
