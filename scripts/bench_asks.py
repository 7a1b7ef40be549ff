"""Benchmark the ask finder (issue 2): accuracy against baselines run in the same process, and speed.

    python scripts/bench_asks.py [--model models/hearken-default] [--out scripts/results/asks.json]

Measures, all through the one ``Pipeline`` object that serving and re-triage use:
1. Parakweet test sentences (read alone, as the data set gives them): F1 of the ask class and
   accuracy, against TF-IDF word+char n-grams + LinearSVC trained on Parakweet train here.
2. The team's hand-labelled test split (``data/asks/test.jsonl``): hit@1 (the best reported ask
   overlaps a gold ask), and for messages with no gold ask, precision/recall of "reports none".
   Baseline: the first sentence with a question mark (else the first sentence).
3. Buried asks: Banking77 *test* utterances placed at the start, middle, end, or past the 512th
   token of real CFPB background taken from the hand-labelled rows (never used in training,
   their gold ask sentences removed). hit@1 per position, the same baseline beside it.
4. Speed on CFPB narratives with 2 threads: sentences scored/s and messages routed/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import corpora  # noqa: E402
from pipeline.goldsets import ask_hit, load_ask_goldset  # noqa: E402
from pipeline.schema import Message  # noqa: E402
from pipeline.triage import Pipeline  # noqa: E402


def f1_accuracy(gold: list[bool], pred: list[bool]) -> dict[str, float]:
    g, p = np.array(gold), np.array(pred)
    tp, fp, fn = (g & p).sum(), (~g & p).sum(), (g & ~p).sum()
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    f1 = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
    return {
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "accuracy": float((g == p).mean()),
    }


def parakweet(pipeline: Pipeline) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.svm import LinearSVC

    train = corpora.read_parakweet(corpora.PARAKWEET_TRAIN)
    test = corpora.read_parakweet(corpora.PARAKWEET_TEST)
    baseline = make_pipeline(
        FeatureUnion(
            [
                ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)),
                ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
            ]
        ),
        LinearSVC(C=1.0),
    )
    baseline.fit([r.text for r in train], [r.is_ask for r in train])
    gold = [r.is_ask for r in test]
    probs = pipeline.score_sentences([r.text for r in test])
    threshold = pipeline.config.asks.threshold
    # The routing threshold is chosen on whole messages; isolated sentences have their own,
    # chosen at training time on sentence-level dev data (Parakweet/buried dev, never test).
    metrics = pipeline.loaded.metrics if pipeline.loaded else {}
    sentence_threshold = metrics.get("calibration", {}).get("ask", {}).get("sentence_dev_f1_threshold", 0.5)
    baseline_predictions = [bool(x) for x in baseline.predict([r.text for r in test])]
    return {
        "n_test": len(test),
        "hearken_at_sentence_dev_threshold": f1_accuracy(gold, [p >= sentence_threshold for p in probs]),
        "hearken_at_routing_threshold": f1_accuracy(gold, [p >= threshold for p in probs]),
        "baseline_tfidf_linearsvc": f1_accuracy(gold, baseline_predictions),
        "sentence_dev_threshold": sentence_threshold,
        "routing_threshold": threshold,
    }


def first_question_span(pipeline: Pipeline, text: str) -> tuple[int, int] | None:
    """Baseline: the first sentence with a '?', else the first sentence (original offsets)."""
    normalised = pipeline.normaliser.normalise(text)
    sentences = pipeline.segmenter.segment(normalised.body.text)
    if not sentences:
        return None
    chosen = next((s for s in sentences if "?" in s.text), sentences[0])
    return normalised.body.to_original(chosen.start, chosen.end)


def goldset(pipeline: Pipeline, split: str) -> dict:
    """hit@1 two ways (the best sentence, and the first *reported* ask), and no-ask detection."""
    messages = load_ask_goldset(split)
    probe = pipeline.with_asks(threshold=0.0, max_asks=1)  # every message's best sentence
    results = probe.route_batch([Message(id=f"{m.dataset}:{m.row_id}", text=m.text) for m in messages])
    threshold = pipeline.config.asks.threshold
    ranking = reported = base_hits = with_ask = 0
    none_tp = none_fp = none_fn = 0
    per_dataset: dict[str, list[int]] = {}
    for message, result in zip(messages, results, strict=True):
        top = result.asks[0] if not isinstance(result, Exception) and result.asks else None
        is_reported = top is not None and top.score >= threshold
        top_is_gold = top is not None and bool(message.asks) and ask_hit((top.start, top.end), message.asks)
        if message.asks:
            with_ask += 1
            ranking += top_is_gold
            reported += top_is_gold and is_reported
            per_dataset.setdefault(message.dataset, []).append(int(top_is_gold))
            base = first_question_span(pipeline, message.text)
            base_hits += bool(base) and ask_hit(base, message.asks)
            none_fp += not is_reported
        else:
            none_tp += not is_reported
            none_fn += is_reported
    return {
        "split": split,
        "messages": len(messages),
        "with_ask": with_ask,
        "hearken_hit@1_best_sentence": ranking / max(1, with_ask),
        "hearken_hit@1_reported": reported / max(1, with_ask),
        "baseline_first_question_hit@1": base_hits / max(1, with_ask),
        "hit@1_best_sentence_by_dataset": {k: float(np.mean(v)) for k, v in sorted(per_dataset.items())},
        "no_ask_messages": none_tp + none_fn,
        "no_ask_precision": none_tp / max(1, none_tp + none_fp),
        "no_ask_recall": none_tp / max(1, none_tp + none_fn),
        "threshold": threshold,
    }


def buried(pipeline: Pipeline, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    utterances = [e.text for e in corpora.read_banking77(corpora.BANKING77_TEST)]
    rng.shuffle(utterances)
    background: list[str] = []
    for message in load_ask_goldset("dev") + load_ask_goldset("test"):
        if message.dataset != "cfpb_complaints":
            continue
        normalised = pipeline.normaliser.normalise(message.text)
        for s in pipeline.segmenter.segment(normalised.body.text):
            start, end = normalised.body.to_original(s.start, s.end)
            if not any(start < ge and gs < end for gs, ge in message.asks) and "?" not in s.text:
                background.append(message.text[start:end])
    positions = ["start", "middle", "end", "past_512_tokens"]
    tokenizer = pipeline.encoder.tokenizer
    scores: dict[str, dict[str, list[int]]] = {p: {"hearken": [], "baseline": []} for p in positions}
    cases = []
    for i in range(n):
        position = positions[i % len(positions)]
        ask = utterances[i % len(utterances)].strip()
        start = rng.randrange(len(background))
        target_tokens = 700 if position == "past_512_tokens" else rng.randint(150, 400)
        sentences, tokens = [], 0
        while tokens < target_tokens:
            sentence = background[(start + len(sentences)) % len(background)]
            sentences.append(sentence)
            tokens += len(tokenizer.encode(sentence, add_special_tokens=False).ids)
        if position == "start":
            index = 0
        elif position == "middle":
            index = len(sentences) // 2
        elif position == "end":
            index = len(sentences)
        else:  # after the 512th token
            running, index = 0, len(sentences)
            for j, sentence in enumerate(sentences):
                running += len(tokenizer.encode(sentence, add_special_tokens=False).ids)
                if running > 520:
                    index = j + 1
                    break
        sentences.insert(index, ask)
        text = " ".join(sentences)
        ask_start = text.index(ask, sum(len(s) + 1 for s in sentences[:index]) - (1 if index else 0))
        cases.append((position, text, (ask_start, ask_start + len(ask))))
    results = pipeline.route_batch([Message(id=str(i), text=t) for i, (_, t, _) in enumerate(cases)])
    for (position, text, gold), result in zip(cases, results, strict=True):
        top = result.asks[0] if not isinstance(result, Exception) and result.asks else None
        scores[position]["hearken"].append(int(top is not None and ask_hit((top.start, top.end), [gold])))
        base = first_question_span(pipeline, text)
        scores[position]["baseline"].append(int(base is not None and ask_hit(base, [gold])))
    return {
        "messages": n,
        "hearken_hit@1": {p: float(np.mean(v["hearken"])) for p, v in scores.items()},
        "baseline_first_question_hit@1": {p: float(np.mean(v["baseline"])) for p, v in scores.items()},
        "hearken_hit@1_all": float(np.mean([x for v in scores.values() for x in v["hearken"]])),
    }


def speed(pipeline: Pipeline, n: int) -> dict:
    complaints = corpora.read_cfpb()[:n]
    messages = [Message(id=c.complaint_id, text=c.text) for c in complaints]
    pipeline.route_batch(messages[:8])  # warm-up
    start = time.perf_counter()
    results = pipeline.route_batch(messages)
    seconds = time.perf_counter() - start
    n_sentences = sum(
        len(pipeline.segmenter.segment(pipeline.normaliser.normalise(m.text).body.text)) for m in messages
    )
    return {
        "messages": len(messages),
        "mean_chars": float(np.mean([len(m.text) for m in messages])),
        "seconds": seconds,
        "messages_per_second": len(messages) / seconds,
        "sentences_per_second": n_sentences / seconds,
        "errors": sum(isinstance(r, Exception) for r in results),
        "threads": torch.get_num_threads(),
        "precision": pipeline.precision,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results" / "asks.json")
    parser.add_argument(
        "--buried", type=int, default=400, help="buried-ask messages (split over 4 positions)"
    )
    parser.add_argument("--speed-messages", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipeline = Pipeline.from_folder(args.model)
    started = time.time()
    report = {
        "command": "python " + " ".join(sys.argv),
        "model_version": pipeline.model_version,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": 2,
            "precision": pipeline.precision,
        },
        "parakweet_test": parakweet(pipeline),
        "goldset_test": goldset(pipeline, "test"),
        "buried": buried(pipeline, args.buried, args.seed),
        "speed": speed(pipeline, args.speed_messages),
    }
    report["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
