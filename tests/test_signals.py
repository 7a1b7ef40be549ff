"""The detect-signals stage: hand-written cases per signal, context handling, spans, lexicon loading.

Every case is text the team wrote (no public data set text is copied here); the last test reads
real CFPB narratives in place from the data directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import spacy
from spacy.matcher import Matcher

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
    # A request reported in the past is not a request in this message (GUIDELINES §2.2).
    ("manager_request", "I asked for a supervisor and was refused."),
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


# =============================================================================== phrasing families
# One group per family of phrasings added after the error analysis on the routing dev split.
# Every sentence here is our own (none is copied from the routing set or a public data set).

FAMILIES = {
    "public_threat": [
        # everyone will hear about it
        "Honestly, everybody is going to hear about how you treated me.",
        "I'll make sure the whole world knows what your bank did to us.",
        # a social post that promises more posts
        "been posting updates on here every day and I will keep posting until it's fixed",
        # media, with verbs such as escalate / send
        "I'm sending the whole story to the local TV news tonight.",
        "This will be escalated to the newspapers if I hear nothing.",
        # shareholders' meetings
        "As a shareholder I intend to bring this up at the next annual general meeting.",
        # posts with a longer gap before the platform
        "I'll be sharing every letter you sent me, names included, on Reddit.",
        # non-English
        "Voy a publicar todo esto en redes sociales.",
    ],
    "charged_not_delivered": [
        "I paid $40 for the card upgrade two weeks ago and it still hasn't turned up.",
        "The $300 left my account on Monday, but my landlord still hasn't received a penny.",
        "You charged me $150 a month since March and have not negotiated a single debt.",
        "El dinero fue debitado de mi cuenta pero mi hermano nunca lo recibió.",
    ],
    "repeat_failure": [
        "After your team fixed my standing order last week, today it's back to the wrong amount.",
        "Why does my overdraft limit keep reverting to $200?",
        "The monthly maintenance fee is back, even though you waived it in May.",
        "You credited the $30 fee and then took it back a week later.",
        "Every letter asks for the same bank statement I have already sent twice.",
        "Es la segunda vez que me cobran la misma comisión.",
        "Ich habe schon wieder eine Sperre auf meiner Karte.",
    ],
    "bounced_between_agents": [
        "That isn't what your colleague said yesterday.",
        "I was told by one agent that the transfer was cancelled and by another that it went through.",
        "The branch told me to call the helpline, and the helpline told me to go back to the branch.",
        "They just keep transferring me to someone else.",
        "I phoned Monday and was told the card was sent. I phoned Friday and was told it wasn't ordered.",
    ],
    "manager_request": [
        "Please pass my complaint to someone more senior.",
        "I'd like this escalated to your branch manager.",
        "I need someone in charge to look at this today.",
        "Quiero hablar con un supervisor ahora mismo.",
    ],
    "regulator_threat": [
        "CFPB, please make them correct my report.",
        "CFPB delete these inquiries from my file.",
        "I will report your bank's practices to the FTC if this continues.",
        "He presentado una queja ante la Profeco.",
        "I don't want to go to the CFPB. But if nothing changes by Friday, I will.",
        "I am copying this letter to the local paper, my congressman, my state senator, the mayor "
        "and the state attorney general's office.",
    ],
    "legal_threat": [
        "I don't want to involve lawyers. But if you report this balance again, I will.",
        "Si no lo solucionan, hablaré con mi abogado.",
    ],
    "unanswered_contact": [
        "Your adviser simply stopped returning my calls in March.",
        "You promised to send the confirmation. No letter ever arrived.",
        "Je n'ai reçu aucune réponse à mes deux courriers.",
    ],
    "long_wait": [
        "ça fait maintenant six semaines que j'attends ma carte.",
        "Ich warte seit drei Wochen auf die Überweisung.",
    ],
    "hardship": [
        "I cannot possibly cover a one-off payment that large.",
        "My only income is my disability pension.",
        "Perdí mi trabajo en marzo y no puedo pagar la cuota.",
    ],
    "vulnerable_customer": [
        "Mi madre tiene 84 años y la estafaron por teléfono.",
    ],
}


@pytest.mark.parametrize(("signal", "text"), [(s, t) for s, ts in FAMILIES.items() for t in ts])
def test_phrasing_families(detector: SignalDetector, signal: str, text: str) -> None:
    found = detector.detect_text(text)
    assert signal in {s.name for s in found}, f"{signal} missed in: {text}"
    assert_round_trip(text, found)


FAMILY_NEGATIVES = [
    # GUIDELINES §2.1 rule 2: the bank's own boilerplate offers a route; it is not the customer's.
    ("regulator_threat", "If you disagree with our decision, you may refer your complaint to the Ombudsman."),
    ("manager_request", "You can ask for my manager if you are not happy with this answer."),
    # A question about what a complaint would do is not a threat (GUIDELINES §2.2).
    ("regulator_threat", "What would happen if I complained to the CFPB about a different bank?"),
    # An identity-theft report to the FTC documents fraud; it is not a complaint about the company.
    ("regulator_threat", "I filed an identity theft report with the FTC and the police."),
    ("regulator_threat", "I have reached out to the FTC and my local police department."),
    # Reported past requests and company offers are not manager requests.
    ("manager_request", "I was transferred to a manager who hung up on me."),
    ("manager_request", "I tried to reach your executive office twice."),
    ("manager_request", "I wanted to speak to a supervisor but none was free."),
    ("manager_request", "I want to speak to someone in the fraud department."),
    # Someone else's law firm, someone else's hardship, someone else not answering.
    ("legal_threat", "The collection agency has a law firm threatening to garnish my wages."),
    ("hardship", "He had fallen behind on his car payments, not me."),
    ("unanswered_contact", "She stopped answering the collector's calls."),
    # Things that resemble the new families but are not signals.
    ("repeat_failure", "My account is back to normal now, thanks."),
    ("repeat_failure", "The fees were returned to my account after I called."),
    ("repeat_failure", "I went back to the branch to ask about it."),
    ("public_threat", "The payment has been posting to the wrong account."),
    ("public_threat", "I read a lot of reviews before opening the account."),
    ("charged_not_delivered", "The merchant never shipped the shoes I bought with my card."),
    ("charged_not_delivered", "I haven't received any acknowledgement of my two letters about the fee."),
    ("charged_not_delivered", "They did not get the equipment back, so they billed me $200."),
    ("bounced_between_agents", "I was transferred once to the fraud team and they sorted it out."),
    ("hardship", "The app says I can't make another payment today."),
    ("hardship", "I had a minor sports injury last year."),
    ("long_wait", "I'd rather not pay it and then wait a year for the refund."),
    ("long_wait", "Espero que la tarjeta llegue en dos semanas."),
    ("vulnerable_customer", "A senior representative promised to call me."),
]


@pytest.mark.parametrize(("signal", "text"), FAMILY_NEGATIVES)
def test_family_negatives(detector: SignalDetector, signal: str, text: str) -> None:
    assert signal not in names(detector, text), f"{signal} wrongly found in: {text}"


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


RAW_PATTERN_WITH_A_TYPO = '- [{"LOWR": "warranty"}]\n          - "warranty (claim'


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
        (  # a raw spaCy Matcher pattern goes through spaCy's validation
            lambda t: t.replace('- "warranty (claim', RAW_PATTERN_WITH_A_TYPO),
            r"patterns\[1\].*LOWR",
        ),
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


@pytest.mark.parametrize("quantifier", ["{}", "{,}", "{3,1}"])
def test_bad_quantifier_in_a_compact_pattern_names_its_key(tmp_path: Path, quantifier: str) -> None:
    """Compact patterns skip spaCy's per-pattern validation; their quantifiers still get it."""
    path = _write(tmp_path, RETAIL_LEXICON.replace("(was)?", f"was{quantifier}"))
    with pytest.raises(ConfigError, match=r"patterns\[1\]") as error:
        load_signal_lexicon(path)
    assert str(path) in str(error.value)


