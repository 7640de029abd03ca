"""Signed mail (S/MIME): who signs a message (``mail.signers``, ``mail.signing_rules``), the
signer's identity from its Airflow connection, checked, and the message as
``multipart/signed`` with a detached PKCS#7 signature over the exact bytes of its content.

``Signatures`` is one batch's signing: ``message_bytes`` returns the bytes to queue, signed
where a rule or the user says so, or raises ``SigningError`` naming the user, the account
or rule and the field, before anything is queued. A key or password is never in an error
or a log line.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage, MIMEPart
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = [
    "Identity",
    "SigningError",
    "Signatures",
    "fingerprint",
    "load_identity",
    "sign",
]

log = logging.getLogger(__name__)

SIGNERS = "SELECT login, may_sign, fingerprint, conn_id, sign_own_mail FROM mail.signers"
RULES = "SELECT id, document, account, signer FROM mail.signing_rules"
REVOKED = """
SELECT fingerprint, revoked_at FROM mail.revoked_certificates
 WHERE fingerprint = ANY(%s) AND revoked_at <= %s"""

# Where the connection keeps the identity: base64 PKCS#12 (one, or a list while a renewed
# certificate overlaps the old one) in this extra; its password is the connection password.
PKCS12_EXTRA = "pkcs12"
MICALG = "sha-256"
# a key and a certificate belong together when their public keys serialise the same
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class SigningError(ValueError):
    """A message cannot be signed; the text names the user, the rule or account and the field."""


@dataclass(frozen=True)
class Identity:
    """A user's certificate with its key (never shown) and the CA certificates sent along."""

    login: str
    conn_id: str
    certificate: x509.Certificate
    key: Any = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


@dataclass(frozen=True)
class _Signer:
    login: str
    may_sign: bool
    fingerprint: str
    conn_id: str
    sign_own_mail: bool


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER as lowercase hex: what ``mail.signers`` compares."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def _normal_fingerprint(value: str | None) -> str:
    return (value or "").replace(":", "").strip().lower()


def _refusal(cert: x509.Certificate, key: Any, now: datetime, revoked: dict[str, datetime]) -> str:
    """Why this certificate with this key cannot sign now; empty when it can."""
    if key is None:
        return "the connection holds no private key for it"
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return f"its key type {type(key).__name__} cannot sign S/MIME (RSA or EC only)"
    if cert.public_key().public_bytes(*_SPKI) != key.public_key().public_bytes(*_SPKI):
        return "the private key does not match the certificate"
    if now < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    when = revoked.get(fingerprint(cert))
    if when is not None and when <= now:
        return f"revoked on {when:%Y-%m-%d} (mail.revoked_certificates)"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not (usage.digital_signature or usage.content_commitment):
            return "its key usage does not allow signatures"
    except x509.ExtensionNotFound:
        pass
    try:
        purposes = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if not set(purposes) & {
            ExtendedKeyUsageOID.EMAIL_PROTECTION,
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
        }:
            return "its extended key usage is not e-mail protection"
    except x509.ExtensionNotFound:
        pass
    return ""


def _bundles(login: str, conn_id: str, conn: Any) -> list[tuple[Any, list[x509.Certificate]]]:
    """Each PKCS#12 of the connection opened: (key, [its certificate first, the others])."""
    where = f"user {login!r}: connection {conn_id!r}"
    given = (conn.extra_dejson or {}).get(PKCS12_EXTRA)
    blobs = [given] if isinstance(given, str) else given
    if not blobs or not isinstance(blobs, list) or not all(isinstance(b, str) for b in blobs):
        raise SigningError(f"{where}: extra {PKCS12_EXTRA!r} holds no base64 PKCS#12")
    password = conn.password.encode("utf-8") if conn.password else None
    opened = []
    for n, blob in enumerate(blobs, start=1):
        # the library's messages are kept out: they might quote what they could not read
        try:
            data = base64.b64decode("".join(blob.split()), validate=True)
        except (binascii.Error, ValueError):
            raise SigningError(f"{where}: extra {PKCS12_EXTRA!r} #{n} is not base64") from None
        try:
            bundle = pkcs12.load_pkcs12(data, password)
        except (ValueError, TypeError):
            raise SigningError(
                f"{where}: extra {PKCS12_EXTRA!r} #{n} is no PKCS#12 the connection's password"
                " opens"
            ) from None
        certs = [c.certificate for c in bundle.additional_certs]
        own = bundle.cert.certificate if bundle.cert else None
        if own is None and bundle.key is not None:
            # a bundle without the key's certificate marked: the one that fits the key
            mine = bundle.key.public_key().public_bytes(*_SPKI)
            own = next((c for c in certs if c.public_key().public_bytes(*_SPKI) == mine), None)
            if own is None and certs:
                own = certs[0]  # refused below: the key does not match it
        if own is None:
            raise SigningError(f"{where}: extra {PKCS12_EXTRA!r} #{n} holds no certificate")
        opened.append((bundle.key, [own, *(c for c in certs if c != own)]))
    return opened


