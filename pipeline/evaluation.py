"""Evaluate a model folder on a labelled data set, through the pipeline that serves it.

A number is only worth reporting if it measures what customers get. So evaluation calls
``Pipeline.route_batch`` on ``Message`` objects exactly as the HTTP service and re-triage do,
and scores the fields of the v1 result (``intent.label`` or ``product.label`` with their
confidences): normalising, segmenting, windowing, finding asks and calibration are all inside
the measurement. There is no second inference path to drift from the served one.

What is reported, and why:

* accuracy and macro-F1, plus precision/recall/F1/support per class: macro-F1 weighs rare
  classes like common ones, which is what a helpdesk with small specialist queues cares about.
  It averages over the classes present in the gold labels (a label the model predicts but the
  set never contains still shows in the table, with support 0, and lowers nobody's average).
* a null label (no ask found, unreadable message) counts as wrong, and is reported with the
  reasons the pipeline gave, because a message routed to nobody is a miss for the customer.
* expected calibration error (15 equal-width bins, the usual choice since Guo et al. 2017) over
  the predictions that carry a confidence: routing thresholds are set on these confidences,
  so they must mean what they say. ``reliability.png`` shows where they do not.
* the data set's name and sha256 and the model version, so every number can be traced.

The data sets are read in place through :mod:`pipeline.corpora` and never copied; the
reports name rows by id, never by text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.artifact import sha256_file
from pipeline.corpora import (
    BANKING77_TEST,
    CFPB_EVAL,
    CLINC150,
    map_cfpb_product,
    read_banking77,
    read_clinc150,
)
from pipeline.datadir import dataset_file
from pipeline.errors import DataError, HearkenError
from pipeline.schema import Message, TriageResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EvaluatedField = Literal["intent", "product"]
ECE_BINS = 15
NO_LABEL = "(no label)"
NAMED_SETS: dict[str, EvaluatedField] = {
    "banking77-test": "intent",
    "cfpb-aegis": "product",
    "clinc150-test": "intent",
}


class BatchRouter(Protocol):
    """What evaluation needs from a pipeline (``pipeline.triage.Pipeline`` in practice)."""

    model_version: str

    def route_batch(self, messages: Sequence[Message]) -> list[TriageResult | HearkenError]: ...


def route_in_batches(
    pipeline: BatchRouter,
    messages: Sequence[Message],
    batch_size: int,
    *,
    on_batch: Callable[[int], object] | None = None,
) -> Iterator[TriageResult | HearkenError]:
    """Each message's outcome, in order, routed ``batch_size`` messages at a time.

    The one batching loop of every evaluation (intent and product scores, the routing set), so all
    of them measure ``Pipeline.route_batch``, the path that serves users, in the same way. Lazy, so
    a caller that stops at the first refused message stops routing there too; ``on_batch`` is told
    each batch's size once it is routed (for progress bars).
    """
    for offset in range(0, len(messages), batch_size):
        batch = messages[offset : offset + batch_size]
        outcomes = pipeline.route_batch(batch)
        if on_batch is not None:
            on_batch(len(batch))
        yield from outcomes


# =============================================================================== data


@dataclass(frozen=True)
class LabelledExample:
    """One message and its gold label; ``id`` names the row in reports instead of its text."""

    id: str
    text: str
    label: str


@dataclass(frozen=True)
class UnmappableRow:
    """A row whose gold label has no counterpart in the label set (reported, not scored)."""

    id: str
    raw_label: str


@dataclass
class EvaluationSet:
    """Examples plus what identifies them: a name, a sha256 of the source, and what was left out."""

    name: str
    sha256: str
    examples: list[LabelledExample]
    field: EvaluatedField | None = None
    unmappable: list[UnmappableRow] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    require_all_labels: bool = False  # the model's head must know every gold label (CLINC150)

    @classmethod
    def from_examples(cls, examples: Sequence[LabelledExample], name: str = "examples") -> EvaluationSet:
        """Wrap plain examples; the sha256 is over their ids, labels and texts."""
        digest = hashlib.sha256()
        for example in examples:
            digest.update(json.dumps([example.id, example.label, example.text]).encode("utf-8"))
        return cls(name=name, sha256=digest.hexdigest(), examples=list(examples))


def _read_cfpb_aegis(data_dir: Path | str | None) -> EvaluationSet:
    """The 220 stratified CFPB narratives, products mapped onto the policy labels."""
    path = dataset_file(CFPB_EVAL, data_dir)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError("not a JSON list")
        pairs = [(str(row["text"]), str(row["expected_category"])) for row in rows]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path} is not the expected list of {{text, expected_category}} objects ({exc}).",
            fix="restore cfpb_complaints/cfpb_aegis_eval_220.json in the data directory",
        ) from exc
    examples, unmappable = [], []
    for index, (text, category) in enumerate(pairs):
        row_id = f"cfpb-aegis:{index}"
        label = map_cfpb_product(category)
        if label is None:
            unmappable.append(UnmappableRow(row_id, category))
        else:
            examples.append(LabelledExample(row_id, text, label))
    return EvaluationSet(
        name="cfpb-aegis",
        sha256=sha256_file(path),
        examples=examples,
        field="product",
        unmappable=unmappable,
        notes=["expected_category mapped onto the policy's product labels with map_cfpb_product"],
    )


def load_named_set(name: str, data_dir: Path | str | None = None) -> EvaluationSet:
    """One of the public sets in :data:`NAMED_SETS`, read in place from the data directory."""
    if name == "banking77-test":
        examples = read_banking77(BANKING77_TEST, data_dir)
        return EvaluationSet(
            name=name,
            sha256=sha256_file(dataset_file(BANKING77_TEST, data_dir)),
            examples=[LabelledExample(f"{name}:{i}", e.text, e.label) for i, e in enumerate(examples)],
            field="intent",
        )
    if name == "cfpb-aegis":
        return _read_cfpb_aegis(data_dir)
    if name == "clinc150-test":
        examples = read_clinc150("test", data_dir)
        return EvaluationSet(
            name=name,
            sha256=sha256_file(dataset_file(CLINC150, data_dir)),
            examples=[LabelledExample(f"{name}:{i}", e.text, e.label) for i, e in enumerate(examples)],
            field="intent",
            notes=["in-scope test split only: out-of-scope queries are not evaluated"],
            require_all_labels=True,
        )
    raise DataError(f"There is no named data set {name!r}.", fix=f"use one of {sorted(NAMED_SETS)}")


def read_jsonl_set(path: Path | str, field: EvaluatedField) -> EvaluationSet:
    """A team's own labelled JSONL: one object per line with ``text`` and ``label`` (optional ``id``).

    Any bad line stops the run with its line number: silently dropping rows would change the
    numbers without anyone knowing.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(
            f"Data file {path} not found.",
            fix=f"pass an existing JSONL file or one of the named sets {sorted(NAMED_SETS)}",
        ) from exc
    except OSError as exc:
        raise DataError(f"Data file {path} cannot be read: {exc.strerror}.", fix="check the path") from exc
    try:
        lines = data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"Data file {path} is not UTF-8 ({exc}).", fix="save it as UTF-8 JSONL") from exc
    examples: list[LabelledExample] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {number} is not JSON ({exc.msg}).",
                fix="write one JSON object per line with 'text' and 'label'",
            ) from exc
        if not isinstance(row, dict):
            raise DataError(
                f"{path} line {number} is a JSON {type(row).__name__}, not an object.",
                fix="write one JSON object per line with 'text' and 'label'",
            )
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not isinstance(label, str) or not label.strip():
            raise DataError(
                f"{path} line {number} needs a string 'text' and a non-empty string 'label'.",
                fix="add the missing field (labels are the model's head labels, e.g. card_arrival)",
            )
        row_id = str(row["id"]) if row.get("id") is not None else f"line-{number}"
        examples.append(LabelledExample(row_id, text, label.strip()))
    if not examples:
        raise DataError(f"Data file {path} has no labelled rows.", fix="add rows with 'text' and 'label'")
    return EvaluationSet(name=path.stem, sha256=sha256_file(path), examples=examples, field=field)


