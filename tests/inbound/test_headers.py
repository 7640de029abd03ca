"""Header shortcuts: cached header objects and plain headers read past the header parser
give what ``policy.default``'s full parser gives."""

from __future__ import annotations

from email import policy

import pytest

from erpmail.inbound import headers, parse
from tests import mailcorpus

EDGE_HEADERS = [
    ("From", "Kunde 5 <kunde5@example.org>"),
    ("From", "kunde5@example.org"),
    ("From", '"Doe, John" <john@example.org>'),
    ("From", "Dr. Who <who@example.org>"),
    ("From", "John  Doe <john@example.org>"),
    ("From", "<john@example.org>"),
    ("From", "john@example.org (John Doe)"),
    ("From", "a..b@example.org"),
    ("From", ".a@example.org"),
    ("From", "john@[127.0.0.1]"),
    ("From", "=?utf-8?q?J=C3=BCrgen?= <j@example.org>"),
    ("From", "undisclosed-recipients:;"),
    ("From", "john@"),
    ("From", "John <john@example.org"),
    ("To", "a@example.org, b@example.org"),
    ("To", "a@example.org,b@example.org"),
    ("To", "A <a@example.org>,\r\n B <b@example.org>"),
    ("To", "a@example.org, "),
    ("To", "Team: a@example.org, b@example.org;"),
    ("Cc", "x@EXAMPLE.org, Y Z <y.z@sub.example.org>"),
    ("Subject", "Rueckfrage relnr 000123  Nr. 5 "),
    ("Subject", "folded\r\n  over two lines"),
    ("Subject", "tab\there"),
    ("Subject", "=?utf-8?q?R=C3=BCckfrage?= relnr 1"),
    ("Subject", "a =? b"),
    ("Subject", ""),
    ("Subject", "ctrl \x01 char"),
    ("Message-ID", "<abc.def@example.org>"),
    ("Message-ID", "<abc@example.org> (comment)"),
    ("Message-ID", "<a b@example.org>"),
    ("Message-ID", "abc@example.org"),
    ("Message-ID", "<abc@[1.2.3.4]>"),
    ("Message-ID", "<a..b@example.org>"),
    ("Auto-Submitted", "auto-replied"),
    ("Precedence", " bulk"),
    ("Date", "Fri, 01 Mar 2024 10:00:00 +0100"),
    ("Date", "Fri, 01 Mar 2024 10:00:00 -0000"),
    ("Date", "1 Mar 2024 10:00 GMT"),
    ("Date", "not a date"),
    ("Date", " "),
    ("Date", "Fri, 01 Mar 2024\r\n 10:00:00 +0100"),
]


def _with_header(name: str, value: str) -> bytes:
    base = {
        "From": "a@example.org",
        "To": "b@example.org",
        "Subject": "s",
        "Date": "Fri, 01 Mar 2024 10:00:00 +0000",
        "Message-ID": "<m@example.org>",
    }
    base[name] = value
    head = "".join(f"{k}: {v}\r\n" for k, v in base.items())
    return (head + "\r\nbody\r\n").encode("utf-8", "surrogateescape")


def _fields(mail: parse.ParsedMail) -> dict:
    out = {k: v for k, v in vars(mail).items() if k != "attachments"}
    out["attachments"] = [(a.filename, a.content_type) for a in mail.attachments]
    return out


@pytest.mark.parametrize(
    "raw",
    [_with_header(n, v) for n, v in EDGE_HEADERS] + [raw for _, raw in mailcorpus.malformed()],
    ids=lambda v: v[:40].decode("latin-1"),
)
def test_plain_header_shortcuts_agree_with_the_full_parser(raw, monkeypatch):
    fast = _fields(parse.parse(raw))
    monkeypatch.setattr(headers, "plain_value", lambda raw: None)
    assert fast == _fields(parse.parse(raw))


@pytest.mark.parametrize("value", [v for n, v in EDGE_HEADERS if n == "Date"])
def test_date_as_the_date_header_reads_it(value):
    from email import policy

    header = policy.default.header_fetch_parse("Date", value)
    parsed = parse.parse(_with_header("Date", value))
    expected = header.datetime
    if expected is not None and expected.tzinfo is None:
        expected = expected.replace(tzinfo=parse.UTC)
    assert parsed.sent_date == expected
    assert ("InvalidDateDefect" in parsed.defects) == (header.datetime is None)


@pytest.mark.parametrize(("name", "value"), EDGE_HEADERS, ids=lambda v: str(v)[:30])
def test_cached_header_objects_read_as_the_stdlib_builds_them(name, value):
    try:
        fresh = policy.default.header_fetch_parse(name, value)
    except Exception as exc:  # the stdlib's parser gives up on some values: so does the cache
        with pytest.raises(type(exc)):
            headers.caching_policy().header_fetch_parse(name, value)
        return
    first = headers.caching_policy().header_fetch_parse(name, value)
    again = headers.caching_policy().header_fetch_parse(name, value)  # another mail's parse
    assert str(first) == str(fresh)
    assert [type(d) for d in first.defects] == [type(d) for d in fresh.defects]
    assert again is first  # short values are shared across mails
