"""Readers for the public data sets, in place, from the configurable data directory.

Nothing here copies data into the project. Each reader returns plain records and knows the
quirks of its file (BOMs, embedded newlines, old product taxonomies). Licences are recorded so
that training can refuse non-commercial sets for the default model.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.datadir import dataset_file
from pipeline.errors import DataError

log = logging.getLogger(__name__)
csv.field_size_limit(1 << 30)

PARAKWEET_TRAIN = "email_intent_parakweet/Ask0729-fixed.txt"
PARAKWEET_TEST = "email_intent_parakweet/testSet-qualifiedBatch-fixed.txt"
BANKING77_TRAIN = "banking77/train.csv"
BANKING77_TEST = "banking77/test.csv"
CLINC150 = "clinc150/data_full.json"
CFPB_NARRATIVES = "cfpb_complaints/cfpb_narratives_combined.csv"
CFPB_EVAL = "cfpb_complaints/cfpb_aegis_eval_220.json"
MULTIDOGO_DOMAINS = ("airline", "fastfood", "finance", "insurance", "media", "software")

LICENCES = {
    "email_intent_parakweet": "Apache-2.0",
    "banking77": "CC-BY-4.0",
    "clinc150": "CC-BY-3.0",
    "cfpb_complaints": "public-domain/CC0",
    "multidogo": "CDLA-Permissive-1.0",
    "twacs_airline_support": "CC-BY-NC-SA-4.0",
    "customer_support_tickets_synthetic": "CC-BY-NC-4.0",
    "itsm_ticket_assignment": "none-stated (evaluation only)",
}
NON_COMMERCIAL = {"twacs_airline_support", "customer_support_tickets_synthetic", "itsm_ticket_assignment"}

# ROUTING_POLICY §2, in its order.
PRODUCT_LABELS = [
    "checking_savings",
    "credit_card",
    "prepaid_card",
    "money_transfer",
    "mortgage",
    "student_loan",
    "vehicle_loan",
    "personal_loan",
    "debt_collection",
    "credit_reporting",
    "debt_management",
]

# Non-request acts in MultiDoGO: everything else is a domain request (an ask).
MULTIDOGO_NON_ASK = {
    "openinggreeting",
    "closinggreeting",
    "thankyou",
    "confirmation",
    "rejection",
    "contentonly",
    "outofdomain",
}


@dataclass(frozen=True)
class LabelledSentence:
    text: str
    is_ask: bool


def read_parakweet(path: str, data_dir: Path | str | None = None) -> list[LabelledSentence]:
    """Parakweet lines are ``Yes|No<TAB>sentence``; malformed lines are counted and skipped."""
    rows, skipped = [], 0
    for line in dataset_file(path, data_dir).read_text(encoding="utf-8").splitlines():
        label, sep, text = line.partition("\t")
        if not sep or label not in ("Yes", "No") or not text.strip():
            skipped += 1
            continue
        rows.append(LabelledSentence(text.strip(), label == "Yes"))
    if skipped:
        log.info("parakweet %s: skipped %d malformed lines", path, skipped)
    if not rows:
        raise DataError(
            f"No labelled sentences in {path}.", fix="check the Parakweet files in the data directory"
        )
    return rows


@dataclass(frozen=True)
class IntentExample:
    text: str
    label: str


def read_banking77(path: str, data_dir: Path | str | None = None) -> list[IntentExample]:
    with dataset_file(path, data_dir).open(encoding="utf-8", newline="") as handle:
        return [
            IntentExample(r["text"].strip(), r["category"])
            for r in csv.DictReader(handle)
            if r["text"].strip()
        ]


def banking77_labels(data_dir: Path | str | None = None) -> list[str]:
    """The 77 intent names, as they are, in the published order."""
    return list(json.loads(dataset_file("banking77/categories.json", data_dir).read_text()))


def read_clinc150(split: str, data_dir: Path | str | None = None) -> list[IntentExample]:
    """A CLINC150 split (train/val/test/oos_train/oos_val/oos_test) from data_full.json."""
    data = json.loads(dataset_file(CLINC150, data_dir).read_text())
    if split not in data:
        raise DataError(f"CLINC150 has no split {split!r}.", fix=f"use one of {sorted(data)}")
    return [IntentExample(text, label) for text, label in data[split]]


@dataclass(frozen=True)
class Complaint:
    complaint_id: str
    text: str
    product_raw: str
    sub_product: str
    issue: str
    product: str | None  # mapped to the 11 ROUTING_POLICY labels, None when unmappable


def map_cfpb_product(product: str, sub_product: str = "") -> str | None:
    """Map old and new CFPB product names onto the 11 labels of ROUTING_POLICY §2."""
    p, sub = product.strip().lower(), sub_product.strip().lower()
    if "credit repair" in sub or p == "debt or credit management" or "debt settlement" in sub:
        return "debt_management"
    if p.startswith("credit reporting"):
        return "credit_reporting"
    if p == "credit card or prepaid card":
        return (
            "prepaid_card"
            if ("prepaid" in sub or "gift card" in sub or "payroll card" in sub)
            else "credit_card"
        )
    if p in ("credit card",):
        return "credit_card"
    if p == "prepaid card":
        return "prepaid_card"
    if p in ("checking or savings account", "bank account or service"):
        return "checking_savings"
    if p.startswith("money transfer") or p in ("money transfers", "virtual currency"):
        return "money_transfer"
    if p == "mortgage":
        return "mortgage"
    if p == "student loan":
        return "student_loan"
    if p == "vehicle loan or lease":
        return "vehicle_loan"
    if p == "consumer loan":
        return "vehicle_loan" if "vehicle" in sub else "personal_loan"
    if p.startswith("payday loan"):
        return "personal_loan"
    if p == "debt collection":
        return "debt_collection"
    return None


def read_cfpb(data_dir: Path | str | None = None) -> list[Complaint]:
    """CFPB narratives with products mapped; rows without a narrative are skipped."""
    out = []
    with dataset_file(CFPB_NARRATIVES, data_dir).open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            text = (row.get("Consumer complaint narrative") or "").strip()
            if not text or text == "None":
                continue
            out.append(
                Complaint(
                    complaint_id=row["Complaint ID"],
                    text=row["Consumer complaint narrative"],
                    product_raw=row["Product"],
                    sub_product=row.get("Sub-product") or "",
                    issue=row.get("Issue") or "",
                    product=map_cfpb_product(row["Product"], row.get("Sub-product") or ""),
                )
            )
    return out


@dataclass(frozen=True)
class DialogueSentence:
    conversation: str
    turn: int
    index: int
    text: str
    intent: str

    @property
    def is_ask(self) -> bool:
        return not set(self.intent.split("<div>")) <= MULTIDOGO_NON_ASK


def read_multidogo(domain: str, split: str, data_dir: Path | str | None = None) -> list[DialogueSentence]:
    """Customer sentences of one MultiDoGO domain/split (embedded newlines honoured)."""
    path = dataset_file(f"multidogo/sentence_level/{domain}/{split}.tsv", data_dir)
    out = []
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            try:
                out.append(
                    DialogueSentence(
                        row["conversationId"],
                        int(row["turnNumber"]),
                        int(row["sentenceNumber"]),
                        " ".join(row["utterance"].split()),
                        row["intent"].strip(),
                    )
                )
            except (KeyError, ValueError, TypeError, AttributeError):
                continue
    return out


def iter_conversations(sentences: list[DialogueSentence]) -> Iterator[list[DialogueSentence]]:
    """Group customer sentences by conversation, in turn and sentence order."""
    groups: dict[str, list[DialogueSentence]] = {}
    for s in sentences:
        groups.setdefault(s.conversation, []).append(s)
    for conversation in groups.values():
        yield sorted(conversation, key=lambda s: (s.turn, s.index))
