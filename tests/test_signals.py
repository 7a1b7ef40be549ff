"""The detect-signals stage: hand-written cases per signal, context handling, spans, lexicon loading.

Every case is text the team wrote (no public data set text is copied here); the last test reads
real CFPB narratives in place from the data directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.corpora import read_cfpb
from pipeline.errors import ConfigError
from pipeline.normalise import Normaliser
from pipeline.schema import Signal
from pipeline.segment import Segmenter
from pipeline.signals import (
    DEFAULT_LEXICON_PATH,
    SignalConfig,
    SignalDetector,
    compile_pattern,
    detect_text,
    load_signal_lexicon,
    number_value,
)


@pytest.fixture(scope="module")
def detector() -> SignalDetector:
    return SignalDetector.from_path()


def names(detector: SignalDetector, text: str) -> set[str]:
    return {s.name for s in detector.detect_text(text)}


def assert_round_trip(text: str, signals: list[Signal]) -> None:
    for s in signals:
        assert text[s.start : s.end] == s.evidence == s.text
        assert 0.0 <= s.score <= 1.0
        assert not s.escalating  # the router decides


# =============================================================================== per signal

POSITIVE = {
    "repeat_failure": [
        "This is the third replacement card and it still doesn't work.",
        "My card was declined again at the same shop, after you told me it was fixed.",
        "The late payment you removed in March has been reinserted on my credit report.",
        "For the second time this month the overdraft fee was charged again.",
        "The same problem happened again with my direct deposit.",
    ],
    "unanswered_contact": [
        "I have called 5 times and nobody called back.",
        "I sent two letters in May and never received a response.",
        "They promised to call me back within 24 hours but never did.",
        "My emails have been ignored for a month.",
        "I have not heard back from anyone at the bank.",
        "Still no reply to my complaint.",
    ],
    "bounced_between_agents": [
        "One agent said the fee would be refunded, another told me it was legitimate.",
        "I keep getting transferred from one department to another.",
        "Every time I call I get a different answer.",
        "I was given conflicting information by your staff.",
        "I was transferred 4 times and nobody could help.",
    ],
    "public_threat": [
        "I will post this on Twitter and leave a bad review.",
        "If this isn't fixed I'm going to the local news.",
        "I am going public with how you treat customers.",
        "I'll be sharing my experience on social media.",
    ],
    "legal_threat": [
        "If this is not fixed I will contact my lawyer.",
        "I have hired an attorney.",
        "I am prepared to take legal action.",
        "I will see you in court.",
        "I intend to sue the bank for damages.",
    ],
    "regulator_threat": [
        "I have filed a complaint with the CFPB.",
        "I am filing this complaint with the Consumer Financial Protection Bureau.",
        "I will report this to the attorney general.",
        "A complaint has been lodged with the Better Business Bureau.",
        "Next step is the state banking department.",
        "I'm escalating this to the OCC and the FTC.",
    ],
    "manager_request": [
        "I want to speak to a manager.",
        "Please escalate this to your supervisor.",
        "Can I talk to someone in charge?",
        "I asked for a supervisor and was refused.",
        "get me a manager now",
    ],
    "charged_not_delivered": [
        "I paid for express delivery of my new card 3 weeks ago and it never arrived.",
        "The money was taken from my account but the transfer never reached my sister.",
        "I was charged for the order but the item was never delivered.",
        "I paid off the loan in January and still haven't received the title.",
    ],
    "long_wait": [
        "It has been 6 weeks and the refund promised in 10 days never came.",
        "I have been waiting for 2 months for my replacement card.",
        "It's been over a month and still nothing.",
        "They told me 7-10 business days, and I still have not received it.",
    ],
    "hardship": [
        "I lost my job and can't make my mortgage payments.",
        "I was laid off in March.",
        "I'm going through chemotherapy and cannot work.",
        "We are in financial hardship and need a payment plan.",
        "I am struggling to pay my bills.",
    ],
    "vulnerable_customer": [
        "My 82 year old mother was scammed by someone pretending to be from the bank.",
        "I am a senior citizen on a fixed income.",
        "My father has dementia and I hold his power of attorney.",
        "I was the victim of a romance scam.",
        "My husband passed away last month.",
    ],
}


@pytest.mark.parametrize(("signal", "text"), [(s, t) for s, ts in POSITIVE.items() for t in ts])
def test_positive_cases(detector: SignalDetector, signal: str, text: str) -> None:
    found = detector.detect_text(text)
    assert signal in {s.name for s in found}, f"{signal} missed in: {text}"
    assert_round_trip(text, found)


NEGATIVE = [
    # Anger, capitals and hold times are not signals.
    ("long_wait", "I waited 2 hours on hold."),
    ("long_wait", "I WAITED ON HOLD FOR 45 MINUTES!!! THIS IS RIDICULOUS"),
    ("long_wait", "I have been a customer for 12 years."),
    ("long_wait", "If it takes more than 2 weeks I will close the account."),
    # manager_request only when the customer asks.
    ("manager_request", "The manager told me to wait for the letter."),
    ("manager_request", "I spoke with a supervisor who said it would be fixed."),
    ("manager_request", "I don't need to speak to a manager, just fix it."),
    ("manager_request", "My relationship manager sent me the forms."),
    # Negation and third parties for threats; hypotheticals do not cancel threats (see below).
    ("legal_threat", "I don't want to involve a lawyer."),
    ("legal_threat", "My friend said she would sue."),
    ("legal_threat", "The collector threatened to sue me."),
    ("legal_threat", "I signed a power of attorney for my son."),
    ("legal_threat", "They filed a lawsuit against me last year."),
    ("regulator_threat", "I was told to contact the CFPB."),
    ("regulator_threat", "I have not filed a complaint with the CFPB."),
    ("regulator_threat", "Other customers have complained to the BBB."),
    ("regulator_threat", "The CFPB website says banks must respond within 15 days."),
    ("public_threat", "I saw your advert on Facebook."),
    ("public_threat", "I won't post this on social media, I just want it fixed."),
    # Hypotheticals cancel reported problems.
    ("repeat_failure", "If my card gets declined again I'll be furious."),
    ("repeat_failure", "This is the third time I am writing to you."),
    ("charged_not_delivered", "If I pay the fee and the card never arrives, who refunds me?"),
    ("charged_not_delivered", "I paid my bill but never received a response to my letter."),
    ("unanswered_contact", "If I get no response by Friday I will close my account."),
    ("unanswered_contact", "You answered my question quickly, thank you."),
    ("hardship", "If I lose my job, can I pause my payments?"),
    ("hardship", "I lost my card at the mall."),
    ("vulnerable_customer", "My account was disabled after three wrong PINs."),
    ("bounced_between_agents", "I transferred money to my savings account."),
]


@pytest.mark.parametrize(("signal", "text"), NEGATIVE)
def test_negative_cases(detector: SignalDetector, signal: str, text: str) -> None:
    found = names(detector, text)
    assert signal not in found, f"{signal} wrongly found in: {text}"


@pytest.mark.parametrize(
    "text",
    [
        "If this is not fixed I will contact my lawyer.",
        "Unless you refund me by Friday, I will take legal action.",
        "If nothing changes I will file a complaint with the CFPB.",
        "If you don't fix this I'm posting it all over Twitter.",
    ],
)
def test_conditional_threats_still_count(detector: SignalDetector, text: str) -> None:
    assert names(detector, text) & {"legal_threat", "regulator_threat", "public_threat"}


def test_reported_speech_by_the_customer_counts(detector: SignalDetector) -> None:
    """'I told them I would sue' is the customer's own threat; 'they said they would sue' is not."""
    assert "legal_threat" in names(detector, "I told them I would sue if the fee was not refunded.")
    assert "legal_threat" not in names(detector, "They said they would sue if I did not pay.")


