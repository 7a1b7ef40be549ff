"""Training messages for the multi-task model, built from real text.

Every head reads the same windows, so every training example is a whole message with labels
per sentence (ask, intent) and per message (product); a label a source does not have is
ignored in the loss. The ask scorer must judge a sentence *in its message*, so:
- Parakweet email sentences, alone and in small groups (real asks and non-asks);
- MultiDoGO customer turns (chat-style, lowercase, no punctuation; requests vs greetings,
  thanks, confirmations and bare information);
- buried asks: a real request (Banking77 or MultiDoGO) placed at the start, middle or end of a
  run of real background sentences from a CFPB narrative, sometimes two asks, sometimes none;
- the team's own hard cases (``data/ask_training/team_written.jsonl``): rhetorical questions,
  venting, auto-replies, thank-yous, and asks that only make sense with the sentence before.
Intent comes from Banking77 (or, by config, CLINC150 in-scope) utterances, alone and buried in
background (the intent must be read from the ask, not the opening lines); product from whole
CFPB narratives.

Rows of the hand-labelled evaluation sets are excluded from every background, and test splits
of public benchmarks are never read here.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from pipeline import corpora
from pipeline.datadir import dataset_file
from pipeline.errors import ConfigError, DataError
from pipeline.normalise import Normaliser, NormaliserConfig
from pipeline.segment import Segmenter, SegmenterConfig

IGNORE = -100
TEAM_WRITTEN = Path(__file__).resolve().parent.parent / "data" / "ask_training" / "team_written.jsonl"
GOLD_DIR = Path(__file__).resolve().parent.parent / "data" / "asks"

#: Sentences that look like requests. Dropped from the ask head's background sentences so that
#: "background" stays background; public because the classification benchmark filters its
#: no-ask probe sentences with the same list, so both agree on what counts as a request.
REQUEST_LIKE = re.compile(
    r"\?|\b(please|kindly|i (would like|want|need|request|am requesting|ask|demand|expect)|"
    r"i'd like|can you|could you|would you|will you|help me|let me know|"
    r"(remove|delete|refund|correct|fix|investigate|cancel|close|reimburse|return) "
    r"(this|these|the|my|it|them|all))\b",
    re.IGNORECASE,
)


# High-precision request forms in complaint narratives: weak positive labels in context. Looser
# request-like sentences (and all questions, often rhetorical there) are left unlabelled.
_STRICT_ASK = re.compile(
    r"^\W*(please|kindly)\b"
    r"|\bi\s+(am\s+|'m\s+)?(respectfully\s+|formally\s+|hereby\s+|now\s+|also\s+)?"
    r"(request|requesting|ask|asking|demand|demanding)\s+(that|you|for|to|the|a|an|\w+\s+to)\b"
    r"|\bi\s+(would|'d)\s+(like|appreciate)\b"
    r"|\bi\s+(want|need)\s+(you|them|the|this|these|it|my|all|each|every|\w+)\b.{0,80}"
    r"\b(removed|deleted|corrected|refunded|fixed|returned|closed|investigated|to\s+(remove|delete|correct|"
    r"refund|fix|return|close|investigate|stop|send|reverse|credit|update|provide|explain))\b"
    r"|\b(can|could|would|will)\s+you\b"
    # obligations and expectations about the customer's own case (GUIDELINES.md counts them)
    r"|\b(they|you|it|he|she|this|these|those|the\s+\w+|\w+\s+bank)\s+(need|needs|must|should)\s+(to\s+)?(be\s+)?"
    r"(remove|delete|refund|correct|fix|cover|return|credit|investigate|validate|verify|stop|reinstate|"
    r"reverse|update|close|release|pay|honou?r)\w*\b"
    r"|\bi\s+(expect|trust|insist|invoke|hope)\s+(that\s+)?(you|they|the\s+\w+|\w+\s+will|on|my)\b"
    r"|\byou\s+have\s+\d+\s+days\s+to\b",
    re.IGNORECASE,
)
# Pointers to attachments are not asks (GUIDELINES.md), even when they start with "please".
_POINTER = re.compile(
    r"^\W*(please\s+)?(see|find|review|note)\b.{0,40}\b(attach|enclos|below|above|screenshot|document)"
    r"|^\W*(please\s+)?(see|review)\W*$",
    re.IGNORECASE,
)


@dataclass
class TrainingMessage:
    """A message body (already normalised) with sentence spans and labels.

    ``ask`` has one label per sentence (1 ask, 0 not, IGNORE unknown); ``intent`` one label name
    per sentence or None; ``product`` the message's product label or None.
    """

    text: str
    sentences: list[tuple[int, int]]
    ask: list[int]
    source: str
    intent: list[str | None] = field(default_factory=list)
    product: str | None = None

    def __post_init__(self) -> None:
        if not self.intent:
            self.intent = [None] * len(self.sentences)


def join_sentences(
    sentences: Sequence[str],
    labels: Sequence[int],
    source: str,
    sep: str = " ",
    intents: Sequence[str | None] | None = None,
) -> TrainingMessage:
    """Concatenate sentences into one message, remembering each sentence's span."""
    text, spans = "", []
    for sentence in sentences:
        if text:
            text += sep
        spans.append((len(text), len(text) + len(sentence)))
        text += sentence
    return TrainingMessage(text, spans, list(labels), source, intent=list(intents or [None] * len(spans)))