def load_evaluation_set(
    data: str, field: EvaluatedField | None = None, data_dir: Path | str | None = None
) -> EvaluationSet:
    """A named public set, or a JSONL file (which needs ``field``)."""
    if data in NAMED_SETS:
        expected = NAMED_SETS[data]
        if field is not None and field != expected:
            raise DataError(
                f"{data} is labelled with {expected}s, not {field}s.",
                fix=f"drop --field or pass --field {expected}",
            )
        return load_named_set(data, data_dir)
    if field is None:
        raise DataError(
            f"{data!r} is not a named data set, so it is read as a JSONL file, which needs --field.",
            fix=f"pass --field intent or --field product, or use one of {sorted(NAMED_SETS)}",
        )
    return read_jsonl_set(data, field)


# =============================================================================== metrics


class ClassMetrics(BaseModel):
    """Precision, recall and F1 of one label; ``support`` gold rows, ``predicted`` rows given it."""

    model_config = ConfigDict(extra="forbid")

    precision: float = Field(description="Of the rows predicted as this label, the share that are.")
    recall: float = Field(description="Of the rows that are this label, the share predicted as it.")
    f1: float = Field(description="Harmonic mean of precision and recall (0 when both are 0).")
    support: int = Field(description="Gold rows with this label.")
    predicted: int = Field(description="Rows predicted as this label.")


