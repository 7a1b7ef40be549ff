"""Benchmark signal detection on unseen phrasings: the held-out half of the team-written messages.

    python scripts/bench_signals.py [--model models/hearken-default] [--policy FILE]
                                    [--out scripts/results/signals.json]

The routing test split has 106 signals in 141 messages, too few to tell per-signal changes from
noise. ``data/signal_training`` has 2,020 team-written messages, written blind to the rule lexicon
and the routing splits. Its ``check`` half (by a hash of the row id, ``written_half``) is read
by no rule author and fitted by no head. This script only scores it: about 1,000 messages and
900 signals, positives beside hard negatives (negation, hypotheticals, third parties).

Scored through the one ``Pipeline`` that serves: message-level micro and per-signal precision
and recall, and the share of labelled evidence spans that a same-named signal overlaps. The same
run also scores the keyword baseline, and the rules alone when the model carries a learned
signal head.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.evaluation import route_in_batches  # noqa: E402
from pipeline.routing_evaluation import keyword_signals, signal_metrics, span_recall  # noqa: E402
from pipeline.schema import Message, TriageResult  # noqa: E402
from pipeline.signal_head_fitting import DEFAULT_TRAINING_DIR, SignalExample, read_signal_training  # noqa: E402
from pipeline.triage import Pipeline  # noqa: E402


def route(pipeline: Pipeline, examples: list[SignalExample]) -> list[TriageResult]:
    results = []
    for outcome in route_in_batches(pipeline, [Message(id=e.id, text=e.text) for e in examples], 64):
        if not isinstance(outcome, TriageResult):
            raise SystemExit(f"a written message could not be routed: {outcome}")
        results.append(outcome)
    return results


def score(examples: list[SignalExample], results: list[TriageResult]) -> dict:
    report = signal_metrics([set(e.names) for e in examples], [{s.name for s in r.signals} for r in results])
    report["span_recall"] = span_recall([e.spans for e in examples], results)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--policy", type=Path, default=None, help="routing policy YAML or folder")
    parser.add_argument("--half", default="check", choices=["check", "tune"])
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "signals.json")
    args = parser.parse_args()

    pipeline = Pipeline.from_folder(args.model, policy=args.policy)
    names = [spec.name for spec in pipeline.signal_lexicon.signals]
    examples, hashes = read_signal_training(DEFAULT_TRAINING_DIR, names, half=args.half)
    started = time.perf_counter()
    report: dict = {
        "half": args.half,
        "messages": len(examples),
        "signals": sum(len(e.names) for e in examples),
        "files": hashes,
        "model_version": pipeline.model_version,
        "policy": str(args.policy) if args.policy else "model folder",
        "signal_head": pipeline.encoder.signal_head is not None,
        "pipeline": score(examples, route(pipeline, examples)),
    }
    if pipeline.encoder.signal_head is not None:
        rules_only = Pipeline.from_folder(args.model, policy=args.policy, signal_head=False)
        report["rules_only"] = score(examples, route(rules_only, examples))
    keywords = signal_metrics([set(e.names) for e in examples], [keyword_signals(e.text) for e in examples])
    report["baselines"] = {"keyword_signals": keywords}
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["machine"] = {
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    ours, kw = report["pipeline"], keywords
    print(
        f"| {args.half} half: {report['messages']} messages, {report['signals']} signals "
        "| Hearken | keyword list |"
    )
    print("|---|---|---|")
    print(
        f"| micro-F1 (P / R) | {ours['micro']['f1']:.3f} ({ours['micro']['precision']:.3f} / "
        f"{ours['micro']['recall']:.3f}) | {kw['micro']['f1']:.3f} ({kw['micro']['precision']:.3f} / "
        f"{kw['micro']['recall']:.3f}) |"
    )
    print(f"| evidence spans overlapped | {ours['span_recall']:.3f} | — |")
    for name in names:
        mine = ours["per_signal"].get(name, {"precision": 0.0, "recall": 0.0, "support": 0})
        base = kw["per_signal"].get(name, {"precision": 0.0, "recall": 0.0})
        print(
            f"| {name} P / R (n={mine['support']}) | {mine['precision']:.2f} / {mine['recall']:.2f} | "
            f"{base['precision']:.2f} / {base['recall']:.2f} |"
        )
    if "rules_only" in report:
        rules = report["rules_only"]["micro"]
        print(f"\nrules alone: micro-F1 {rules['f1']:.3f} ({rules['precision']:.3f} / {rules['recall']:.3f})")


if __name__ == "__main__":
    main()