def test_compiled_compact_patterns_pass_spacy_validation() -> None:
    """The loader trusts compile_pattern's output instead of validating each pattern with spaCy (0.3 s
    of every cold start); this pins that trust on every pattern of the default lexicon."""
    lexicon = load_signal_lexicon(DEFAULT_LEXICON_PATH)
    specs = [*lexicon.cues.values(), *(rule for signal in lexicon.signals for rule in signal.rules)]
    compact = [p for spec in specs for p in spec.patterns if isinstance(p, str)]
    assert len(compact) > 300
    matcher = Matcher(spacy.blank("en").vocab, validate=True)
    for pattern in compact:
        matcher.add(pattern, compile_pattern(pattern, lexicon.words))  # raises on an invalid pattern
    assert len(matcher) == len(set(compact))


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


# =============================================================================== generalised families
# Issue 4: rules fitted to dev's phrasings scored ~0.60 on held-out messages. These paraphrases (written
# by the team, 8-40 per weak signal: other verbs, nouns, idioms, tenses, lowercase chat, British and
# American usage) pin the broader families in the lexicon, so a later tuner cannot narrow a family back
# to one sentence without a test failing. The negatives are the near misses each broadening risks.

GENERALISED_FAMILIES = {
    "public_threat": [
        "I'm going public with this.",
        "im gonna go public about how you treat people",
        "I went public on Facebook yesterday.",
        "I'll post about this on Instagram tonight.",
        "posting this to reddit right now",
        "Sharing this on TikTok so everyone sees it.",
        "I will share my story on LinkedIn.",
        "I have already posted the whole thread on X.",
        "Next step is YouTube, I'm filming a video about this.",
        "I'll put this all over social media.",
        "I'm going to leave a review on Trustpilot.",
        "I will write a review on Google.",
        "Expect a one star review on Yelp.",
        "I'll be telling the news about this.",
        "I am contacting the press.",
        "I'll call a reporter at the Times.",
        "I've reached out to a journalist at the local paper.",
        "I will go to the media with this.",
        "I'm telling everyone I know to avoid your bank.",
        "I will tell all my friends and family about this.",
        "I'll make sure all my followers know.",
        "I'll be raising this with your shareholders.",
        "I'm writing to your board about this.",
        "Your investors will hear about this.",
        "I'm making a video about this tonight.",
        "watch me blow this up on twitter",
        "I'm contacting consumer watchdog shows like Watchdog on the BBC.",
        "This is going on my blog.",
        "i'll drag you on tiktok",
        "I'm sending my story to the newspaper.",
        "I have contacted a TV station.",
        "I'll name and shame you online.",
        "Everyone on Reddit is going to hear about this.",
        "I'm going to write about this online.",
        "I've drafted a review for Google and Trustpilot.",
    ],
    "charged_not_delivered": [
        "I paid $30 for express shipping and the card never arrived.",
        "You charged me for the replacement card but I never received it.",
        "The money was taken from my account but the transfer never reached my son.",
        "$500 was debited on the 2nd and my landlord still hasn't got it.",
        "I was charged the upgrade fee but my account was never upgraded.",
        "Funds were deducted but the wire never arrived.",
        "You took the fee for the premium plan and never activated it.",
        "I paid off the car in full in June and still haven't received the title.",
        "The ATM took my card and didn't give me any cash, but the $200 was debited.",
        "the atm didnt dispense my money but it came out of my account",
        "I bought a cashier's check and it was never sent to the payee.",
        "Your app charged me $4.99 for instant transfer and the money still isn't there.",
        "I sent $800 via your international transfer service, fee taken, recipient got nothing.",
        "Charged a $15 delivery fee, still no card three weeks later.",
        "you took my money and i never got the card",
        "Money gone from my account, transfer still not delivered.",
        "I paid for overnight delivery of my new checks and they never came.",
        "The deposit was taken from my savings but the CD was never opened.",
    ],
    "long_wait": [
        "I've been waiting six weeks for my new card.",
        "It's been over a month and still no refund.",
        "Three weeks later and still nothing.",
        "I've waited since March for a reply.",
        "This has been going on for months.",
        "still waiting after 4 weeks",
        "I applied in January and it's now April with no decision.",
        "Two months on and no update.",
        "We are now in week five of waiting.",
        "It has taken more than three weeks so far.",
        "still no card, it's been 3 weeks",
        "I've been chasing this since September.",
        "This has dragged on for six weeks.",
        "They said 5 working days. That was a month ago.",
        "over a month and nothing has happened",
        "I've now waited 21 days for the refund.",
    ],
    "bounced_between_agents": [
        "Every person I speak to tells me something different.",
        "I've been passed from department to department.",
        "The branch sent me to the call centre and the call centre sent me back to the branch.",
        "Your chat says one thing and your phone team says another.",
        "I get a different story every time I call.",
        "The first rep said it was approved and the second said it was denied.",
        "I've spoken to five different agents and none of them could answer my question.",
        "No two agents have given me the same answer.",
        "I keep being bounced between fraud and disputes.",
        "Each department blames the other.",
        "The fraud team told me to call disputes, and disputes told me to call fraud.",
        "Nobody can give me a straight answer, I've been transferred three times.",
        "I was told one thing on the phone and the opposite in branch.",
        "Your agents keep contradicting each other.",
        "They keep passing the buck.",
        "I was sent round in circles.",
        "It's like a merry-go-round of transfers.",
    ],
    "repeat_failure": [
        "My card was declined again even though you said it was fixed.",
        "The same error is back on my statement.",
        "It happened again today.",
        "This is the fourth time this has happened.",
        "The problem has come back.",
        "The new card doesn't work either.",
        "The fee was refunded and then charged again.",
        "Once again my direct deposit is missing.",
        "You fixed it last week and it's broken again.",
        "The replacement card has the same fault.",
        "For the third month in a row my payment was misapplied.",
        "The late mark came back on my credit report after you removed it.",
        "my transfer failed again, thats twice now",
        "Here we go again, same problem as last month.",
        "They reversed the fee and charged it again the next month.",
        "Yet again my account has been frozen.",
        "The error reappeared on this month's statement.",
    ],
    "unanswered_contact": [
        "Nobody has got back to me.",
        "I emailed three times and heard nothing.",
        "You never called me back.",
        "I left two voicemails and no one returned my call.",
        "I'm still waiting for the callback I was promised.",
        "No one has responded to my complaint.",
        "I sent a secure message a week ago and got no answer.",
        "My emails go unanswered.",
        "You said someone would contact me within 48 hours. Nobody did.",
        "I wrote to you twice and you ignored me.",
        "still no reply to my emails",
        "I've had no acknowledgement of my complaint.",
        "I was promised a call back on Monday and it never came.",
        "Not one of my messages has been answered.",
        "The manager said he'd ring me back and never did.",
    ],
    "hardship": [
        "I lost my job last month.",
        "I was made redundant in March.",
        "I've been out of work since January.",
        "I can't afford these payments anymore.",
        "We're struggling to pay the mortgage.",
        "My hours were cut and I can't keep up.",
        "I'm on medical leave after surgery.",
        "I was diagnosed with cancer and can't work.",
        "Money is really tight right now.",
        "I'm behind on my rent.",
        "I filed for bankruptcy last year.",
        "My husband lost his job and we only have my income.",
        "i got laid off and cant pay",
        "I am unemployed.",
        "I can no longer afford the repayments.",
    ],
    "vulnerable_customer": [
        "My mother is 82 and has dementia.",
        "I'm 71 years old.",
        "My elderly father was scammed.",
        "I was tricked into sending money to a scammer.",
        "My husband passed away last month.",
        "My dad has Alzheimer's.",
        "I'm a widow on a fixed income.",
        "Someone pretending to be from your bank got my details and I sent them money.",
        "I'm disabled and housebound.",
        "My grandmother, who is 90, was targeted by a phone scam.",
        "My wife died in January and I'm trying to sort her accounts.",
        "I'm a senior citizen.",
    ],
    "manager_request": [
        "I want to speak to a manager.",
        "Put me through to your supervisor.",
        "Please escalate this to management.",
        "Can I speak to someone in charge?",
        "I need this escalated to someone senior.",
        "let me talk to ur manager",
        "I demand to speak with a supervisor.",
        "Please pass this to a senior manager.",
        "Get me a manager now.",
        "I would like my complaint escalated.",
        "I'd like a supervisor to call me.",
        "Can a manager call me back?",
        "Please have a manager contact me.",
        "I insist on speaking to someone more senior.",
        "Escalate this please.",
        "I want a manager to review this.",
    ],
}
GENERALISED_NEGATIVES = [
    ("public_threat", "I've already put a five-star review on Google for the branch."),
    ("public_threat", "My daughter wants me to put the whole thing on TikTok, but that's not me."),
    ("public_threat", "I'm not going to post about this on Facebook, I just want it fixed."),
    ("public_threat", "The credit reporter that updated my name was the only one."),
    ("public_threat", "I saw a news station report about overdraft fees."),
    ("manager_request", "Thank you for offering to have a supervisor call me, but it's not necessary."),
    ("charged_not_delivered", "My refund has not been processed yet."),
    ("charged_not_delivered", "This account was not opened by myself and I want the charges investigated."),
    ("charged_not_delivered", "I mailed my loan payment on the 2nd and it hasn't posted to my account yet."),
    ("long_wait", "I ordered a card on Tuesday and paid the rush fee. It's Thursday now and nothing yet."),
    ("long_wait", "The app says it usually takes 3 weeks."),
    ("repeat_failure", "Once again I informed him that this was not my account."),
    ("unanswered_contact", "Nobody has ever inspected the house as far as I can tell."),
    ("unanswered_contact", "If I hear nothing by Friday I will call again."),
    ("hardship", "The lender has since filed for bankruptcy."),
    ("bounced_between_agents", "The agent was reading from a script but fixed it in one call."),
]


