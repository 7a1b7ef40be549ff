"""Benchmark the classifiers (issue 3): product, intent, calibration, precision, speed, start-up, memory.

    python scripts/bench_classify.py [--model DIR] [--out scripts/results/classify.json] [--quick]

Every number has its baseline measured in the same process (these machines are shared and noisy,
so only ratios within one run mean much). All Hearken predictions go through
``Pipeline.route_batch``, the one inference path that serving and re-triage use; the only other
model run is the transformers speed baseline.

1. Banking77 test intent accuracy and ECE (15 bins) of ``intent.confidence``; baseline TF-IDF
   (word 1-2 + char 2-5 n-grams) + LinearSVC trained on Banking77 train here.
2. CFPB product on the AEGIS eval set (rows whose text is also in the training CSV dropped,
   products mapped with ``map_cfpb_product``): accuracy, macro-F1, ECE of ``product.confidence``;
   baselines TF-IDF + LinearSVC on the CFPB training split, whole text and first 200 characters.
   2b. The same on the CFPB test split (held out by text hash), the training data's distribution.
3. Buried intent: Banking77 test utterances after 200-600 words of CFPB *test-split* background;
   accuracy against the same utterances bare, and the same pipeline on the message cut to its
   first 512 tokens (what a plain BERT classifier sees).
4. bf16 vs fp32 argmax agreement of intent and product labels.
5. Speed over the CFPB narratives, against a transformers ``text-classification`` pipeline.
6. Cold start (new process to first result) and peak RSS while routing 1,000 narratives.

``--quick`` runs small subsets to check the script itself; its numbers are not for the README and
it writes to /tmp unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import evaluation  # noqa: E402
from pipeline.errors import DataError, HearkenError  # noqa: E402
from pipeline.runtime import precision_override  # noqa: E402
from pipeline.trainset import text_key  # noqa: E402  (the identity training dedups narratives by)

if TYPE_CHECKING:
    from pipeline.schema import TriageResult
    from pipeline.triage import Pipeline

log = logging.getLogger("bench_classify")

DEFAULT_OUT = ROOT / "scripts" / "results" / "classify.json"
QUICK_OUT = Path("/tmp/bench_classify_quick.json")
ECE_BINS = evaluation.ECE_BINS
NO_LABEL = "(no label)"
BASELINE_PREFIX_CHARS = 200
# [CLS] + 510 tokens + [SEP] = the 512 positions a plain BERT classifier reads.
TRUNCATE_CONTENT_TOKENS = 510
BURIED_RATIO_GOAL = 0.97
COLD_START_GOAL_SECONDS = 3.0
PEAK_RSS_GOAL_MIB = 1536.0  # 1.5 GiB
# Closing lines written by the team (not data-set text): what customers add after their ask.
CLOSINGS = (
    "Thank you.",
    "Thanks for your help.",
    "Thank you for your time.",
    "Regards.",
    "Best regards.",
)
_TERMINAL = (".", "?", "!")
COLD_START_CODE = (
    "import time; t=time.time(); from pipeline.triage import Pipeline; p=Pipeline.from_folder(); "
    "p.route('My card was charged twice, please refund it.'); print(time.time()-t)"
)
PEAK_RSS_CODE = """
import json, resource, sys
def high_water_kib():
    # VmHWM belongs to this process image; ru_maxrss would also count the parent's size before exec.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import torch
from pipeline import corpora
from pipeline.errors import HearkenError
from pipeline.schema import Message
from pipeline.triage import Pipeline
torch.set_num_threads(2)
n, batch = int(sys.argv[1]), int(sys.argv[2])
pipeline = Pipeline.from_folder()
after_load = high_water_kib()
messages = [Message(id=c.complaint_id, text=c.text) for c in corpora.read_cfpb()[:n]]
errors = 0
for i in range(0, len(messages), batch):
    errors += sum(isinstance(r, HearkenError) for r in pipeline.route_batch(messages[i : i + batch]))
peak = high_water_kib()
report = {"messages": len(messages), "errors": errors, "after_load_kib": after_load, "peak_kib": peak}
print(json.dumps(report))
"""


class BenchSizes(BaseModel):
    """How much of each set to run: everything for the README, small subsets for ``--quick``."""

    model_config = ConfigDict(extra="forbid")

    banking77_test: int | None = Field(description="Banking77 test utterances (None: all 3,080).")
    banking77_train: int | None = Field(description="Banking77 train rows for the baseline (None: all).")
    aegis: int | None = Field(description="AEGIS eval rows after filtering (None: all).")
    cfpb_train: int | None = Field(description="CFPB training-split rows for the baselines (None: all).")
    buried: int | None = Field(description="Buried-intent messages (None: one per Banking77 test utterance).")
    speed_messages: int | None = Field(description="CFPB narratives timed for speed (None: all 2,615).")
    speed_batch: int = Field(default=32, ge=1, description="Messages per route_batch call when timing.")
    transformers_batch: int = Field(default=8, ge=1, description="batch_size of the transformers baseline.")
    rss_messages: int = Field(default=1000, ge=1, description="Narratives routed in the peak-RSS process.")
    cold_runs: int = Field(default=3, ge=1, description="Fresh processes timed for cold start (median).")


FULL = BenchSizes(
    banking77_test=None,
    banking77_train=None,
    aegis=None,
    cfpb_train=None,
    buried=None,
    speed_messages=None,
)
QUICK = BenchSizes(
    banking77_test=240,
    banking77_train=3000,
    aegis=55,
    cfpb_train=500,
    buried=80,
    speed_messages=64,
    rss_messages=64,
    cold_runs=1,
)


# ============================================================================ pure helpers


def text_sha256(text: str) -> str:
    """Name a data-set row by hash in reports instead of copying its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def drop_training_overlap(texts: Sequence[str], training_texts: Iterable[str]) -> tuple[list[int], list[int]]:
    """Split eval rows into (kept, dropped) indices: dropped rows also occur in the training CSV.

    A narrative the model may have trained on would flatter it, so it is not evaluated; matching
    ignores case and whitespace because the CSV and the eval JSON format texts differently.
    """
    seen = {text_key(t) for t in training_texts}
    kept, dropped = [], []
    for index, text in enumerate(texts):
        (dropped if text_key(text) in seen else kept).append(index)
    return kept, dropped


