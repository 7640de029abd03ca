"""Test mail, generated: 60 varied mails with the links they must get, 30+ malformed ones,
and the test mailbox wiring (an Airflow connection and a location row for a Dovecot user).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime

import pytest

KEYWORDS = {
    "relnr": "partner",
    "kundennummer": "partner",
    "project": "project",
    "projekt": "project",
}
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


@dataclass
class Facts:
    """Seeded rows the corpus refers to."""

    partners: list[tuple[int, str, str]]  # id, number, email
    contacts: list[tuple[int, int, str]]  # id, partner id, email
    projects: dict[tuple[str, str, str], int]
    cases: dict[str, int]
    letters: list[tuple[int, int, str]]  # letter id, partner id, outbox Message-ID


@dataclass
class Expected:
    """One corpus mail and what the import must make of it."""

    raw: bytes
    links: set[tuple[str, int]] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    attachments: dict[str, bytes] = field(default_factory=dict)
    note: str = ""


def simple(n: int, **headers) -> bytes:
    """Plain mail number ``n`` from person<n>@example.org; ``sender``/``subject`` and other
    headers (underscores for dashes) as keywords."""
    msg = EmailMessage()
    msg["From"] = headers.pop("sender", f"person{n}@example.org")
    msg["To"] = "in@erp.example.com"
    msg["Subject"] = headers.pop("subject", f"Mail {n}")
    msg["Date"] = "Fri, 01 Mar 2024 10:00:00 +0000"
    msg["Message-ID"] = f"<simple-{n}@example.org>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(f"Body {n}\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def imap_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, user, **extra) -> None:
    """``AIRFLOW_CONN_<ID>`` for a Dovecot user over IMAPS, trusting the test CA."""
    spec = {
        "conn_type": "imap",
        "host": user.host,
        "port": user.imaps_port,
        "login": user.name,
        "password": user.password,
        "extra": {"ca_file": str(user.ca_file), **extra},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(spec))


def add_location(conn, name: str, conn_id: str, **columns) -> int:
    """A ``mail.import_locations`` row; columns as keywords (jsonb as dicts)."""
    values = {"name": name, "conn_id": conn_id, **columns}
    if isinstance(values.get("link_keywords"), dict):
        values["link_keywords"] = json.dumps(values["link_keywords"])
    names = list(values)
    sql = (
        f"INSERT INTO mail.import_locations ({', '.join(names)}) "  # noqa: S608 - test names only
        f"VALUES ({', '.join(['%s'] * len(names))}) RETURNING id"
    )
    with conn.cursor() as cur:
        cur.execute(sql, list(values.values()))
        location_id = cur.fetchone()[0]
    conn.commit()
    return location_id


def add_account(conn, name: str = "service", address: str = "service@erp.example.com") -> int:
    """A mail account (the autoreply and alert sender); default when it is the first."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO mail.accounts (name, conn_id, from_address, display_name, is_default)"
            " VALUES (%s, 'smtp_test', %s, 'ERP Service',"
            " NOT EXISTS (SELECT 1 FROM mail.accounts)) RETURNING id",
            (name, address),
        )
        account_id = cur.fetchone()[0]
    conn.commit()
    return account_id