# =============================================================================== round 3 (dev3)
# Phrasings written for the third round, to check that the lexicon generalises beyond the wording
# of dev/dev2: lemma and synonym sets, optional words and relative clauses, not one row's phrase.

ROUND3_FAMILIES = {
    "repeat_failure": [
        "You fixed my address in May and now the statements are going to the old address again.",
        "The duplicate charge you reversed on Monday has been charged to my account again.",
        "My direct deposit was rejected once more, even though you said the problem was solved.",
        "The late payment you removed from my credit report is showing up again this month.",
        "They removed the collection, but a while later they put it back on.",
        "Today the fee was taken out of my account a second time for the same purchase.",
        "since monday i cannot log in again, same error code",
    ],
    "unanswered_contact": [
        "Your agent promised a call back within 24 hours. That never happened.",
        "I've emailed your complaints team three times and heard absolutely nothing.",
        "No one had gotten back to me.",
        "I have had nothing back, not even an acknowledgement.",
        "chased on the 9th and the 16th. zero replies.",
        "been waiting on the callback the guy promised on friday",
        "Ich habe dreimal angerufen und niemand hat mich zurückgerufen.",
    ],
    "bounced_between_agents": [
        "Your online chat says the payment is pending but the phone team says it was returned.",
        "Deferment said to call servicing, and servicing put me back to deferment.",
        "They continuously transfer or misdirect me without answering.",
        "The branch says the hold is the call centre's decision.",
        "The gentleman on the phone said it was a branch matter.",
        "I have spoken with four of your staff and received four different figures.",
        "I was told by some reps that the check had arrived, and by others that it had not.",
        "She transferred me to another department and the new agent said she could not help.",
        "The last three replies were copy and paste and none of them mention my refund.",
        "The lady at the branch told me the exact opposite.",
    ],
    "public_threat": [
        "Maybe the newspapers would like to hear about this.",
        "I'm writing to the Evening Courier's consumer column this weekend unless I hear back.",
        "I have a fairly large following on Instagram and I'm happy to share how you treat customers.",
        "The thread I started on reddit about your app has 2k upvotes.",
        "I have a review half-written for Trustpilot and it goes live on Friday.",
    ],
    "legal_threat": [
        "I have spoken to a solicitor about this.",
        "If my issues are not corrected I will escalate this matter to federal court.",
        "I reserve all my rights, including the right to bring a claim in the county court.",
        "My cousin is a lawyer and she's drafting a letter to you.",
        "Expect a letter before claim from me at the end of the week.",
        "I am filing a motion to vacate the judgment.",
    ],
    "regulator_threat": [
        "I also put all of this into a complaint at consumerfinance.gov.",
    ],
    "manager_request": [
        "I want my case reviewed by a manager.",
        "I want this looked at by someone more senior than a call centre agent.",
        "Please have it dealt with by a senior member of staff.",
        "Please put me through to whoever is in charge of complaints.",
        "Who is your boss?",
    ],
    "charged_not_delivered": [
        "I paid the $35 expedite fee with my payoff and six weeks later I still don't have the title.",
        "The dealer still doesn't have the cashier's check and the money's gone from my account.",
        "They charged me a $45 wire fee and my supplier says nothing has come in.",
        "I paid off the loan and they are stonewalling on sending the release of lien.",
        "You charged me the $30 stop payment fee but the check was paid anyway.",
        "I paid for express delivery but the card you promised has not come.",
    ],
    "long_wait": [
        "The money never showed up on the card. That was two and a half weeks ago.",
        "That was 19 days ago.",
        "It has been over a month since you promised the replacement card.",
    ],
    "hardship": [
        "We filed chapter 7 in March.",
        "I am low income and this debt is crippling.",
        "I told him I have no money.",
        "There is no way I can afford that.",
        "I'm an indigent person now.",
        "I had covid in March and was off work.",
    ],
    "vulnerable_customer": [
        "I went to the branch about my dad being deceased.",
        "I sent them the death certificate as executor of her estate.",
        "I now know it was a scam.",
        "My son has explained to me that it was a scam.",
    ],
}
ROUND3_NEGATIVES = [
    ("legal_threat", "URGENT: Your account will face LEGAL ACTION unless you verify your details."),
    ("legal_threat", "I am now being sued for the balance plus attorney fees."),
    ("public_threat", "Left you a 5-star review on Trustpilot, the branch staff were wonderful."),
    (
        "repeat_failure",
        "Last spring your fraud team sorted a card problem for me; hoping for the same again.",
    ),
    ("repeat_failure", "I'd like my statements to keep coming by post."),
    ("manager_request", "I finally escalated my request to a supervisor and it was processed."),
    ("manager_request", "The mortgage comes with a higher rate for a senior member of the household."),
    ("hardship", "Applied for the hardship deferral on my student loan in March."),
    ("hardship", "Do you offer any financial hardship programmes for customers?"),
    ("hardship", "I started receiving letters about this card around COVID."),
    ("hardship", "I can't pay my rent until you release the hold on my paycheck deposit!"),
    ("hardship", "This has caused undue financial hardship."),
    ("vulnerable_customer", "Thank you for all your help closing my late father's account last spring."),
    ("vulnerable_customer", "They coerced me into believing the other company could help."),
    ("charged_not_delivered", "I was told they never received my fax and would have to send it again."),
]