class ReliabilityBin(BaseModel):
    """One confidence bin of the reliability diagram (``lower`` exclusive, ``upper`` inclusive)."""

    model_config = ConfigDict(extra="forbid")

    lower: float
    upper: float
    count: int
    mean_confidence: float | None = Field(description="Mean confidence in the bin; null when empty.")
    accuracy: float | None = Field(description="Share correct in the bin; null when empty.")


def _safe_div(a: float, b: float) -> float:
    return a / b if b else 0.0


def per_class_metrics(gold: Sequence[str], predicted: Sequence[str | None]) -> dict[str, ClassMetrics]:
    """Metrics for every label in the gold or predicted labels (a null prediction is no label)."""
    labels = sorted(set(gold) | {p for p in predicted if p is not None})
    support = Counter(gold)
    given = Counter(p for p in predicted if p is not None)
    hits = Counter(g for g, p in zip(gold, predicted, strict=True) if g == p)
    out = {}
    for label in labels:
        precision = _safe_div(hits[label], given[label])
        recall = _safe_div(hits[label], support[label])
        f1 = _safe_div(2 * precision * recall, precision + recall)
        out[label] = ClassMetrics(
            precision=precision, recall=recall, f1=f1, support=support[label], predicted=given[label]
        )
    return out


def macro_f1(per_class: dict[str, ClassMetrics]) -> float:
    """Mean F1 over the classes that occur in the gold labels."""
    scores = [m.f1 for m in per_class.values() if m.support > 0]
    return float(np.mean(scores)) if scores else 0.0


def accuracy(gold: Sequence[str], predicted: Sequence[str | None]) -> float:
    """Share of rows whose prediction equals the gold label (a null prediction is wrong)."""
    return _safe_div(sum(g == p for g, p in zip(gold, predicted, strict=True)), len(gold))


