"""``hearken serve``: run the HTTP service under uvicorn.

The model folder is loaded here, before the server binds its port, so a missing or corrupted folder
ends the command with its own message and exit code (4) instead of a traceback from the server's
start-up; the app then serves that one loaded pipeline for its whole life.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import ConfigError, HearkenError


def serve(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", help="Model folder (default: $HEARKEN_MODEL or the committed default)."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind; loopback unless you mean to expose it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8080,
    api_keys_file: Annotated[
        Path | None,
        typer.Option(
            help="API keys, one per line (or `sha256:HEX`); also read: $HEARKEN_API_KEYS (comma-separated)."
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Serve WITHOUT API keys (local experiments only).")
    ] = False,
    protect_metrics: Annotated[bool, typer.Option(help="Require an API key for /metrics as well.")] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Decision log URL (default: $HEARKEN_DATABASE_URL or sqlite:///hearken-decisions.db)."
        ),
    ] = None,
    store_text: Annotated[bool, typer.Option(help="Keep (masked) message text in the decision log.")] = False,
    masking: Annotated[
        bool,
        typer.Option(
            help="Mask cards, accounts, e-mail addresses and phone numbers in logs and stored text."
        ),
    ] = True,
    max_request_bytes: Annotated[
        int, typer.Option(help="Largest request body (413 beyond).", min=1024)
    ] = 1_048_576,
    max_message_chars: Annotated[
        int, typer.Option(help="Longest message text (422 beyond).", min=1)
    ] = 32_000,
    max_batch_items: Annotated[int, typer.Option(help="Most messages per batch request.", min=1)] = 64,
    max_batch: Annotated[
        int, typer.Option(help="Most messages per pipeline call (micro-batch).", min=1)
    ] = 16,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            help="How long a micro-batch waits for more messages (0: none; messages that arrive during a "
            "pass form the next batch).",
            min=0.0,
            max=1000.0,
        ),
    ] = 0.0,
    max_queue: Annotated[int, typer.Option(help="Most messages waiting (503 beyond).", min=1)] = 1024,
    route_timeout: Annotated[
        float, typer.Option(help="Seconds a request may wait for routing (504).", min=0.01)
    ] = 10.0,
    threads: Annotated[
        int | None, typer.Option(help="torch threads for inference (default: torch's).", min=1)
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log one line per request (method, path, status).")] = True,
) -> None:
    """Serve the HTTP API (route, batch, feedback, health, metrics) for helpdesk integrations."""
    import uvicorn
    from pydantic import ValidationError

    from pipeline.service.app import create_app
    from pipeline.service.auth import load_access
    from pipeline.service.batching import InferenceThread, load_pipeline_on
    from pipeline.service.settings import ServiceSettings

    values: dict[str, Any] = {
        "model_dir": model,
        "host": host,
        "port": port,
        "api_keys_file": api_keys_file,
        "insecure_no_auth": insecure_no_auth,
        "protect_metrics": protect_metrics,
        "store_text": store_text,
        "max_request_bytes": max_request_bytes,
        "max_message_chars": max_message_chars,
        "max_batch_items": max_batch_items,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "max_queue": max_queue,
        "route_timeout_s": route_timeout,
        "inference_threads": threads,
    }
    if database_url is not None:
        values["database_url"] = database_url
    if not masking:
        values["mask"] = ()
    logging.getLogger("pipeline.service").setLevel(logging.INFO)
    try:
        try:
            settings = ServiceSettings(**values)
        except ValidationError as exc:
            problem = exc.errors()[0]
            raise ConfigError(
                f"Invalid service setting {'.'.join(map(str, problem['loc']))}: {problem['msg']}.",
                fix="see `hearken serve --help`",
            ) from exc
        load_access(settings.api_keys_file, settings.insecure_no_auth)  # fail fast, before the slow load
        typer.echo(f"loading model from {model or 'the default model folder'} ...", err=True)
        # Loaded on the thread that will route (see batching.InferenceThread for why).
        inference = InferenceThread(settings.inference_threads)
        pipeline = load_pipeline_on(inference, model)
        app = create_app(settings, pipeline, inference=inference)
    except HearkenError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from error
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=access_log,
        timeout_graceful_shutdown=int(settings.route_timeout_s) + 5,
        server_header=False,
    )