# Round 4 (dev2/dev3 misses): a replacement that fails the same way, "Nth time the same ...",
# "there is no card" after a payment, a cash machine that kept the cash.
ROUND4_FAMILIES = {
    "repeat_failure": [
        "They sent a new card and this one does the exact same thing.",
        "The second replacement checkbook arrived today with my surname spelled Petersen again.",
        "Third time the same pending transfer has been reversed after you said it had cleared.",
    ],
    "charged_not_delivered": [
        "I paid the $25 express fee on the 2nd. It is the 20th and there is no card.",
        "I deposited $400 at the machine, it counted the cash and then didnt give me anything, no receipt.",
    ],
}
ROUND4_NEGATIVES = [
    ("repeat_failure", "The third time I called, they hung up."),
    ("repeat_failure", "The replacement card came today and I had to call again to activate it."),
    ("repeat_failure", "I have one card and it has the same number as the old one."),
    ("charged_not_delivered", "There is no card fee on this account."),
    ("charged_not_delivered", "I paid my bill. There is no money left for rent."),
    ("charged_not_delivered", "The ATM did not give me anything to sign."),
]

#: The phrasing families and near misses of each later lexicon round, checked alike.
LATER_ROUNDS = {
    "generalised": (GENERALISED_FAMILIES, GENERALISED_NEGATIVES),
    "round3": (ROUND3_FAMILIES, ROUND3_NEGATIVES),
    "round4": (ROUND4_FAMILIES, ROUND4_NEGATIVES),
}


