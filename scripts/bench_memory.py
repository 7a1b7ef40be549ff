"""Memory while routing: does padding windows to a multiple keep a long-running process flat?

    python scripts/bench_memory.py [--messages 1800] [--out scripts/results/memory.json]

Routes varied CFPB narratives (random prefixes, 80-1,500 characters) one at a time through the
default pipeline, once with windows padded to the exact longest length and once padded to a
multiple of 32 tokens, each in a fresh process, and records RSS after every 300 messages.
oneDNN caches kernels per tensor shape, so exact-length padding lets memory creep up.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(multiple: int, messages: int) -> list[float]:
    import torch

    from pipeline import corpora
    from pipeline.schema import Message
    from pipeline.triage import Pipeline

    torch.set_num_threads(2)
    pipeline = Pipeline.from_folder()
    pipeline.encoder.config = pipeline.encoder.config.model_copy(update={"pad_to_multiple_of": multiple})
    texts = [c.text for c in corpora.read_cfpb()]
    rng = random.Random(0)
    readings = []
    for i in range(messages):
        text = rng.choice(texts)
        cut = rng.randint(min(80, len(text)), max(min(80, len(text)), min(len(text), 1500)))
        pipeline.route_batch([Message(text=text[:cut])])
        if (i + 1) % 300 == 0:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            readings.append(round(pages * 4096 / 2**20, 1))
    return readings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1800)
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "memory.json")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.messages)))
        return
    results = {}
    for multiple in (1, 32):
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(multiple), "--messages", str(args.messages)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[f"pad_to_multiple_of_{multiple}"] = json.loads(done.stdout.strip().splitlines()[-1])
    report = {"command": "python " + " ".join(sys.argv), "rss_mb_every_300_messages": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
