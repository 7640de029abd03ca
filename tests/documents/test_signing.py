"""Signed mail (S/MIME): a dunning run whose letters go out signed and verify with openssl,
and the refusals (no right to sign, expired, not yet valid, revoked, a foreign key, an
ambiguous or unknown fingerprint) that fail a letter alone before anything is queued.
Real PostgreSQL, the aiosmtpd server, openssl; certificates from the test CA."""

from __future__ import annotations

import base64
import datetime as dt
import email
import json
import shutil
from email import policy
from pathlib import Path
from types import SimpleNamespace

import psycopg2.extensions
import pytest
from cryptography import x509

from erpmail.core import archive
from erpmail.core.db import transaction
from erpmail.documents import mime, signing
from erpmail.outbound import dispatch as dispatcher
from tests.documents.pipeline import LETTERS, OUTBOX, dunning_run, rows, run_steps
from tests.mailaccounts import COMPANY_CONN_ID, SENDER, smtp_connection
from tests.servers.tlsca import CertSet, SigningIdentity, openssl_verify, signing_identity

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command")

NOW = dt.datetime.now(dt.UTC)


def add_signer(
    conn: psycopg2.extensions.connection,
    monkeypatch: pytest.MonkeyPatch,
    login: str,
    identities: list[SigningIdentity],
    *,
    may_sign: bool = True,
    fingerprint: str | None = None,
    sign_own_mail: bool = False,
) -> str:
    """An erp.users row, its mail.signers row and the Airflow connection ``pkcs12_<login>``
    holding the identities' PKCS#12 (all with the first one's password); the conn id."""
    conn_id = f"pkcs12_{login}"
    blobs = [base64.b64encode(i.pkcs12).decode() for i in identities]
    extra = {"pkcs12": blobs[0] if len(blobs) == 1 else blobs}
    connection = {"conn_type": "generic", "password": identities[0].password, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
    with transaction(conn) as cur:
        cur.execute(
            "INSERT INTO erp.users (login, name, email, language) VALUES (%s, %s, %s, 'de')",
            (login, login.title(), f"{login}@muster-handels.example.com"),
        )
        cur.execute(
            "INSERT INTO mail.signers (login, may_sign, fingerprint, conn_id, sign_own_mail)"
            " VALUES (%s, %s, %s, %s, %s)",
            (login, may_sign, fingerprint, conn_id, sign_own_mail),
        )
    return conn_id


def add_rule(conn, signer: str | None, document: str | None = None, account: str | None = None):
    with transaction(conn) as cur:
        cur.execute(
            "INSERT INTO mail.signing_rules (document, account, signer) VALUES (%s, %s, %s)",
            (document, account, signer),
        )


def signed_part(data: bytes) -> bytes:
    """The bytes between the first two delimiters of a multipart/signed: what is signed."""
    boundary = email.message_from_bytes(data, policy=policy.SMTP).get_boundary().encode()
    start = data.index(b"--" + boundary + b"\r\n") + len(boundary) + 4
    return data[start : data.index(b"\r\n--" + boundary, start)]


@pytest.fixture
def anna(tls_ca) -> SigningIdentity:
    """A valid signing certificate for the company's accounting address."""
    return signing_identity(tls_ca, SENDER)


def test_a_signed_dunning_mail_verifies_and_a_tampered_byte_does_not(
    ledger, monkeypatch, smtp_server, tls_ca, anna, tmp_path
) -> None:
    smtp_connection(monkeypatch, smtp_server, COMPANY_CONN_ID)
    add_signer(ledger, monkeypatch, "anna", [anna])
    add_rule(ledger, "anna", document="dunning")
    run = dunning_run()
    run_steps(run)
    released = [row for row in rows(ledger, LETTERS, run) if row[2] == "released"]
    assert released, "the seeded ledger has letters by mail"
    dispatcher.dispatch()
    received = {bytes(m.data) for m in smtp_server.wait_for(len(released))}
    stored = {row[0]: bytes(row[4]) for row in rows(ledger, OUTBOX)}
    # what went out is what was queued, byte for byte: a retry sends the same signature
    assert received == set(stored.values())

    letter_id, _, _, _, pdf_path, outbox_id, *_ = released[0]
    data = stored[outbox_id]
    outer = email.message_from_bytes(data, policy=policy.default)
    assert outer.get_content_type() == "multipart/signed"
    assert outer.get_param("protocol") == "application/pkcs7-signature"
    assert outer.get_param("micalg") == "sha-256"
    content, signature = outer.get_payload()
    assert signature.get_content_type() == "application/pkcs7-signature"
    assert outer["Message-ID"] and outer["Subject"].startswith("Zahlungserinnerung")

    for command in ("smime", "cms"):
        code, signed, signer_pem = openssl_verify(tls_ca, data, tmp_path, command)
        assert code == 0, command
        assert signed == signed_part(data)  # exactly the part as it went out, CRLF and all
        assert x509.load_pem_x509_certificate(signer_pem) == anna.cert
    # and that part is the letter as built: its text, and the archived PDF attached
    built = email.message_from_bytes(signed, policy=policy.default)
    (attachment,) = built.iter_attachments()
    assert attachment.get_content() == archive.read(pdf_path)
    assert "Zahlungserinnerung" in attachment.get_filename()
    assert built.get_body(("plain",)).get_content().strip()

    # one byte of the signed text changed (and the QP body stays valid): refused
    body = data.index(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n") + 47
    position = next(i for i in range(body, len(data)) if data[i : i + 1].isalpha())
    flipped = data[:position] + bytes([data[position] ^ 0x20]) + data[position + 1 :]
    for command in ("smime", "cms"):
        code, _, _ = openssl_verify(tls_ca, flipped, tmp_path, command)
        assert code == 4, command  # openssl: the signature does not verify


def test_a_user_without_the_right_to_sign_fails_each_letter_and_queues_nothing(
    ledger, monkeypatch, anna
) -> None:
    add_signer(ledger, monkeypatch, "anna", [anna], may_sign=False)
    add_rule(ledger, "anna", document="dunning")
    run = dunning_run()
    run_steps(run)
    letters = rows(ledger, LETTERS, run)
    failed = [row for row in letters if row[2] == "failed"]
    assert failed and not [row for row in letters if row[2] == "released"]
    for row in failed:
        assert "user 'anna' may not sign: mail.signers.may_sign is false" in row[7]
        assert "document 'dunning'" in row[7] and row[5] is None
    assert rows(ledger, OUTBOX) == []
    assert any(row[2] == "paper" for row in letters)  # paper letters are not held up


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ((NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1)), "expired on"),
        ((NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=30)), "not valid before"),
    ],
    ids=["expired", "not-yet-valid"],
)
def test_a_certificate_outside_its_validity_is_refused_before_queueing(
    ledger, monkeypatch, tls_ca, window, reason
) -> None:
    outdated = signing_identity(tls_ca, SENDER, not_before=window[0], not_after=window[1])
    add_signer(ledger, monkeypatch, "anna", [outdated], fingerprint=outdated.fingerprint)
    add_rule(ledger, "anna", account="accounting")
    run = dunning_run()
    run_steps(run)
    failed = [row for row in rows(ledger, LETTERS, run) if row[2] == "failed"]
    assert failed and all(
        f"user 'anna': connection 'pkcs12_anna': certificate {outdated.fingerprint}" in row[7]
        and reason in row[7]
        and "account 'accounting'" in row[7]
        for row in failed
    )
    assert rows(ledger, OUTBOX) == []


