"""The mail merge against build_message: the same bytes, byte for byte, for what varies per
recipient (addresses, subjects that fold or need encoding, bodies with long lines, dots,
non-ASCII), and the List-Unsubscribe header kept readable."""

from __future__ import annotations

import email
import random
import re
from datetime import UTC, datetime
from email import policy

import pytest

from erpmail.documents import mailmerge, mime

DATE = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
LIST = (
    "<https://erp.example.com/erpmail/unsubscribe/{token}>, "
    "<mailto:unsubscribe+{token}@demo.example?subject=unsubscribe>"
)
BOUNDARY = re.compile(rb"===============\d+==")
WORDS = ["Rechnung", "für", "März", "Kunde", "ÄÖÜß", "naïve", "€", "x" * 90, ".", "From", "=?x?="]


def _reference(to, subject, text, html, message_id, token) -> bytes:
    fixed = {"Precedence": "bulk", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    message = mime.build_message(
        sender=("Demo News", "news@demo.example"), to=[to], subject=subject, text=text,
        html=html, message_id=message_id, auto_submitted=None, date=DATE,
        headers={**fixed, "List-Unsubscribe": LIST.replace("{token}", token)},
    )  # fmt: skip
    return message.as_bytes()


def _template(html: bool, token_length: int) -> mailmerge.MergeTemplate:
    return mailmerge.MergeTemplate(
        sender=("Demo News", "news@demo.example"), html=html,
        fixed={"Precedence": "bulk", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        tokened={"List-Unsubscribe": LIST}, token_length=token_length, date=DATE,
    )  # fmt: skip


def _text(rng: random.Random) -> str:
    lines = [" ".join(rng.choices(WORDS, k=rng.randint(0, 14))) for _ in range(rng.randint(0, 6))]
    return rng.choice(["\n", "\r\n"]).join(lines) + rng.choice(["", "\n", "  \n"])


@pytest.mark.parametrize("seed", range(40))
def test_merged_bytes_equal_build_message(seed):
    rng = random.Random(seed)
    to = rng.choice(["b7@customer.example", "Max.Mustermann+news@sub.customer.example",
                     "o'brien@customer.example", "jörg@customer.example"])  # fmt: skip
    subject = " ".join(rng.choices(WORDS, k=rng.randint(0, 12)))
    token = f"{rng.randint(1, 10 ** rng.randint(1, 9))}-{rng.getrandbits(128):032x}"
    text = _text(rng)
    html = f"<p>{_text(rng)}</p>" if seed % 3 else None
    message_id = mime.make_message_id(f"campaign:1:{to}", "demo.example")
    merged = _template(html is not None, len(token)).merge(
        to=to, subject=subject, text=text, html=html, message_id=message_id, token=token
    )
    expected = _reference(to, subject, text, html, message_id, token)
    assert BOUNDARY.sub(b"B", merged.mime) == BOUNDARY.sub(b"B", expected)
    assert merged.message_id == message_id


def test_list_unsubscribe_urls_stay_readable():
    token = "123456-" + "ab" * 16
    merged = _template(True, len(token)).merge(
        to="b7@customer.example", subject="News", text="Hallo", html="<p>Hallo</p>",
        message_id="<n1@demo.example>", token=token,
    )  # fmt: skip
    raw = merged.mime.decode("ascii")
    assert "=?" not in raw.split("\r\n\r\n", 1)[0]  # no encoded words in the headers
    assert f"List-Unsubscribe: <https://erp.example.com/erpmail/unsubscribe/{token}>,\r\n" in raw
    parsed = email.message_from_bytes(merged.mime, policy=policy.default)
    assert parsed["List-Unsubscribe"] == LIST.replace("{token}", token)
    assert parsed["To"] == "b7@customer.example" and parsed["Subject"] == "News"
    assert parsed.get_body(("plain",)).get_content().rstrip() == "Hallo"


def test_merge_refuses_what_build_message_refuses():
    template = _template(False, 10)
    with pytest.raises(mime.MessageError, match="recipient 7 field subject: line break"):
        template.merge(to="a@b.example", subject="x\r\nBcc: c@d.example", text="t", html=None,
                       message_id="<m@d.example>", token="1-23456789", context="recipient 7")  # fmt: skip
    with pytest.raises(mime.MessageError, match="not 10 long"):
        template.merge(to="a@b.example", subject="x", text="t", html=None,
                       message_id="<m@d.example>", token="1-2")  # fmt: skip
    with pytest.raises(mime.MessageError, match="message_id"):
        template.merge(to="a@b.example", subject="x", text="t", html=None,
                       message_id="m@d.example", token="1-23456789")  # fmt: skip