@pytest.mark.parametrize(
    ("signal", "text"),
    [(s, t) for families, _ in LATER_ROUNDS.values() for s, ts in families.items() for t in ts],
)
def test_later_round_families(detector: SignalDetector, signal: str, text: str) -> None:
    assert signal in names(detector, text)


@pytest.mark.parametrize(
    ("signal", "text"), [case for _, negatives in LATER_ROUNDS.values() for case in negatives]
)
def test_later_round_negatives(detector: SignalDetector, signal: str, text: str) -> None:
    assert signal not in names(detector, text)


@pytest.mark.parametrize(
    ("signal", "text"),
    [
        ("legal_threat", "I have not spoken to a solicitor and I don't plan to."),
        ("public_threat", "I'm not going to write to the newspaper's consumer column about this."),
        ("manager_request", "No need to have it dealt with by a senior member of staff."),
        ("repeat_failure", "If the fee you reversed is charged again I will call."),
        ("charged_not_delivered", "If the title doesn't arrive after I pay off the loan, what do I do?"),
        ("hardship", "If I ever had no money, could I pause the loan?"),
    ],
)
def test_round3_negated_and_hypothetical(detector: SignalDetector, signal: str, text: str) -> None:
    assert signal not in names(detector, text)


@pytest.mark.parametrize(
    "text",
    [
        "If this is not fixed by Friday I'll write to the Evening Courier's consumer column.",
        "Should the analysis not be corrected, I will escalate this matter to federal court.",
    ],
)
def test_round3_conditional_threats_count(detector: SignalDetector, text: str) -> None:
    assert names(detector, text) & {"public_threat", "legal_threat"}