def test_a_key_that_does_not_match_is_refused(ledger, monkeypatch, tls_ca) -> None:
    foreign = signing_identity(tls_ca, SENDER, foreign_key=True)
    add_signer(ledger, monkeypatch, "anna", [foreign])
    add_rule(ledger, "anna")
    run = dunning_run()
    run_steps(run)
    failed = [row for row in rows(ledger, LETTERS, run) if row[2] == "failed"]
    assert failed and all(
        "no certificate can sign" in row[7]
        and f"certificate {foreign.fingerprint}: the private key does not match" in row[7]
        for row in failed
    )
    assert rows(ledger, OUTBOX) == []


def test_a_revoked_certificate_is_refused(ledger, monkeypatch, anna) -> None:
    add_signer(ledger, monkeypatch, "anna", [anna])
    add_rule(ledger, "anna")
    with transaction(ledger) as cur:
        cur.execute(
            "INSERT INTO mail.revoked_certificates VALUES (%s, now() - interval '1 hour', 'lost')",
            (anna.fingerprint,),
        )
    run = dunning_run()
    run_steps(run)
    failed = [row for row in rows(ledger, LETTERS, run) if row[2] == "failed"]
    assert failed and all("(mail.revoked_certificates)" in row[7] for row in failed)
    assert rows(ledger, OUTBOX) == []


