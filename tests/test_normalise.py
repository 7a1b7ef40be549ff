"""The normalise stage on realistic messages: what is read, what is set aside, and where it was."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.errors import InputError
from pipeline.normalise import (
    NormalisedMessage,
    Normaliser,
    NormaliserConfig,
    check_text,
    decode_text,
    looks_like_html,
)
from pipeline.textmap import MappedText

OUTLOOK_CHAIN = """Hi Support,

My card ending 4421 was charged twice for the same order. Can you refund the duplicate charge?

Best regards,
Maria Lopez
Account Manager | Contoso Ltd
+1 555 0100

From: Support Team <support@bank.example>
Sent: Monday, March 4, 2024 10:12 AM
To: Maria Lopez <maria@contoso.example>
Subject: RE: Duplicate charge

Dear Maria,
We are looking into it. I see this is the third time you have written to us.

-----Original Message-----
From: Maria Lopez
Sent: Friday, March 1, 2024 9:00 AM
To: Support
Subject: Duplicate charge

I was charged twice. I will contact my lawyer if this is not fixed.
"""

GMAIL_REPLY = """Still no refund. I want to cancel my account.

Sent from my iPhone

On Tue, Mar 5, 2024 at 9:14 AM Acme Support <help@acme.example> wrote:
> Thanks for contacting us. A refund will be issued in 5 business days.
>
> On Mon, Mar 4, 2024 at 8:00 AM Jo <jo@example.com> wrote:
>> Where is my refund?
"""

GMAIL_TWO_LINE_HEADER = """Any update on this?

On Wed, 6 Mar 2024 at 10:01, Customer Care Team at Example Bank <
care@bank.example> wrote:
> We have received your request.
"""

FORWARD_WITH_NOTE = """Please see the complaint below from my mother, she cannot log in.

---------- Forwarded message ---------
From: Ann Smith <ann@example.com>
Date: Wed, Jan 10, 2024 at 3:02 PM
Subject: Locked out
To: Bob Smith <bob@example.com>

I have been locked out of online banking since Monday.
"""

FORWARD_ONLY = """---------- Forwarded message ---------
From: Ann Smith <ann@example.com>
Date: Wed, Jan 10, 2024 at 3:02 PM
Subject: Locked out
To: Bob Smith <bob@example.com>

I have been locked out of online banking since Monday. Please unlock it.
"""

HTML_EMAIL = (
    "<html><head><style>p {color: red}</style><title>Order</title></head><body>"
    "<p>Hello&nbsp;team,</p><p>My orders #123 &amp; #124 didn&#39;t arrive.<br>Can you check?</p>"
    "<ul><li>Order 123</li><li>Order 124</li></ul><!-- tracking pixel --><script>track()</script>"
    "<div>Thanks,<br>Sam</div></body></html>"
)

CFPB_NARRATIVE = (
    "On XX/XX/2019 I called XXXX XXXX at XXXX Bank about a {$1,250.00} charge dated XX/XX/XXXX. "
    "They said my account XXXX was closed. My Xbox order, an XL shirt and an X-ray bill were not affected."
)

ITSM_INLINE_CHAIN = (
    "received from: abc.def@gmail.com\r\n\r\n"
    "hello team, please reset my password for the erp portal. it is locked since morning. "
    "from: ihkolepb ozhnjyef sent: 29 october 2016 13:38 to: company@ticketing_tool.com "
    "subject: ess portal access issue hi, below mentioned employee is not able to login to ess portal"
)

ITSM_HEADER_FIRST = (
    "from: kuhyndan lalthy \nsent: monday, october 03, 2016 9:52 am\nto: nwfodmhc exurcwkm\n"
    "cc: qjgnkhso vahgolwx\nsubject: re: user id not able to log-in\n\n"
    "the user is not able to log-in to the windows machine. can you check it urgently?\n\n"
)

PHONE_SIGNATURE = """Hi, the app keeps crashing when I open the statements tab.
Could you look into it?