def parakweet_messages(rows: Sequence[corpora.LabelledSentence], rng: random.Random) -> list[TrainingMessage]:
    """Every sentence alone (as the benchmark reads it), and again in groups of 1-4."""
    rows = list(rows)
    out = [join_sentences([r.text], [int(r.is_ask)], "parakweet") for r in rows]
    rng.shuffle(rows)
    i = 0
    while i < len(rows):
        size = 1 if rng.random() < 0.5 else rng.randint(2, 4)
        group = rows[i : i + size]
        i += size
        out.append(join_sentences([r.text for r in group], [int(r.is_ask) for r in group], "parakweet"))
    return out


def multidogo_messages(
    conversations: Sequence[list[corpora.DialogueSentence]], rng: random.Random, limit: int
) -> list[TrainingMessage]:
    """Chat-style messages: the customer's sentences from the first 1-3 turns of a conversation."""
    pool = list(conversations)
    rng.shuffle(pool)
    out = []
    for conversation in pool[:limit]:
        turns = sorted({s.turn for s in conversation})
        keep = set(turns[: rng.randint(1, 3)])
        sentences = [s for s in conversation if s.turn in keep and s.text]
        if not sentences:
            continue
        sep = rng.choice([" ", " ", "\n", ". "])
        out.append(
            join_sentences([s.text for s in sentences], [int(s.is_ask) for s in sentences], "multidogo", sep)
        )
    return out


def background_runs(
    complaints: Sequence[corpora.Complaint],
    exclude_ids: set[str],
    normaliser: Normaliser,
    segmenter: Segmenter,
) -> list[list[str]]:
    """Per complaint, its normalised sentences that do not look like requests."""
    kept = [c for c in complaints if c.complaint_id not in exclude_ids]
    bodies = [normaliser.normalise(c.text).body.text for c in kept]
    runs = []
    for _body, sentences in zip(bodies, segmenter.segment_many(bodies), strict=True):
        run = [s.text for s in sentences if not REQUEST_LIKE.search(s.text) and len(s.text) > 15]
        if len(run) >= 2:
            runs.append(run)
    return runs


