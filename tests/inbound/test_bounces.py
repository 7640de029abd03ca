"""Bounces read from every common form, and matched to our message by VERP token or
Message-ID."""

from __future__ import annotations

import pytest

from erpmail.inbound import bounces
from erpmail.outbound.envelope import bounce_address, bounce_token
from tests.inbound import dsns

MSGID = "<4a1b2c3d4e5f60718293a4b5@demo.example>"
VERP = dsns.Sent(MSGID, bounce_address(MSGID, "bounces.demo.example"), "kunde@customer.example")
PLAIN = dsns.Sent(MSGID, "ar@demo.example", "kunde@customer.example")


@pytest.mark.parametrize("name", sorted(dsns.CORPUS))
@pytest.mark.parametrize("sent", [VERP, PLAIN], ids=["verp", "plain sender"])
def test_every_form_is_read(name, sent):
    build, kind, status = dsns.CORPUS[name]
    found = bounces.detect(build(sent))
    if kind is None:
        assert found is None and bounces.is_auto_reply(build(sent))
        return
    assert found is not None, name
    (failure,) = found.failures
    assert (failure.recipient, failure.kind, failure.status) == (sent.recipient, kind, status)
    assert failure.diagnostic
    # the bounce names our message: by the token of its bounce address, else the Message-ID
    if sent is VERP:
        assert found.token == bounce_token(MSGID)
    if name != "rfc3464 no original":
        assert found.original_message_id == MSGID
    else:
        assert found.original_message_id is None


def test_ordinary_mail_is_no_bounce():
    raw = (
        b"From: kunde@customer.example\r\nTo: ar@demo.example\r\nSubject: Re: Rechnung\r\n"
        b"\r\nWir zahlen morgen. The following address failed: none 550\r\n"
    )
    assert bounces.detect(raw) is None