def reliability_bins(
    confidences: Sequence[float], correct: Sequence[bool], n_bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-width bins over [0, 1]: bin i holds confidences in (i/n, (i+1)/n], bin 0 also holds 0."""
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    index = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    bins = []
    for i in range(n_bins):
        mask = index == i
        count = int(mask.sum())
        bins.append(
            ReliabilityBin(
                lower=i / n_bins,
                upper=(i + 1) / n_bins,
                count=count,
                mean_confidence=float(conf[mask].mean()) if count else None,
                accuracy=float(hit[mask].mean()) if count else None,
            )
        )
    return bins


def expected_calibration_error(bins: Sequence[ReliabilityBin]) -> float:
    """Sum over bins of (share of rows in the bin) x |accuracy - mean confidence|."""
    total = sum(b.count for b in bins)
    if not total:
        return 0.0
    return float(
        sum(
            b.count / total * abs(b.accuracy - b.mean_confidence)
            for b in bins
            if b.count and b.accuracy is not None and b.mean_confidence is not None
        )
    )


def confusion_matrix(
    gold: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """Counts, rows = gold ``labels``, columns = ``labels`` plus NO_LABEL when any prediction is null.

    Predicted labels outside ``labels`` are counted in the NO_LABEL column too (they name
    nothing the rows know).
    """
    row_of = {label: i for i, label in enumerate(labels)}
    columns = list(labels)
    if any(p not in row_of for p in predicted):
        columns.append(NO_LABEL)
    matrix = np.zeros((len(labels), len(columns)), dtype=np.int64)
    for g, p in zip(gold, predicted, strict=True):
        if g in row_of:
            matrix[row_of[g], row_of.get(p, len(labels)) if p is not None else len(labels)] += 1
    return matrix, columns


# =============================================================================== report


class DataInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Named set (banking77-test, cfpb-aegis, clinc150-test) or JSONL stem.")
    sha256: str = Field(description="sha256 of the data file (for plain examples: of their content).")


class UnmappableReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(description="Rows left out because their gold label has no policy label.")
    by_raw_label: dict[str, int] = Field(description="How many rows per unmappable raw label.")
    ids: list[str] = Field(description="Ids of the rows left out.")


class EvaluationReport(BaseModel):
    """Everything measured in one run. ``metrics.json`` is this, minus the per-row lists."""

    model_config = ConfigDict(extra="forbid")

    model_version: str
    data: DataInfo
    field: EvaluatedField
    n: int = Field(description="Rows scored (unmappable rows are not among them).")
    accuracy: float
    macro_f1: float = Field(description="Mean F1 over the classes present in the gold labels.")
    ece: float = Field(description="Expected calibration error over rows that carry a confidence.")
    ece_bins: int = ECE_BINS
    ece_n: int = Field(description="Rows the ECE was computed on (rows with a confidence).")
    reliability: list[ReliabilityBin]
    per_class: dict[str, ClassMetrics]
    null_predictions: int = Field(description="Rows with no predicted label (counted as wrong).")
    null_reasons: dict[str, int] = Field(description="Why the label was null, with counts.")
    unreadable: int = Field(description="Rows the pipeline refused as unreadable (also null, wrong).")
    unmappable: UnmappableReport
    labels_unknown_to_model: list[str] = Field(description="Gold labels the model's head cannot predict.")
    notes: list[str] = Field(default_factory=list)
    seconds: float = Field(description="Wall time of routing and scoring.")
    evaluated_at: str = Field(description="UTC time of the run, ISO 8601.")
    ids: list[str] = Field(default_factory=list, exclude=True)
    gold: list[str] = Field(default_factory=list, exclude=True)
    predicted: list[str | None] = Field(default_factory=list, exclude=True)
    confidences: list[float | None] = Field(default_factory=list, exclude=True)

    def summary(self) -> dict[str, object]:
        """The headline numbers, for stdout."""
        return {
            "model_version": self.model_version,
            "data": self.data.name,
            "data_sha256": self.data.sha256,
            "field": self.field,
            "n": self.n,
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "ece": round(self.ece, 4),
            "null_predictions": self.null_predictions,
            "unreadable": self.unreadable,
            "unmappable": self.unmappable.count,
        }


def score(
    *,
    model_version: str,
    data: EvaluationSet,
    field: EvaluatedField,
    ids: Sequence[str],
    gold: Sequence[str],
    predicted: Sequence[str | None],
    confidences: Sequence[float | None],
    null_reasons: dict[str, int] | None = None,
    unreadable: int = 0,
    model_labels: Sequence[str] | None = None,
    notes: Sequence[str] = (),
    seconds: float = 0.0,
) -> EvaluationReport:
    """Build the report from fixed predictions (what ``evaluate`` does after routing)."""
    per_class = per_class_metrics(gold, predicted)
    pairs = [(c, g == p) for g, p, c in zip(gold, predicted, confidences, strict=True) if c is not None]
    bins = reliability_bins([c for c, _ in pairs], [ok for _, ok in pairs])
    unknown = sorted(set(gold) - set(model_labels)) if model_labels is not None else []
    return EvaluationReport(
        model_version=model_version,
        data=DataInfo(name=data.name, sha256=data.sha256),
        field=field,
        n=len(gold),
        accuracy=accuracy(gold, predicted),
        macro_f1=macro_f1(per_class),
        ece=expected_calibration_error(bins),
        ece_n=len(pairs),
        reliability=bins,
        per_class=per_class,
        null_predictions=sum(p is None for p in predicted),
        null_reasons=dict(null_reasons or {}),
        unreadable=unreadable,
        unmappable=UnmappableReport(
            count=len(data.unmappable),
            by_raw_label=dict(Counter(r.raw_label for r in data.unmappable)),
            ids=[r.id for r in data.unmappable],
        ),
        labels_unknown_to_model=unknown,
        notes=[*data.notes, *notes],
        seconds=round(seconds, 2),
        evaluated_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ids=list(ids),
        gold=list(gold),
        predicted=list(predicted),
        confidences=list(confidences),
    )


def check_model_fits(
    pipeline: BatchRouter, field: EvaluatedField, data: EvaluationSet
) -> tuple[list[str] | None, list[str]]:
    """The labels the pipeline can give ``field``, and notes on where they come from.

    Refuses (``DataError``) a model that cannot be scored on ``data``: no way to produce the
    field at all, or a label set that shares nothing with the data's (or, for CLINC150, does not
    cover it), because such numbers would mean nothing. Product labels come from the product head
    and, when the policy has one, the catalogue (``settle_product``), so a catalogue alone is
    enough to evaluate products. A router that does not expose its heads (a test double) is not
    checked: ``(None, [])``.
    """
    specs = getattr(getattr(pipeline, "encoder", None), "head_specs", None)
    if specs is None:
        return None, []
    labels: list[str] = list(specs[field].labels) if field in specs else []
    notes: list[str] = []
    catalogue = getattr(pipeline, "catalogue", None) if field == "product" else None
    if catalogue is not None:
        labels = sorted(set(labels) | set(catalogue.labels))
        notes.append(
            "product labels are the pipeline's: the product head, settled with catalogue mentions when it "
            "is unsure"
            if field in specs
            else "this model has no product head: product labels come from catalogue mentions alone"
        )
    if not labels:
        raise DataError(
            f"Model {pipeline.model_version} has no {field} head"
            + (" and its policy no product catalogue" if field == "product" else "")
            + f", so it cannot be evaluated on {data.name} (its heads: {', '.join(sorted(specs))}).",
            fix=f"evaluate a model trained with a {field} head, or a data set for a head it has",
        )
    gold = {e.label for e in data.examples}
    known = gold & set(labels)
    if (data.require_all_labels and known != gold) or not known:
        raise DataError(
            f"Model {pipeline.model_version}'s {field} labels include {len(known)} of the {len(gold)} "
            f"labels of {data.name} (e.g. not {sorted(gold - known)[0]!r}): it was not trained on "
            "this label set, so the numbers would mean nothing.",
            fix=f"evaluate {data.name} with a model whose {field} head was trained on its labels "
            "(for a Banking77 intent head use banking77-test)",
        )
    return labels, notes


def evaluate(
    pipeline: BatchRouter,
    examples: EvaluationSet | Sequence[LabelledExample],
    field: EvaluatedField,
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> EvaluationReport:
    """Route every example through ``pipeline.route_batch`` and score ``result.<field>.label``."""
    from tqdm import tqdm

    data = examples if isinstance(examples, EvaluationSet) else EvaluationSet.from_examples(examples)
    if not data.examples:
        raise DataError(f"{data.name} has no examples to evaluate.", fix="check the data set")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    model_labels, notes = check_model_fits(pipeline, field, data)
    predicted: list[str | None] = []
    confidences: list[float | None] = []
    null_reasons: Counter[str] = Counter()
    unreadable = 0
    started = time.perf_counter()
    with tqdm(
        total=len(data.examples),
        unit="msg",
        desc=f"evaluate {data.name}",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        messages = [Message(id=e.id, text=e.text) for e in data.examples]
        for outcome in route_in_batches(pipeline, messages, batch_size, on_batch=bar.update):
            if isinstance(outcome, HearkenError):
                unreadable += 1
                null_reasons[f"unreadable: {outcome.message}"] += 1
                predicted.append(None)
                confidences.append(None)
                continue
            part = outcome.intent if field == "intent" else outcome.product
            predicted.append(part.label)
            confidences.append(part.confidence if part.label is not None else None)
            if part.label is None:
                null_reasons[part.reason or "no reason given"] += 1
    return score(
        model_version=pipeline.model_version,
        data=data,
        field=field,
        ids=[e.id for e in data.examples],
        gold=[e.label for e in data.examples],
        predicted=predicted,
        confidences=confidences,
        null_reasons=dict(null_reasons),
        unreadable=unreadable,
        model_labels=model_labels,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


# =============================================================================== writing


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_per_class(report: EvaluationReport) -> str:
    """The Markdown table of per-class metrics, headed by the run's identity and headline numbers."""
    lines = [
        f"# Evaluation of {_md(report.model_version)} on {_md(report.data.name)}",
        "",
        f"- field: `{report.field}`; data sha256 `{report.data.sha256}`",
        f"- n = {report.n}; accuracy **{report.accuracy:.4f}**; macro-F1 **{report.macro_f1:.4f}**; "
        f"ECE ({report.ece_bins} bins, n = {report.ece_n}) **{report.ece:.4f}**",
        f"- null predictions (counted wrong): {report.null_predictions}, of which unreadable: "
        f"{report.unreadable}; rows left out as unmappable: {report.unmappable.count}",
    ]
    for reason, count in sorted(report.null_reasons.items(), key=lambda kv: -kv[1]):
        lines.append(f"  - {count} × {_md(reason)}")
    if report.labels_unknown_to_model:
        lines.append(
            f"- gold labels the model cannot predict: {', '.join(map(_md, report.labels_unknown_to_model))}"
        )
    lines.extend(f"- note: {_md(note)}" for note in report.notes)
    worst = sorted((m.f1, label) for label, m in report.per_class.items() if m.support)[:5]
    if worst:
        lines.append("- lowest F1: " + ", ".join(f"{_md(label)} {f1:.3f}" for f1, label in worst))
    lines += [
        "",
        "| label | precision | recall | F1 | support | predicted |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, m in sorted(report.per_class.items()):
        cells = [_md(label), f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", m.support, m.predicted]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas, without pyplot (no global state, safe off the main thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def render_confusion(report: EvaluationReport) -> bytes:
    """Row-normalised confusion matrix (rows: gold), sized and lettered so 77 classes stay readable."""
    labels = sorted({g for g in report.gold})
    matrix, columns = confusion_matrix(report.gold, report.predicted, labels)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=np.float64), where=rows > 0)
    n = len(labels)
    side = min(max(6.0, 0.17 * n + 3.0), 24.0)
    font = 5 if n > 40 else 7 if n > 15 else 9
    figure = _figure(side + 1.0, side)
    axis = figure.add_subplot()
    from matplotlib.colors import PowerNorm

    # A square-root colour scale: a 5% confusion is visible next to a 90% diagonal.
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    image = axis.imshow(share, cmap="Blues", norm=norm, aspect="auto", interpolation="nearest")
    axis.set_xticks(range(len(columns)), labels=columns, rotation=90, fontsize=font)
    axis.set_yticks(range(n), labels=labels, fontsize=font)
    axis.set_xlabel("predicted", fontsize=font + 3)
    axis.set_ylabel("gold", fontsize=font + 3)
    if n <= 20:
        for (i, j), value in np.ndenumerate(share):
            if matrix[i, j]:
                colour = "white" if value > 0.5 else "black"
                axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=font, color=colour)
    axis.set_title(
        f"{report.model_version} on {report.data.name} ({report.field})\naccuracy {report.accuracy:.3f}, "
        f"macro-F1 {report.macro_f1:.3f}; rows normalised, square-root colour scale",
        fontsize=font + 4,
    )
    figure.colorbar(image, ax=axis, shrink=0.6, label="share of the gold row")
    return _png(figure)