def buried_messages(
    runs: Sequence[list[str]],
    asks: Sequence[tuple[str, str | None]],
    rng: random.Random,
    n: int,
    source: str = "buried",
) -> list[TrainingMessage]:
    """Real asks (text, intent or None) among real background sentences: start, middle, end; 0-2 asks."""
    out = []
    for _ in range(n):
        run = rng.choice(runs)
        length = rng.randint(2, min(len(run), 14))
        start = rng.randint(0, len(run) - length)
        sentences = list(run[start : start + length])
        labels: list[int] = [0] * len(sentences)
        intents: list[str | None] = [None] * len(sentences)
        n_asks = rng.choices([0, 1, 2], weights=[0.12, 0.68, 0.20])[0]
        for _ in range(n_asks):
            where = rng.choice(["start", "middle", "end"])
            index = {"start": 0, "middle": len(sentences) // 2, "end": len(sentences)}[where]
            ask, intent = rng.choice(asks)
            if ask and ask[-1] not in ".?!":
                ask += rng.choice(["?", ".", ""])
            sentences.insert(index, ask)
            labels.insert(index, 1)
            intents.insert(index, intent)
        if rng.random() < 0.25:
            sentences.append(
                rng.choice(["Thank you.", "Thanks for your help.", "Thank you for your time.", "Regards."])
            )
            labels.append(0)
            intents.append(None)
        out.append(join_sentences(sentences, labels, source, rng.choice([" ", " ", "\n"]), intents))
    return out


def team_written_messages(path: Path = TEAM_WRITTEN) -> list[TrainingMessage]:
    """The team's hand-written hard cases: ``{"sentences": [...], "asks": [0/1, ...]}`` per line."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(join_sentences(row["sentences"], row["asks"], "team_written"))
    return out


def gold_row_ids(dataset: str) -> set[str]:
    """Row ids of a data set used by the hand-labelled sets: never used as training background."""
    ids: set[str] = set()
    for path in sorted(GOLD_DIR.glob("*.jsonl")) if GOLD_DIR.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("dataset") == dataset:
                    ids.add(str(row["row_id"]))
    return ids


def weak_ask_messages(
    chosen: Sequence[corpora.Complaint],
    normaliser: Normaliser,
    segmenter: Segmenter,
    max_chars: int,
    with_product: bool = False,
) -> list[TrainingMessage]:
    """Real complaint narratives with weak per-sentence ask labels, read in their own context.

    Without them the model only ever sees complaint-style sentences as background and learns
    that this *style* means "not an ask"; real complaints ask in their own words ("I am
    requesting that...", "please remove..."). Strict request forms are positives, looser
    request-like sentences are ignored by the loss, the rest are negatives.

    ``with_product`` also gives each narrative its product label (the first copy of a text
    only), so that one encoder pass trains both heads: these are the same training narratives
    the product head reads, and reading each twice per epoch doubled the cost of the longest
    messages in training.
    """
    bodies = [normaliser.normalise(c.text).body.text for c in chosen]
    out = []
    seen: set[str] = set()
    for complaint, body, sentences in zip(chosen, bodies, segmenter.segment_many(bodies), strict=True):
        sentences = [s for s in sentences if s.start < max_chars] or sentences[:1]
        if not sentences:
            continue
        labels = []
        for sentence in sentences:
            if _POINTER.search(sentence.text):
                labels.append(0)
            elif _STRICT_ASK.search(sentence.text) and "?" not in sentence.text:
                labels.append(1)
            elif REQUEST_LIKE.search(sentence.text):
                labels.append(IGNORE)
            else:
                labels.append(0)
        text = body[: sentences[-1].end]
        product, key = None, text_key(complaint.text)
        if with_product and key not in seen:
            seen.add(key)
            product = complaint.product
        out.append(
            TrainingMessage(text, [(s.start, s.end) for s in sentences], labels, "cfpb_weak", product=product)
        )
    return out


def text_key(text: str) -> str:
    """The key under which two narratives count as the same text (case and spacing ignored)."""
    return " ".join(text.split()).lower()


def split_of(text: str, dev_percent: int = 10, test_percent: int = 10) -> str:
    """Deterministic train/dev/test assignment by a hash of the text.

    Splitting by text (not by row) keeps duplicate narratives filed against several companies
    on one side, and needs no stored split file: the same text always lands in the same split.
    """
    bucket = int(hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()[:8], 16) % 100
    if bucket < test_percent:
        return "test"
    if bucket < test_percent + dev_percent:
        return "dev"
    return "train"


@dataclass
class TrainingData:
    """Train and dev messages for every head, the label sets, and the data files used."""

    train: list[TrainingMessage]
    dev: dict[str, list[TrainingMessage]]
    files: dict[str, int]  # data-dir-relative path -> rows read
    intent_labels: list[str]
    product_labels: list[str]


def product_messages(
    complaints: Sequence[corpora.Complaint],
    normaliser: Normaliser,
    segmenter: Segmenter,
    split: str,
    max_chars: int | None = None,
    already_labelled: AbstractSet[str] = frozenset(),
) -> list[TrainingMessage]:
    """CFPB narratives of one split, normalised, segmented, labelled with their product.

    ``max_chars`` (training only) keeps the sentences that start before it: the product is
    almost always clear early, and long narratives would otherwise dominate training time.
    Dev narratives are read whole, as at inference. Texts in ``already_labelled`` (keys of
    :func:`text_key`) carry their product elsewhere in the training data and are skipped.
    """
    seen: set[str] = set(already_labelled)
    chosen = []
    for c in complaints:
        key = text_key(c.text)
        if c.product is None or key in seen or split_of(c.text) != split:
            continue
        seen.add(key)
        chosen.append(c)
    bodies = [normaliser.normalise(c.text).body.text for c in chosen]
    out = []
    for complaint, body, sentences in zip(chosen, bodies, segmenter.segment_many(bodies), strict=True):
        if not sentences:
            continue
        spans = [(s.start, s.end) for s in sentences]
        out.append(
            TrainingMessage(body, spans, [IGNORE] * len(spans), f"cfpb_{split}", product=complaint.product)
        )
    return out


IntentDataset = Literal["banking77", "clinc150"]
INTENT_DATASETS: tuple[str, ...] = get_args(IntentDataset)
CLINC150_DOMAINS = "clinc150/domains.json"
CLINC150_OOS = "oos"
# CLINC150 intents whose utterances are not asks under ROUTING_POLICY §1 (greetings, thanks, bare
# yes/no/maybe). Labelling "thank you" an ask would contradict the buried compositions, which
# close with "Thank you." as a non-ask; MultiDoGO's greeting/thank-you/confirmation acts are
# non-asks too. Their intent labels are kept: only the ask label differs.
CLINC150_NOT_ASK = frozenset({"greeting", "goodbye", "thank_you", "yes", "no", "maybe"})


@dataclass
class IntentSource:
    """One intent data set: training and dev utterances, the head's labels, and the rows read."""

    name: str
    train: list[corpora.IntentExample]
    dev: list[corpora.IntentExample]
    labels: list[str]
    files: dict[str, int]
    not_ask: frozenset[str] = frozenset()

    def messages(self, examples: Sequence[corpora.IntentExample]) -> list[TrainingMessage]:
        """Each utterance alone, as a one-sentence message with its intent (and ask label)."""
        return [
            join_sentences([e.text], [int(e.label not in self.not_ask)], self.name, intents=[e.label])
            for e in examples
        ]

    def asks(self, examples: Sequence[corpora.IntentExample], labelled: bool) -> list[tuple[str, str | None]]:
        """Utterances to bury in background as asks: (text, intent or None without an intent head)."""
        return [(e.text, e.label if labelled else None) for e in examples if e.label not in self.not_ask]


def banking77_intents(data_dir: Path | str | None, rng: random.Random, dev_fraction: float) -> IntentSource:
    """Banking77 train, shuffled, with a dev share carved off (its test split is never read)."""
    banking = corpora.read_banking77(corpora.BANKING77_TRAIN, data_dir)
    rng.shuffle(banking)
    n_dev = max(1, int(len(banking) * dev_fraction))
    return IntentSource(
        name="banking77",
        train=banking[n_dev:],
        dev=banking[:n_dev],
        labels=corpora.banking77_labels(data_dir),
        files={corpora.BANKING77_TRAIN: len(banking)},
    )


def clinc150_labels(data_dir: Path | str | None = None) -> list[str]:
    """The 150 in-scope intent names, as they are, in the published order (domains.json)."""
    domains = json.loads(dataset_file(CLINC150_DOMAINS, data_dir).read_text())
    return [label for intents in domains.values() for label in intents]


def clinc150_intents(data_dir: Path | str | None, rng: random.Random) -> IntentSource:
    """CLINC150 in-scope ``train`` (shuffled) for training and its ``val`` split for dev.

    ``val`` is the data set's own validation split (20 per intent, balanced), not a test split;
    selecting on it keeps all 100 training utterances per intent, as published CLINC results
    do. Only in-scope rows are used: out-of-scope rows (``oos``) are dropped should a split carry
    any, and ``test``/``oos_*`` are never returned here; the out-of-scope benchmark reads them.
    """
    labels = clinc150_labels(data_dir)
    known = set(labels)
    train = [e for e in corpora.read_clinc150("train", data_dir) if e.label != CLINC150_OOS]
    dev = [e for e in corpora.read_clinc150("val", data_dir) if e.label != CLINC150_OOS]
    unknown = sorted({e.label for e in train + dev} - known)
    if unknown or len(labels) != 150:
        raise DataError(
            f"CLINC150 labels do not match {CLINC150_DOMAINS} ({len(labels)} listed; unknown {unknown[:5]}).",
            fix="use the unchanged data_full.json and domains.json of clinc/oos-eval",
        )
    rng.shuffle(train)
    return IntentSource(
        name="clinc150",
        train=train,
        dev=dev,
        labels=labels,
        files={corpora.CLINC150: len(train) + len(dev)},
        not_ask=CLINC150_NOT_ASK,
    )


def read_intent_source(
    dataset: str, data_dir: Path | str | None, rng: random.Random, dev_fraction: float
) -> IntentSource:
    """The intent data set a config names; an unknown name is a config error."""
    if dataset == "banking77":
        return banking77_intents(data_dir, rng, dev_fraction)
    if dataset == "clinc150":
        return clinc150_intents(data_dir, rng)
    raise ConfigError(f"Unknown intent data set {dataset!r}.", fix=f"use one of {list(INTENT_DATASETS)}")


def build_training_data(
    data_dir: Path | str | None,
    rng: random.Random,
    *,
    parakweet_limit: int | None,
    background_limit: int | None,
    weak_cfpb: int,
    weak_cfpb_max_chars: int,
    multidogo_conversations: int,
    buried: int,
    buried_dev: int,
    dev_fraction: float,
    intent: bool,
    intent_limit: int | None,
    product: bool,
    product_limit: int | None,
    product_max_chars: int | None,
    normaliser_config: NormaliserConfig,
    segmenter_config: SegmenterConfig,
    intent_dataset: IntentDataset = "banking77",
    intent_repeats: int = 1,
) -> TrainingData:
    """Assemble training messages; dev sets come from training files (CLINC150: its val split)."""
    files: dict[str, int] = {}
    parakweet = corpora.read_parakweet(corpora.PARAKWEET_TRAIN, data_dir)
    rng.shuffle(parakweet)
    if parakweet_limit is not None:
        parakweet = parakweet[:parakweet_limit]
    n_dev = max(1, int(len(parakweet) * dev_fraction))
    parakweet_dev, parakweet_train = parakweet[:n_dev], parakweet[n_dev:]
    files[corpora.PARAKWEET_TRAIN] = len(parakweet)

    conversations = []
    for domain in corpora.MULTIDOGO_DOMAINS:
        rows = corpora.read_multidogo(domain, "train", data_dir)
        conversations.extend(corpora.iter_conversations(rows))
        files[f"multidogo/sentence_level/{domain}/train.tsv"] = len(rows)
    multidogo = multidogo_messages(conversations, rng, multidogo_conversations)
    multidogo_asks: list[tuple[str, str | None]] = [
        (s.text, None) for c in conversations for s in c if s.is_ask and len(s.text.split()) >= 4
    ]

    intents = read_intent_source(intent_dataset, data_dir, rng, dev_fraction)
    files.update(intents.files)
    intent_dev, intent_train = intents.dev, intents.train
    if intent_limit is not None:
        intent_train = intent_train[:intent_limit]
    intent_labels = intents.labels if intent else []

    complaints = corpora.read_cfpb(data_dir)
    files[corpora.CFPB_NARRATIVES] = len(complaints)
    excluded = gold_row_ids("cfpb_complaints")
    complaints = [c for c in complaints if c.complaint_id not in excluded]
    normaliser, segmenter = Normaliser(normaliser_config), Segmenter(segmenter_config)
    train_complaints = [c for c in complaints if split_of(c.text) == "train"][:background_limit]
    runs = background_runs(train_complaints, set(), normaliser, segmenter)
    rng.shuffle(runs)
    n_run_dev = max(1, int(len(runs) * dev_fraction))
    runs_dev, runs_train = runs[:n_run_dev], runs[n_run_dev:]

    train = parakweet_messages(parakweet_train, rng) + multidogo
    weak_complaints: list[corpora.Complaint] = []
    if weak_cfpb:
        weak_complaints = list(train_complaints)
        rng.shuffle(weak_complaints)
        weak_complaints = weak_complaints[:weak_cfpb]
    weak = weak_ask_messages(
        weak_complaints, normaliser, segmenter, weak_cfpb_max_chars, with_product=product
    )
    train += weak
    train += buried_messages(runs_train, intents.asks(intent_train, intent) + multidogo_asks, rng, buried)
    team = team_written_messages() if TEAM_WRITTEN.is_file() else []
    train += team * 3  # few but important: seen three times per epoch
    dev: dict[str, list[TrainingMessage]] = {
        "parakweet_dev": [join_sentences([r.text], [int(r.is_ask)], "parakweet") for r in parakweet_dev],
        "buried_dev": buried_messages(
            runs_dev, intents.asks(intent_dev, intent), rng, buried_dev, "buried_dev"
        ),
    }
    if intent:
        # Short utterances cost little per pass; reading them more often than the long
        # narratives gives the 77-way intent head the epochs it needs without more long passes.
        # The extra copies train the intent head only: counted again as asks, they would tilt
        # the ask head towards short questions and move its threshold on real messages.
        once = intents.messages(intent_train)
        train += once
        train += [replace(m, ask=[IGNORE] * len(m.ask)) for m in once for _ in range(intent_repeats - 1)]
        dev[f"{intents.name}_dev"] = intents.messages(intent_dev)
    product_labels: list[str] = []
    if product:
        product_train = [m for m in weak if m.product is not None]
        product_train += product_messages(
            complaints,
            normaliser,
            segmenter,
            "train",
            product_max_chars,
            already_labelled={text_key(c.text) for c in weak_complaints},
        )
        if product_limit is not None:  # the cap counts every narrative read for its product
            product_train = product_train[:product_limit]
            capped = {id(m) for m in product_train}
            for message in weak:
                if id(message) not in capped:
                    message.product = None
        train += [m for m in product_train if m.source != "cfpb_weak"]
        dev["cfpb_dev"] = product_messages(complaints, normaliser, segmenter, "dev")
        product_labels = list(corpora.PRODUCT_LABELS)
    rng.shuffle(train)
    return TrainingData(train, dev, files, intent_labels, product_labels)