def test_clean_message_has_no_signals(detector: SignalDetector) -> None:
    assert detector.detect_text("Hi, how do I change the PIN on my debit card? Thanks!") == []


def test_several_signals_ordered_by_start(detector: SignalDetector) -> None:
    text = (
        "I have called five times and nobody called back. "
        "I lost my job last month. "
        "If this is not sorted out I will contact my lawyer and the CFPB."
    )
    found = detector.detect_text(text)
    assert {"unanswered_contact", "hardship", "legal_threat", "regulator_threat"} <= {s.name for s in found}
    assert [s.start for s in found] == sorted(s.start for s in found)
    assert_round_trip(text, found)
    # One evidence span per (signal, sentence): no duplicates.
    assert len({(s.name, s.start) for s in found}) == len(found)


# =============================================================================== quoted history & layout


def test_quoted_history_with_angle_brackets(detector: SignalDetector) -> None:
    text = (
        "Thanks, but the card still has not arrived.\n\n"
        "> I have filed a complaint with the CFPB about this card.\n"
        "> Please send it today.\n"
    )
    found = detector.detect_text(text)
    regulator = [s for s in found if s.name == "regulator_threat"]
    assert regulator and all(s.in_quoted_history for s in regulator)
    quoted_start = text.index("> I have filed")
    assert all(s.start >= quoted_start for s in regulator)
    assert_round_trip(text, found)


def test_quoted_history_on_wrote_block(detector: SignalDetector) -> None:
    text = (
        "Any update on this?\n\n"
        "On Mon, 3 Mar 2025 at 10:02, Jane Doe <jane@example.com> wrote:\n"
        "> I want to speak to a manager about the fee.\n"
        "> If it is not refunded I will contact my attorney.\n"
    )
    found = detector.detect_text(text)
    by_name = {s.name: s for s in found}
    assert {"manager_request", "legal_threat"} <= set(by_name)
    block = text.index("On Mon")
    for s in found:
        assert s.in_quoted_history and s.start > block
    assert_round_trip(text, found)


