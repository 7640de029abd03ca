"""Delivery status notifications as real servers send them, built for one of our messages:
RFC 3464 with and without the returned message, Postfix, Exim, Exchange (report and plain
text), qmail, a delayed delivery, and an out-of-office reply that is no bounce."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sent:
    """What our message went out as: its Message-ID, envelope sender and recipient."""

    message_id: str
    envelope_from: str
    recipient: str


def _head(sent: Sent, sender: str, subject: str, extra: str = "") -> str:
    return (
        f"From: {sender}\r\nTo: {sent.envelope_from}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 02 Mar 2026 10:00:00 +0100\r\nMessage-ID: <dsn-{abs(hash(subject))}@mx.example>\r\n"
        f"{extra}MIME-Version: 1.0\r\n"
    )


def _original(sent: Sent) -> str:
    return (
        f"Return-Path: <{sent.envelope_from}>\r\nFrom: Buchhaltung <ar@demo.example>\r\n"
        f"To: {sent.recipient}\r\nSubject: Zahlungserinnerung\r\nMessage-ID: {sent.message_id}\r\n"
    )


def _report(sent, sender, subject, fields, returned="message/rfc822", text="", extra=""):
    b = "REPORT-BOUNDARY"
    parts = [
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{text or 'Delivery failed.'}\r\n",
        "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n"
        f"Arrival-Date: Mon, 02 Mar 2026 10:00:00 +0100\r\n\r\n{fields}\r\n",
    ]
    if returned:
        body = _original(sent) + (
            "\r\nSehr geehrte Damen und Herren\r\n" if returned == "message/rfc822" else ""
        )
        parts.append(f"Content-Type: {returned}\r\n\r\n{body}")
    joined = "".join(f"--{b}\r\n{p}" for p in parts) + f"--{b}--\r\n"
    head = _head(sent, sender, subject, extra) + (
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{b}"\r\n\r\n'
    )
    return (head + joined).encode()


def _fields(sent: Sent, action: str, status: str, diagnostic: str) -> str:
    return (
        f"Final-Recipient: rfc822; {sent.recipient}\r\nAction: {action}\r\nStatus: {status}\r\n"
        f"Remote-MTA: dns; mx.customer.example\r\nDiagnostic-Code: smtp; {diagnostic}\r\n"
    )


def rfc3464(sent: Sent) -> bytes:
    return _report(
        sent,
        "Mail Delivery System <MAILER-DAEMON@mx.example.net>",
        "Undelivered Mail Returned to Sender",
        _fields(
            sent,
            "failed",
            "5.1.1",
            f"550 5.1.1 <{sent.recipient}>: Recipient address rejected: User unknown",
        ),
    )


def rfc3464_headers_only(sent: Sent) -> bytes:
    return _report(
        sent,
        "postmaster@mx.example.net",
        "Delivery Status Notification (Failure)",
        _fields(sent, "failed", "5.2.2", "552 5.2.2 mailbox full"),
        returned="text/rfc822-headers",
    )


def rfc3464_no_original(sent: Sent) -> bytes:
    return _report(
        sent,
        "MAILER-DAEMON@mx.example.net",
        "Returned mail: see transcript for details",
        _fields(sent, "failed", "5.7.1", "550 5.7.1 Message rejected as spam"),
        returned="",
    )


def exchange_report(sent: Sent) -> bytes:
    return _report(
        sent,
        "Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@customer.example>",
        "Undeliverable: Zahlungserinnerung",
        _fields(
            sent,
            "failed",
            "5.1.10",
            "smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        ),
        text="Your message to " + sent.recipient + " couldn't be delivered.",
        extra="X-MS-Exchange-Message-Is-Ndr: \r\n",
    )


def delayed(sent: Sent) -> bytes:
    return _report(
        sent,
        "MAILER-DAEMON@mx.example.net",
        "Delayed Mail (still being retried)",
        _fields(sent, "delayed", "4.4.7", "450 4.4.7 Connection timed out"),
    )


def exim(sent: Sent) -> bytes:
    text = (
        "This message was created automatically by mail delivery software.\r\n\r\n"
        "A message that you sent could not be delivered to one or more of its\r\n"
        "recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
        f"  {sent.recipient}\r\n    host mx.customer.example [192.0.2.7]\r\n"
        f"    SMTP error from remote mail server after RCPT TO:<{sent.recipient}>:\r\n"
        "    550 5.1.1 User unknown\r\n\r\n"
        "------ This is a copy of the message, including all the headers. ------\r\n\r\n"
        + _original(sent)
        + "\r\nSehr geehrte Damen und Herren\r\n"
    )
    head = _head(
        sent,
        "Mail Delivery System <Mailer-Daemon@mx.example.net>",
        "Mail delivery failed: returning message to sender",
    )
    return (head + "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text).encode()


def qmail(sent: Sent) -> bytes:
    text = (
        "Hi. This is the qmail-send program at mx.example.net.\r\n"
        "I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
        "This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
        f"<{sent.recipient}>:\r\n192.0.2.7 does not like recipient.\r\n"
        f"Remote host said: 550 5.1.1 <{sent.recipient}>... User unknown\r\n"
        "Giving up on 192.0.2.7.\r\n\r\n"
        "--- Below this line is a copy of the message.\r\n\r\n" + _original(sent) + "\r\nText\r\n"
    )
    head = _head(sent, "MAILER-DAEMON@mx.example.net", "failure notice")
    return (head + "Content-Type: text/plain\r\n\r\n" + text).encode()


def exchange_plain(sent: Sent) -> bytes:
    text = (
        "Delivery has failed to these recipients or groups:\r\n\r\n"
        f"{sent.recipient}\r\nThe e-mail address you entered couldn't be found.\r\n\r\n"
        "Diagnostic information for administrators:\r\n\r\nGenerating server: mx.customer.example\r\n\r\n"
        f"{sent.recipient}\r\nRemote Server returned '550 5.1.1 RESOLVER.ADR.RecipNotFound; not found'\r\n\r\n"
        "Original message headers:\r\n\r\n" + _original(sent)
    )
    head = _head(sent, "postmaster@customer.example", "Undeliverable: Zahlungserinnerung")
    return (head + "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text).encode()


def out_of_office(sent: Sent) -> bytes:
    head = (
        f"From: {sent.recipient}\r\nTo: {sent.envelope_from}\r\n"
        "Subject: Automatic reply: Zahlungserinnerung\r\nAuto-Submitted: auto-replied\r\n"
        f"In-Reply-To: {sent.message_id}\r\nDate: Mon, 02 Mar 2026 10:00:00 +0100\r\n"
    )
    return (head + "\r\nIch bin bis 9. März nicht im Büro.\r\n").encode()


# name -> (builder, kind, status) as the import must read it; None: no bounce
CORPUS = {
    "rfc3464": (rfc3464, "hard", "5.1.1"),
    "rfc3464 headers only": (rfc3464_headers_only, "hard", "5.2.2"),
    "rfc3464 no original": (rfc3464_no_original, "hard", "5.7.1"),
    "exchange report": (exchange_report, "hard", "5.1.10"),
    "delayed": (delayed, "soft", "4.4.7"),
    "exim": (exim, "hard", "5.1.1"),
    "qmail": (qmail, "hard", "5.1.1"),
    "exchange plain text": (exchange_plain, "hard", "5.1.1"),
    "out of office": (out_of_office, None, None),
}