def test_sentence_gates_are_computed_once_per_doc(detector: SignalDetector) -> None:
    """The word gates of a pattern are looked up once per message, whatever reads them (rule or cue)."""
    text = "I paid $25 for express delivery. The card never arrived. I called twice and nobody called back."
    first = detector.detect_text(text)
    again = detector.detect_text(text)
    assert [(s.name, s.start, s.end) for s in first] == [(s.name, s.start, s.end) for s in again]
    assert {"charged_not_delivered", "unanswered_contact"} <= {s.name for s in first}
    assert_round_trip(text, first)


def test_phrase_expansion_limit_changes_speed_not_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed-word patterns run as PhraseMatcher phrases up to ``_MAX_EXPANSION`` sequences and as
    gated token Matchers beyond it; the limit is a start-up/speed trade only, so every pattern
    matched the other way must give the same signals, on the fixtures and on real narratives."""
    import pipeline.signals as signals_module

    texts = [t for ts in POSITIVE.values() for t in ts] + [c.text for c in read_cfpb()[:150]]
    default = SignalDetector.from_path()
    monkeypatch.setattr(signals_module, "_MAX_EXPANSION", 1)  # (almost) every pattern as a Matcher
    matchers = SignalDetector.from_path()
    assert len(matchers.phrase_matcher) < len(default.phrase_matcher)
    found = 0
    for text in texts:
        expected = default.detect_text(text)
        assert matchers.detect_text(text) == expected, text[:80]
        found += len(expected)
    assert found > len(POSITIVE)


# ============================================================= generalisation round (team-written set)
# Rules written from the tune half of data/signal_training (stop 17). Those that also fired, mostly
# wrongly, on real CFPB narratives were dropped (a loose "again" near an earlier fix, "asking" for a
# senior person, content words like "thread", a broad "never arrived"), and their cases with them.

GENERALISED_POSITIVE = [
    (
        "bounced_between_agents",
        "The first agent said the fee would be refunded. A different agent told me it was never charged.",
    ),
    (
        "bounced_between_agents",
        "Your escrow department told me it was paid, but your tax department says they have no record.",
    ),
    ("bounced_between_agents", "Apparently the answer depends on who picks up the phone."),
    ("charged_not_delivered", "The ATM ate my $300 yesterday and nothing came out."),
    ("public_threat", "I shall be writing a letter to the editor of our local newspaper."),
]

GENERALISED_NEGATIVE = [
    (
        "bounced_between_agents",
        "Your fraud team told me by telephone that the payment is with your correspondent bank.",
    ),
    ("repeat_failure", "I raised it in writing in March and again in May."),
    ("manager_request", "Agent: I can transfer you to my supervisor if you'd like."),
    ("public_threat", "When is the annual general meeting of the allotment society?"),
]


@pytest.mark.parametrize(("signal", "text"), GENERALISED_POSITIVE)
def test_generalised_positives(detector: SignalDetector, signal: str, text: str) -> None:
    assert signal in names(detector, text)


@pytest.mark.parametrize(("signal", "text"), GENERALISED_NEGATIVE)
def test_generalised_negatives(detector: SignalDetector, signal: str, text: str) -> None:
    assert signal not in names(detector, text)
