"""Benchmark the HTTP service on loopback against routing in-process with the same model, in one run.

What a helpdesk sees: latency of ``POST /v1/route`` (p50/p99) at concurrency 1 and 8 for ~250-token
messages, throughput, no errors, and memory that stays flat over many requests. The in-process
numbers (``pipeline.route`` one at a time, and ``route_batch`` in micro-batch-sized groups) are the
floor the service cannot beat; the gap between the two is the price of HTTP, JSON, auth, the
decision log and micro-batching.

The server is a real ``hearken serve`` subprocess on 127.0.0.1 (random free port) with an API key
and an SQLite decision log in a temporary folder; the client is httpx in this process, so both share
the machine's cores (as a co-located helpdesk connector would). Messages are CFPB complaint
narratives read in place from the data directory and cut to ~250 tokens (realistic synthetic
messages when the data directory is missing). Every phase is bounded by ``--max-seconds``; the
server is stopped in all cases.

Goals (issue 5): p50 <= 30 ms at concurrency 1, p99 <= 120 ms at concurrency 8, no errors, memory flat.

    python scripts/bench_service.py                                   # 10,000 requests per level (long)
    python scripts/bench_service.py --requests 50 --model /tmp/tiny --output /tmp/service.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUTPUT = ROOT / "scripts" / "results" / "service.json"
TARGET_TOKENS = 250
GOAL_P50_C1_MS = 30.0
GOAL_P99_C8_MS = 120.0
FLAT_MEMORY_MB = 25.0  # rise allowed in a phase's RSS peak (allocator noise), or 5% of the first peak
SYNTHETIC_SENTENCES = [
    "Hello, I am writing about my credit card account because something went wrong last month.",
    "On March 3 I made a purchase of $482.16 at an online store and the charge was posted twice.",
    "I called customer service on March 5 and the representative told me the duplicate would be reversed.",
    "It has now been three weeks and the second charge is still on my statement, with interest added.",
    "I have attached the receipt and the statement page that shows both transactions.",
    "This is the second time this year that a charge has been duplicated, and I am frustrated.",
    "Earlier this year you also charged me a late fee although my payment was made on time.",
    "I would like the duplicate charge refunded and the interest on it removed.",
    "Please also confirm in writing that this will not affect my credit report.",
    "If this cannot be resolved I will file a complaint with the CFPB and close the account.",
    "My online banking shows a pending dispute but nobody has contacted me about it.",
    "Can you tell me when the refund will appear and who I should contact if it does not?",
]


# ===================================================================================== inputs
def _model_dir(explicit: Path | None) -> Path:
    from pipeline.artifact import default_model_dir

    folder = explicit or default_model_dir()
    if not (folder / "manifest.json").is_file():
        raise SystemExit(
            f"error: no model folder at {folder}. Fix: pass --model FOLDER (e.g. one built with "
            "tests/conftest.build_tiny_model) or train the default model with `hearken train`."
        )
    return folder


def load_texts(model_dir: Path, count: int, data_dir: str | None) -> tuple[list[str], str]:
    """~250-token messages: CFPB narratives cut at a word boundary, else synthetic ones."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    try:
        from pipeline.corpora import read_cfpb
        from pipeline.errors import DataError

        try:
            narratives = [c.text for c in read_cfpb(data_dir)]
            source = "CFPB narratives cut to ~250 tokens"
        except DataError:
            narratives, source = [], ""
    except ImportError:
        narratives, source = [], ""
    texts = []
    for text in narratives:
        encoding = tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) < TARGET_TOKENS:
            continue
        cut = encoding.offsets[TARGET_TOKENS - 1][1]
        space = text.rfind(" ", 0, cut + 1)
        texts.append(text[: space if space > cut // 2 else cut].strip())
        if len(texts) >= count:
            break
    if len(texts) < min(count, 20):
        texts, source = [], "synthetic messages of ~250 tokens (no data directory)"
        for start in range(count):
            sentences = itertools.cycle(
                SYNTHETIC_SENTENCES[start % len(SYNTHETIC_SENTENCES) :] + SYNTHETIC_SENTENCES
            )
            text = ""
            while len(tokenizer.encode(text, add_special_tokens=False).ids) < TARGET_TOKENS:
                text = f"{text} {next(sentences)}".strip()
            texts.append(text)
    return texts, source


def _mean_tokens(model_dir: Path, texts: list[str]) -> float:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    return statistics.fmean(len(tokenizer.encode(t).ids) for t in texts)


# ===================================================================================== measuring
def _percentiles(latencies_s: list[float]) -> dict[str, float | None]:
    if not latencies_s:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    ordered = sorted(latencies_s)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000

    return {
        "p50_ms": round(pick(0.50), 2),
        "p99_ms": round(pick(0.99), 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def bench_in_process(model_dir: Path, texts: list[str], requests: int, batch: int, deadline: float) -> dict:
    """The floor: the same pipeline called directly, one message at a time and in groups of ``batch``.

    Loaded and run on one dedicated inference thread, exactly as the service does
    (``batching.InferenceThread``): routing on a thread other than the one that loaded the model
    measured about 1.6 times slower here, which would make the in-process floor meaningless.
    """
    from pipeline.service.batching import InferenceThread, load_pipeline_on

    with InferenceThread() as worker:
        pipeline = load_pipeline_on(worker, model_dir)
        result = worker.submit(_measure_in_process, pipeline, texts, requests, batch, deadline).result()
    return {"model_version": pipeline.model_version, "precision": pipeline.precision, **result}


def _measure_in_process(pipeline: Any, texts: list[str], requests: int, batch: int, deadline: float) -> dict:
    from pipeline.schema import Message

    for text in texts[:5]:  # warm-up: lazy loads and the first shapes happen before the clock starts
        pipeline.route(Message(text=text))
    pipeline.route_batch([Message(text=text) for text in texts[:batch]])
    sequential = []
    for i in range(requests):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        pipeline.route(Message(id=f"inproc-{i}", text=texts[i % len(texts)]))
        sequential.append(time.perf_counter() - started)
    batches, routed = [], 0
    wall_started = time.perf_counter()
    while routed < requests and time.monotonic() <= deadline:
        group = [
            Message(id=f"inproc-b-{routed + j}", text=texts[(routed + j) % len(texts)]) for j in range(batch)
        ]
        started = time.perf_counter()
        pipeline.route_batch(group)
        batches.append(time.perf_counter() - started)
        routed += len(group)
    batched_wall = time.perf_counter() - wall_started
    seq_wall = sum(sequential)
    return {
        "sequential": {
            "requests": len(sequential),
            **_percentiles(sequential),
            "throughput_msg_s": round(len(sequential) / seq_wall, 1) if seq_wall else None,
        },
        f"route_batch_{batch}": {
            "requests": routed,
            **_percentiles(batches),
            "throughput_msg_s": round(routed / batched_wall, 1) if batched_wall else None,
            "note": "latency is per route_batch call, i.e. what each message of a full micro-batch waits",
        },
    }


def parse_server_timing(header: str) -> dict[str, float]:
    """``route;dur=25.10, log;dur=0.71`` -> {"route": 25.1, "log": 0.71}; skips entries without a number."""
    parts: dict[str, float] = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if name and key == "dur" and re.fullmatch(r"\d+(\.\d+)?", value):
                parts[name] = float(value)
    return parts


async def load_phase(
    url: str, key: str, texts: list[str], requests: int, concurrency: int, tag: str, deadline: float, pid: int
) -> dict:
    """``requests`` POST /v1/route calls from ``concurrency`` clients in a closed loop."""
    import httpx

    latencies: list[float] = []
    server_parts: dict[str, list[float]] = {}
    statuses: Counter[str] = Counter()
    counter = itertools.count()
    samples: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            while True:
                index = next(counter)
                if index >= requests or time.monotonic() > deadline:
                    return
                body = {"id": f"bench-{tag}-{index}", "text": texts[index % len(texts)]}
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/route", json=body)
                    status = str(response.status_code)
                    for name, ms in parse_server_timing(response.headers.get("server-timing", "")).items():
                        server_parts.setdefault(name, []).append(ms)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
                if len(latencies) % 1000 == 0:
                    samples.append((len(latencies), round(rss_mb(pid), 1)))

        wall_started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - wall_started
    done = sum(statuses.values())
    return {
        "concurrency": concurrency,
        "requests": done,
        "truncated": done < requests,
        **_percentiles(latencies),
        "throughput_msg_s": round(done / wall, 1) if wall else None,
        "errors": done - statuses.get("200", 0),
        "statuses": dict(statuses),
        # The service's own account of each request (its Server-Timing header): "route" is the wait
        # for the inference thread plus the pipeline, "log" the decision-log write. The rest of the
        # client-side latency is HTTP, JSON, auth and this process's httpx client.
        "server_timing_p50_ms": {
            name: round(statistics.median(values), 2) for name, values in sorted(server_parts.items())
        },
        "rss_samples_mb": samples,
    }


def half_peaks_mb(phase: dict) -> tuple[float, float] | None:
    """A phase's RSS peak under load in its first and in its second half of samples (None: < 2 samples)."""
    values = [rss for _, rss in phase["rss_samples_mb"]]
    if len(values) < 2:
        return None
    half = len(values) // 2
    return max(values[:half]), max(values[half:])


def phase_drift_mb(service: list[dict]) -> dict[int, float]:
    """Per phase: RSS peak under load in its second half of requests minus the peak in its first half."""
    drift = {}
    for phase in service:
        peaks = half_peaks_mb(phase)
        if peaks is not None:
            drift[phase["concurrency"]] = round(peaks[1] - peaks[0], 1)
    return drift


def memory_is_flat(service: list[dict]) -> bool:
    """True when no phase's RSS peak rises from the first half of its requests to the second.

    Why this test: a leak grows with the requests served, so a phase of thousands of requests at one
    load shows it as a higher peak in its second half than in its first. Single readings do not: the
    service hands freed heap back to the OS only every ``trim_memory_interval_s``, so one reading
    depends on when the last trim ran (two runs at one stop moved 40-60 MB between readings either
    way with no trend), and eight messages in flight need a larger working set than one, a step when
    concurrency 8 begins that is not growth. Peaks per half are immune to both. Tolerance:
    ``FLAT_MEMORY_MB`` or 5% of the first half's peak. A phase with fewer than two samples shows
    nothing, so it fails the goal.
    """
    if not service:
        return False
    for phase in service:
        peaks = half_peaks_mb(phase)
        if peaks is None or round(peaks[1] - peaks[0], 1) > max(FLAT_MEMORY_MB, 0.05 * peaks[0]):
            return False
    return True


# ===================================================================================== the server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    args: argparse.Namespace, model_dir: Path, workdir: Path, key: str
) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "serve",
        "--model",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database-url",
        f"sqlite:///{workdir}/decisions.db",
        "--max-batch",
        str(args.max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--no-access-log",
    ]
    env = {**os.environ, "HEARKEN_API_KEYS": key}
    log = (workdir / "server.log").open("wb")
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}:\n{(workdir / 'server.log').read_text()}"
            )
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    stop_server(process)
    raise RuntimeError(
        f"server not ready within {args.start_timeout} s:\n{(workdir / 'server.log').read_text()}"
    )


def stop_server(process: subprocess.Popen) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


# ===================================================================================== report
def markdown(report: dict) -> str:
    rows = [
        "| path | concurrency | requests | p50 ms | p99 ms | throughput msg/s | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in report["service"]:
        rows.append(
            f"| HTTP `POST /v1/route` | {phase['concurrency']} | {phase['requests']} | {phase['p50_ms']} | "
            f"{phase['p99_ms']} | {phase['throughput_msg_s']} | {phase['errors']} |"
        )
    inproc = report["in_process"]
    seq = inproc["sequential"]
    rows.append(
        f"| in-process `pipeline.route` | 1 | {seq['requests']} | {seq['p50_ms']} | {seq['p99_ms']} | "
        f"{seq['throughput_msg_s']} | 0 |"
    )
    key = next(k for k in inproc if k.startswith("route_batch_"))
    grouped = inproc[key]
    size = key.rsplit("_", 1)[1]
    rows.append(
        f"| in-process `route_batch` ×{size} (per call) | {size} | {grouped['requests']} | "
        f"{grouped['p50_ms']} | {grouped['p99_ms']} | {grouped['throughput_msg_s']} | 0 |"
    )
    memory = report["memory"]
    goals = report["goals"]
    timing = [
        f"c{phase['concurrency']}: "
        + ", ".join(f"{name} {ms} ms" for name, ms in phase.get("server_timing_p50_ms", {}).items())
        for phase in report["service"]
        if phase.get("server_timing_p50_ms")
    ]
    lines = [
        f"Model `{report['model_version']}` ({report['precision']}), {report['texts']['count']} distinct "
        f"texts, mean {report['texts']['mean_tokens']:.0f} tokens ({report['texts']['source']}); "
        f"{report['machine']['cpu_count']} CPUs; server and client on the same machine.",
        "",
        *rows,
        "",
        f"Server RSS (idle readings): {memory['rss_mb_started']} MB at start, {memory['rss_mb_warm']} MB "
        f"after warm-up, {memory['rss_mb_after']} MB after {memory['requests_served']} requests. "
        "Under load, peak RSS in each phase's second half of requests minus its first half: "
        + ", ".join(f"c{c} {d:+} MB" for c, d in memory.get("drift_within_phase_mb", {}).items())
        + f" ({'flat' if goals['memory_flat'] else 'GROWING'}).",
        "",
        "Server-Timing p50 (the service's own account; the rest is HTTP, JSON and the client): "
        + ("; ".join(timing) if timing else "not sent")
        + ".",
        "",
        "Goals: " + ", ".join(f"{name} {'met' if met else 'NOT met'}" for name, met in goals.items()) + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="Model folder (default: the committed model)."
    )
    parser.add_argument("--requests", type=int, default=10_000, help="Requests per concurrency level.")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8], help="Client concurrency levels."
    )
    parser.add_argument(
        "--in-process-requests", type=int, default=1000, help="Messages for the in-process runs."
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1000,
        help="Requests at each concurrency level before measuring (and before the RSS base); 200 left the "
        "concurrency-8 working set (micro-batch shapes seen once) still growing in the first 1,000 measured.",
    )
    parser.add_argument("--texts", type=int, default=300, help="Distinct messages cycled through.")
    parser.add_argument("--max-batch", type=int, default=16, help="Server micro-batch size.")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="Server micro-batch wait.")
    parser.add_argument("--data-dir", default=None, help="Shared data sets folder (default: resolved).")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="Seconds to wait for /readyz.")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="Hard cap for the whole run.")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Results JSON.")
    args = parser.parse_args()

    deadline = time.monotonic() + args.max_seconds
    model_dir = _model_dir(args.model)
    texts, source = load_texts(model_dir, args.texts, args.data_dir)
    print(f"{len(texts)} texts ({source}); in-process runs ...", file=sys.stderr)
    in_process = bench_in_process(
        model_dir, texts, min(args.in_process_requests, args.requests), max(args.concurrency), deadline
    )

    key = secrets.token_urlsafe(32)
    service: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="hearken-bench-") as tmp:
        workdir = Path(tmp)
        print("starting hearken serve ...", file=sys.stderr)
        process, url = start_server(args, model_dir, workdir, key)
        try:
            rss_started = rss_mb(process.pid)
            # Warm up at every concurrency level to be measured: larger micro-batches need a larger
            # working set once, and that step is not growth. "Flat" means no drift after it.
            for concurrency in args.concurrency:
                asyncio.run(
                    load_phase(
                        url,
                        key,
                        texts,
                        args.warmup,
                        concurrency,
                        f"warmup-c{concurrency}",
                        deadline,
                        process.pid,
                    )
                )
            rss_warm = rss_mb(process.pid)
            for concurrency in args.concurrency:
                print(f"concurrency {concurrency}: {args.requests} requests ...", file=sys.stderr)
                phase = asyncio.run(
                    load_phase(
                        url, key, texts, args.requests, concurrency, f"c{concurrency}", deadline, process.pid
                    )
                )
                phase["rss_mb_after"] = round(rss_mb(process.pid), 1)
                service.append(phase)
            rss_after = rss_mb(process.pid)
        finally:
            exit_code = stop_server(process)
    served = sum(p["requests"] for p in service)
    growth = rss_after - rss_warm
    drift = phase_drift_mb(service)
    by_level = {p["concurrency"]: p for p in service}
    goals = {
        "p50<=30ms@c1": bool(1 in by_level and (by_level[1]["p50_ms"] or 1e9) <= GOAL_P50_C1_MS),
        "p99<=120ms@c8": bool(8 in by_level and (by_level[8]["p99_ms"] or 1e9) <= GOAL_P99_C8_MS),
        "no_errors": all(p["errors"] == 0 for p in service),
        "memory_flat": memory_is_flat(service),
    }
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model_dir": str(model_dir),
        "model_version": in_process["model_version"],
        "precision": in_process["precision"],
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "texts": {
            "count": len(texts),
            "mean_tokens": round(_mean_tokens(model_dir, texts), 1),
            "source": source,
        },
        "server": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "exit_code": exit_code},
        "service": service,
        "in_process": in_process,
        "memory": {
            "rss_mb_started": round(rss_started, 1),
            "rss_mb_warm": round(rss_warm, 1),
            "rss_mb_after": round(rss_after, 1),
            "growth_mb": round(growth, 1),
            "requests_served": served,
            # What the flatness goal is judged on: each phase's RSS peak under load in its second half
            # of requests minus the peak in its first half (see memory_is_flat).
            "drift_within_phase_mb": {str(c): d for c, d in drift.items()},
            "flat_tolerance_mb": FLAT_MEMORY_MB,
        },
        "goals": goals,
        "truncated_by_max_seconds": any(p["truncated"] for p in service),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nwrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