def test_quoted_history_can_be_switched_off() -> None:
    detector = SignalDetector.from_path(config=SignalConfig(read_quoted_history=False))
    text = "Any news?\n\n> I have filed a complaint with the CFPB.\n"
    assert detector.detect_text(text) == []


def test_body_signal_is_not_marked_quoted(detector: SignalDetector) -> None:
    found = detector.detect_text("I want to speak to a supervisor.\n\n> Thanks for contacting us.\n")
    assert [s.in_quoted_history for s in found if s.name == "manager_request"] == [False]


def test_html_message_spans_index_the_original(detector: SignalDetector) -> None:
    text = (
        "<html><body><p>Hello,</p><p>I have called <b>five times</b> and nobody called back.</p>"
        "<p>I will file a complaint with the&nbsp;CFPB.</p></body></html>"
    )
    found = detector.detect_text(text)
    assert {"unanswered_contact", "regulator_threat"} <= {s.name for s in found}
    assert_round_trip(text, found)
    assert any("<b>five times</b>" in s.evidence for s in found)


def test_cfpb_redactions_and_smart_quotes(detector: SignalDetector) -> None:
    text = "On XX/XX/2023 I wrote to XXXX and I didn\u2019t get a response. I\u2019ve filed with the CFPB."
    found = detector.detect_text(text)
    assert {"unanswered_contact", "regulator_threat"} <= {s.name for s in found}
    assert_round_trip(text, found)


def test_detect_takes_pipeline_inputs(detector: SignalDetector) -> None:
    """The stage's own signature: a NormalisedMessage plus sentences from the segmenter."""
    text = "Nobody ever called me back.\n\n> I want to speak to a manager.\n"
    normalised = Normaliser().normalise(text)
    segmenter = Segmenter()
    body = segmenter.segment(normalised.body.text)
    history = segmenter.segment_many([h.text for h in normalised.history])
    found = detector.detect(normalised, body, history)
    assert [(s.name, s.in_quoted_history) for s in found] == [
        ("unanswered_contact", False),
        ("manager_request", True),
    ]
    with pytest.raises(ValueError, match="history_sentences"):
        detector.detect(normalised, body, [])


def test_module_level_detect_text() -> None:
    assert [s.name for s in detect_text("I want to speak to a manager.")] == ["manager_request"]


# =============================================================================== config


def test_min_score_and_max_per_signal() -> None:
    text = " ".join(["Nobody called me back."] * 6)
    capped = SignalDetector.from_path(config=SignalConfig(max_per_signal=2)).detect_text(text)
    assert len(capped) == 2
    strict = SignalDetector.from_path(config=SignalConfig(min_score=0.95)).detect_text(text)
    assert strict == []


def test_match_evidence_is_the_matched_words() -> None:
    detector = SignalDetector.from_path(config=SignalConfig(evidence="match"))
    text = "Hello there. After all this, I will contact my lawyer tomorrow morning."
    (signal,) = detector.detect_text(text)
    assert signal.name == "legal_threat"
    assert "lawyer" in signal.evidence and "Hello" not in signal.evidence and "morning" not in signal.evidence
    assert_round_trip(text, [signal])


def test_signal_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="extra"):
        SignalConfig.model_validate({"read_history": True})


# =============================================================================== lexicon files

RETAIL_LEXICON = """
version: 1
name: electronics_retailer
scope_breakers: [",", ".", but]
words:
  REFUSE: [refused, refuses, rejected, denied, declined]
modifiers:
  negation:
    description: Denied in the clause before.
    cues: [not, "n't", never]
cues:
  product:
    phrases: [laptop, phone, tv, headphones]
signals:
  - name: warranty_refused
    description: The retailer refused a warranty repair or replacement.
    ignore_in: [negation]
    rules:
      - id: refused_warranty
        score: 0.9
        patterns:
          - "@REFUSE (my|the)? warranty (claim|repair|replacement)?"
          - "warranty (claim|repair)? (was)? @REFUSE"
        requires:
          - cue: product
            window: 1
  - name: dead_on_arrival
    description: The product did not work out of the box.
    rules:
      - id: doa
        score: 0.8
        phrases: ["dead on arrival", "doa"]
"""