def _check_labels(gold: Sequence[str], predicted: Sequence[str | None], what: str) -> None:
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    if not gold:
        raise ValueError(f"{what} of an empty set is undefined")


def accuracy(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Share of exact matches; a missing prediction (None) is wrong (``pipeline.evaluation``'s)."""
    _check_labels(gold, predicted, "accuracy")
    return evaluation.accuracy(gold, predicted)


def macro_f1(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    """F1 averaged over the classes present in ``gold`` (None counts as a wrong label).

    Averaging over gold classes only means a label the model predicts but the set never
    contains costs precision in no class's average, as in ``pipeline.evaluation``, which computes it.
    """
    _check_labels(gold, predicted, "macro-F1")
    return evaluation.macro_f1(evaluation.per_class_metrics(gold, predicted))


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], n_bins: int = ECE_BINS
) -> float:
    """ECE over equal-width bins (lo, hi]: sum of |accuracy - mean confidence| weighted by bin share.

    Routing thresholds are set on these confidences, so a confidence of 0.8 must be right about
    80% of the time; ECE says by how much, on average, it is not. The bins and the sum are
    ``pipeline.evaluation``'s, so this benchmark and `hearken evaluate` report the same number.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    hits = np.asarray(correct, dtype=np.float64)
    if conf.shape != hits.shape or conf.ndim != 1:
        raise ValueError(f"{conf.shape} confidences but {hits.shape} outcomes")
    if conf.size == 0:
        raise ValueError("ECE of an empty set is undefined")
    if n_bins < 1 or np.any((conf < 0) | (conf > 1)):
        raise ValueError("confidences must lie in [0, 1] and n_bins must be positive")
    return evaluation.expected_calibration_error(evaluation.reliability_bins(conf, hits, n_bins))


@dataclass(frozen=True)
class BuriedMessage:
    """A message whose only ask comes after a long run of background, and where it sits."""

    text: str
    utterance_start: int
    utterance_end: int
    background_words: int
    closing: str | None


def bury_utterance(
    utterance: str,
    background: Sequence[str],
    rng: random.Random,
    *,
    min_words: int = 200,
    max_words: int = 600,
    closings: Sequence[str] = CLOSINGS,
    closing_share: float = 0.5,
) -> BuriedMessage:
    """Put ``utterance`` after ``min_words``-``max_words`` words of background sentences.

    The background starts at a random sentence boundary of ``background`` (sentences in
    document order) and runs on in order, wrapping round; a sentence that would overshoot
    ``max_words`` is skipped. The utterance is the last sentence, or is followed by one closing
    line (``closing_share`` of the time), as customers write. Deterministic for a seeded ``rng``.
    """
    if not 0 < min_words <= max_words:
        raise ValueError(f"need 0 < min_words <= max_words, got {min_words}, {max_words}")
    if not background:
        raise DataError("No background sentences to bury utterances in.", fix="check the CFPB test split")
    target = rng.randint(min_words, max_words)
    start = rng.randrange(len(background))
    chosen: list[str] = []
    words = 0
    for step in range(len(background)):
        if words >= target:
            break
        sentence = background[(start + step) % len(background)]
        n = len(sentence.split())
        if words + n <= max_words:
            chosen.append(sentence)
            words += n
    if words < min_words:
        raise DataError(
            f"The background sentences hold only {words} usable words (need {min_words}).",
            fix="use more background rows or shorter sentences",
        )
    text = " ".join(chosen) + " "
    utterance_start = len(text)
    text += utterance
    closing = rng.choice(list(closings)) if closings and rng.random() < closing_share else None
    if closing is not None:
        # Without a final stop the segmenter could read the closing as part of the ask.
        text += (" " if utterance.rstrip().endswith(_TERMINAL) else "\n") + closing
    return BuriedMessage(text, utterance_start, utterance_start + len(utterance), words, closing)


def cut_at_token(text: str, token_ends: Sequence[int], max_tokens: int) -> str:
    """``text`` up to the end of its ``max_tokens``-th token (character end offsets per token)."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    if len(token_ends) <= max_tokens:
        return text
    return text[: token_ends[max_tokens - 1]]


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _measured(value: float | None, digits: int, unit: str) -> str:
    return "n/a (failed: see the JSON report)" if value is None else f"{value:.{digits}f} {unit}"


def format_table(report: dict[str, Any]) -> str:
    """The README table for one report: Hearken, the same-run baseline, and the goal per measure."""
    rows: list[tuple[str, str, str, str]] = []
    bank = report["banking77"]
    rows.append(
        (
            f"Banking77 test intent accuracy ({bank['n']} utterances)",
            _num(bank["hearken_accuracy"]),
            f"TF-IDF word+char + LinearSVC {_num(bank['baseline_tfidf_linearsvc_accuracy'])}",
            "reported",
        )
    )
    rows.append(("same, ECE of intent.confidence (15 bins)", _num(bank["hearken_ece"]), "", "reported"))
    product = report["cfpb_product"]
    base = product["baseline_tfidf_linearsvc"]
    prefix = product["baseline_tfidf_linearsvc_first_200_chars"]
    hearken = product["hearken"]
    label = f"CFPB AEGIS product accuracy / macro-F1 ({product['scored_rows']} rows)"
    baseline_text = (
        f"TF-IDF + LinearSVC {_num(base['accuracy'])} / {_num(base['macro_f1'])}; "
        f"first 200 chars {_num(prefix['accuracy'])} / {_num(prefix['macro_f1'])}"
    )
    if hearken is None:
        rows.append((label, f"n/a ({product['hearken_reason']})", baseline_text, "reported"))
    else:
        rows.append(
            (label, f"{_num(hearken['accuracy'])} / {_num(hearken['macro_f1'])}", baseline_text, "reported")
        )
        rows.append(("same, ECE of product.confidence (15 bins)", _num(hearken["ece"]), "", "reported"))
    held_out = report.get("cfpb_product_held_out")
    if held_out is not None and held_out.get("hearken") is not None:
        ours, theirs = held_out["hearken"], held_out["baseline_tfidf_linearsvc"]
        rows.append(
            (
                f"CFPB test split (held out by text hash, {held_out['scored_rows']} rows): product accuracy "
                "/ macro-F1 / ECE",
                f"{_num(ours['accuracy'])} / {_num(ours['macro_f1'])} / {_num(ours['ece'])}",
                f"TF-IDF + LinearSVC {_num(theirs['accuracy'])} / {_num(theirs['macro_f1'])}",
                "reported",
            )
        )
    buried = report["buried_intent"]
    rows.append(
        (
            f"buried intent ({buried['messages']} messages, 200-600 words before): accuracy (÷ bare)",
            f"{_num(buried['hearken_buried_accuracy'])} (÷ {_num(buried['hearken_bare_accuracy'])} "
            f"= {_num(buried['ratio'])})",
            f"same pipeline on the first 512 tokens {_num(buried['baseline_first_512_tokens_accuracy'])} "
            f"(ratio {_num(buried['baseline_ratio'])})",
            f"ratio ≥ {BURIED_RATIO_GOAL}",
        )
    )
    agreement = report["precision_agreement"]
    product_agreement = agreement["cfpb_aegis"]["product_agreement"]
    rows.append(
        (
            f"{agreement['other']} vs fp32 argmax agreement: intent (Banking77) / product (AEGIS)",
            f"{_num(agreement['banking77']['intent_agreement'])} / "
            + (_num(product_agreement) if product_agreement is not None else "n/a"),
            f"accuracy fp32 {_num(agreement['banking77']['fp32_accuracy'])}, "
            f"{agreement['other']} {_num(agreement['banking77']['other_accuracy'])} (intent)",
            "reported",
        )
    )
    speed = report["speed"]
    rows.append(
        (
            f"speed, CFPB narratives ({speed['messages']}, batches of {speed['batch_size']}, 2 threads)",
            f"{_num(speed['hearken_messages_per_second'], 1)} msg/s",
            f"transformers text-classification, fp32, 512-token truncation "
            f"{_num(speed['transformers_messages_per_second'], 1)} msg/s "
            f"(Hearken × {_num(speed['ratio'], 2)})",
            "reported",
        )
    )
    cold = report["cold_start"]
    rows.append(
        (
            f"cold start, new process to first result (median of {len(cold.get('runs_seconds', []))})",
            _measured(cold.get("median_seconds"), 2, "s"),
            "",
            f"≤ {COLD_START_GOAL_SECONDS:g} s",
        )
    )
    memory = report["memory"]
    rows.append(
        (
            f"peak RSS routing {memory.get('messages', 'n/a')} CFPB narratives",
            _measured(memory.get("peak_rss_mib"), 0, "MiB"),
            "",
            "≤ 1.5 GiB",
        )
    )
    machine = report["machine"]
    header = (
        f"Model `{report['model_version']}`, {machine['precision']}, {machine['threads']} threads, "
        f"{machine['cpu']}; baselines in the same run"
        + (" — **quick run, subsets only: not for the README**" if report.get("quick") else "")
        + "."
    )
    lines = [
        header,
        "",
        "| measure | Hearken | baseline (same run) | goal |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |" for row in rows]
    return "\n".join(lines) + "\n"


# ============================================================================ measures


@dataclass(frozen=True)
class Prediction:
    """The label and confidence of one field of a routed result (None when not given)."""

    label: str | None
    confidence: float | None


def route_texts(pipeline: Pipeline, texts: Sequence[str], batch_size: int = 64) -> list[TriageResult | None]:
    """Route texts through ``Pipeline.route_batch``; an unreadable message becomes None."""
    from pipeline.schema import Message

    messages = [Message(id=str(i), text=t) for i, t in enumerate(texts)]
    return [
        None if isinstance(r, HearkenError) else r
        for r in evaluation.route_in_batches(pipeline, messages, batch_size)
    ]


def intent_of(result: TriageResult | None) -> Prediction:
    if result is None:
        return Prediction(None, None)
    return Prediction(result.intent.label, result.intent.confidence)


def product_of(result: TriageResult | None) -> Prediction:
    if result is None:
        return Prediction(None, None)
    return Prediction(result.product.label, result.product.confidence)


def labelled_metrics(gold: Sequence[str], predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Accuracy, macro-F1, ECE over the predictions that carry a confidence, and coverage."""
    labels = [p.label for p in predictions]
    confident = [
        (p.confidence, p.label == g)
        for g, p in zip(gold, predictions, strict=True)
        if p.confidence is not None
    ]
    return {
        "accuracy": accuracy(gold, labels),
        "macro_f1": macro_f1(gold, labels),
        "ece": expected_calibration_error([c for c, _ in confident], [h for _, h in confident])
        if confident
        else None,
        "with_confidence": len(confident),
        "no_label": sum(label is None for label in labels),
    }


def tfidf_linearsvc() -> Any:
    """The classic strong text baseline: word 1-2 + char 2-5 TF-IDF n-grams into a linear SVM."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.svm import LinearSVC

    return make_pipeline(
        FeatureUnion(
            [
                ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
            ]
        ),
        LinearSVC(C=1.0),
    )


def sample(rows: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """All rows, or a seeded random subset in the original order (quick runs)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def banking77(
    pipeline: Pipeline, sizes: BenchSizes, seed: int
) -> tuple[dict[str, Any], list[Any], list[Prediction]]:
    """Measure 1; also returns the utterances and predictions that measures 3 and 4 reuse."""
    from pipeline import corpora

    test = sample(corpora.read_banking77(corpora.BANKING77_TEST), sizes.banking77_test, seed)
    train = sample(corpora.read_banking77(corpora.BANKING77_TRAIN), sizes.banking77_train, seed)
    log.info("banking77: %d test utterances through the pipeline", len(test))
    predictions = [intent_of(r) for r in route_texts(pipeline, [e.text for e in test])]
    gold = [e.label for e in test]
    metrics = labelled_metrics(gold, predictions)
    log.info("banking77: training the TF-IDF + LinearSVC baseline on %d rows", len(train))
    baseline = tfidf_linearsvc().fit([e.text for e in train], [e.label for e in train])
    baseline_pred = [str(x) for x in baseline.predict([e.text for e in test])]
    report = {
        "n": len(test),
        "hearken_accuracy": metrics["accuracy"],
        "hearken_macro_f1": metrics["macro_f1"],
        "hearken_ece": metrics["ece"],
        "hearken_no_label": metrics["no_label"],
        "baseline_tfidf_linearsvc_accuracy": accuracy(gold, baseline_pred),
        "baseline_train_rows": len(train),
    }
    return report, test, predictions


@dataclass
class AegisSet:
    """The AEGIS eval rows left after filtering, with what was left out and why."""

    ids: list[str]
    texts: list[str]
    labels: list[str]
    dropped: list[dict[str, str]]
    unmappable: list[dict[str, str]]
    sha256: str
    rows: int


def load_aegis(training_texts: Sequence[str]) -> AegisSet:
    """The AEGIS narratives, minus any also in the training CSV, with products mapped."""
    from pipeline.artifact import sha256_file
    from pipeline.corpora import CFPB_EVAL, map_cfpb_product
    from pipeline.datadir import dataset_file

    path = dataset_file(CFPB_EVAL)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        pairs = [(str(r["text"]), str(r["expected_category"])) for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path} is not a list of {{text, expected_category}} objects ({exc}).",
            fix="restore cfpb_complaints/cfpb_aegis_eval_220.json in the data directory",
        ) from exc
    kept, dropped = drop_training_overlap([t for t, _ in pairs], training_texts)
    out = AegisSet([], [], [], [], [], sha256_file(path), len(pairs))
    out.dropped = [{"id": f"cfpb-aegis:{i}", "sha256": text_sha256(pairs[i][0])} for i in dropped]
    for i in kept:
        text, category = pairs[i]
        label = map_cfpb_product(category)
        if label is None:
            out.unmappable.append({"id": f"cfpb-aegis:{i}", "expected_category": category})
            continue
        out.ids.append(f"cfpb-aegis:{i}")
        out.texts.append(text)
        out.labels.append(label)
    return out


def cfpb_split(complaints: Sequence[Any], split: str, *, drop_gold_rows: bool) -> list[Any]:
    """CFPB rows of one ``split_of`` split with a mapped product, deduplicated by text, in file order.

    ``drop_gold_rows`` leaves out the hand-labelled evaluation rows, as training does.
    """
    from pipeline.trainset import gold_row_ids, split_of

    excluded = gold_row_ids("cfpb_complaints") if drop_gold_rows else set()
    seen: set[str] = set()
    chosen = []
    for c in complaints:
        key = text_key(c.text)
        if c.product is None or c.complaint_id in excluded or key in seen or split_of(c.text) != split:
            continue
        seen.add(key)
        chosen.append(c)
    return chosen


def cfpb_training_split(complaints: Sequence[Any]) -> list[Any]:
    """CFPB rows the product head trains on (as ``trainset.product_messages`` chooses them)."""
    return cfpb_split(complaints, "train", drop_gold_rows=True)


def cfpb_product(
    pipeline: Pipeline, aegis: AegisSet, complaints: Sequence[Any], sizes: BenchSizes, seed: int
) -> tuple[dict[str, Any], list[int], list[Prediction] | None]:
    """Measure 2; also returns the scored row indices and Hearken predictions (for measure 4)."""
    train = sample(cfpb_training_split(complaints), sizes.cfpb_train, seed)
    train_counts = Counter(c.product for c in train)
    spec = pipeline.encoder.head_specs.get("product")
    if spec is not None:
        known, scored_on = set(spec.labels), "gold label is one of the product head's labels"
    else:
        known, scored_on = set(train_counts), "gold label occurs in the CFPB training split"
    scored = [i for i, label in enumerate(aegis.labels) if label in known]
    scored = sample(scored, sizes.aegis, seed)
    gold = [aegis.labels[i] for i in scored]
    if not gold:
        raise DataError("No AEGIS row has a product the model knows.", fix="check the product head's labels")
    report: dict[str, Any] = {
        "eval_rows": aegis.rows,
        "eval_sha256": aegis.sha256,
        "dropped_training_overlap": aegis.dropped,
        "unmappable": aegis.unmappable,
        "scored_rows": len(gold),
        "scored_on": scored_on,
        "not_scored_label_unknown": len([x for x in aegis.labels if x not in known]),
        "train_rows_per_label": dict(sorted(train_counts.items())),
    }
    predictions: list[Prediction] | None = None
    if spec is None:
        report["hearken"] = None
        report["hearken_reason"] = "this model has no product head"
    else:
        log.info("cfpb product: %d AEGIS narratives through the pipeline", len(gold))
        predictions = [product_of(r) for r in route_texts(pipeline, [aegis.texts[i] for i in scored], 16)]
        report["hearken"] = labelled_metrics(gold, predictions)
        report["hearken_reason"] = None
    for name, cut in (("baseline_tfidf_linearsvc", None), ("baseline_tfidf_linearsvc_first_200_chars", 200)):
        log.info("cfpb product: training %s on %d rows", name, len(train))
        model = tfidf_linearsvc().fit([c.text[:cut] for c in train], [c.product for c in train])
        predicted = [str(x) for x in model.predict([aegis.texts[i][:cut] for i in scored])]
        report[name] = {"accuracy": accuracy(gold, predicted), "macro_f1": macro_f1(gold, predicted)}
    report["baseline_train_rows"] = len(train)
    report["baseline_note"] = (
        "the first-200-characters baseline is trained and tested on the first 200 characters"
    )
    return report, scored, predictions


def cfpb_product_held_out(pipeline: Pipeline, complaints: Sequence[Any], seed: int) -> dict[str, Any]:
    """Measure 2b: product on the CFPB *test split*, the data's own distribution.

    The rows whose text hashes to ``split_of == "test"`` were never trained on, nor used to choose
    a checkpoint or fit the temperature (those use the dev split). This is the calibration the
    model can promise on complaints like its training data; AEGIS (measure 2) is a differently
    drawn, class-balanced set, where the confidences of a head trained on 48% credit reporting are
    expected to run high. Both are reported; neither is tuned on. Baseline: the same TF-IDF +
    LinearSVC as measure 2, trained on the same training split.
    """
    held_out = cfpb_split(complaints, "test", drop_gold_rows=False)
    spec = pipeline.encoder.head_specs.get("product")
    if spec is None:
        return {"rows": len(held_out), "hearken": None, "hearken_reason": "this model has no product head"}
    scored = [c for c in held_out if c.product in set(spec.labels)]
    gold = [c.product for c in scored]
    log.info("cfpb product: %d held-out (test split) narratives through the pipeline", len(scored))
    predictions = [product_of(r) for r in route_texts(pipeline, [c.text for c in scored], 16)]
    train = cfpb_training_split(complaints)
    model = tfidf_linearsvc().fit([c.text for c in train], [c.product for c in train])
    predicted = [str(x) for x in model.predict([c.text for c in scored])]
    return {
        "rows": len(held_out),
        "scored_rows": len(scored),
        "rows_per_label": dict(sorted(Counter(gold).items())),
        "hearken": labelled_metrics(gold, predictions),
        "hearken_reason": None,
        "baseline_tfidf_linearsvc": {
            "accuracy": accuracy(gold, predicted),
            "macro_f1": macro_f1(gold, predicted),
        },
        "baseline_train_rows": len(train),
        "seed": seed,
    }


def background_sentences(pipeline: Pipeline, complaints: Sequence[Any]) -> list[str]:
    """Background for burying: sentences of CFPB *test-split* narratives that ask for nothing.

    Test-split rows were never read by training; sentences that look like requests (or are
    questions) are dropped, as training does, so the buried utterance is the message's only ask.
    """
    from pipeline.trainset import REQUEST_LIKE, split_of

    seen: set[str] = set()
    chosen = []
    for c in complaints:
        if split_of(c.text) != "test":
            continue
        key = text_key(c.text)
        if key not in seen:
            seen.add(key)
            chosen.append(c.text)
    normalised = [pipeline.normaliser.normalise(t) for t in chosen]
    sentence_lists = pipeline.segmenter.segment_many([n.body.text for n in normalised])
    out = []
    for text, norm, sentences in zip(chosen, normalised, sentence_lists, strict=True):
        for s in sentences:
            start, end = norm.body.to_original(s.start, s.end)
            piece = " ".join(text[start:end].split())
            if 4 <= len(piece.split()) <= 80 and not REQUEST_LIKE.search(piece):
                out.append(piece)
    return out


def buried_intent(
    pipeline: Pipeline,
    utterances: Sequence[Any],
    bare: Sequence[Prediction],
    complaints: Sequence[Any],
    sizes: BenchSizes,
    seed: int,
) -> dict[str, Any]:
    """Measure 3: the same utterances bare, buried, and buried then cut to 512 tokens."""
    n = len(utterances) if sizes.buried is None else min(sizes.buried, len(utterances))
    rng = random.Random(seed)
    background = background_sentences(pipeline, complaints)
    cases = [bury_utterance(u.text, background, rng) for u in utterances[:n]]
    gold = [u.label for u in utterances[:n]]
    tokenizer = pipeline.encoder.tokenizer
    encodings = tokenizer.encode_batch([c.text for c in cases], add_special_tokens=False)
    cut = [
        cut_at_token(c.text, [end for _, end in e.offsets], TRUNCATE_CONTENT_TOKENS)
        for c, e in zip(cases, encodings, strict=True)
    ]
    past_cut = sum(len(t) <= c.utterance_start for c, t in zip(cases, cut, strict=True))
    log.info("buried intent: %d messages (%d with the utterance past the 512-token cut)", n, past_cut)
    buried_pred = [intent_of(r).label for r in route_texts(pipeline, [c.text for c in cases], 16)]
    log.info("buried intent: the same messages cut to 512 tokens")
    cut_pred = [intent_of(r).label for r in route_texts(pipeline, cut, 16)]
    bare_acc = accuracy(gold, [p.label for p in bare[:n]])
    buried_acc = accuracy(gold, buried_pred)
    cut_acc = accuracy(gold, cut_pred)
    words = [c.background_words for c in cases]
    return {
        "messages": n,
        "background_sentences": len(background),
        "background_words": {"min": min(words), "mean": float(np.mean(words)), "max": max(words)},
        "with_closing_line": sum(c.closing is not None for c in cases),
        "utterance_past_512_tokens": past_cut,
        "hearken_bare_accuracy": bare_acc,
        "hearken_buried_accuracy": buried_acc,
        "ratio": buried_acc / bare_acc if bare_acc else None,
        "goal_ratio": BURIED_RATIO_GOAL,
        "baseline_first_512_tokens_accuracy": cut_acc,
        "baseline_ratio": cut_acc / bare_acc if bare_acc else None,
        "seed": seed,
    }


def agreement(a: Sequence[str | None], b: Sequence[str | None]) -> float:
    """Share of rows where two runs give the same label (both None counts as agreeing)."""
    return sum(x == y for x, y in zip(a, b, strict=True)) / max(1, len(a))


def precision_agreement(
    pipeline: Pipeline,
    model: Path | None,
    utterances: Sequence[Any],
    intent_auto: Sequence[Prediction],
    aegis: AegisSet,
    scored: Sequence[int],
    product_auto: Sequence[Prediction] | None,
) -> dict[str, Any]:
    """Measure 4: the automatic precision against forced fp32 (or bf16 if auto chose fp32)."""
    from pipeline.triage import Pipeline

    other = "bf16" if pipeline.precision == "fp32" else pipeline.precision
    if pipeline.precision == "fp32":
        with precision_override("bf16"):
            second = Pipeline.from_folder(model)
        note = "auto chose fp32 on this CPU; bf16 was forced for the comparison"
    else:
        with precision_override("fp32"):
            second = Pipeline.from_folder(model)
        note = f"auto chose {pipeline.precision}; fp32 forced with HEARKEN_PRECISION=fp32"
    log.info("precision: %s pipeline over Banking77 test and AEGIS", second.precision)
    intent_second = [intent_of(r) for r in route_texts(second, [u.text for u in utterances])]
    if pipeline.precision == "fp32":
        fp32_intent, other_intent = intent_auto, intent_second
    else:
        fp32_intent, other_intent = intent_second, intent_auto
    gold = [u.label for u in utterances]
    report: dict[str, Any] = {
        "automatic": pipeline.precision,
        "other": other,
        "note": note,
        "banking77": {
            "n": len(gold),
            "intent_agreement": agreement([p.label for p in fp32_intent], [p.label for p in other_intent]),
            "fp32_accuracy": accuracy(gold, [p.label for p in fp32_intent]),
            "other_accuracy": accuracy(gold, [p.label for p in other_intent]),
        },
    }
    if product_auto is None:
        report["cfpb_aegis"] = {"product_agreement": None, "reason": "this model has no product head"}
        return report
    product_second = [product_of(r) for r in route_texts(second, [aegis.texts[i] for i in scored], 16)]
    fp32_p, other_p = (
        (product_auto, product_second) if pipeline.precision == "fp32" else (product_second, product_auto)
    )
    product_gold = [aegis.labels[i] for i in scored]
    report["cfpb_aegis"] = {
        "n": len(product_gold),
        "product_agreement": agreement([p.label for p in fp32_p], [p.label for p in other_p]),
        "fp32_accuracy": accuracy(product_gold, [p.label for p in fp32_p]),
        "other_accuracy": accuracy(product_gold, [p.label for p in other_p]),
    }
    return report


def transformers_classifier(pipeline: Pipeline) -> Any:
    """A stock transformers text-classification pipeline on the model's own encoder weights, fp32.

    The classifier layer (and BERT pooler) are random: this baseline is for speed only. It gets
    its own tokenizer object because transformers switches truncation on in the backend tokenizer
    in place, and Hearken's tokenizer must never truncate.
    """
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
    from transformers import pipeline as hf_pipeline

    from pipeline.artifact import load_model
    from pipeline.encoder import load_tokenizer

    if pipeline.loaded is None:
        raise DataError("The pipeline has no model folder.", fix="build it with Pipeline.from_folder")
    # From the folder, not the pipeline's network: a bf16 pipeline's Linear layers are prepacked
    # for oneDNN and no longer hold plain weights.
    encoder = load_model(pipeline.loaded.folder).net.encoder
    config = BertConfig.from_dict(encoder.settings.to_dict())
    intent = pipeline.encoder.head_specs.get("intent")
    config.num_labels = len(intent.labels) if intent is not None else 2
    model = BertForSequenceClassification(config)
    missing, unexpected = model.bert.load_state_dict(encoder.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pooler.") for key in missing):
        raise DataError(
            f"The encoder weights do not fit BertForSequenceClassification (missing {missing}, "
            f"unexpected {unexpected}).",
            fix="check that the model's encoder weights use transformers' BertModel names",
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=load_tokenizer(pipeline.loaded.tokenizer_path),
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    return hf_pipeline("text-classification", model=model.float().eval(), tokenizer=tokenizer, device="cpu")


def speed(pipeline: Pipeline, complaints: Sequence[Any], sizes: BenchSizes) -> dict[str, Any]:
    """Measure 5: full ``route_batch`` vs a transformers pipeline, same texts, same threads.

    The two take turns, one Hearken batch of texts at a time (the order flipping every batch), so a
    slow spell of this shared machine lands on both sides instead of on whichever ran second.
    """
    import torch

    from pipeline.schema import Message

    torch.set_num_threads(2)
    chosen = list(complaints) if sizes.speed_messages is None else list(complaints)[: sizes.speed_messages]
    messages = [Message(id=c.complaint_id, text=c.text) for c in chosen]
    texts = [m.text for m in messages]
    batch = sizes.speed_batch
    classifier = transformers_classifier(pipeline)
    kwargs = {"batch_size": sizes.transformers_batch, "truncation": True, "max_length": 512}
    pipeline.route_batch(messages[:batch])  # warm-up
    classifier(texts[: sizes.transformers_batch], **kwargs)  # warm-up
    log.info(
        "speed: Hearken route_batch and the transformers pipeline over %d narratives, taking turns",
        len(messages),
    )
    hearken_seconds = transformers_seconds = 0.0
    errors = classified = 0
    for turn, offset in enumerate(range(0, len(messages), batch)):
        for side in ("hearken", "transformers") if turn % 2 == 0 else ("transformers", "hearken"):
            start = time.perf_counter()
            if side == "hearken":
                results = pipeline.route_batch(messages[offset : offset + batch])
                hearken_seconds += time.perf_counter() - start
                errors += sum(isinstance(r, HearkenError) for r in results)
            else:
                classified += len(classifier(texts[offset : offset + batch], **kwargs))
                transformers_seconds += time.perf_counter() - start
    hearken_rate = len(messages) / hearken_seconds
    transformers_rate = classified / transformers_seconds
    return {
        "messages": len(messages),
        "mean_chars": float(np.mean([len(t) for t in texts])),
        "batch_size": batch,
        "threads": torch.get_num_threads(),
        "precision": pipeline.precision,
        "hearken_seconds": hearken_seconds,
        "hearken_messages_per_second": hearken_rate,
        "hearken_errors": errors,
        "transformers_seconds": transformers_seconds,
        "transformers_messages_per_second": transformers_rate,
        "ratio": hearken_rate / transformers_rate,
        "transformers_note": (
            "pipeline('text-classification') over BertForSequenceClassification with the model's own "
            "encoder weights and a random classifier layer (speed only), fp32, truncation=True, "
            f"max_length=512, batch_size={sizes.transformers_batch}; it reads at most 512 tokens, "
            "Hearken reads every message whole and runs every stage (normalise, segment, asks, "
            "signals, routing)"
        ),
        "method": f"the two took turns, {batch} narratives at a time, the order flipping every turn",
    }


def child_env(model: Path | None) -> dict[str, str]:
    """Environment for measuring subprocesses: the same model (``$HEARKEN_MODEL``), 2 threads."""
    env = dict(os.environ)
    if model is not None:
        env["HEARKEN_MODEL"] = str(model.resolve())
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


class ChildError(RuntimeError):
    """A measuring subprocess failed; the message is the tail of its stderr."""


def run_fresh_python(code: str, args: Sequence[str], model: Path | None, timeout: float) -> str:
    """The last line printed by ``python -c code *args`` in a fresh process with ``child_env(model)``.

    Cold start and peak memory mean nothing inside this (warm, already loaded) process, so both are
    measured in a new one, run the same way; a failed run raises ``ChildError`` with its stderr.
    """
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=child_env(model),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise ChildError(done.stderr.strip()[-2000:])
    return done.stdout.strip().splitlines()[-1]


def cold_start(model: Path | None, runs: int) -> dict[str, Any]:
    """Measure 6a: new process to first routed result, the median of ``runs`` fresh processes."""
    seconds: list[float] = []
    for run in range(runs):
        log.info("cold start: run %d of %d", run + 1, runs)
        try:
            last_line = run_fresh_python(COLD_START_CODE, [], model, timeout=300)
        except ChildError as exc:
            return {"runs_seconds": seconds, "median_seconds": None, "error": str(exc)}
        seconds.append(float(last_line))
    return {
        "runs_seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "goal_seconds": COLD_START_GOAL_SECONDS,
        "command": f"python -c {COLD_START_CODE!r}",
    }


def peak_rss(model: Path | None, messages: int, batch: int) -> dict[str, Any]:
    """Measure 6b: peak RSS (``ru_maxrss``) of a fresh process routing ``messages`` narratives."""
    log.info("memory: routing %d narratives in a fresh process", messages)
    try:
        last_line = run_fresh_python(PEAK_RSS_CODE, [str(messages), str(batch)], model, timeout=3600)
    except ChildError as exc:
        return {"messages": messages, "peak_rss_mib": None, "error": str(exc)}
    out = json.loads(last_line)
    return {
        "messages": out["messages"],
        "batch_size": batch,
        "errors": out["errors"],
        "rss_after_load_mib": out["after_load_kib"] / 1024,
        "peak_rss_mib": out["peak_kib"] / 1024,
        "goal_mib": PEAK_RSS_GOAL_MIB,
    }


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (``platform.processor()`` is empty on most Linux builds)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(pipeline: Pipeline) -> dict[str, Any]:
    import torch
    import transformers

    from pipeline.runtime import cpu_has_native_bf16

    return {
        "cpu": cpu_name(),
        "native_bf16": cpu_has_native_bf16(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "precision": pipeline.precision,
        "cpu_count": os.cpu_count(),
    }


def rerun_measures(args: argparse.Namespace, out: Path, sizes: BenchSizes, started: float) -> None:
    """Re-measure speed, cold start, peak memory and/or the held-out CFPB product into an existing report.

    None of them depends on the other measures (speed compares two paths in the same call; the
    others run in fresh processes), so a fix to one need not cost a full 15-minute benchmark.
    The report says which measures were re-run, by which command, when.
    """
    if not out.is_file():
        raise SystemExit(f"{out} does not exist: run the full benchmark first (without --only)")
    report = json.loads(out.read_text())
    if {"speed", "cfpb_held_out"} & set(args.only):
        from pipeline import corpora
        from pipeline.triage import Pipeline

        with precision_override(None):
            pipeline = Pipeline.from_folder(args.model)
        complaints = corpora.read_cfpb()
        if "speed" in args.only:
            report["speed"] = speed(pipeline, complaints, sizes)
        if "cfpb_held_out" in args.only:
            report["cfpb_product_held_out"] = cfpb_product_held_out(pipeline, complaints, args.seed)
    if "cold_start" in args.only:
        report["cold_start"] = cold_start(args.model, sizes.cold_runs)
    if "memory" in args.only:
        report["memory"] = peak_rss(args.model, sizes.rss_messages, sizes.speed_batch)
    report.setdefault("reruns", []).append(
        {
            "measures": list(args.only),
            "command": "python " + " ".join(sys.argv),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1),
        }
    )
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"updated {out}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the committed one)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON report (default {DEFAULT_OUT}; {QUICK_OUT} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="small subsets, to check the script (< 3 min)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["speed", "cold_start", "memory", "cfpb_held_out"],
        default=None,
        help="re-measure only these (self-contained) measures and update them in the existing report",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    sizes = QUICK if args.quick else FULL

    import torch

    from pipeline import corpora
    from pipeline.triage import Pipeline

    torch.set_num_threads(2)
    started = time.time()
    if args.only:
        rerun_measures(args, out, sizes, started)
        return
    with precision_override(None):
        pipeline = Pipeline.from_folder(args.model)
    complaints = corpora.read_cfpb()
    report: dict[str, Any] = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "model_version": pipeline.model_version,
        "heads": sorted(pipeline.head_names),
        "quick": args.quick,
        "sizes": sizes.model_dump(),
        "machine": machine_info(pipeline),
    }
    report["banking77"], utterances, intent_predictions = banking77(pipeline, sizes, args.seed)
    aegis = load_aegis([c.text for c in complaints])
    report["cfpb_product"], scored, product_predictions = cfpb_product(
        pipeline, aegis, complaints, sizes, args.seed
    )
    report["cfpb_product_held_out"] = cfpb_product_held_out(pipeline, complaints, args.seed)
    report["buried_intent"] = buried_intent(
        pipeline, utterances, intent_predictions, complaints, sizes, args.seed
    )
    report["precision_agreement"] = precision_agreement(
        pipeline, args.model, utterances, intent_predictions, aegis, scored, product_predictions
    )
    report["speed"] = speed(pipeline, complaints, sizes)
    report["cold_start"] = cold_start(args.model, sizes.cold_runs)
    report["memory"] = peak_rss(args.model, sizes.rss_messages, sizes.speed_batch)
    report["seconds"] = round(time.time() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
