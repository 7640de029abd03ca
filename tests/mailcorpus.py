"""Test mail, generated: 60 varied mails with the links they must get, 30+ malformed ones,
75+ of the shapes real mailboxes hold, and the test mailbox wiring (an Airflow connection and
a location row for a Dovecot user).
"""

from __future__ import annotations

import base64
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


def _multipart(head: bytes, boundary: str, parts: list[bytes], subtype: str = "mixed") -> bytes:
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + b + b"--\r\n"
    return (
        head
        + b"MIME-Version: 1.0\r\nContent-Type: multipart/"
        + subtype.encode()
        + b'; boundary="'
        + b
        + b'"\r\n\r\n'
        + body
    )


def _part(headers: str, body: bytes) -> bytes:
    return headers.replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


def nasty() -> list[tuple[str, bytes]]:
    """75 mails of the shapes real mailboxes hold (mail-parser corpora and hand-made): deep
    and wide multiparts, every header encoding, broken encodings, NUL bytes, DSNs, TNEF, yEnc,
    S/MIME, reused Message-IDs. Some are damaged, none may be lost; all bytes differ."""
    out: list[tuple[str, bytes]] = []

    def head(n: int, subject: bytes = b"", msgid: bool = True, extra: bytes = b"") -> bytes:
        h = b"From: Absender <nasty@example.org>\r\nTo: in@erp.example.com\r\n"
        h += b"Date: Fri, 01 Mar 2024 11:%02d:00 +0000\r\n" % (n % 60)
        h += b"Subject: " + (subject or b"nasty %d" % n) + b"\r\n"
        if msgid:
            h += b"Message-ID: <nasty-%d@example.org>\r\n" % n
        return h + extra

    text = _part("Content-Type: text/plain; charset=utf-8", b"body")
    n = 0

    def add(name: str, raw: bytes) -> None:
        nonlocal n
        out.append((name, raw))
        n += 1

    # nested multiparts of every kind, 5 to 60 levels
    for depth in (5, 12, 25, 40, 60):
        inner = text
        for level in range(depth):
            kind = ("mixed", "alternative", "related")[level % 3]
            inner = _multipart(b"", f"nest{depth}-{level}", [inner], kind).removeprefix(
                b"MIME-Version: 1.0\r\n"
            )
        add(f"nested {depth}", head(n) + b"MIME-Version: 1.0\r\n" + inner)
    # broken base64 in attachments
    for i, payload in enumerate(
        (b"JVBERi0xLjQK!!!!", b"JVBERi0xLjQKJ", b"JVBE Ri0x LjQK", b"====", b"\xff\xfeJVBE")
    ):
        att = _part(
            "Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n"
            f'Content-Disposition: attachment; filename="kaputt-{i}.pdf"',
            payload,
        )
        add(f"broken base64 {i}", _multipart(head(n), f"b64-{i}", [text, att]))
    # encoded-word subjects, good and bad
    for i, subject in enumerate(
        (
            b"=?utf-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=",
            b"=?utf-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
            b"=?iso-8859-1?Q?=C4rger_mit_der_Rechnung?=",
            b"=?utf-8?B?6KuL5rGC5pu4?= =?utf-8?B?44Gu5piO57Sw?=",
            b"=?utf-8?B?broken base64?=",
            b"=?utf-8?Q?unterminated",
            b"=?koi8-r?B?8NLJ18XU?=",
            b"=?gb2312?B?xOO6ww==?= und mehr",
        )
    ):
        add(f"encoded-word subject {i}", head(n, subject) + b"\r\n" + b"body %d\r\n" % i)
    # RFC 2231 file names: continuations, charsets, languages, broken percent-escapes
    for i, disposition in enumerate(
        (
            "attachment; filename*=utf-8''Rechnung%20M%C3%A4rz.pdf",
            "attachment; filename*0*=utf-8''%E8%AB%8B%E6%B1%82; filename*1*=%E6%9B%B8.pdf",
            "attachment; filename*=iso-8859-1'de'%C4nderung.pdf",
            "attachment; filename*=utf-8''%ZZbad.pdf",
            'attachment; filename*0="long"; filename*1="-name"; filename*2=".txt"',
            "attachment; filename==?utf-8?B?w4RyZ2VyLnBkZg==?=",
        )
    ):
        att = _part(
            f"Content-Type: application/octet-stream\nContent-Disposition: {disposition}",
            b"data %d" % i,
        )
        add(f"RFC 2231 name {i}", _multipart(head(n), f"r2231-{i}", [text, att]))
    # missing or odd boundaries
    add(
        "empty boundary",
        head(n) + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
        b'boundary=""\r\n\r\n--\r\n\r\nx\r\n----\r\n',
    )
    add("boundary with spaces", _multipart(head(n), "a b  c", [text]))
    add(
        "boundary not matching",
        head(n) + b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed;"
        b' boundary="one"\r\n\r\n--two\r\n\r\nx\r\n--two--\r\n',
    )
    # 8-bit headers
    add(
        "raw UTF-8 sender name",
        head(n).replace(b"Absender", "Jürgen Müller".encode()) + b"\r\nx\r\n",
    )
    add("raw latin-1 subject", head(n, "Grüße".encode("latin-1")) + b"\r\nx\r\n")
    add(
        "8-bit To",
        head(n)
        .replace(b"To: in@", "To: Einkauf Köln <in@".encode())
        .replace(b"erp.example.com\r\n", b"erp.example.com>\r\n", 1)
        + b"\r\nx\r\n",
    )
    add("UTF-8 headers declared", head(n, "Счёт № 17".encode()) + b"\r\nx\r\n")
    # NUL bytes
    add("NUL in subject", head(n, b"nul\x00subject") + b"\r\nbody\r\n")
    add("NUL in body", head(n) + b"\r\nbo\x00\x00dy\r\n")
    att = _part(
        "Content-Type: application/octet-stream\nContent-Transfer-Encoding: binary\n"
        'Content-Disposition: attachment; filename="nul.bin"',
        b"\x00\x01\x00\x02",
    )
    add("NUL in a binary attachment", _multipart(head(n), "nul", [text, att]))
    # 2000 parts
    parts = [
        _part(
            f'Content-Type: text/plain\nContent-Disposition: attachment; filename="p{i}.txt"',
            b"part %d" % i,
        )
        for i in range(2000)
    ]
    add("2000 parts", _multipart(head(n), "two-thousand", parts))
    # 1 MB lines
    add("1 MB body line", head(n) + b"\r\n" + b"x" * (1024 * 1024) + b"\r\n")
    add(
        "1 MB References",
        head(n, extra=b"References: " + b"<r@x> " * 170000 + b"\r\n") + b"\r\nx\r\n",
    )
    # delivery status notifications
    original = head(9000) + b"\r\noriginal body\r\n"
    for i, (report, inner_type) in enumerate(
        (
            (
                "Action: failed\nStatus: 5.1.1\nFinal-Recipient: rfc822; gone@example.com",
                "message/rfc822",
            ),
            (
                "Action: delayed\nStatus: 4.4.7\nFinal-Recipient: rfc822; slow@example.com",
                "text/rfc822-headers",
            ),
            (
                "Action: failed\nStatus: 5.2.2\nFinal-Recipient: rfc822;full@example.com\n"
                "Diagnostic-Code: smtp; 552 mailbox full",
                "message/rfc822",
            ),
            ("garbage without fields", "message/rfc822"),
        )
    ):
        dsn = _multipart(
            head(n, b"Undelivered Mail Returned to Sender").replace(
                b"Absender <nasty@", b"MAILER-DAEMON <mailer-daemon@"
            ),
            f"dsn-{i}",
            [
                _part("Content-Type: text/plain", b"Your message could not be delivered."),
                _part(
                    "Content-Type: message/delivery-status",
                    b"Reporting-MTA: dns; mx.example.com\r\n\r\n"
                    + report.replace("\n", "\r\n").encode(),
                ),
                _part(f"Content-Type: {inner_type}", original),
            ],
            "report; report-type=delivery-status",
        )
        add(f"DSN {i}", dsn)
    # TNEF (winmail.dat), yEnc, uuencode, mbox From line, S/MIME, DKIM
    tnef = b"\x78\x9f\x3e\x22" + bytes(range(256)) * 4
    for i in range(2):
        att = _part(
            'Content-Type: application/ms-tnef; name="winmail.dat"\n'
            "Content-Transfer-Encoding: base64\n"
            'Content-Disposition: attachment; filename="winmail.dat"',
            base64.encodebytes(tnef + bytes([i])).replace(b"\n", b"\r\n"),
        )
        add(f"TNEF {i}", _multipart(head(n), f"tnef-{i}", [text, att]))
    add(
        "yEnc",
        head(n) + b"\r\n=ybegin line=128 size=5 name=a.bin\r\n\x8b\x8c\x8d\x8e\x8f\r\n"
        b"=yend size=5\r\n",
    )
    add("uuencode", head(n) + b"\r\nbegin 644 a.txt\r\n#86)C\r\n`\r\nend\r\n")
    add(
        "mbox From line",
        b"From nasty@example.org Fri Mar  1 11:00:00 2024\r\n" + head(n) + b"\r\nbody\r\n",
    )
    add("mbox From line quoted", head(n) + b"\r\n>From the archive\r\nbody\r\n")
    for i in range(2):
        signed = _multipart(
            head(n),
            f"smime-{i}",
            [
                text,
                _part(
                    'Content-Type: application/pkcs7-signature; name="smime.p7s"\n'
                    "Content-Transfer-Encoding: base64",
                    b"MIAGCSqGSIb3DQEHAqCAMIACAQEx" + bytes([65 + i]),
                ),
            ],
            'signed; protocol="application/pkcs7-signature"; micalg=sha-256',
        )
        add(f"S/MIME signed {i}", signed)
    for i in range(2):
        dkim = (
            b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from:to:subject;"
            b"\r\n\tbh=" + b"A" * 44 + b"; b=" + b"B" * (300 + i) + b"\r\n"
        )
        add(f"DKIM {i}", dkim + head(n) + b"\r\nsigned body\r\n")
    # other MIME types
    add(
        "calendar invite",
        _multipart(
            head(n),
            "cal",
            [
                text,
                _part(
                    "Content-Type: text/calendar; method=REQUEST; charset=utf-8",
                    b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nSUMMARY:Termin\r\nEND:VEVENT\r\nEND:VCALENDAR",
                ),
            ],
            "alternative",
        ),
    )
    add(
        "message/partial",
        head(n) + b"MIME-Version: 1.0\r\nContent-Type: message/partial; "
        b'id="p@x"; number=1; total=2\r\n\r\nFrom: a@x\r\n\r\nhalf\r\n',
    )
    add(
        "message/external-body",
        head(n) + b"MIME-Version: 1.0\r\nContent-Type: message/external-body;"
        b' access-type=URL; URL="http://example.com/x"\r\n\r\nContent-Type: text/plain\r\n\r\n',
    )
    add(
        "1000 recipients",
        head(n, extra=b"To: " + b", ".join(b"r%d@example.com" % i for i in range(1000)) + b"\r\n")
        + b"\r\nx\r\n",
    )
    add(
        "folded long subject",
        head(n, b"\r\n ".join(b"word%d" % i for i in range(400))) + b"\r\nx\r\n",
    )
    add("empty subject", head(n).replace(b"Subject: nasty %d" % n, b"Subject:") + b"\r\nx\r\n")
    add("no subject", head(n).replace(b"Subject: nasty %d\r\n" % n, b"") + b"\r\nx\r\n")
    for charset, data in (
        ("gb2312", "你好".encode("gb2312")),
        ("shift_jis", "請求書".encode("shift_jis")),
        ("koi8-r", "Счёт".encode("koi8-r")),
        ("windows-1252", "Grüße – €".encode("cp1252")),
    ):
        add(
            f"charset {charset}",
            head(n) + b"MIME-Version: 1.0\r\nContent-Type: text/plain; "
            b"charset="
            + charset.encode()
            + b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + data
            + b"\r\n",
        )
    add("HTML only", head(n) + b"MIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n")
    add(
        "HTML with inline image",
        _multipart(
            head(n),
            "rel",
            [
                _part("Content-Type: text/html", b'<img src="cid:i@x">'),
                _part(
                    "Content-Type: image/png\nContent-ID: <i@x>\nContent-Transfer-Encoding: base64",
                    b"iVBORw0KGgo=",
                ),
            ],
            "related",
        ),
    )
    add(
        "empty attachment",
        _multipart(
            head(n),
            "empty",
            [
                text,
                _part(
                    'Content-Type: application/pdf\nContent-Disposition: attachment; filename="leer.pdf"',
                    b"",
                ),
            ],
        ),
    )
    add(
        "attachment without name",
        _multipart(
            head(n),
            "noname",
            [
                text,
                _part("Content-Type: application/pdf\nContent-Disposition: attachment", b"%PDF"),
            ],
        ),
    )
    add(
        "same name twice",
        _multipart(
            head(n),
            "twice",
            [text]
            + [
                _part(
                    'Content-Type: text/plain\nContent-Disposition: attachment; filename="a.txt"',
                    b"v%d" % i,
                )
                for i in range(3)
            ],
        ),
    )
    add(
        "binary body",
        head(n) + b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: binary\r\n\r\n" + bytes(range(1, 256)) + b"\r\n",
    )
    add(
        "long non-Latin attachment name",
        _multipart(
            head(n),
            "longname",
            [
                text,
                _part(
                    "Content-Type: application/pdf\nContent-Disposition: attachment; filename*=utf-8''"
                    + "%E8%AB%8B%E6%B1%82%E6%9B%B8" * 40
                    + ".pdf",
                    b"%PDF",
                ),
            ],
        ),
    )
    add(
        "long non-ASCII Message-ID",
        head(n, msgid=False, extra=b"Message-ID: <" + "📧".encode() * 700 + b"@example.org>\r\n")
        + b"\r\nx\r\n",
    )
    for i in range(4):  # one Message-ID, four different mails
        add(
            f"reused Message-ID {i}",
            head(n, msgid=False, extra=b"Message-ID: <reused@example.org>\r\n")
            + b"\r\nversion %d\r\n" % i,
        )
    add("missing subtype", head(n) + b"MIME-Version: 1.0\r\nContent-Type: text\r\n\r\nx\r\n")
    add(
        "unknown transfer encoding",
        head(n) + b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: x-uue\r\n\r\nx\r\n",
    )
    add(
        "broken quoted-printable",
        head(n) + b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nK=F6ln=ZZ\r\n",
    )
    add("broken Content-Type", head(n) + b"MIME-Version: 1.0\r\nContent-Type: ;;;\r\n\r\nx\r\n")
    assert len({raw for _, raw in out}) == len(out), "every nasty mail differs"
    return out


def every_shape(f: Facts) -> list[bytes]:
    """The whole corpus: the varied, the malformed and the nasty mails (over 150), once each."""
    mails = [e.raw for e in varied(f)] + [raw for _, raw in malformed() + nasty() if raw]
    assert len(set(mails)) == len(mails)
    return mails