def render_reliability(report: EvaluationReport) -> bytes:
    """Reliability diagram (accuracy per confidence bin against the diagonal) over a histogram."""
    figure = _figure(6.5, 7.5)
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    width = 1.0 / report.ece_bins
    filled = [b for b in report.reliability if b.count]
    centres = [(b.lower + b.upper) / 2 for b in filled]
    accuracies = [b.accuracy or 0.0 for b in filled]
    confidences = [b.mean_confidence or 0.0 for b in filled]
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.bar(centres, accuracies, width=width, color="#4C72B0", edgecolor="black", label="accuracy in bin")
    # The gap as a red line from the bar's top to the bin's mean confidence: above the bar is
    # over-confident, inside it under-confident.
    top.vlines(centres, accuracies, confidences, color="#C44E52", linewidth=2.5, label="gap (ECE terms)")
    top.plot(centres, confidences, "D", color="black", markersize=4, label="mean confidence in bin")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(
        f"{report.model_version} on {report.data.name} ({report.field})\n"
        f"ECE {report.ece:.3f} over {report.ece_n} rows, {report.ece_bins} bins",
        fontsize=9,
    )
    counts = [b.count for b in report.reliability]
    bottom.bar(
        [(b.lower + b.upper) / 2 for b in report.reliability],
        counts,
        width=width,
        color="#55A868",
        edgecolor="black",
    )
    known = [c for c in report.confidences if c is not None]
    if known:
        bottom.axvline(float(np.mean(known)), color="black", linestyle="--", label="mean confidence")
        bottom.axvline(report.accuracy, color="#C44E52", linestyle=":", label="accuracy (all rows)")
        bottom.legend(loc="upper left", fontsize=7)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("rows")
    return _png(figure)


