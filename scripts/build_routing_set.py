"""Build the hand-labelled routing set (``data/routing/``) from a labeller's scratch files.

    python scripts/build_routing_set.py sample                      # the seeded CFPB row ids
    python scripts/build_routing_set.py build LABELS.yaml [...]     # spans, split, write dev/test
    python scripts/build_routing_set.py blind OUT.txt --ids-seed 2207  # texts for the second pass

Why a scratch file: the labeller writes evidence and ask *substrings*, never offsets, and this
script finds them with ``str.find`` (failing when a substring is missing or ambiguous, unless an
occurrence index is given). Scratch files for public rows quote the public texts, so they live
outside the repository; this script holds no public text. Team-written texts end up in the
JSONL files, which is allowed (the team wrote them).

The split is decided once (seed ``SPLIT_SEED``, stratified by tier and kind) and then frozen:
a rebuild keeps every message's split, looked up by text sha256, so correcting a label after
the second pass never moves a message between dev and test. Method: ``data/routing/GUIDELINES.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.corpora import CFPB_EVAL, PRODUCT_LABELS, read_cfpb  # noqa: E402
from pipeline.datadir import dataset_file, resolve_data_dir  # noqa: E402
from pipeline.goldsets import GOLDSET_DIR, lookup_texts  # noqa: E402
from pipeline.routing_goldset import (  # noqa: E402
    ESCALATING_SIGNALS,
    ROUTING_GOLDSET_DIR,
    ROUTING_SIGNALS,
    TIERS,
)

SAMPLE_SEED = 2201
N_CFPB = 80
ID_SEED = 2202
SPLIT_SEED = 2203
DEV_SHARE = 0.4
SECOND_PASS_SEED = 2207
N_SECOND_PASS = 60


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _largest_remainder(weights: dict[str, float], total: int) -> dict[str, int]:
    """Integer quotas proportional to ``weights`` that sum to ``total`` (ties broken by name)."""
    norm = sum(weights.values())
    exact = {k: total * w / norm for k, w in weights.items()}
    quotas = {k: math.floor(v) for k, v in exact.items()}
    rest = total - sum(quotas.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - quotas[k]), k))[:rest]:
        quotas[k] += 1
    return quotas


def sample_cfpb(data_dir: Path | None = None) -> list[str]:
    """The seeded, product-stratified sample of CFPB complaint ids to label.

    Candidates: every narrative in file order, minus texts of the reserved AEGIS benchmark, minus
    rows (and texts) already in the hand-labelled ask set (so the two evaluations stay
    independent), de-duplicated on exact text (first occurrence kept). Quotas per mapped product
    are proportional to the square root of the family size, so small products still appear.
    """
    reserved = {row["text"] for row in json.loads(dataset_file(CFPB_EVAL, data_dir).read_text("utf-8"))}
    ask_ids: set[str] = set()
    for split in ("dev", "test"):
        for line in (GOLDSET_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row["dataset"] == "cfpb_complaints":
                ask_ids.add(row["row_id"])
    complaints = read_cfpb(data_dir)
    ask_texts = {c.text for c in complaints if c.complaint_id in ask_ids}
    seen: set[str] = set()
    families: dict[str, list[str]] = defaultdict(list)
    for c in complaints:
        if c.text in reserved or c.text in ask_texts or c.text in seen:
            continue
        seen.add(c.text)
        families[c.product or "unmapped"].append(c.complaint_id)
    quotas = _largest_remainder({k: math.sqrt(len(v)) for k, v in families.items()}, N_CFPB)
    rng = random.Random(SAMPLE_SEED)
    chosen: list[str] = []
    for family in sorted(families):
        chosen += rng.sample(families[family], quotas[family])
    return chosen


def _locate(text: str, spec: Any, where: str) -> tuple[int, int]:
    """Offsets of an evidence substring: ``"text"`` (must be unique) or ``{ev, occ}`` (0-based)."""
    needle, occurrence = (spec["ev"], spec.get("occ")) if isinstance(spec, dict) else (spec, None)
    if needle != needle.strip() or not needle:
        raise SystemExit(f"{where}: evidence {needle!r} is empty or has surrounding whitespace")
    starts, i = [], text.find(needle)
    while i != -1:
        starts.append(i)
        i = text.find(needle, i + 1)
    if not starts:
        raise SystemExit(f"{where}: evidence not found: {needle!r}")
    if occurrence is None and len(starts) > 1:
        raise SystemExit(f"{where}: evidence occurs {len(starts)} times, give occ: {needle!r}")
    start = starts[occurrence or 0]
    assert text[start : start + len(needle)] == needle
    return start, start + len(needle)


def _record(entry: dict[str, Any], text: str, rid: str) -> dict[str, Any]:
    where = f"{rid} ({entry.get('key') or entry.get('row_id')})"
    signals = []
    for spec in entry.get("signals") or []:
        name, evidence, quoted = spec["name"], spec, bool(spec.get("q", False))
        if name not in ROUTING_SIGNALS:
            raise SystemExit(f"{where}: unknown signal {name}")
        start, end = _locate(text, evidence, where)
        signals.append({"name": name, "start": start, "end": end, "in_quoted_history": quoted})
    asks = sorted(_locate(text, spec, where) for spec in entry.get("asks") or [])
    for (_, end), (start, _) in itertools.pairwise(asks):
        if start < end:
            raise SystemExit(f"{where}: ask spans overlap")
    tier, product = entry["tier"], entry.get("product")
    if tier not in TIERS or (product is not None and product not in PRODUCT_LABELS):
        raise SystemExit(f"{where}: bad tier {tier} or product {product}")
    if any(s["name"] in ESCALATING_SIGNALS for s in signals) != (tier == "tier3"):
        raise SystemExit(f"{where}: tier {tier} contradicts signals {[s['name'] for s in signals]}")
    team = entry["source"] == "team"
    return {
        "id": rid,
        "source": entry["source"],
        "row_id": None if team else str(entry["row_id"]),
        "text_sha256": _sha256(text),
        "text": text if team else None,
        "subject": entry.get("subject"),
        "tier": tier,
        "signals": signals,
        "asks": [list(a) for a in asks],
        "product": product,
        "language": entry.get("language", "en"),
        "kind": entry["kind"],
        "note": entry.get("note", ""),
    }


def _assign_split(records: list[dict[str, Any]], frozen: dict[str, str]) -> dict[str, str]:
    """dev/test per id: frozen assignments kept; the rest by a seeded stratified systematic draw.

    Records are grouped by (tier, kind), each group is shuffled with one seeded RNG, the groups
    are concatenated in sorted order, and walking that list the i-th record goes to dev when
    ``floor((i + 1) * 0.4) > floor(i * 0.4)``. Every stratum therefore gets its share of dev to
    within one message, and the whole set gets exactly round-down 40 %.
    """
    split = {r["id"]: frozen[r["text_sha256"]] for r in records if r["text_sha256"] in frozen}
    todo = [r for r in records if r["id"] not in split]
    if not todo:
        return split
    rng = random.Random(SPLIT_SEED)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in sorted(todo, key=lambda r: r["id"]):
        groups[(r["tier"], r["kind"])].append(r["id"])
    ordered: list[str] = []
    for key in sorted(groups):
        ids = groups[key]
        rng.shuffle(ids)
        ordered += ids
    for i, rid in enumerate(ordered):
        split[rid] = "dev" if math.floor((i + 1) * DEV_SHARE) > math.floor(i * DEV_SHARE) else "test"
    return split


def _frozen_split(out_dir: Path) -> dict[str, str]:
    frozen: dict[str, str] = {}
    for name in ("dev", "test"):
        path = out_dir / f"{name}.jsonl"
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                frozen[json.loads(line)["text_sha256"]] = name
    return frozen


def build(label_files: list[Path], out_dir: Path, data_dir: Path | None, show: bool) -> None:
    entries: list[dict[str, Any]] = []
    for path in label_files:
        entries += yaml.safe_load(path.read_text(encoding="utf-8"))
    public_ids = {str(e["row_id"]) for e in entries if e["source"] == "cfpb_complaints"}
    public = lookup_texts("cfpb_complaints", public_ids, resolve_data_dir(data_dir)) if public_ids else {}
    # Ids follow a seeded shuffle, not the authoring order, so an id says nothing about the
    # group a message was written in.
    numbers = list(range(1, len(entries) + 1))
    random.Random(ID_SEED).shuffle(numbers)
    records = []
    for number, entry in zip(numbers, entries, strict=True):
        text = entry["text"] if entry["source"] == "team" else public[str(entry["row_id"])]
        record = _record(entry, text, f"r{number:04d}")
        records.append(record)
        if show:
            print(f"--- {record['id']} {record['tier']} {record['kind']} {record['product']}")
            for s in record["signals"]:
                quoted = " [q]" if s["in_quoted_history"] else ""
                print(f"  {s['name']}{quoted}: {text[s['start'] : s['end']]!r}")
            for a, b in record["asks"]:
                print(f"  ASK: {text[a:b]!r}")
    texts = Counter(r["text_sha256"] for r in records)
    if max(texts.values()) > 1:
        raise SystemExit("the same text is labelled twice")
    split = _assign_split(records, _frozen_split(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    records.sort(key=lambda r: r["id"])
    for name in ("dev", "test"):
        lines = [json.dumps(r, ensure_ascii=False) for r in records if split[r["id"]] == name]
        (out_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = Counter((split[r["id"]], r["tier"]) for r in records)
    print(json.dumps({f"{s}/{t}": n for (s, t), n in sorted(summary.items())}, indent=1))


def blind(out: Path, data_dir: Path | None) -> None:
    """Write the seeded second-pass sample as texts only (no labels), for a blind re-label."""
    from pipeline.routing_goldset import load_routing_goldset

    messages = [m for split in ("dev", "test") for m in load_routing_goldset(split, data_dir)]
    ids = sorted(m.id for m in messages)
    chosen = set(random.Random(SECOND_PASS_SEED).sample(ids, N_SECOND_PASS))
    parts = []
    for m in sorted(messages, key=lambda m: m.id):
        if m.id in chosen:
            subject = f"SUBJECT: {m.subject}\n" if m.subject else ""
            parts.append(f"===== {m.id}\n{subject}{m.text}\n")
    out.write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote {len(chosen)} texts to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sample")
    b = sub.add_parser("build")
    b.add_argument("labels", type=Path, nargs="+")
    b.add_argument("--out", type=Path, default=ROUTING_GOLDSET_DIR)
    b.add_argument("--show", action="store_true", help="print every evidence and ask span")
    bl = sub.add_parser("blind")
    bl.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.command == "sample":
        print("\n".join(sample_cfpb(args.data_dir)))
    elif args.command == "build":
        build(args.labels, args.out, args.data_dir, args.show)
    else:
        blind(args.out, args.data_dir)


if __name__ == "__main__":
    main()