def test_a_second_lexicon_defines_its_own_signals(tmp_path: Path) -> None:
    path = tmp_path / "retail.yaml"
    path.write_text(RETAIL_LEXICON, encoding="utf-8")
    detector = SignalDetector(load_signal_lexicon(path))
    text = "My laptop stopped charging. The store refused my warranty claim."
    found = detector.detect_text(text)
    assert [s.name for s in found] == ["warranty_refused"]
    # The co-occurrence spans both sentences (product cue in the first one).
    assert found[0].evidence == text
    assert detector.detect_text("The store refused my warranty claim.") == []  # no product nearby
    assert detector.detect_text("My phone is fine and the warranty was not refused.") == []
    assert [s.name for s in detector.detect_text("The headphones were DOA.")] == ["dead_on_arrival"]
    # None of the default names exist in this lexicon.
    assert detector.detect_text("I want to speak to a manager, I will sue you.") == []


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lexicon.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("version: 1", "version: 1\nsignls: []"), r"signls.*Extra inputs"),
        (lambda t: t.replace("score: 0.9", "score: 1.5"), r"signals\[0\]\.rules\[0\]\.score"),
        (
            lambda t: t.replace('"@REFUSE (my|the)?', '"@REFUSED (my|the)?'),
            r"signals\[0\]\.rules\[0\]\.patterns\[0\].*REFUSED",
        ),
        (lambda t: t.replace("cue: product", "cue: products"), r"cue group 'products' is not defined"),
        (lambda t: t.replace("ignore_in: [negation]", "ignore_in: [negatoin]"), r"modifier 'negatoin'"),
        (lambda t: t.replace("(was)?", "(was"), r"patterns\[1\].*parenthesis"),
        (lambda t: t.replace("name: dead_on_arrival", "name: warranty_refused"), r"more than once"),
        (lambda t: t.replace("version: 1\n", "version: 1\n  bad: [\n"), r"not valid YAML"),
    ],
)
def test_lexicon_errors_name_file_and_key(tmp_path: Path, edit, expected: str) -> None:
    path = _write(tmp_path, edit(RETAIL_LEXICON))
    with pytest.raises(ConfigError) as error:
        load_signal_lexicon(path)
    message = str(error.value)
    assert str(path) in message
    assert re.search(expected, message, re.DOTALL), message
    assert error.value.fix


def test_missing_lexicon_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_signal_lexicon(tmp_path / "nope.yaml")


def test_default_lexicon_covers_the_policy_signals() -> None:
    lexicon = load_signal_lexicon(DEFAULT_LEXICON_PATH)
    assert set(lexicon.signal_names) == {
        "repeat_failure", "unanswered_contact", "bounced_between_agents", "public_threat", "legal_threat",
        "regulator_threat", "manager_request", "charged_not_delivered", "long_wait", "hardship",
        "vulnerable_customer",
    }  # fmt: skip


def test_compact_pattern_syntax() -> None:
    words = {"DET": ["a", "the"]}
    assert compile_pattern("(@DET|my)? card", words) == [
        [{"LOWER": {"IN": ["a", "the", "my"]}, "OP": "?"}, {"LOWER": "card"}]
    ]
    assert compile_pattern("!me|us _{0,2} ~", words) == [
        [{"LOWER": {"NOT_IN": ["me", "us"]}}, {"OP": "{0,2}"}, {"IS_PUNCT": False}]
    ]
    variants = compile_pattern("#>=3|several times", words)
    assert len(variants) == 2 and all(v[1] == {"LOWER": "times"} for v in variants)
    with pytest.raises(ValueError, match="optional"):
        compile_pattern("a? b*", words)
    assert (number_value("14"), number_value("third"), number_value("3rd"), number_value("word")) == (
        14.0,
        3.0,
        3.0,
        -1.0,
    )


# =============================================================================== real narratives

_FILED_WITH_REGULATOR = re.compile(
    r"\b(?:filed|submitted|lodged|filing|submitting|file|submit)\b(?:\W+\w+){0,5}?\W+(?:the\s+)?"
    r"(?:CFPB|Consumer Financial Protection Bureau|Attorney Generals?)\b",
    re.IGNORECASE,
)


def test_real_cfpb_narratives() -> None:
    """~200 real narratives: the detector runs, spans round-trip, explicit filings are found."""
    complaints = read_cfpb()
    filed = [c for c in complaints if _FILED_WITH_REGULATOR.search(c.text)]
    others = [c for c in complaints if not _FILED_WITH_REGULATOR.search(c.text)][: 200 - len(filed)]
    assert len(filed) >= 5, "the regex expectation should cover several narratives"
    detector = SignalDetector.from_path()
    normaliser, segmenter = Normaliser(), Segmenter()
    missed = []
    for complaint in [*filed, *others]:
        normalised = normaliser.normalise(complaint.text)
        body = segmenter.segment(normalised.body.text)
        history = segmenter.segment_many([h.text for h in normalised.history])
        found = detector.detect(normalised, body, history)
        assert_round_trip(complaint.text, found)
        if complaint in filed and "regulator_threat" not in {s.name for s in found}:
            missed.append(complaint.complaint_id)
    assert not missed, f"regulator_threat missed in narratives {missed}"