def _signed_by(data: bytes, tls_ca: CertSet, tmp: Path) -> x509.Certificate:
    code, _, pem = openssl_verify(tls_ca, data, tmp)
    assert code == 0
    return x509.load_pem_x509_certificate(pem)


def _letter(**kw) -> mime.EmailMessage:
    return mime.build_message(
        sender=("Muster Handels", SENDER),
        to=["kunde@customer.example"],
        subject="Zahlungsavis",
        text="Guten Tag,\nanbei das Avis.\n",
        attachments=[mime.Attachment("Avis.pdf", b"%PDF-1.4\n" + bytes(range(256)) * 40)],
        message_id="<avis-1@muster-handels.example.com>",
        **kw,
    )


def test_the_fingerprint_picks_the_certificate_and_empty_means_the_one_valid(
    db, monkeypatch, tls_ca, anna, tmp_path
) -> None:
    renewed = signing_identity(tls_ca, SENDER)
    old = signing_identity(
        tls_ca,
        SENDER,
        not_before=NOW - dt.timedelta(days=400),
        not_after=NOW - dt.timedelta(days=1),
    )
    conn_id = add_signer(db, monkeypatch, "anna", [anna, renewed])
    with db.cursor() as cur:
        # two valid certificates and no fingerprint: which one is not guessed
        with pytest.raises(signing.SigningError) as refused:
            signing.Signatures().identity(cur, "anna", "test")
        assert f"connection {conn_id!r} holds 2 valid certificates" in str(refused.value)
        assert anna.fingerprint in str(refused.value)
        assert "set mail.signers.fingerprint" in str(refused.value)
        # the fingerprint as a certificate viewer shows it: upper case with colons
        shown = ":".join(renewed.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
        cur.execute("UPDATE mail.signers SET fingerprint = %s", (shown,))
        identity = signing.Signatures().identity(cur, "anna")
        assert identity.certificate == renewed.cert
        assert _signed_by(signing.sign(_letter(), identity), tls_ca, tmp_path) == renewed.cert
        cur.execute("UPDATE mail.signers SET fingerprint = %s", ("ab" * 32,))
        with pytest.raises(signing.SigningError, match="no certificate with mail.signers"):
            signing.Signatures().identity(cur, "anna")
    # the old, expired certificate and its renewal: empty picks the renewal
    monkeypatch.setenv(
        "AIRFLOW_CONN_PKCS12_ANNA",
        json.dumps(
            {
                "conn_type": "generic",
                "password": old.password,
                "extra": {"pkcs12": [base64.b64encode(i.pkcs12).decode() for i in (old, anna)]},
            }
        ),
    )
    with db.cursor() as cur:
        cur.execute("UPDATE mail.signers SET fingerprint = ''")
        assert signing.Signatures().identity(cur, "anna").certificate == anna.cert


def test_the_most_specific_rule_decides_and_a_user_may_sign_their_own_mail(
    db, monkeypatch, tls_ca, anna
) -> None:
    for login in ("all", "kind", "both", "acct"):
        add_signer(db, monkeypatch, login, [anna])
    add_signer(db, monkeypatch, "clerk", [anna], sign_own_mail=True)
    with transaction(db) as cur:
        cur.execute(
            "INSERT INTO mail.accounts (name, conn_id, from_address) VALUES"
            " ('ar', 'smtp_ar', 'ar@demo.example'), ('ap', 'smtp_ap', 'ap@demo.example')"
        )
    add_rule(db, "all")
    add_rule(db, "kind", document="dunning")
    add_rule(db, "both", document="dunning", account="ar")
    add_rule(db, "acct", account="ap")
    add_rule(db, None, document="on_demand")
    with db.cursor() as cur:
        signatures = signing.Signatures()

        def who(document, account, user=None):
            found = signatures.signer_for(cur, document=document, account=account, user=user)
            return found and found[0]

        assert who("dunning", "ar") == "both"
        assert who("dunning", "ap") == "kind"
        assert who("payment_advice", "ap") == "acct"
        assert who("payment_advice", "ar") == "all"
        assert who("payment_advice", "ar", user="clerk") == "clerk"  # sign_own_mail
        assert who("on_demand", "ar", user="anna") == "anna"  # the rule signs as the run's user
        with pytest.raises(signing.SigningError, match="the run names none"):
            who("on_demand", "ar")
        with pytest.raises(signing.SigningError, match="user 'anna' has no row in mail.signers"):
            signatures.identity(cur, "anna", "the rule")
    with transaction(db) as cur:
        cur.execute("DELETE FROM mail.signing_rules")
    with db.cursor() as cur:
        assert signing.Signatures().signer_for(cur, document="dunning", account="ar") is None
        unsigned = signing.Signatures().message_bytes(
            cur, _letter(), document="dunning", account="ar"
        )
        assert email.message_from_bytes(unsigned).get_content_type() == "multipart/mixed"


def test_a_batch_reads_each_signers_connection_once(ledger, monkeypatch, anna) -> None:
    add_signer(ledger, monkeypatch, "anna", [anna])
    add_rule(ledger, "anna")
    reads: list[str] = []
    original = signing._airflow_connection

    def counted(login: str, conn_id: str):
        reads.append(conn_id)
        return original(login, conn_id)

    monkeypatch.setattr(signing, "_airflow_connection", counted)
    run = dunning_run()
    batches, _, _ = run_steps(run)
    released = [row for row in rows(ledger, LETTERS, run) if row[2] == "released"]
    assert len(released) > len(batches)
    assert 1 <= len(reads) <= len(batches) and set(reads) == {"pkcs12_anna"}
    assert all(
        email.message_from_bytes(bytes(row[4])).get_content_type() == "multipart/signed"
        for row in rows(ledger, OUTBOX)
    )


def test_errors_never_show_the_key_or_the_password(anna) -> None:
    blob = base64.b64encode(anna.pkcs12).decode()
    wrong = SimpleNamespace(password="not-the-password", extra_dejson={"pkcs12": blob})
    with pytest.raises(signing.SigningError) as refused:
        signing.load_identity("anna", "pkcs12_anna", connection=wrong, revoked=[])
    text = str(refused.value)
    assert "user 'anna': connection 'pkcs12_anna'" in text and "password opens" in text
    assert "not-the-password" not in text and blob[:16] not in text
    assert refused.value.__cause__ is None and refused.value.__suppress_context__
    right = SimpleNamespace(password=anna.password, extra_dejson={"pkcs12": blob})
    identity = signing.load_identity("anna", "pkcs12_anna", connection=right, revoked=[])
    assert "key=" not in repr(identity)
    assert anna.password not in repr(identity)
    with pytest.raises(signing.SigningError, match="extra 'pkcs12' holds no base64"):
        signing.load_identity("anna", "c", connection=SimpleNamespace(password="", extra_dejson={}))


@pytest.mark.parametrize(
    "shape",
    [
        {"attachments": []},
        {"html": "<p>Guten Tag, Frau M\u00fcller</p>", "attachments": []},
        {"html": "<p>Avis</p>", "to": ["j\u00fcrgen@kunde.example"]},
    ],
    ids=["text-only", "alternative", "utf8-mailbox"],
)
def test_every_shape_of_message_verifies(anna, tls_ca, tmp_path, shape) -> None:
    conn = SimpleNamespace(
        password=anna.password, extra_dejson={"pkcs12": base64.b64encode(anna.pkcs12).decode()}
    )
    identity = signing.load_identity("anna", "pkcs12_anna", connection=conn, revoked=[])
    fields = {
        "sender": ("Muster Handels", SENDER),
        "to": ["kunde@customer.example"],
        "subject": "Zahlungsavis f\u00fcr " + "sehr lange Betreffzeilen " * 4,
        "text": "Guten Tag,\nanbei das Avis.\n" + "\u00e4" * 200,
        "attachments": [mime.Attachment("Avis.pdf", b"%PDF-1.4\n" + bytes(range(256)) * 40)],
        "message_id": "<avis-1@muster-handels.example.com>",
    }
    built = mime.build_message(**{**fields, **shape})
    data = signing.sign(built, identity)
    code, signed, _ = openssl_verify(tls_ca, data, tmp_path)
    assert code == 0 and signed == signed_part(data)
    inner = email.message_from_bytes(signed, policy=policy.default)
    assert inner.get_content_type() == built.get_content_type()
    text = inner.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text == built.get_body(("plain",)).get_content().replace("\r\n", "\n")
    outer = email.message_from_bytes(data, policy=policy.default)
    assert outer["To"] == built["To"] and outer["Subject"] == built["Subject"]