def _airflow_connection(login: str, conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # Airflow's own not-found types; the text would not help more
        raise SigningError(
            f"user {login!r}: connection {conn_id!r} (mail.signers.conn_id) not found"
        ) from None


def load_identity(
    login: str,
    conn_id: str,
    wanted: str | None = None,
    *,
    connection: Any = None,
    revoked: Iterable[tuple[str, datetime]] | None = None,
    cur: Any = None,
    now: datetime | None = None,
) -> Identity:
    """The identity ``login`` signs with: the certificate whose fingerprint is ``wanted``, or,
    when that is empty, the one certificate of the connection that can sign now.

    ``connection`` is the Airflow connection (None: read ``conn_id``); revoked fingerprints
    come from ``revoked`` or ``mail.revoked_certificates`` through ``cur``. Raises
    ``SigningError`` naming the user, the connection and the field.
    """
    now = now or datetime.now(UTC)
    conn = connection if connection is not None else _airflow_connection(login, conn_id)
    candidates = [
        (cert, key, tuple(others)) for key, (cert, *others) in _bundles(login, conn_id, conn)
    ]
    prints = [fingerprint(cert) for cert, _, _ in candidates]
    if revoked is None and cur is not None:
        cur.execute(REVOKED, (prints, now))
        revoked = cur.fetchall()
    withdrawn = dict(revoked or ())
    wanted = _normal_fingerprint(wanted)
    where = f"user {login!r}: connection {conn_id!r}"
    if wanted:
        if wanted not in prints:
            raise SigningError(
                f"{where} holds no certificate with mail.signers.fingerprint {wanted}"
                f" (it holds {', '.join(prints)})"
            )
        cert, key, chain = candidates[prints.index(wanted)]
        reason = _refusal(cert, key, now, withdrawn)
        if reason:
            raise SigningError(
                f"{where}: certificate {wanted} (mail.signers.fingerprint): {reason}"
            )
        return Identity(login, conn_id, cert, key, chain)
    usable = []
    refused = []
    for (cert, key, chain), print_ in zip(candidates, prints, strict=True):
        reason = _refusal(cert, key, now, withdrawn)
        if reason:
            refused.append(f"certificate {print_}: {reason}")
        else:
            usable.append(Identity(login, conn_id, cert, key, chain))
    if len(usable) == 1:
        return usable[0]
    if not usable:
        raise SigningError(f"{where}: no certificate can sign ({'; '.join(refused)})")
    raise SigningError(
        f"{where} holds {len(usable)} valid certificates"
        f" ({', '.join(i.fingerprint for i in usable)}): set mail.signers.fingerprint to one"
    )


def _check_now(identity: Identity, now: datetime) -> None:
    # a batch may outlive a certificate; the cheap part of the check runs per message
    cert = identity.certificate
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        reason = _refusal(cert, identity.key, now, {})
        raise SigningError(f"user {identity.login!r}: certificate {identity.fingerprint}: {reason}")


def _content(message: EmailMessage) -> MIMEPart:
    """The message's body with its Content-* headers: the part the signature covers."""
    content = MIMEPart(policy=message.policy)
    for name, value in message.items():
        if name.lower().startswith("content-"):
            content[name] = value
    content.set_payload(message.get_payload())
    content.preamble, content.epilogue = message.preamble, message.epilogue
    return content


def sign(message: EmailMessage, identity: Identity, *, now: datetime | None = None) -> bytes:
    """``message`` as ``multipart/signed`` (RFC 8551), the bytes to queue: its headers, its
    content part as built, and a detached SHA-256 signature over that part's CRLF bytes."""
    _check_now(identity, now or datetime.now(UTC))
    content = _content(message)
    # serialised as the generator writes the inside of a multipart/signed (headers not
    # folded); this also fixes the boundaries, so the message below repeats these bytes
    signed = content.as_bytes(policy=message.policy.clone(max_line_length=0))
    builder = pkcs7.PKCS7SignatureBuilder().set_data(signed)
    builder = builder.add_signer(identity.certificate, identity.key, hashes.SHA256())
    for ca in identity.chain:
        builder = builder.add_certificate(ca)
    # Binary: the bytes are already canonical (CRLF); the library must not convert them
    der = builder.sign(
        serialization.Encoding.DER,
        [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
    )
    signature = MIMEPart(policy=message.policy)
    signature.set_content(
        der,
        maintype="application",
        subtype="pkcs7-signature",
        filename="smime.p7s",
        disposition="attachment",
    )
    outer = EmailMessage(policy=message.policy)
    for name, value in message.items():
        if not name.lower().startswith("content-") and name.lower() != "mime-version":
            outer[name] = value
    outer.set_payload([content, signature])
    outer.set_type("multipart/signed")
    outer.set_param("protocol", "application/pkcs7-signature")
    outer.set_param("micalg", MICALG)
    data = outer.as_bytes()
    boundary = outer.get_boundary().encode("ascii")
    if b"--" + boundary + b"\r\n" + signed + b"\r\n--" + boundary not in data:
        # never queue a signature that does not cover the bytes that go out
        raise SigningError(f"user {identity.login!r}: the signed part changed when serialised")
    return data


class Signatures:
    """One batch's signing: rules and signers read once, each identity loaded once (its
    refusal too, so a broken connection is not read again for every letter)."""

    def __init__(self, *, now: datetime | None = None) -> None:
        self._now = now
        self._signers: dict[str, _Signer] | None = None
        self._rules: dict[tuple[str | None, str | None], tuple[int, str | None]] = {}
        self._identities: dict[str, Identity | SigningError] = {}
        self._warned: set[tuple[str, str]] = set()

    def _load(self, cur: Any) -> dict[str, _Signer]:
        if self._signers is None:
            cur.execute(SIGNERS)
            self._signers = {
                row[0]: _Signer(row[0], row[1], _normal_fingerprint(row[2]), row[3], row[4])
                for row in cur.fetchall()
            }
            cur.execute(RULES)
            self._rules = {(doc, acc): (rule_id, signer) for rule_id, doc, acc, signer in cur}
        return self._signers

    def signer_for(
        self, cur: Any, *, document: str, account: str, user: str | None = None
    ) -> tuple[str, str] | None:
        """(login, why) of the user who signs mail of ``document`` (erp.runs.kind) sent from
        ``account`` on behalf of ``user``; None: the mail goes unsigned."""
        signers = self._load(cur)
        if user and user in signers and signers[user].sign_own_mail:
            return user, f"mail.signers.sign_own_mail of user {user!r}"
        for key in ((document, account), (document, None), (None, account), (None, None)):
            if key in self._rules:
                rule_id, signer = self._rules[key]
                doc, acc = key
                scope = ", ".join(
                    [f"document {doc!r}"] * bool(doc) + [f"account {acc!r}"] * bool(acc)
                )
                why = f"mail.signing_rules id {rule_id} ({scope or 'all mail'})"
                if signer is None:
                    if not user:
                        raise SigningError(
                            f"{why} signs as the run's user, but the run names none (params 'user')"
                        )
                    signer = user
                return signer, why
        return None

    def identity(self, cur: Any, login: str, why: str = "") -> Identity:
        """``login``'s checked identity, loaded on first use; ``SigningError`` when the user
        may not sign or the identity is refused (``why`` says what asked for it)."""
        signer = self._load(cur).get(login)
        asked = f" ({why})" if why else ""
        if signer is None:
            raise SigningError(f"user {login!r} has no row in mail.signers{asked}")
        if not signer.may_sign:
            raise SigningError(
                f"user {login!r} may not sign: mail.signers.may_sign is false{asked}"
            )
        if login not in self._identities:
            try:
                self._identities[login] = load_identity(
                    login, signer.conn_id, signer.fingerprint, cur=cur, now=self._now
                )
            except SigningError as exc:
                self._identities[login] = exc
        found = self._identities[login]
        if isinstance(found, SigningError):
            raise SigningError(f"{found}{asked}")
        return found

    def message_bytes(
        self,
        cur: Any,
        message: EmailMessage,
        *,
        document: str,
        account: str,
        user: str | None = None,
    ) -> bytes:
        """The bytes to queue for ``message``: signed when ``signer_for`` names a signer,
        else as built."""
        chosen = self.signer_for(cur, document=document, account=account, user=user)
        if chosen is None:
            return message.as_bytes()
        identity = self.identity(cur, *chosen)
        self._warn_if_not_named(identity, message)
        return sign(message, identity, now=self._now)

    def _warn_if_not_named(self, identity: Identity, message: EmailMessage) -> None:
        """Receivers' mail programs flag a signature whose certificate does not name the
        sender: said once per certificate and sender, the mail still goes signed."""
        header = message["From"]
        senders = [a.addr_spec.lower() for a in header.addresses] if header is not None else []
        for sender in senders:
            if (identity.fingerprint, sender) not in self._warned:
                self._warned.add((identity.fingerprint, sender))
                if sender not in _named_addresses(identity.certificate):
                    log.warning(
                        "certificate %s of user %r does not name the sender %s: mail"
                        " programs may show the signature as someone else's",
                        identity.fingerprint,
                        identity.login,
                        sender,
                    )


def _named_addresses(certificate: x509.Certificate) -> set[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return set()
    return {n.lower() for n in names.value.get_values_for_type(x509.RFC822Name)}
