"""``hearken evaluate``: metrics checked by hand, the accounting of misses, data readers, files, CLI codes."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import AskConfig, PipelineConfig
from pipeline.corpora import PRODUCT_LABELS
from pipeline.encoder import HeadSpec
from pipeline.errors import DataError, HearkenError, InputError
from pipeline.evaluation import (
    NO_LABEL,
    EvaluationSet,
    LabelledExample,
    accuracy,
    check_model_fits,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    load_evaluation_set,
    macro_f1,
    per_class_metrics,
    read_jsonl_set,
    reliability_bins,
    score,
    write_report,
)
from pipeline.schema import IntentResult, Message, ProductResult, RouteResult, TriageResult
from tests.conftest import build_tiny_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INTENTS = ["card_arrival", "lost_or_stolen_card", "refund_not_showing_up"]

# Five rows worked by hand: gold, prediction, confidence (None: no label).
GOLD = ["a", "a", "b", "b", "c"]
PRED: list[str | None] = ["a", "b", "b", None, "c"]
CONF: list[float | None] = [0.95, 0.62, 0.64, None, 0.30]


# ---------------------------------------------------------------------------- metric functions


def test_metrics_match_a_case_worked_by_hand() -> None:
    assert accuracy(GOLD, PRED) == pytest.approx(3 / 5)
    per_class = per_class_metrics(GOLD, PRED)
    a, b, c = per_class["a"], per_class["b"], per_class["c"]
    assert (a.precision, a.recall, a.f1, a.support, a.predicted) == pytest.approx((1.0, 0.5, 2 / 3, 2, 1))
    assert (b.precision, b.recall, b.f1, b.support, b.predicted) == pytest.approx((0.5, 0.5, 0.5, 2, 2))
    assert (c.precision, c.recall, c.f1, c.support) == pytest.approx((1.0, 1.0, 1.0, 1))
    assert macro_f1(per_class) == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)


def test_ece_matches_a_case_worked_by_hand() -> None:
    pairs = [(c, g == p) for g, p, c in zip(GOLD, PRED, CONF, strict=True) if c is not None]
    bins = reliability_bins([c for c, _ in pairs], [ok for _, ok in pairs])
    assert len(bins) == 15 and sum(b.count for b in bins) == 4
    # 0.62 and 0.64 share the bin (0.6, 0.667]: accuracy 0.5 against mean confidence 0.63.
    shared = bins[9]
    assert (shared.count, shared.accuracy) == (2, 0.5)
    assert shared.mean_confidence == pytest.approx(0.63)
    # (|1 - 0.95| + 2 * |0.5 - 0.63| + |1 - 0.30|) / 4
    assert expected_calibration_error(bins) == pytest.approx((0.05 + 0.26 + 0.70) / 4)


def test_ece_is_zero_when_confidence_equals_accuracy() -> None:
    bins = reliability_bins([0.75] * 4, [True, True, True, False])
    assert expected_calibration_error(bins) == pytest.approx(0.0)
    assert expected_calibration_error(reliability_bins([], [])) == 0.0


def test_metrics_agree_with_scikit_learn_on_random_predictions() -> None:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    rng = random.Random(7)
    labels = [f"l{i}" for i in range(6)]
    gold = [rng.choice(labels[:5]) for _ in range(300)]
    pred: list[str | None] = [rng.choice([*labels, None]) if rng.random() < 0.5 else g for g in gold]
    filled = [p if p is not None else "__none__" for p in pred]
    per_class = per_class_metrics(gold, pred)
    assert accuracy(gold, pred) == pytest.approx(accuracy_score(gold, filled))
    assert macro_f1(per_class) == pytest.approx(f1_score(gold, filled, labels=labels[:5], average="macro"))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, filled, labels=labels, zero_division=0
    )
    for i, label in enumerate(labels):
        m = per_class[label]
        assert (m.precision, m.recall, m.f1, m.support) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i])
        )
    assert per_class["l5"].support == 0  # predicted only: listed, but not in the macro average


def test_confusion_matrix_counts_nulls_in_their_own_column() -> None:
    matrix, columns = confusion_matrix(GOLD, PRED, ["a", "b", "c"])
    assert columns == ["a", "b", "c", NO_LABEL]
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0]]
    matrix, columns = confusion_matrix(["a", "b"], ["a", "b"], ["a", "b"])
    assert columns == ["a", "b"] and matrix.tolist() == [[1, 0], [0, 1]]


# ---------------------------------------------------------------------------- evaluate() accounting


class FixedRouter:
    """Returns fixed intents per text; the empty text is refused as the real pipeline does."""

    model_version = "fixed-1"

    def __init__(self, answers: dict[str, tuple[str | None, float | None]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def route_batch(self, messages: Sequence[Message]) -> list[TriageResult | HearkenError]:
        self.calls.append([m.id for m in messages])
        out: list[TriageResult | HearkenError] = []
        for m in messages:
            if not m.text:
                out.append(InputError("The message is empty.", fix="send text"))
                continue
            label, confidence = self.answers[m.text]
            out.append(
                TriageResult(
                    id=m.id,
                    language=None,
                    asks=[],
                    product=ProductResult(reason="no product head"),
                    intent=IntentResult(
                        label=label,
                        confidence=confidence,
                        reason=None if label else "no ask was found to read an intent from",
                    ),
                    route=RouteResult(),
                    model_version=self.model_version,
                )
            )
        return out


def test_evaluate_routes_in_batches_and_counts_misses_as_wrong() -> None:
    texts = ["t1", "t2", "t3", "t4", "t5", ""]
    answers = {t: (p, c) for t, p, c in zip(texts, PRED, CONF, strict=False)}
    router = FixedRouter(answers)
    examples = [
        LabelledExample(f"r{i}", t, g) for i, (t, g) in enumerate(zip(texts, [*GOLD, "c"], strict=True))
    ]
    report = evaluate(router, examples, "intent", batch_size=4)
    assert router.calls == [["r0", "r1", "r2", "r3"], ["r4", "r5"]]
    assert report.n == 6
    assert report.accuracy == pytest.approx(3 / 6)
    assert report.null_predictions == 2 and report.unreadable == 1
    assert report.null_reasons == {
        "no ask was found to read an intent from": 1,
        "unreadable: The message is empty.": 1,
    }
    assert report.ece_n == 4
    assert report.ece == pytest.approx((0.05 + 0.26 + 0.70) / 4)
    assert report.per_class["c"].recall == pytest.approx(0.5)
    assert report.model_version == "fixed-1" and len(report.data.sha256) == 64
    assert report.labels_unknown_to_model == []  # a router without heads is not checked


def test_evaluate_refuses_an_empty_set() -> None:
    with pytest.raises(DataError, match="no examples"):
        evaluate(FixedRouter({}), [], "intent")


# ---------------------------------------------------------------------------- data readers


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_reader_keeps_ids_and_hashes_the_file(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "team.jsonl",
        [{"id": 17, "text": "Where is my card?", "label": "card_arrival"}, "", {"text": "x", "label": " b "}],
    )
    data = read_jsonl_set(path, "intent")
    assert [(e.id, e.label) for e in data.examples] == [("17", "card_arrival"), ("line-3", "b")]
    assert data.name == "team" and data.field == "intent" and len(data.sha256) == 64


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        (["{not json"], "line 1 is not JSON"),
        ([{"text": "a", "label": "x"}, {"text": "b"}], "line 2 needs a string 'text'"),
        ([["a", "x"]], "line 1 is a JSON list"),
        ([{"text": "a", "label": ""}], "non-empty string 'label'"),
        ([], "no labelled rows"),
    ],
)
def test_bad_jsonl_is_a_data_error_naming_the_line(tmp_path: Path, rows: list[object], needle: str) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        read_jsonl_set(path, "intent")
    assert needle in str(info.value) and info.value.exit_code == 6


def test_data_argument_rules(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_evaluation_set(str(tmp_path / "nope.jsonl"), "intent")
    with pytest.raises(DataError, match="needs --field"):
        load_evaluation_set(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="labelled with products"):
        load_evaluation_set("cfpb-aegis", "intent")


@pytest.fixture
def fake_data_dir(tmp_path: Path) -> Path:
    """A data directory with team-written stand-ins for the public files' formats."""
    root = tmp_path / "datasets"
    (root / "cfpb_complaints").mkdir(parents=True)
    (root / "clinc150").mkdir()
    (root / "INDEX.md").write_text("stand-in\n")
    (root / "cfpb_complaints" / "cfpb_aegis_eval_220.json").write_text(
        json.dumps(
            [
                {"expected_category": "Mortgage", "text": "My escrow went up again."},
                {"expected_category": "Credit card", "text": "Please remove the late fee."},
                {"expected_category": "Timeshare", "text": "They sold me a week in a condo."},
            ]
        )
    )
    (root / "clinc150" / "data_full.json").write_text(
        json.dumps({"test": [["what is my balance", "balance"], ["book a flight", "book_flight"]]})
    )
    return root