Get Outlook for Android
"""

VALEDICTION_EMAIL = """Hello,

I need to change the delivery address for order 5512 to 10 High Street, Leeds.
Thank you for your help with this.

Kind regards,
John Smith
Operations Lead
Smith & Sons Ltd
0113 496 0000
"""

VALEDICTION_IN_MIDDLE = """Thanks,
but that did not answer my question. I asked why my premium went up by 40 percent this year when
nothing changed on my policy, and nobody has explained it. Please send me a breakdown of the charges
and the name of the person who approved the increase, because I intend to complain formally.
"""


@pytest.fixture(scope="module")
def normaliser() -> Normaliser:
    return Normaliser()


def span_of(body: MappedText, phrase: str) -> tuple[int, int]:
    """Original offsets of ``phrase`` as found in the body."""
    i = body.text.index(phrase)
    return body.to_original(i, i + len(phrase))


def assert_maps_back(result: NormalisedMessage, original: str, *phrases: str) -> None:
    """Phrases no replacement touched must map to exactly the same characters in the original."""
    for phrase in phrases:
        start, end = span_of(result.body, phrase)
        assert original[start:end] == phrase


def section_texts(result: NormalisedMessage, original: str, kind: str) -> list[str]:
    return [original[s.start : s.end] for s in result.sections if s.kind == kind]


# ------------------------------------------------------------------------------- check_text / decode


@pytest.mark.parametrize("text", ["", "   ", "\n\t \r\n"])
def test_check_text_refuses_empty(text: str) -> None:
    with pytest.raises(InputError, match="empty") as info:
        check_text(text, 1000)
    assert info.value.fix and info.value.exit_code == 3


def test_check_text_refuses_too_long_with_the_setting_to_change() -> None:
    with pytest.raises(InputError, match="more than the limit") as info:
        check_text("a" * 101, 100)
    assert "max_chars" in str(info.value)


def test_check_text_refuses_nul_bytes() -> None:
    with pytest.raises(InputError, match="NUL"):
        check_text("h\x00e\x00l\x00l\x00o\x00", 1000)


def test_check_text_refuses_binary_looking_text() -> None:
    binary = "".join(chr(c) for c in range(1, 32) if chr(c) not in "\t\n\r") * 3 + "some text here"
    with pytest.raises(InputError, match="binary"):
        check_text(binary, 10_000)


def test_check_text_accepts_normal_text_with_a_stray_control_character() -> None:
    check_text("Please cancel my order\x07 number 55512 today, thank you.", 1000)


def test_decode_text_strips_bom_and_reads_utf16() -> None:
    assert decode_text("\ufeffCafé".encode()) == "Café"
    assert decode_text("Café ✓".encode("utf-16")) == "Café ✓"


def test_decode_text_names_the_bad_byte_and_the_fix() -> None:
    data = b"Price: 5 " + "€".encode("cp1252") + b" please"
    with pytest.raises(InputError, match="byte 9") as info:
        decode_text(data)
    assert "UTF-8" in (info.value.fix or "")


# ------------------------------------------------------------------------------- configuration


def test_config_forbids_unknown_fields_and_describes_every_field() -> None:
    with pytest.raises(ValidationError):
        NormaliserConfig(strip_signature=False)  # type: ignore[call-arg]
    for name, info in NormaliserConfig.model_fields.items():
        assert info.description, f"{name} has no description"


# ------------------------------------------------------------------------------- quoted history


def test_outlook_chain_keeps_new_text_and_sets_history_aside(normaliser: Normaliser) -> None:
    result = normaliser.normalise(OUTLOOK_CHAIN)
    assert result.body.text == (
        "Hi Support,\n\nMy card ending 4421 was charged twice for the same order. "
        "Can you refund the duplicate charge?"
    )
    assert_maps_back(result, OUTLOOK_CHAIN, "Can you refund the duplicate charge?", "Hi Support,")
    assert len(result.history) == 2
    assert "third time you have written" in result.history[0].text
    assert result.history[1].text.startswith("-----Original Message-----")
    assert "contact my lawyer" in result.history[1].text
    # History keeps its own map: the escalation phrase highlights in the original.
    item = result.history[1]
    i = item.text.index("contact my lawyer")
    s, e = item.to_original(i, i + len("contact my lawyer"))
    assert OUTLOOK_CHAIN[s:e] == "contact my lawyer"
    quoted = section_texts(result, OUTLOOK_CHAIN, "quoted_history")
    assert len(quoted) == 1 and quoted[0].startswith("From: Support Team")
    assert quoted[0].endswith("not fixed.")
    signature = section_texts(result, OUTLOOK_CHAIN, "signature")
    assert signature == ["Best regards,\nMaria Lopez\nAccount Manager | Contoso Ltd\n+1 555 0100"]


def test_gmail_reply_strips_quote_marks_in_history(normaliser: Normaliser) -> None:
    result = normaliser.normalise(GMAIL_REPLY)
    assert result.body.text == "Still no refund. I want to cancel my account."
    assert_maps_back(result, GMAIL_REPLY, "I want to cancel my account.")
    assert len(result.history) == 1
    history = result.history[0].text
    assert history.startswith("On Tue, Mar 5, 2024")
    assert "\nThanks for contacting us. A refund will be issued" in history
    assert ">" not in history.split("\n")[1]
    assert section_texts(result, GMAIL_REPLY, "signature") == ["Sent from my iPhone"]
    assert section_texts(result, GMAIL_REPLY, "quoted_history")[0].startswith("On Tue, Mar 5")


def test_gmail_header_wrapped_over_two_lines(normaliser: Normaliser) -> None:
    result = normaliser.normalise(GMAIL_TWO_LINE_HEADER)
    assert result.body.text == "Any update on this?"
    assert "We have received your request." in result.history[0].text


def test_forward_with_note_reads_the_note(normaliser: Normaliser) -> None:
    result = normaliser.normalise(FORWARD_WITH_NOTE)
    assert result.body.text == "Please see the complaint below from my mother, she cannot log in."
    assert len(result.history) == 1
    assert "locked out of online banking" in result.history[0].text
    assert [s.kind for s in result.sections] == ["quoted_history"]


def test_forward_without_note_reads_the_forwarded_message(normaliser: Normaliser) -> None:
    result = normaliser.normalise(FORWARD_ONLY)
    assert result.body.text == "I have been locked out of online banking since Monday. Please unlock it."
    assert_maps_back(result, FORWARD_ONLY, "Please unlock it.")
    assert result.history == []
    assert [s.kind for s in result.sections] == ["header"]
    header = section_texts(result, FORWARD_ONLY, "header")[0]
    assert header.startswith("---------- Forwarded message") and header.endswith(
        "To: Bob Smith <bob@example.com>"
    )


def test_inline_quote_blocks_between_answers(normaliser: Normaliser) -> None:
    text = (
        "> Which card is it?\nThe debit card.\n> When did you lose it?\nYesterday evening, please block it."
    )
    result = normaliser.normalise(text)
    assert result.body.text == "The debit card.\nYesterday evening, please block it."
    assert [h.text for h in result.history] == ["Which card is it?", "When did you lose it?"]
    assert_maps_back(result, text, "Yesterday evening, please block it.")


def test_only_quoted_text_is_kept_as_body(normaliser: Normaliser) -> None:
    text = "> my card was stolen please block it\n> i need a new one"
    result = normaliser.normalise(text)
    assert result.body.text == "my card was stolen please block it\ni need a new one"
    assert result.history == []


# ------------------------------------------------------------------------------- IT tickets


def test_itsm_inline_flattened_chain_and_received_from_header(normaliser: Normaliser) -> None:
    result = normaliser.normalise(ITSM_INLINE_CHAIN)
    assert result.body.text == (
        "hello team, please reset my password for the erp portal. it is locked since morning."
    )
    assert_maps_back(result, ITSM_INLINE_CHAIN, "please reset my password for the erp portal.")
    assert section_texts(result, ITSM_INLINE_CHAIN, "header") == ["received from: abc.def@gmail.com"]
    assert len(result.history) == 1
    assert result.history[0].text.startswith("from: ihkolepb ozhnjyef sent: 29 october 2016")
    assert "not able to login" in result.history[0].text


def test_itsm_ticket_that_starts_with_a_mail_header(normaliser: Normaliser) -> None:
    result = normaliser.normalise(ITSM_HEADER_FIRST)
    assert result.body.text == (
        "the user is not able to log-in to the windows machine. can you check it urgently?"
    )
    assert result.history == []
    header = section_texts(result, ITSM_HEADER_FIRST, "header")[0]
    assert header.startswith("from: kuhyndan") and header.endswith("subject: re: user id not able to log-in")


# ------------------------------------------------------------------------------- signatures


def test_phone_footer_is_removed(normaliser: Normaliser) -> None:
    result = normaliser.normalise(PHONE_SIGNATURE)
    assert (
        result.body.text
        == "Hi, the app keeps crashing when I open the statements tab.\nCould you look into it?"
    )
    assert section_texts(result, PHONE_SIGNATURE, "signature") == ["Get Outlook for Android"]


def test_valediction_block_removed_but_content_sentence_kept(normaliser: Normaliser) -> None:
    result = normaliser.normalise(VALEDICTION_EMAIL)
    assert result.body.text.endswith("Thank you for your help with this.")
    assert "John Smith" not in result.body.text
    sig = section_texts(result, VALEDICTION_EMAIL, "signature")
    assert sig == ["Kind regards,\nJohn Smith\nOperations Lead\nSmith & Sons Ltd\n0113 496 0000"]


def test_valediction_followed_by_long_content_is_not_a_signature(normaliser: Normaliser) -> None:
    result = normaliser.normalise(VALEDICTION_IN_MIDDLE)
    assert result.body.text.startswith("Thanks,\nbut that did not answer my question.")
    assert result.sections == []


def test_dash_dash_signature_and_thanks_only_message(normaliser: Normaliser) -> None:
    text = "Where is my parcel? It is two weeks late.\n-- \nPat Jones\nwww.example.com"
    result = normaliser.normalise(text)
    assert result.body.text == "Where is my parcel? It is two weeks late."
    only_thanks = normaliser.normalise("Thanks!")
    assert only_thanks.body.text == "Thanks!"


# ------------------------------------------------------------------------------- HTML and unicode


def test_html_email_becomes_text_with_offsets(normaliser: Normaliser) -> None:
    result = normaliser.normalise(HTML_EMAIL)
    assert result.was_html
    assert result.body.text == (
        "Hello team,\n\nMy orders #123 & #124 didn't arrive.\nCan you check?\n\n• Order 123\n• Order 124"
    )
    assert "track()" not in result.body.text and "color" not in result.body.text
    amp = result.body.text.index("&")
    assert result.body.original_text(amp, amp + 1) == "&amp;"
    apostrophe = result.body.text.index("'")
    assert result.body.original_text(apostrophe, apostrophe + 1) == "&#39;"
    assert_maps_back(result, HTML_EMAIL, "Can you check?", "Order 124")
    assert section_texts(result, HTML_EMAIL, "signature") == ["Thanks,<br>Sam"]


def test_plain_text_with_angle_brackets_is_not_html(normaliser: Normaliser) -> None:
    text = "Reply to <jo@example.com> please. The form shows <b> on screen & fails."
    assert not looks_like_html(text)
    assert normaliser.normalise(text).body.text == text


def test_unicode_and_whitespace_cleanup_keeps_the_map(normaliser: Normaliser) -> None:
    text = (
        "I\u2019m \u201cstuck\u201d\u00a0at\u200b step\t\t 3\r\n\r\n\r\n\r\nＰｌｅａｓｅ help \ufb01x e\u0301"
    )
    result = normaliser.normalise(text)
    assert result.body.text == 'I\'m "stuck" at step 3\n\nPlease help fix é'
    assert_maps_back(result, text, "stuck")
    i = result.body.text.index("Please")
    assert result.body.original_text(i, i + 6) == "Ｐｌｅａｓｅ"
    quote = result.body.text.index("'")
    assert result.body.original_text(quote, quote + 1) == "\u2019"


def test_literal_backslash_n_from_json_exports_becomes_line_breaks(normaliser: Normaliser) -> None:
    text = "Dear Support,\\n\\nMy invoice is wrong.\\n- line 1 is doubled\\n- line 2 is missing"
    result = normaliser.normalise(text)
    assert (
        result.body.text == "Dear Support,\n\nMy invoice is wrong.\n- line 1 is doubled\n- line 2 is missing"
    )
    assert normaliser.normalise(r"Open C:\new folder please").body.text == r"Open C:\new folder please"


# ------------------------------------------------------------------------------- redactions


def test_cfpb_redactions_are_rewritten(normaliser: Normaliser) -> None:
    result = normaliser.normalise(CFPB_NARRATIVE)
    assert result.body.text == (
        "On [date] I called [masked] at [masked] Bank about a $1,250.00 charge dated [date]. "
        "They said my account [masked] was closed. "
        "My Xbox order, an XL shirt and an X-ray bill were not affected."
    )
    assert span_of(result.body, "$1,250.00") == (
        CFPB_NARRATIVE.index("$1,250.00"),
        CFPB_NARRATIVE.index("$1,250.00") + 9,
    )
    i = result.body.text.index("[masked]")
    assert result.body.original_text(i, i + len("[masked]")) == "XXXX XXXX"
    j = result.body.text.index("[date]")
    assert result.body.original_text(j, j + len("[date]")) == "XX/XX/2019"


def test_redaction_token_is_configurable() -> None:
    result = Normaliser(NormaliserConfig(redaction_token="someone")).normalise("I spoke to XXXX yesterday.")
    assert result.body.text == "I spoke to someone yesterday."


def test_steps_can_be_switched_off() -> None:
    config = NormaliserConfig(set_aside_quoted_history=False, strip_signatures=False)
    result = Normaliser(config).normalise(GMAIL_REPLY)
    assert "On Tue, Mar 5" in result.body.text and "Sent from my iPhone" in result.body.text
    assert result.history == [] and result.sections == []


# ------------------------------------------------------------------------------- robustness and speed

SAFE_ALPHABET = "abcdefghij KLMNO0123.,!?\n\t->:-\u2019\u201c\u00a0&;@/"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=SAFE_ALPHABET, max_size=300))
def test_any_text_normalises_and_letters_map_to_themselves(text: str) -> None:
    result = Normaliser().normalise(text)
    body = result.body
    starts, ends = np.asarray(body.starts), np.asarray(body.ends)
    assert np.all(np.diff(starts) >= 0) and np.all(np.diff(ends) >= 0)
    for i, ch in enumerate(body.text):
        if ch.isalnum():
            assert ends[i] - starts[i] == 1 and text[starts[i]] == ch
    for section in result.sections:
        assert 0 <= section.start < section.end <= len(text)


def test_one_megabyte_message_is_fast(normaliser: Normaliser) -> None:
    text = (OUTLOOK_CHAIN.replace("\n", "\r\n") + CFPB_NARRATIVE + "\n") * 1800
    text = text[:1_000_000]
    start = time.perf_counter()
    result = normaliser.normalise(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.5, f"1 MB took {elapsed:.2f}s"
    assert result.body.text.startswith("Hi Support,")


def test_throughput_for_thousand_character_messages(normaliser: Normaliser) -> None:
    messages = [(OUTLOOK_CHAIN + f" ticket {i}")[:1000] for i in range(200)]
    start = time.perf_counter()
    for message in messages:
        normaliser.normalise(message)
    elapsed = time.perf_counter() - start
    assert len(messages) / elapsed >= 200, f"{len(messages) / elapsed:.0f} messages/s"
