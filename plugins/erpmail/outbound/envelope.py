"""Envelope addresses for MAIL FROM and RCPT TO: internationalised domains in their IDNA
(punycode) form, the plain addresses without parsing them, and per-message bounce addresses.

A bounce address (VERP) is ``bounce+<token>@<the account's bounce domain>``; the token, the
first 16 hex digits of the SHA-256 of the message's Message-ID, is what a bounce arriving
there names the message by.

Replaces ``smtplib.quoteaddr`` for ASCII dot-atom addresses (``name@domain``, nearly every
address a business sends to): quoteaddr parses each with ``email.utils`` at some 20 us,
0.04 ms per message; such an address only needs its ``<>``. Anything else still goes
through smtplib (bench/README.md, "send"; tests hold it equal to quoteaddr).
"""

from __future__ import annotations

import hashlib
import re
import smtplib

import idna

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_BOUNCE_ADDRESS = re.compile(r"bounce\+([0-9a-f]{16})@", re.IGNORECASE)
_PLAIN_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def envelope_address(address: str) -> str:
    """``address`` as MAIL FROM and RCPT TO carry it: what ``smtplib.quoteaddr`` returns."""
    if _PLAIN_ADDRESS.fullmatch(address):
        return f"<{address}>"
    return smtplib.quoteaddr(address)


def ascii_domain(address: str) -> str:
    """``address`` with its domain in IDNA form (``info@xn--bcher-kva.example``), as the
    header already has it; unchanged when the domain is ASCII or not a valid IDN."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        return address  # the server's refusal names it


def bounce_token(message_id: str) -> str:
    """The token of a message's bounce address."""
    return hashlib.sha256(message_id.encode()).hexdigest()[:16]


def bounce_address(message_id: str, bounce_domain: str) -> str:
    """The envelope sender bounces of this message come back to."""
    return f"bounce+{bounce_token(message_id)}@{bounce_domain}"


def token_in(text: str) -> str | None:
    """The bounce token in an address (or a header naming one), lower case; None if none."""
    match = _BOUNCE_ADDRESS.search(text or "")
    return match.group(1).lower() if match else None