def test_cfpb_aegis_maps_products_and_reports_unmappable_rows(fake_data_dir: Path) -> None:
    data = load_evaluation_set("cfpb-aegis", data_dir=fake_data_dir)
    assert [(e.id, e.label) for e in data.examples] == [
        ("cfpb-aegis:0", "mortgage"),
        ("cfpb-aegis:1", "credit_card"),
    ]
    assert [(r.id, r.raw_label) for r in data.unmappable] == [("cfpb-aegis:2", "Timeshare")]
    report = score(
        model_version="m",
        data=data,
        field="product",
        ids=[e.id for e in data.examples],
        gold=[e.label for e in data.examples],
        predicted=["mortgage", None],
        confidences=[0.9, None],
    )
    assert report.unmappable.count == 1 and report.unmappable.by_raw_label == {"Timeshare": 1}
    assert report.n == 2 and report.accuracy == 0.5


# ---------------------------------------------------------------------------- a real pipeline


@pytest.fixture(scope="module")
def heads_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model with intent and product heads; every sentence is reported as an ask."""
    heads = [
        HeadSpec(name="ask", level="sentence", kind="binary", labels=["not_ask", "ask"]),
        HeadSpec(name="intent", level="sentence", kind="multiclass", labels=INTENTS),
        HeadSpec(name="product", level="message", kind="multiclass", labels=PRODUCT_LABELS),
    ]
    config = PipelineConfig(asks=AskConfig(threshold=0.0))
    return build_tiny_model(tmp_path_factory.mktemp("models") / "heads", heads=heads, config=config)


@pytest.fixture(scope="module")
def heads_pipeline(heads_model_dir: Path):  # type: ignore[no-untyped-def]
    from pipeline.triage import Pipeline

    return Pipeline.from_folder(heads_model_dir)


TEAM_ROWS = [
    {"id": "a1", "text": "My new card still has not arrived. When will it come?", "label": "card_arrival"},
    {"id": "a2", "text": "I lost my card on the bus. Please block it.", "label": "lost_or_stolen_card"},
    {
        "id": "a3",
        "text": "The shop refunded me a week ago. Where is the money?",
        "label": "refund_not_showing_up",
    },
    {"id": "a4", "text": "Someone stole my wallet with the card inside.", "label": "lost_or_stolen_card"},
    {"id": "a5", "text": "", "label": "card_arrival"},
]


def test_clinc_needs_a_clinc_intent_head(heads_pipeline, fake_data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    data = load_evaluation_set("clinc150-test", data_dir=fake_data_dir)
    assert data.require_all_labels and data.notes
    with pytest.raises(DataError, match="include 0 of the 2 labels of clinc150-test") as info:
        check_model_fits(heads_pipeline, "intent", data)
    assert "banking77-test" in str(info.value)


def test_product_labels_without_a_head_come_from_the_catalogue(tiny_pipeline) -> None:  # type: ignore[no-untyped-def]
    examples = [
        LabelledExample("z", "I paid by Zelle and the money vanished.", "money_transfer"),
        LabelledExample("e", "My escrow payment went up again.", "mortgage"),
        LabelledExample("h", "Hello, is anyone there?", "credit_card"),
    ]
    report = evaluate(tiny_pipeline, examples, "product")
    assert report.predicted == ["money_transfer", "mortgage", None]
    assert report.accuracy == pytest.approx(2 / 3) and report.null_predictions == 1
    assert any("catalogue mentions alone" in note for note in report.notes)


def test_evaluate_through_the_pipeline_writes_every_file(heads_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = read_jsonl_set(
        _jsonl(tmp_path / "team.jsonl", [*TEAM_ROWS, {"text": "x", "label": "nope"}]), "intent"
    )
    report = evaluate(heads_pipeline, data, "intent", batch_size=2)
    assert report.n == 6 and report.unreadable == 1
    assert report.labels_unknown_to_model == ["nope"]
    paths = write_report(report, tmp_path / "out")
    assert {p.name for p in paths.values()} == {
        "metrics.json",
        "per_class.md",
        "confusion.png",
        "reliability.png",
        "predictions.jsonl",
    }
    for name in ("confusion", "reliability"):
        assert paths[name].read_bytes()[:8] == PNG_SIGNATURE
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["data"] == {"name": "team", "sha256": data.sha256}
    assert metrics["model_version"] == heads_pipeline.model_version and metrics["ece_bins"] == 15
    assert set(metrics["per_class"]) >= {
        "card_arrival",
        "lost_or_stolen_card",
        "refund_not_showing_up",
        "nope",
    }
    assert "gold" not in metrics and "predicted" not in metrics  # per-row lists go to predictions.jsonl
    rows = [json.loads(line) for line in paths["predictions"].read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a1", "a2", "a3", "a4", "a5", "line-6"]
    assert "text" not in rows[0]
    assert metrics["accuracy"] == pytest.approx(sum(r["label"] == r["predicted"] for r in rows) / 6)
    table = paths["per_class"].read_text()
    assert table.count("\n| ") == len(metrics["per_class"]) + 1  # header + one row per label


def test_confusion_plot_handles_77_classes(tmp_path: Path) -> None:
    labels = [f"intent_label_number_{i}" for i in range(77)]
    gold = [labels[i % 77] for i in range(400)]
    pred: list[str | None] = [g if i % 3 else labels[(i * 7) % 77] for i, g in enumerate(gold)]
    pred[5] = None
    data = EvaluationSet.from_examples([LabelledExample(str(i), "t", g) for i, g in enumerate(gold)])
    conf: list[float | None] = [0.5 + (i % 50) / 100 if p else None for i, p in enumerate(pred)]
    report = score(
        model_version="m", data=data, field="intent", ids=[str(i) for i in range(400)],
        gold=gold, predicted=pred, confidences=conf,
    )  # fmt: skip
    paths = write_report(report, tmp_path)
    image = paths["confusion"].read_bytes()
    assert image[:8] == PNG_SIGNATURE
    width = int.from_bytes(image[16:20], "big")
    assert width >= 77 * 20  # at least ~20 px per class: labels stay legible


# ---------------------------------------------------------------------------- the command


def test_cli_evaluates_a_jsonl_file(heads_model_dir: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "team.jsonl", TEAM_ROWS)
    out = tmp_path / "report"
    args = ["evaluate", str(heads_model_dir), str(data), "--field", "intent", "-o", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n"] == 5 and summary["unreadable"] == 1 and summary["output"] == str(out)
    assert (out / "metrics.json").is_file() and (out / "confusion.png").is_file()


def test_cli_default_output_folder_is_named_after_model_and_data(
    heads_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _jsonl(tmp_path / "mini.jsonl", TEAM_ROWS[:2])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", str(heads_model_dir), str(data), "--field", "intent"])
    assert result.exit_code == 0, result.output
    version = json.loads(result.stdout)["model_version"]
    assert (tmp_path / "evaluation" / f"{version}-mini" / "per_class.md").is_file()


def test_cli_missing_model_folder_is_exit_4(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "team.jsonl", TEAM_ROWS)
    result = CliRunner().invoke(
        app, ["evaluate", str(tmp_path / "no-model"), str(data), "--field", "intent", "--no-progress"]
    )
    assert result.exit_code == 4
    assert "No model folder" in result.output and "Fix:" in result.output


def test_cli_bad_data_file_is_exit_6(heads_model_dir: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "bad.jsonl", [{"text": "a", "label": "card_arrival"}, "{oops"])
    result = CliRunner().invoke(app, ["evaluate", str(heads_model_dir), str(data), "--field", "intent"])
    assert result.exit_code == 6
    assert "line 2 is not JSON" in result.output
    missing = CliRunner().invoke(
        app, ["evaluate", str(heads_model_dir), str(tmp_path / "none.jsonl"), "--field", "intent"]
    )
    assert missing.exit_code == 6 and "not found" in missing.output


def test_cli_model_without_the_head_is_exit_6(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "team.jsonl", [{"text": "Where is my card?", "label": "card_arrival"}])
    result = CliRunner().invoke(app, ["evaluate", str(tiny_model_dir), str(data), "--field", "intent"])
    assert result.exit_code == 6
    assert "has no intent head" in result.output


def test_cli_usage_errors_are_exit_2(heads_model_dir: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "team.jsonl", TEAM_ROWS)
    no_field = CliRunner().invoke(app, ["evaluate", str(heads_model_dir), str(data)])
    assert no_field.exit_code == 2 and "--field" in no_field.output
    wrong_field = CliRunner().invoke(
        app, ["evaluate", str(heads_model_dir), "cfpb-aegis", "--field", "intent"]
    )
    assert wrong_field.exit_code == 2
