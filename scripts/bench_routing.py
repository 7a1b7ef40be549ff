"""Benchmark routing (issue 4) on the hand-labelled routing set, baselines in the same run.

    python scripts/bench_routing.py [--model models/hearken-default] [--split test]
                                    [--policy pipeline/policies/consumer_finance]
                                    [--out scripts/results/routing.json]

Through the one ``Pipeline`` object that serving and re-triage use, on ``data/routing/<split>``:
tier accuracy, tier-3 recall and precision, signal micro-F1 with per-signal precision/recall,
the share sent to human review and tier accuracy on the rest, and two baselines: a keyword list
for the signals and "tier from the first sentence". The risk-coverage curve of the calibrated
confidence on this split is saved as a PNG next to the JSON. Nothing here tunes anything: the
calibration and review threshold were fitted on the dev split by ``hearken calibrate``.

``--policy`` measures another routing policy (a YAML file or its folder, e.g. the working-tree
``pipeline/policies/consumer_finance``) instead of the copy saved in the model folder; the route
confidence is then uncalibrated (the calibration belongs to the saved policy), which changes
neither signals nor tiers. ``dev2`` and ``dev3`` are the further development splits.
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

from pipeline.route_calibration import risk_coverage  # noqa: E402
from pipeline.routing_evaluation import evaluate_routing, route_all  # noqa: E402
from pipeline.routing_goldset import ROUTING_SPLITS, load_routing_goldset  # noqa: E402
from pipeline.triage import Pipeline  # noqa: E402


def plot_risk_coverage(points: list[dict], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    ax.step([p["coverage"] for p in points], [p["risk"] for p in points], where="post")
    chosen = min(points, key=lambda p: abs(p["threshold"] - threshold))
    ax.scatter(
        [chosen["coverage"]], [chosen["risk"]], color="red", zorder=3, label=f"threshold {threshold:.2f}"
    )
    ax.set_xlabel("coverage (share routed without review)")
    ax.set_ylabel("tier error rate among those")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, max(0.3, max(p["risk"] for p in points) + 0.02))
    ax.legend()
    ax.set_title("Risk-coverage of the calibrated route confidence")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--split", default="test", choices=list(ROUTING_SPLITS))
    parser.add_argument(
        "--policy", type=Path, default=None, help="routing policy YAML or folder (default: the model's)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "routing.json")
    args = parser.parse_args()

    pipeline = Pipeline.from_folder(args.model, policy=args.policy)
    gold = load_routing_goldset(args.split)
    started = time.perf_counter()
    report = evaluate_routing(pipeline, gold)
    seconds = time.perf_counter() - started
    results = route_all(pipeline, gold)
    curve = risk_coverage(
        [r.route.confidence or 0.0 for r in results],
        [g.tier == r.route.tier for g, r in zip(gold, results, strict=True)],
    )
    report["risk_coverage"] = [p.model_dump() for p in curve]
    report["split"] = args.split
    report["policy"] = str(args.policy) if args.policy else "model folder"
    report["seconds"] = round(seconds, 1)
    report["machine"] = {
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot_risk_coverage(report["risk_coverage"], pipeline.review_threshold, args.out.with_suffix(".png"))

    tier, signals, review = report["tier"], report["signals"], report["review"]
    base = report["baselines"]
    first = base["first_sentence_tier"]
    print(f"| measure ({args.split}, {report['messages']} messages) | Hearken | baseline |")
    print("|---|---|---|")
    print(f"| tier accuracy | {tier['accuracy']:.3f} | first sentence {first['accuracy']:.3f} |")
    print(
        f"| tier-3 recall / precision | {tier['escalation_recall']:.3f} / "
        f"{tier['escalation_precision']:.3f} | "
        f"first sentence {first['escalation_recall']:.3f} / {first['escalation_precision']:.3f} |"
    )
    ours, keywords = signals["micro"], base["keyword_signals"]["micro"]
    print(
        f"| signal micro-F1 (P / R) | {ours['f1']:.3f} ({ours['precision']:.3f} / {ours['recall']:.3f}) | "
        f"keywords {keywords['f1']:.3f} ({keywords['precision']:.3f} / {keywords['recall']:.3f}) |"
    )
    print(
        f"| sent to review / tier accuracy on the rest | {review['share']:.3f} / "
        f"{review['tier_accuracy_on_rest']:.3f} | — |"
    )
    for name, score in signals["per_signal"].items():
        kw = base["keyword_signals"]["per_signal"].get(name, {"precision": 0, "recall": 0})
        print(
            f"| {name} P / R (n={score['support']}) | {score['precision']:.2f} / {score['recall']:.2f} | "
            f"{kw['precision']:.2f} / {kw['recall']:.2f} |"
        )


if __name__ == "__main__":
    main()
