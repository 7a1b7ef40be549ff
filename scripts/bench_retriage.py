"""Benchmark re-triage throughput: naive per-message loop vs the local engine vs Ray local, in one run.

Why a naive loop: it is what a first script over a backlog does (``pipeline.route`` one message at
a time), so it is the baseline the engines must beat (goal: local >= 3x on 2 cores). Every engine
runs in its own subprocess so that its peak memory (RSS of the process and all its children,
Ray's included) is measured alone.

The backlog is CFPB complaint narratives read in place from the data directory, repeated to
``--rows`` rows in a temporary JSONL that is deleted afterwards; nothing is saved into the repo
except the results JSON.

    python scripts/bench_retriage.py --rows 20000            # the real benchmark (long)
    python scripts/bench_retriage.py --rows 300 --naive-rows 100 --model /tmp/tiny --output /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_OUTPUT = ROOT / "scripts" / "results" / "retriage.json"


def _own_peak_rss_mb() -> float:
    """This process image's peak RSS: VmHWM, because ru_maxrss also counts the parent before exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_backlog(path: Path, rows: int, data_dir: str | None) -> int:
    """Repeat the CFPB narratives (with their product as the previous route) to ``rows`` rows."""
    from pipeline.corpora import read_cfpb

    complaints = read_cfpb(data_dir)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            c = complaints[i % len(complaints)]
            record = {
                "id": f"{c.complaint_id}-{i // len(complaints)}",
                "text": c.text,
                "previous_product": c.product,
            }
            handle.write(json.dumps(record) + "\n")
    return len(complaints)


# ===================================================================================== children