def facts(conn, letters: int = 3) -> Facts:
    """Read what the seeded database holds and add letters sent by erpmail to reply to."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, number, email FROM erp.partners WHERE email IS NOT NULL"
            " AND lower(email) NOT IN (SELECT lower(email) FROM erp.contacts WHERE email IS NOT NULL)"
            " ORDER BY id LIMIT 30"
        )
        partners = cur.fetchall()
        cur.execute(
            "SELECT c.id, c.partner_id, c.email FROM erp.contacts c JOIN erp.partners p"
            " ON p.id = c.partner_id WHERE c.email IS NOT NULL"
            " AND lower(c.email) <> lower(coalesce(p.email, '')) ORDER BY c.id LIMIT 10"
        )
        contacts = cur.fetchall()
        cur.execute("SELECT number, subproject, phase, id FROM erp.projects")
        projects = {(n, s, p): i for n, s, p, i in cur.fetchall()}
        cur.execute("SELECT number, id FROM erp.cases")
        cases = dict(cur.fetchall())
        account = add_account(conn, "letters", "fibu@erp.example.com")
        cur.execute(
            "INSERT INTO erp.runs (kind, airflow_run_id, company, key_date)"
            " VALUES ('dunning', 'corpus', 'DEMO', current_date) RETURNING id"
        )
        run_id = cur.fetchone()[0]
        sent = []
        for n, (partner_id, _, email) in enumerate(partners[:letters]):
            msgid = f"<letter-{n}.corpus@erp.example.com>"
            cur.execute(
                "INSERT INTO mail.outbox (key, message_id, account_id, source_type, envelope_from,"
                " recipients, mime) VALUES (%s, %s, %s, 'letter', 'fibu@erp.example.com',"
                " ARRAY[%s], '') RETURNING id",
                (f"corpus-letter-{n}", msgid, account, email),
            )
            outbox_id = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO erp.letters (run_id, partner_id, document, language, status, outbox_id)"
                " VALUES (%s, %s, 'dunning', 'de', 'released', %s) RETURNING id",
                (run_id, partner_id, outbox_id),
            )
            sent.append((cur.fetchone()[0], partner_id, msgid))
    conn.commit()
    return Facts(partners[3:], contacts, projects, cases, sent)


def _mail(n: int, sender: str, subject: str, *, msgid: bool = True) -> EmailMessage:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = "Eingang <eingang@erp.example.com>"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2024, 3, 1, 9, 0, tzinfo=UTC) + timedelta(minutes=n))
    if msgid:
        msg["Message-ID"] = f"<corpus-{n}@sender.example.org>"
    return msg


def varied(f: Facts, count: int = 60) -> list[Expected]:
    """``count`` mails cycling through 20 shapes; each knows its links and attachments."""
    out = []
    stranger = "Fremd <fremd{n}@unknown.example.net>"
    for n in range(count):
        kind, round_ = n % 20, n // 20
        partner_id, number, email = f.partners[(n * 7) % len(f.partners)]
        exp = Expected(b"")
        s = stranger.format(n=n)
        if kind == 0:
            msg = _mail(n, s, f"Allgemeine Anfrage {n}")
            msg.set_content("Hallo,\nbitte um Rückruf.\n")
        elif kind == 1:
            msg = _mail(n, s, f"Grüße zur Rechnung – relnr {number} (Nr. {n})")
            msg.set_content("Sehr geehrte Damen und Herren,\nanbei unsere Frage.\n")
            exp.links |= {("partner", partner_id)}
        elif kind == 2:
            msg = _mail(n, s, f"Ihre KUNDENNUMMER:{number} / Mahnung {n}")
            msg.set_content("Wir haben bereits bezahlt.\n")
            exp.links |= {("partner", partner_id)}
        elif kind in (3, 4, 5):
            sep = {3: "-", 4: "/", 5: ","}[kind]
            proj = (str(10 + round_ + kind), str(1 + round_ % 3), str(1 + kind % 2))
            msg = _mail(n, s, f"Projekt {sep.join(proj)} Abnahme {n}")
            msg.set_content("Abnahmeprotokoll folgt.\n")
            exp.links |= {("project", f.projects[proj])}
        elif kind == 6:
            number_t = f"T{1 + (n % 20):06d}"
            msg = _mail(n, s, f"Re: [{number_t}] Ihre Anfrage {n}")
            msg.set_content("Noch eine Frage zum Vorgang.\n")
            exp.links |= {("case", f.cases[number_t])}
        elif kind == 7:
            msg = _mail(n, f"Kunde <{email}>", f"Frage {n}")
            msg.set_content("Nur eine kurze Frage.\n")
            exp.links |= {("partner", partner_id)}
        elif kind == 8:
            cid, cpartner, cemail = f.contacts[n % len(f.contacts)]
            msg = _mail(n, f"Kontakt <{cemail.upper()}>", f"Zahlung {n}")
            msg.set_content("Zahlung ist unterwegs.\n")
            exp.links |= {("contact", cid), ("partner", cpartner)}
        elif kind in (9, 10):
            letter_id, lpartner, lmsgid = f.letters[n % len(f.letters)]
            msg = _mail(n, s, f"AW: Zahlungserinnerung {n}")
            if kind == 9:
                msg["In-Reply-To"] = lmsgid
            msg["References"] = f"<older-{n}@elsewhere.example> {lmsgid}"
            msg.set_content("> Zahlungserinnerung\nWir zahlen morgen.\n")
            exp.links |= {("letter", letter_id), ("partner", lpartner)}
        elif kind == 11:
            msg = _mail(n, s, f"HTML only relnr {number} {n}")
            msg.set_content(f"<html><body><p>Nur HTML {n} – äöü</p></body></html>", subtype="html")
            exp.links |= {("partner", partner_id)}
        elif kind == 12:
            msg = _mail(n, s, f"Alternative {n}")
            msg.set_content(f"Text {n}\n")
            msg.add_alternative(f"<p>HTML {n}</p>", subtype="html")
        elif kind == 13:
            msg = _mail(n, s, f"Unterlagen für Müller {n}")
            msg.set_content("Anbei die Unterlagen.\n")
            names = [f"Übersicht März {n}.pdf", "Größe & Maße.pdf", "Größe & Maße.pdf"]
            for i, name in enumerate(names):
                data = PDF + bytes([i, n])
                msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
            exp.attachments = {
                names[0]: PDF + bytes([0, n]),
                names[1]: PDF + bytes([1, n]),
                "Größe & Maße (2).pdf": PDF + bytes([2, n]),
            }
        elif kind == 14:
            msg = _mail(n, s, f"Verschachtelt {n}")
            msg.set_content(f"Verschachtelt {n}\n")
            msg.add_alternative(f'<p>Bild: <img src="cid:logo{n}@x"></p>', subtype="html")
            msg.get_payload()[1].add_related(
                PNG, maintype="image", subtype="png", cid=f"<logo{n}@x>", filename="logo.png"
            )
            msg.add_attachment(b"a;b\n1;2\n", maintype="text", subtype="csv", filename="liste.csv")
            exp.attachments = {"logo.png": PNG, "liste.csv": b"a;b\n1;2\n"}
        elif kind == 15:
            inner = _mail(1000 + n, "Alt <alt@example.org>", "Weitergeleitet")
            inner.set_content("Originalnachricht\n")
            msg = _mail(n, s, f"WG: Weitergeleitet {n}")
            msg.set_content("Siehe unten.\n")
            msg.add_attachment(inner)
        elif kind == 16:
            msg = _mail(n, s, f"Äußerst dringend {n}")
            msg.set_content(f"Grüße aus Köln {n}\n", charset="iso-8859-1", cte="quoted-printable")
        elif kind == 17:
            msg = _mail(n, s, f"Ohne Message-ID {n}", msgid=False)
            msg.set_content(f"Kein Message-ID-Kopf {n}\n")
        elif kind == 18:
            msg = _mail(n, f"<{email}>", f"relnr {number} und Projekt 1{round_}-2-1 ({n})")
            msg.set_content("Zwei Bezüge.\n")
            proj = (f"1{round_}", "2", "1")
            exp.links |= {("partner", partner_id), ("project", f.projects[proj])}
        else:
            msg = _mail(n, s, f"Zahlungsavis RELNR.{number} {n}")
            msg.set_content("Zahlungsavis im Anhang.\n")
            msg.add_attachment(
                b"IBAN;Betrag\n", maintype="text", subtype="csv", filename="avis.csv"
            )
            exp.links |= {("partner", partner_id)}
            exp.attachments = {"avis.csv": b"IBAN;Betrag\n"}
        exp.raw = msg.as_bytes()
        exp.note = f"mail {n} (shape {kind})"
        out.append(exp)
    return out


def _nested(depth: int) -> bytes:
    head = b"From: deep@example.org\r\nDate: Fri, 01 Mar 2024 10:00:00 +0000\r\nSubject: deep\r\n"
    body = b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for level in range(depth):
        b = f"b{level}".encode()
        body = (
            b'Content-Type: multipart/mixed; boundary="'
            + b
            + b'"\r\n\r\n--'
            + b
            + b"\r\n"
            + body
            + b"--"
            + b
            + b"--\r\n"
        )
    return head + b"MIME-Version: 1.0\r\n" + body


def malformed() -> list[tuple[str, bytes]]:
    """At least 30 broken mails, each ``(name, raw)``; every one must come out flagged."""
    d = b"Date: Fri, 01 Mar 2024 10:00:00 +0000\r\n"
    f = b"From: bad@example.org\r\n"
    ok = f + d
    mails = [
        ("zero-byte", b""),
        ("no headers at all", b"\r\njust a body\r\n"),
        ("no From", d + b"Subject: no from\r\n\r\nbody\r\n"),
        ("no Date", f + b"Subject: no date\r\n\r\nbody\r\n"),
        ("two Subjects", ok + b"Subject: one\r\nSubject: two\r\n\r\nbody\r\n"),
        ("two From", ok + b"From: other@example.org\r\n\r\nbody\r\n"),
        ("two Message-IDs", ok + b"Message-ID: <a@x>\r\nMessage-ID: <b@x>\r\n\r\nbody\r\n"),
        ("two Dates", ok + d + b"\r\nbody\r\n"),
        ("undeclared 8-bit header", ok + b"Subject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nbody\r\n"),
        ("undeclared 8-bit body", ok + b"Subject: 8bit\r\n\r\nK\xf6ln \xe4\xf6\xfc\r\n"),
        (
            "unknown charset body",
            ok + b"Subject: cs\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\nqapla\r\n",
        ),
        (
            "wrong charset body",
            ok + b"Subject: cs\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\nK\xf6ln\r\n",
        ),
        ("unknown charset header", ok + b"Subject: =?x-klingon?Q?qapla?=\r\n\r\nbody\r\n"),
        (
            "boundary never opened",
            ok
            + b'Subject: b\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XX"\r\n'
            b"\r\nno boundary here\r\n",
        ),
        (
            "boundary never closed",
            ok
            + b'Subject: b\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XX"\r\n'
            b"\r\n--XX\r\nContent-Type: text/plain\r\n\r\nopen\r\n",
        ),
        (
            "multipart without boundary",
            ok + b"Subject: b\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\nx\r\n",
        ),
        (
            "broken base64",
            ok + b"Subject: b64\r\nMIME-Version: 1.0\r\nContent-Type: application/pdf\r\n"
            b'Content-Disposition: attachment; filename="a.pdf"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0x!!!LjQK=\r\nabc\r\n",
        ),
        ("200-level nesting", _nested(200)),
        (
            "1 MB header",
            ok + b"Subject: long\r\nX-Long: " + b"a" * (1024 * 1024) + b"\r\n\r\nbody\r\n",
        ),
        ("1 MB subject", ok + b"Subject: " + b"s " * (512 * 1024) + b"\r\n\r\nbody\r\n"),
        (
            "attachment ../../etc/passwd",
            ok
            + b'Subject: p\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n'
            b"\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee\r\n--B\r\n"
            b'Content-Type: text/plain\r\nContent-Disposition: attachment; filename="../../etc/passwd"\r\n'
            b"\r\nroot:x:0:0\r\n--B--\r\n",
        ),
        (
            "attachment with control characters",
            ok
            + b'Subject: p\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n'
            b"\r\n--B\r\nContent-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="evil\x01\x1b[31m.exe"\r\n\r\nMZ\r\n--B--\r\n',
        ),
        (
            "attachment named ..\\..\\boot.ini",
            ok
            + b'Subject: p\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n'
            b"\r\n--B\r\nContent-Type: application/octet-stream\r\n"
            b'Content-Disposition: attachment; filename="..\\\\..\\\\boot.ini"\r\n\r\nx\r\n--B--\r\n',
        ),
        ("bad From address", d + b"From: not an address@@\r\nSubject: f\r\n\r\nbody\r\n"),
        ("bad Date", f + b"Date: the day after tomorrow\r\nSubject: d\r\n\r\nbody\r\n"),
        ("header without colon", ok + b"Subject: h\r\nThis is not a header\r\n\r\nbody\r\n"),
        ("header continuation first", b" folded first\r\n" + ok + b"\r\nbody\r\n"),
        ("NUL bytes", ok + b"Subject: nul\x00here\r\n\r\nbo\x00dy\r\n"),
        ("bare LF endings", ok.replace(b"\r\n", b"\n") + b"Subject: lf\n\nbody\n\x00"),
        ("Message-ID garbage", ok + b"Message-ID: not a message id at all\r\n\r\nbody\r\n"),
        (
            "bad RFC 2231 filename",
            ok
            + b'Subject: p\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n'
            b"\r\n--B\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename*=x-klingon''%FF%FE/../x\r\n\r\nx\r\n--B--\r\n",
        ),
        (
            "message/rfc822 broken inside",
            ok
            + b'Subject: fw\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n'
            b"\r\n--B\r\nContent-Type: message/rfc822\r\n\r\nFrom x\r\nSubject: \xff\xfe\r\n\r\n--B--\r\n",
        ),
    ]
    return mails