def write_report(report: EvaluationReport, out_dir: Path | str) -> dict[str, Path]:
    """Write metrics.json, per_class.md, confusion.png, reliability.png and predictions.jsonl.

    ``predictions.jsonl`` holds, per row, its id, gold label, prediction and confidence (never
    its text), for error analysis without copying the data set.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"Cannot create the output folder {out}: {exc.strerror}.", fix="pass --output"
        ) from exc
    paths = {
        "metrics": out / "metrics.json",
        "per_class": out / "per_class.md",
        "confusion": out / "confusion.png",
        "reliability": out / "reliability.png",
        "predictions": out / "predictions.jsonl",
    }
    paths["metrics"].write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    paths["per_class"].write_text(render_per_class(report), encoding="utf-8")
    paths["confusion"].write_bytes(render_confusion(report))
    paths["reliability"].write_bytes(render_reliability(report))
    with paths["predictions"].open("w", encoding="utf-8") as handle:
        for row in zip(report.ids, report.gold, report.predicted, report.confidences, strict=True):
            handle.write(json.dumps(dict(zip(("id", "label", "predicted", "confidence"), row, strict=True))))
            handle.write("\n")
    return paths


def default_output_dir(report: EvaluationReport) -> Path:
    """``./evaluation/<model_version>-<data name>``."""
    return Path("evaluation") / f"{report.model_version}-{report.data.name}"