def child(args: argparse.Namespace) -> dict:
    """Run one engine over the backlog and return its measurements (printed as JSON by ``main``)."""
    from pipeline.backlog import RetriageOptions, run_retriage
    from pipeline.backlog_io import read_rows
    from pipeline.schema import Message
    from pipeline.triage import Pipeline

    warm_up = Message(id="warm-up", text="Hello. My card was charged twice; can you refund it?")

    backlog, out = Path(args.input), Path(args.out)
    started = time.perf_counter()
    if args.child == "naive":
        pipeline = Pipeline.from_folder(args.model)
        pipeline.route(warm_up)  # lazy loads happen before the clock starts, as for the local engine
        load = time.perf_counter() - started
        count, t0 = 0, time.perf_counter()
        with out.open("w", encoding="utf-8") as handle:
            for row in read_rows(backlog, "jsonl"):
                if count >= args.naive_rows:
                    break
                if row.message is not None:
                    handle.write(pipeline.route(row.message).model_dump_json() + "\n")
                count += 1
        seconds = time.perf_counter() - t0
    elif args.child == "local":
        pipeline = Pipeline.from_folder(args.model)
        pipeline.route(warm_up)
        load = time.perf_counter() - started
        t0 = time.perf_counter()
        options = RetriageOptions(
            input=backlog, output=out, batch_size=args.batch_size, workers=args.workers, progress=False
        )
        count = run_retriage(options, pipeline).rows_this_run
        seconds = time.perf_counter() - t0
    else:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
        load = time.perf_counter() - started  # Ray start; actor start and model loading are in ``seconds``
        t0 = time.perf_counter()
        options = RetriageOptions(
            input=backlog,
            output=out,
            model=args.model,
            batch_size=args.batch_size,
            engine="ray",
            progress=False,
        )
        count = run_retriage(options).rows_this_run
        seconds = time.perf_counter() - t0
        ray.shutdown()
    import torch

    return {
        "rows": count,
        "seconds": round(seconds, 3),
        "startup_seconds": round(load, 3),
        "msgs_per_s": round(count / seconds, 2) if seconds else None,
        "own_peak_rss_mb": round(_own_peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
    }


def _tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and all its descendants (Ray's raylet and actors included), from /proc (Linux)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    total_kib = 0
    for member in tree:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def run_child(engine: str, args: argparse.Namespace, backlog: Path, workdir: Path, workers: int) -> dict:
    """Run one engine in a subprocess, sampling the RSS of its whole process tree."""
    command = [
        sys.executable,
        __file__,
        "--child",
        engine,
        "--input",
        str(backlog),
        "--out",
        str(workdir / f"{engine}-{workers}.jsonl"),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(workers),
        "--naive-rows",
        str(args.naive_rows),
        *(["--model", str(args.model)] if args.model else []),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample() -> None:
        if not Path("/proc/self/status").exists():
            return  # not Linux: the child's own peak is reported instead
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(process.pid))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    sampler.join()
    if process.returncode not in (0, 7):
        raise SystemExit(f"{engine} failed with exit code {process.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["engine"] = engine if engine != "local" else f"local (workers={workers})"
    result["peak_rss_mb"] = round(peak[0], 1) if peak[0] else result["own_peak_rss_mb"]
    return result


# ===================================================================================== main


def markdown(report: dict) -> str:
    naive = next((r for r in report["results"] if r["engine"] == "naive"), None)
    lines = [
        f"`{report['command']}`",
        "",
        f"{report['rows']} rows ({report['distinct_messages']} distinct CFPB narratives), model "
        f"`{report['model_version']}`, {report['cpu_count']} CPUs; naive loop timed on the first "
        f"{min(report['naive_rows'], report['rows'])} rows.",
        "",
        "| engine | rows | seconds | msgs/s | × naive | peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        ratio = f"{r['msgs_per_s'] / naive['msgs_per_s']:.2f}" if naive and naive["msgs_per_s"] else "–"
        lines.append(
            f"| {r['engine']} | {r['rows']} | {r['seconds']:.1f} | {r['msgs_per_s']:.1f} | {ratio} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20000, help="Backlog rows (CFPB narratives repeated).")
    parser.add_argument(
        "--naive-rows",
        type=int,
        default=2000,
        help="Rows the naive loop routes (its rate does not depend on size).",
    )
    parser.add_argument("--model", type=Path, default=None, help="Model folder (default: the default model).")
    parser.add_argument("--data-dir", default=None, help="Shared data sets (default: $HEARKEN_DATA_DIR).")
    parser.add_argument("--batch-size", type=int, default=256, help="Rows per route_batch call.")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="Local engine worker threads to try."
    )
    parser.add_argument(
        "--engines", nargs="+", default=["naive", "local", "ray"], choices=["naive", "local", "ray"]
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Results JSON.")
    parser.add_argument("--child", choices=["naive", "local", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workers = args.workers[0]
        print(json.dumps(child(args)))
        return

    from pipeline.artifact import default_model_dir, read_manifest

    model_version = read_manifest(args.model or default_model_dir()).model_version
    with tempfile.TemporaryDirectory(prefix="hearken-bench-") as temp:
        workdir = Path(temp)
        backlog = workdir / "backlog.jsonl"
        distinct = write_backlog(backlog, args.rows, args.data_dir)
        results = []
        for engine in args.engines:
            for workers in args.workers if engine == "local" else [1]:
                print(
                    f"running {engine}{f' workers={workers}' if engine == 'local' else ''}…", file=sys.stderr
                )
                results.append(run_child(engine, args, backlog, workdir, workers))
    report = {
        "command": shlex.join(["python", "scripts/bench_retriage.py", *sys.argv[1:]]),
        "rows": args.rows,
        "naive_rows": args.naive_rows,
        "distinct_messages": distinct,
        "model_version": model_version,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "batch_size": args.batch_size,
        "results": results,
    }
    naive = next((r for r in results if r["engine"] == "naive"), None)
    if naive and naive["msgs_per_s"]:
        report["speedup_vs_naive"] = {
            r["engine"]: round(r["msgs_per_s"] / naive["msgs_per_s"], 2) for r in results if r is not naive
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
