"""A throwaway test CA, the certificates the server fixtures present, and openssl's verdict
on signed mail.

`make_certs(dir)` writes PEM files and returns their paths; EC P-256 keeps generation fast.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertSet:
    """PEM paths. `cert`/`key`: CA-signed for localhost and 127.0.0.1; `selfsigned_*`: not
    CA-signed; `wronghost_*`: CA-signed for wrong.example only."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    selfsigned_cert: Path
    selfsigned_key: Path
    wronghost_cert: Path
    wronghost_key: Path

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def server_context(self, which: str = "") -> ssl.SSLContext:
        """A server context presenting `cert` ("" ), `selfsigned` or `wronghost`."""
        prefix = f"{which}_" if which else ""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(getattr(self, f"{prefix}cert"), getattr(self, f"{prefix}key"))
        return ctx


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # Dovecot reads keys as root before dropping privileges; others need not read them.
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _server_cert(
    key: ec.EllipticCurvePrivateKey,
    names: list[str],
    ips: list[str],
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def make_certs(directory: Path) -> CertSet:
    """Create the CA and the three server certificates as PEM files in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = _name("erpmail test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key, self_key, wrong_key = _key(), _key(), _key()
    server = _server_cert(server_key, ["localhost"], ["127.0.0.1"], ca_name, ca_key)
    # Same names as the good certificate, so only the missing CA signature can refuse it.
    selfsigned = _server_cert(self_key, ["localhost"], ["127.0.0.1"], _name("localhost"), self_key)
    wrong = _server_cert(wrong_key, ["wrong.example"], [], ca_name, ca_key)

    paths = CertSet(
        dir=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        cert=directory / "server.pem",
        key=directory / "server.key",
        selfsigned_cert=directory / "selfsigned.pem",
        selfsigned_key=directory / "selfsigned.key",
        wronghost_cert=directory / "wronghost.pem",
        wronghost_key=directory / "wronghost.key",
    )
    _write_cert(paths.ca_cert, ca)
    _write_key(paths.ca_key, ca_key)
    _write_cert(paths.cert, server)
    _write_key(paths.key, server_key)
    _write_cert(paths.selfsigned_cert, selfsigned)
    _write_key(paths.selfsigned_key, self_key)
    _write_cert(paths.wronghost_cert, wrong)
    _write_key(paths.wronghost_key, wrong_key)
    return paths


@dataclass(frozen=True)
class SigningIdentity:
    """An S/MIME signing certificate of the test CA (unless self-signed), its key and both as
    PKCS#12 (``pkcs12``, encrypted with ``password``), as a signer's Airflow connection holds
    them."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    pkcs12: bytes
    password: str

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


def signing_identity(
    certs: CertSet,
    email: str,
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    foreign_key: bool = False,
    password: str = "p12-secret",
    rsa_bits: int = 0,
) -> SigningIdentity:
    """A certificate for signing mail as ``email``, issued by the test CA of ``certs``.

    ``not_before``/``not_after`` default to an hour ago and 30 days on; ``foreign_key``
    bundles a key that is not the certificate's (the certificate then sits in the PKCS#12
    as an extra certificate, since a bundle marking it as the key's would be refused);
    ``rsa_bits`` gives an RSA key of that size instead of EC P-256.
    """
    from cryptography.hazmat.primitives.serialization import pkcs12

    now = dt.datetime.now(dt.UTC)
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key = rsa.generate_private_key(65537, rsa_bits) if rsa_bits else _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(email))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    bundled_key = _key() if foreign_key else key
    encryption = serialization.BestAvailableEncryption(password.encode())
    if foreign_key:
        data = pkcs12.serialize_key_and_certificates(
            email.encode(), bundled_key, None, [cert], encryption
        )
    else:
        data = pkcs12.serialize_key_and_certificates(email.encode(), key, cert, None, encryption)
    return SigningIdentity(cert, bundled_key, data, password)


def openssl_verify(tls_ca: CertSet, data: bytes, tmp: Path, command: str = "smime") -> tuple:
    """``openssl smime|cms -verify`` of ``data`` against the test CA: (return code, the
    content openssl says is signed, the signer's certificate PEM)."""
    source, content, signer = tmp / f"in-{command}.eml", tmp / "content", tmp / "signer.pem"
    source.write_bytes(data)
    for path in (content, signer):
        path.unlink(missing_ok=True)
    done = subprocess.run(
        ["openssl", command, "-verify", "-CAfile", str(tls_ca.ca_cert), "-in", str(source)]
        + ["-out", str(content), "-signer", str(signer)],
        capture_output=True,
    )
    return (
        done.returncode,
        content.read_bytes() if content.exists() else b"",
        signer.read_bytes() if signer.exists() else b"",
    )
